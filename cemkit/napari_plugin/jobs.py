"""What the Predict and Adapt widgets run, without Qt: the CLI's stage functions on layer data.

Predict calls :func:`cemkit.predict.run_prediction` (what ``cemkit predict`` calls) on a
:class:`~cemkit.napari_plugin.layer_data.LayerVolume`; Adapt composes the ``finetune`` config with
``+experiment=adapt`` (what ``cemkit finetune +experiment=adapt`` composes) and calls
:func:`cemkit.finetune.orchestrate.run_finetune`. Both write into a hidden ``.NAME.partial`` folder and
rename it when the run has finished: a cancelled or failed run leaves nothing behind. Progress goes to
``on_event(dict)``; ``cancel`` (a :class:`threading.Event`) stops a run between two slabs or two steps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cemkit.errors import InputError, RunCancelled
from cemkit.napari_plugin.layer_data import IGNORE_VALUE, label_blocks, painted_slices, training_labels

log = logging.getLogger(__name__)

Event = dict[str, Any]


def _no_event(event: Event) -> None:
    return None


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise RunCancelled("cancelled: nothing was written")


def next_free(root: Path, stem: str) -> Path:
    """``root/stem-1``, ``root/stem-2``, ...: the first that does not exist (nor its partial folder)."""
    n = 1
    while (root / f"{stem}-{n}").exists() or partial_folder(root / f"{stem}-{n}").exists():
        n += 1
    return root / f"{stem}-{n}"


def partial_folder(final: Path) -> Path:
    """Where a run writes until it has finished: ``.NAME.partial`` beside ``final``."""
    return final.parent / f".{final.name}.partial"


def _publish(partial: Path, final: Path) -> None:
    """Rename the finished ``partial`` folder to ``final`` and repoint the paths its json records hold."""
    for path in partial.rglob("*.json"):
        text = path.read_text()
        if str(partial) in text:
            path.write_text(text.replace(str(partial), str(final)))
    os.replace(partial, final)


@dataclass
class PredictResult:
    folder: Path
    probabilities: Path
    labels: Path | None
    record: dict = field(repr=False)


def load_models(model: str, device: str = "cpu"):
    """The segmenters a model spec names (folder, checkpoint or ``zoo:NAME``); errors name the file."""
    from cemkit.predict import load_segmenters, resolve_checkpoints

    if not str(model or "").strip():
        raise InputError("choose a model: a cemkit finetune output folder, a .ckpt file or zoo:NAME")
    return load_segmenters(resolve_checkpoints(str(model)), device)


def check_depth(frames: int, depth: int, layer: str) -> None:
    """A ``frames``-frame model needs ``frames // 2 + 1`` slices (mirror-padded ends)."""
    from cemkit.models.frames import min_slices

    if depth < min_slices(frames):
        raise InputError(f"the model takes {frames} slices ({frames}fm) and needs at least {min_slices(frames)}, "
                         f"but layer {layer!r} has {depth}: use a 1fm model or a layer with more slices")


