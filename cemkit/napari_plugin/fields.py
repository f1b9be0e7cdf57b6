"""Widget fields shared by Predict and Adapt: the model chooser, layer choosers, config defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, LineEdit, PushButton

from cemkit.napari_plugin.sample_data import MODEL_KEY


class ModelField(Container):
    """A model: a finetune output folder, a ``.ckpt`` file or ``zoo:NAME`` (typed), with file dialogs."""

    def __init__(self, label: str = "model"):
        self.text = LineEdit(tooltip="a cemkit finetune output folder, a .ckpt checkpoint, or zoo:NAME")
        self.folder_button = PushButton(text="Folder…")
        self.file_button = PushButton(text="File…")
        super().__init__(widgets=[self.text, self.folder_button, self.file_button], layout="horizontal",
                         labels=False, label=label)
        self.margins = (0, 0, 0, 0)
        self.folder_button.changed.connect(self._pick_folder)
        self.file_button.changed.connect(self._pick_file)

    @property
    def value(self) -> str:  # type: ignore[override]
        return self.text.value.strip()

    @value.setter
    def value(self, spec: Any) -> None:
        self.text.value = "" if spec is None else str(spec)

    def _pick_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "A cemkit model folder (finetune output)")
        if folder:
            self.value = folder

    def _pick_file(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "A cemkit checkpoint", "", "Checkpoints (*.ckpt)")
        if path:
            self.value = path


def layer_choices(viewer, kind: str):
    """A ``choices`` callable: the viewer's layers of ``kind`` ("image" or "labels") as (name, layer)."""
    def choices(_widget=None):
        import napari.layers

        cls = {"image": napari.layers.Image, "labels": napari.layers.Labels}[kind]
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, cls)]

    return choices


def layer_box(viewer, kind: str, label: str) -> ComboBox:
    """A ComboBox of the viewer's ``kind`` layers that follows layers being added, removed or renamed."""
    box = ComboBox(label=label, choices=layer_choices(viewer, kind), nullable=False)

    def refresh(event=None) -> None:
        try:
            box.reset_choices()
        except RuntimeError:  # the widget is gone
            pass

    viewer.layers.events.inserted.connect(refresh)
    viewer.layers.events.removed.connect(refresh)
    viewer.layers.events.changed.connect(refresh)
    return box


def model_of_layer(layer) -> str | None:
    """The model an Image layer names in its metadata (the sample data does), if any."""
    value = (getattr(layer, "metadata", None) or {}).get(MODEL_KEY)
    return str(value) if value else None


def default_output_root() -> Path:
    """Where the widgets write when the user has not chosen: ``./cemkit-napari``."""
    return Path.cwd() / "cemkit-napari"
