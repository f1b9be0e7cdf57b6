"""The Predict dock widget: a model on an Image layer -> probabilities (Image) and instances (Labels).

Every setting is a key of ``conf/predict.yaml`` with its default (``tta``, ``threshold``, ``orthoplane``,
``voxel_size``); the run is :func:`cemkit.napari_plugin.jobs.predict_layer`, which calls the function
``cemkit predict`` calls. The outputs are written to a new folder under the output root; a layer loaded
in memory gets its outputs in memory, a lazily loaded one (dask, zarr) gets them as lazy zarr arrays.
"""

from __future__ import annotations

import logging
import time
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from cemkit.conf import stage_defaults
from cemkit.errors import InputError
from cemkit.napari_plugin.fields import ModelField, default_output_root, layer_box
from cemkit.napari_plugin.layer_data import layer_array
from cemkit.napari_plugin.llvm_guard import load_triton_apart
from cemkit.napari_plugin.running import RunWidget

load_triton_apart()  # before anything imports torch's dynamo: see llvm_guard
log = logging.getLogger(__name__)

#: the open Predict widgets (Adapt hands the adapted model to the one of its viewer)
PREDICT_WIDGETS: weakref.WeakSet = weakref.WeakSet()
#: metadata keys of the Labels layer Predict adds: it is a prediction, and the slices the user edited since
PREDICTION_KEY, EDITED_KEY = "cemkit_prediction", "cemkit_edited_slices"


def in_memory(data) -> bool:
    """Whether a layer's data is an in-memory numpy array (its outputs are then loaded too)."""
    return isinstance(data, np.ndarray)


def edited_slices(item) -> set[int]:
    """The z of a Labels paint event's history item (tuple atoms or masked atoms), for 3-D layers."""
    zs: set[int] = set()
    for atom in item:
        key = getattr(atom, "slice_key", None)
        if key is not None:  # a masked atom: its bounding box
            if len(key) == 3:
                zs.update(range(key[0].start or 0, key[0].stop))
            continue
        indices = atom[0]
        if len(indices) == 3:
            zs.update(int(z) for z in np.unique(np.asarray(indices[0])))
    return zs


class PredictWidget(RunWidget):
    """Plugins > cemkit > Predict."""

    def __init__(self, napari_viewer):
        d = stage_defaults("predict")
        viewer = napari_viewer
        self.model = ModelField()
        self.image = layer_box(viewer, "image", "image")
        self.tta = ComboBox(label="test-time aug.", choices=[0, 2, 4, 8, 16], value=int(d.tta),
                            tooltip="tta: flipped/rotated copies averaged (0 = off; 1fm models: at most 8)")
        self.threshold = FloatSpinBox(label="threshold", value=float(d.threshold), min=0.0, max=1.0, step=0.05,
                                      tooltip="threshold: mask = probability > threshold")
        self.orthoplane = CheckBox(label="orthoplane", value=bool(d.orthoplane),
                                   tooltip="orthoplane: also predict the xz and yz planes and average")
        self.pixel_size = FloatSpinBox(label="pixel size (nm)", value=0.0, min=0.0, max=1000.0, step=0.1,
                                       tooltip="voxel_size: the image's pixel size; 0 = unknown (no rescaling)")
        self.output = FileEdit(label="output folder", mode="d", value=default_output_root())
        self.run_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(widgets=[self.model, self.image, self.tta, self.threshold, self.orthoplane,
                                  self.pixel_size, self.output,
                                  Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                                            labels=False),
                                  self.status])
        self._started = 0.0
        self.first_layer_s: float | None = None  # seconds from the click to the first output layer
        self.last_result = None
        self.start_runs(viewer, "cemkit predict")
        PREDICT_WIDGETS.add(self)

    # -- actions -----------------------------------------------------------------------------
    def run(self, layer=None, model: str | None = None) -> bool:
        """Start predicting (``layer``/``model`` default to the widget's); False when the input is refused."""
        from cemkit.napari_plugin.jobs import next_free, predict_layer
        from cemkit.napari_plugin.layer_data import image_volume

        layer = layer or self.image.value
        try:
            if layer is None:
                raise InputError("choose an Image layer")
            volume = image_volume(layer_array(layer), layer.name, rgb=bool(layer.rgb))
            spec = model or self.model.value
            out = next_free(Path(self.output.value), f"predict-{_slug(layer.name)}")
            self._started, self.first_layer_s = time.perf_counter(), None
            return self.launch(predict_layer, self._done, (layer,), volume=volume, model=spec, output=out,
                               tta=int(self.tta.value), threshold=float(self.threshold.value),
                               orthoplane=bool(self.orthoplane.value),
                               pixel_size_nm=float(self.pixel_size.value) or None)
        except Exception as exc:  # noqa: BLE001 - every refusal is a notification
            return self.refuse(exc)

    def _done(self, result) -> None:
        from cemkit.io.zarr_store import open_zarr_array

        layer = self._in_use[0]
        self.last_result = result
        source = layer_array(layer)
        flat = source.ndim == 2
        load = in_memory(source)

        def data(path: Path):
            arr = open_zarr_array(path)
            arr = np.asarray(arr) if load else arr
            return arr[..., 0, :, :] if flat else arr  # (c,) z, y, x

        where = {"scale": layer.scale, "translate": layer.translate}
        probs = data(result.probabilities)
        top = 255 if probs.dtype == np.uint8 else 1
        if probs.ndim == source.ndim + 1:  # a multi-class model: one layer per class
            self.viewer.add_image(probs, channel_axis=0, name=[f"{layer.name} p(class {c})" for c in range(len(probs))],
                                  contrast_limits=[(0, top)] * len(probs), blending="additive", **where)
        else:
            self.viewer.add_image(probs, name=f"{layer.name} probabilities", colormap="magma", blending="additive",
                                  opacity=0.6, contrast_limits=(0, top), **where)
        self.first_layer_s = time.perf_counter() - self._started
        if result.labels is not None:
            labels = self.viewer.add_labels(data(result.labels), name=f"{layer.name} objects", **where,
                                            metadata={PREDICTION_KEY: str(result.folder), EDITED_KEY: set()})
            labels.events.paint.connect(lambda event, lab=labels: lab.metadata[EDITED_KEY].update(
                edited_slices(event.value)))
        self._status(f"done in {time.perf_counter() - self._started:.1f} s: {result.record.get('objects')} objects "
                     f"-> {result.folder}")

    # -- callbacks ---------------------------------------------------------------------------
    def _event(self, event: dict) -> None:
        if event["kind"] == "progress" and event["total"]:
            self.status.value = f"{event['stage']}: {100 * event['done'] / event['total']:.0f} %"
        elif event["kind"] == "status":
            self.status.value = event["text"]


def _slug(name: str) -> str:
    """A layer name as a folder name: ``"synthetic EM"`` -> ``"synthetic-EM"``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "layer"