def predict_layer(volume, model: str, output: Path, *, tta: int | None = None, threshold: float | None = None,
                  orthoplane: bool | None = None, pixel_size_nm: float | None = None,
                  on_event: Callable[[Event], None] = _no_event, cancel: threading.Event | None = None,
                  models: Sequence[Any] | None = None) -> PredictResult:
    """Predict ``volume`` (a :class:`LayerVolume`) with ``model`` into the new folder ``output``.

    The settings left ``None`` keep ``conf/predict.yaml``'s defaults. ``models`` (already loaded) skips
    loading ``model``. Returns the finished folder and its zarr outputs.
    """
    from cemkit.predict import PredictSettings, run_prediction

    output = Path(output)
    changes = {k: v for k, v in {"tta": tta, "threshold": threshold, "orthoplane": orthoplane}.items()
               if v is not None}
    settings = PredictSettings.defaults(**changes, voxel_size=pixel_size_nm or None, output_format="zarr",
                                        resume=False, progress=False, overlays=0)
    settings.check(None)
    if output.exists():
        raise InputError(f"{output}: exists; choose a new output folder")
    check_cancel(cancel)
    on_event({"kind": "status", "text": "loading the model"})
    models = list(models) if models is not None else load_models(model)
    for m in models:
        check_depth(m.frames, volume.shape[0], volume.name)
    partial = partial_folder(output)
    shutil.rmtree(partial, ignore_errors=True)

    def monitor(stage: str, done: int, total: int) -> None:
        check_cancel(cancel)
        on_event({"kind": "progress", "stage": stage, "done": done, "total": total})

    try:
        record = run_prediction(volume, partial, models=models, settings=settings, monitor=monitor)
        check_cancel(cancel)
        _publish(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    labels = output / "labels.zarr"
    return PredictResult(output, output / "probabilities.zarr", labels if labels.exists() else None, record)


@dataclass
class AdaptResult:
    folder: Path
    frames: int
    slices: list[int]
    result: dict = field(repr=False)


def _adapt_monitor(on_event: Callable[[Event], None], cancel: threading.Event | None):
    """A Lightning callback that reports the loss and the validation IoU, and stops on ``cancel``."""
    import pytorch_lightning as pl

    def value(trainer, key: str) -> float | None:
        v = trainer.callback_metrics.get(key)
        return None if v is None else float(v)

    class AdaptMonitor(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            check_cancel(cancel)
            on_event({"kind": "train", "step": int(trainer.global_step), "total": int(trainer.max_steps),
                      "loss": value(trainer, "train/loss")})

        def on_validation_end(self, trainer, pl_module) -> None:
            on_event({"kind": "val", "step": int(trainer.global_step), "iou": value(trainer, "val/iou")})

    return AdaptMonitor()


def write_training_data(volume, labels: Any, slices: Sequence[int], frames: int, folder: Path,
                        not_sure: int | None = None) -> list[dict[str, Any]]:
    """Write the labelled slices of the (z, y, x) ``labels`` (with the context a ``frames``-frame model reads)
    as tif stacks.

    The images are written as uint8 through ``volume.as_uint8()``, the intensity mapping predict uses
    on the same layer. Returns the ``data.sources`` entries (images, labels, label_slices).
    """
    from cemkit.io import write_tif_stack

    folder.mkdir(parents=True, exist_ok=True)
    src = volume.as_uint8()
    entries = []
    for i, (z0, z1) in enumerate(label_blocks(slices, volume.shape[0], frames // 2)):
        zs = [z for z in slices if z0 <= z < z1]
        lab = np.stack([training_labels(np.asarray(labels[z]), not_sure) for z in zs])
        entries.append({"images": str(write_tif_stack(folder / f"block{i}_images.tif", src[z0:z1])),
                        "labels": str(write_tif_stack(folder / f"block{i}_labels.tif", lab)),
                        "label_slices": [z - z0 for z in zs]})
    return entries


def adapt_config(model: str | None, entries: list[dict[str, Any]], output: Path, minutes: float, frames: int,
                 pixel_size_nm: float | None = None, overrides: Sequence[str] = ()):
    """The ``finetune`` config of ``cemkit finetune +experiment=adapt`` for these data (the same composition).

    ``overrides`` come last and win (tests replace the time budget by a step count).
    """
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import cemkit.zoo  # noqa: F401  (registers the resolver for zoo:NAME settings)

    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        cfg = compose(config_name="finetune",
                      overrides=["+experiment=adapt", f"trainer.max_time={float(minutes) * 60.0}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.model.init = str(model) if model else "none"
    cfg.model.frames = int(frames)
    cfg.output = str(output)
    cfg.data.ignore_value = IGNORE_VALUE
    cfg.data.voxel_size = pixel_size_nm or None
    if len(entries) == 1:
        cfg.data.images, cfg.data.labels = entries[0]["images"], entries[0]["labels"]
        cfg.data.label_slices = entries[0]["label_slices"]
    else:
        cfg.data.sources = [dict(e, voxel_size=pixel_size_nm or None) for e in entries]
    OmegaConf.set_struct(cfg, True)
    return cfg


def adapt_layers(volume, labels: Any, model: str | None, output: Path, *, minutes: float = 5.0, frames: int = 1,
                 slices: Sequence[int] | None = None, not_sure: int | None = None,
                 pixel_size_nm: float | None = None, labels_name: str = "labels",
                 on_event: Callable[[Event], None] = _no_event, cancel: threading.Event | None = None,
                 overrides: Sequence[str] = ()) -> AdaptResult:
    """Adapt ``model`` (None: random init) to the painted slices of ``labels`` for ``minutes``, into ``output``.

    Checks come first (layer shapes, painted slices, model file, frames), so bad input writes nothing.
    ``overrides``: extra finetune config overrides (tests use tiny settings).
    """
    from cemkit.finetune.initialization import init_file
    from cemkit.finetune.orchestrate import run_finetune
    from cemkit.napari_plugin.layer_data import check_same_grid

    output = Path(output)
    lab_shape = tuple(labels.shape) if labels.ndim == 3 else (1, *labels.shape)
    check_same_grid(volume.shape, lab_shape, volume.name, labels_name)
    if labels.ndim == 2:
        labels = np.asarray(labels)[None]
    zs = painted_slices(labels, slices)
    if not minutes > 0:
        raise InputError(f"the time budget must be > 0 minutes, got {minutes}")
    check_depth(frames, volume.shape[0], volume.name)
    if model:
        path = init_file(model, frames)
        load_models(str(path))  # a corrupt file fails here, before anything is written
    if output.exists():
        raise InputError(f"{output}: exists; choose a new output folder")
    check_cancel(cancel)
    partial = partial_folder(output)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        on_event({"kind": "status", "text": f"writing {len(zs)} labelled slice(s)"})
        entries = write_training_data(volume, labels, zs, frames, partial / "data", not_sure)
        cfg = adapt_config(model, entries, partial, minutes, frames, pixel_size_nm, overrides)
        on_event({"kind": "status", "text": f"adapting on slices {zs} for {minutes:g} min"})
        results = run_finetune(cfg, callbacks=[_adapt_monitor(on_event, cancel)])
        check_cancel(cancel)
        (partial / "adapt.json").write_text(json.dumps(
            {"model": str(model) if model else None, "slices": zs, "frames": frames, "minutes": minutes,
             "not_sure_label": not_sure, "pixel_size_nm": pixel_size_nm, "layer": volume.name}, indent=2))
        _publish(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return AdaptResult(output, frames, zs, results[frames])
