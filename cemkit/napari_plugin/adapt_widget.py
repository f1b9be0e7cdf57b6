"""The Adapt dock widget: adapt a model to the slices painted or corrected in a Labels layer, then predict.

The run is :func:`cemkit.napari_plugin.jobs.adapt_layers`: ``cemkit finetune +experiment=adapt`` on those
slices, with the preset's defaults (``trainer.max_time`` 5 minutes, ``model.frames`` 1). Which slices count:
those typed in the widget; else, on a Labels layer that Predict made, the slices edited since; else every
slice with a painted label. Pixels painted with the "not sure" label are ignored (``data.ignore_value``).
When it has finished, the Predict widget gets the adapted model and (by default) predicts again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox

from cemkit.errors import InputError
from cemkit.napari_plugin.fields import ModelField, default_output_root, layer_box
from cemkit.napari_plugin.llvm_guard import load_triton_apart
from cemkit.napari_plugin.predict_widget import EDITED_KEY, PREDICT_WIDGETS, PREDICTION_KEY, PredictWidget
from cemkit.napari_plugin.running import RunWidget

load_triton_apart()  # before anything imports torch's dynamo: see llvm_guard
log = logging.getLogger(__name__)


def adapt_defaults() -> tuple[float, int]:
    """``(minutes, frames)`` of ``conf/experiment/adapt.yaml``, the preset the widget runs."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    from cemkit.finetune.budget import parse_duration

    cfg = OmegaConf.create(files("cemkit.conf").joinpath("experiment/adapt.yaml").read_text())
    return parse_duration(cfg.trainer.max_time) / 60.0, int(cfg.model.frames)


class AdaptWidget(RunWidget):
    """Plugins > cemkit > Adapt."""

    def __init__(self, napari_viewer):
        minutes, frames = adapt_defaults()
        viewer = napari_viewer
        self.model = ModelField(label="model (empty: random init)")
        self.image = layer_box(viewer, "image", "image")
        self.label_layer = layer_box(viewer, "labels", "labels")
        self.slices = LineEdit(label="labelled slices", value="",
                               tooltip="e.g. '3, 7' or '3-5'; empty: the slices edited since Predict, or every "
                                       "slice with a painted label")
        self.not_sure = SpinBox(label="'not sure' label", value=0, min=0, max=2**31 - 1,
                                tooltip="pixels painted with this label are ignored (0 = none)")
        self.minutes = FloatSpinBox(label="time (min)", value=minutes, min=0.05, max=24 * 60, step=1.0,
                                    tooltip="trainer.max_time: the steps are planned to end in this time")
        self.frames = ComboBox(label="frames", choices=[1, 3, 5], value=frames,
                               tooltip="model.frames: slices in per prediction (1fm, 3fm, 5fm)")
        self.pixel_size = FloatSpinBox(label="pixel size (nm)", value=0.0, min=0.0, max=1000.0, step=0.1,
                                       tooltip="data.voxel_size: the image's pixel size; 0 = unknown")
        self.output = FileEdit(label="output folder", mode="d", value=default_output_root())
        self.predict_after = CheckBox(label="predict when done", value=True)
        self.run_button = PushButton(text="Adapt")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = Label(value="")
        self.status = Label(value="")
        super().__init__(widgets=[self.model, self.image, self.label_layer, self.slices, self.not_sure, self.minutes,
                                  self.frames, self.pixel_size, self.output, self.predict_after,
                                  Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                                            labels=False),
                                  self.progress, self.status])
        self.history: list[dict] = []   # the training events of the last run (loss, validation IoU)
        self.last_result = None
        self.start_runs(viewer, "cemkit adapt")

    def run(self, overrides: tuple[str, ...] = ()) -> bool:
        """Start adapting; False when the input is refused (a notification says why, nothing is written).

        ``overrides``: extra finetune config overrides (tests use tiny settings).
        """
        from cemkit.napari_plugin.jobs import adapt_layers, next_free
        from cemkit.napari_plugin.layer_data import image_volume, labels_on_grid, layer_array, parse_slices

        image, labels = self.image.value, self.label_layer.value
        try:
            if image is None or labels is None:
                raise InputError("choose an Image layer and a Labels layer with a few painted slices")
            volume = image_volume(layer_array(image), image.name, rgb=bool(image.rgb))
            labels_on_grid(labels.data, volume.shape, image.name, labels.name)  # refused here, before a thread
            slices = parse_slices(self.slices.value) or self._edited(labels)
            model = self.model.value or None
            out = next_free(Path(self.output.value), "adapted")
            self.history = []
            return self.launch(adapt_layers, self._done, (image, labels), volume=volume, labels=labels.data,
                               model=model, output=out, minutes=float(self.minutes.value),
                               frames=int(self.frames.value), slices=slices or None,
                               not_sure=int(self.not_sure.value) or None, labels_name=labels.name,
                               pixel_size_nm=float(self.pixel_size.value) or None, overrides=tuple(overrides))
        except Exception as exc:  # noqa: BLE001 - every refusal is a notification
            return self.refuse(exc)

    @staticmethod
    def _edited(labels) -> list[int]:
        """On a Labels layer Predict made, the slices edited since (none edited: an error says what to do)."""
        meta = labels.metadata or {}
        if PREDICTION_KEY not in meta:
            return []
        edited = sorted(meta.get(EDITED_KEY) or ())
        if not edited:
            raise InputError(f"labels layer {labels.name!r} is a prediction and no slice of it was corrected: correct "
                         "one or two slices (paint or erase), or type the labelled slices")
        return edited

    def _done(self, result) -> None:
        self.last_result = result
        self._status(f"adapted on slices {result.slices}: {result.result.get('steps')} steps -> {result.folder}")
        predict = self.predict_widget()
        predict.model.value = str(result.folder)
        if self.predict_after.value and self._in_use and self._in_use[0] in self.viewer.layers:
            predict.run(self._in_use[0], str(result.folder))

    def predict_widget(self) -> PredictWidget:
        """The viewer's Predict widget (docked now if it was not open)."""
        image = self._in_use[0] if self._in_use else None
        widget = next((w for w in list(PREDICT_WIDGETS) if image is not None and image in w.viewer.layers), None)
        if widget is None:
            widget = PredictWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Predict (cemkit)", area="right")
        return widget

    # -- callbacks ---------------------------------------------------------------------------
    def _event(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "status":
            self.status.value = event["text"]
        elif kind in ("train", "val"):
            self.history.append(event)
            last_loss = next((e["loss"] for e in reversed(self.history) if e.get("loss") is not None), None)
            last_iou = next((e["iou"] for e in reversed(self.history) if e.get("iou") is not None), None)
            step = event["step"]
            total = next((e["total"] for e in reversed(self.history) if "total" in e), 0)
            self.progress.value = (f"step {step}/{total}" + (f" · loss {last_loss:.3f}" if last_loss is not None else "")
                                   + (f" · IoU {last_iou:.3f}" if last_iou is not None else ""))
