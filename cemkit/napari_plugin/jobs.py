"""What the Predict and Adapt widgets run, without Qt: the CLI's stage functions on layer data.

Predict calls :func:`cemkit.predict.run_prediction` (what ``cemkit predict`` calls) on a
:class:`~cemkit.napari_plugin.layer_data.LayerVolume`; Adapt composes the ``finetune`` config with
``+experiment=adapt`` (what ``cemkit finetune +experiment=adapt`` composes) and calls
:func:`cemkit.finetune.orchestrate.run_finetune`. Both write their output folder atomically
(:func:`written_to`, on :func:`cemkit.io.atomic.atomic_path`): a cancelled or failed run leaves nothing behind. Progress goes to
``on_event(dict)``; ``cancel`` (a :class:`threading.Event`) stops a run between two slabs or two steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cemkit.errors import InputError, RunCancelled
from cemkit.io.atomic import atomic_path
from cemkit.napari_plugin.layer_data import (
    IGNORE_VALUE,
    label_blocks,
    labels_on_grid,
    painted_slices,
    training_labels,
)

log = logging.getLogger(__name__)

Event = dict[str, Any]


def _no_event(event: Event) -> None:
    return None


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise RunCancelled("cancelled: nothing was written")


def next_free(root: Path, stem: str) -> Path:
    """``root/stem-1``, ``root/stem-2``, ...: the first that neither exists nor is being written
    (:func:`cemkit.io.atomic.temporary_sibling` names: ``.NAME.tmp-*``)."""
    n = 1
    while (root / f"{stem}-{n}").exists() or any(root.glob(f".{stem}-{n}.tmp-*")):
        n += 1
    return root / f"{stem}-{n}"


@contextlib.contextmanager
def written_to(final: Path) -> Iterator[Path]:
    """:func:`~cemkit.io.atomic.atomic_path` for a run's output folder: yields the hidden folder to write; when
    the block has finished, the paths its json records hold are pointed at ``final`` and it is renamed there."""
    with atomic_path(final) as tmp:
        yield tmp
        for path in tmp.rglob("*.json"):
            text = path.read_text()
            if str(tmp) in text:
                path.write_text(text.replace(str(tmp), str(final)))


@dataclass
class PredictResult:
    folder: Path
    probabilities: Path
    labels: Path | None
    record: dict = field(repr=False)


def model_frames(model: str) -> dict[Path, int]:
    """The checkpoint files a model spec names (folder, ``.ckpt`` or ``zoo:NAME``, resolved as ``cemkit predict``
    resolves ``checkpoint=``), each with its frame count, read from its metadata without loading it.

    Raises
    ------
    InputError
        No model given; a missing or unreadable file, or one that is not a segmentation model (named).
    """
    from cemkit.models.checkpoint import segmenter_meta
    from cemkit.predict import resolve_checkpoints

    if not str(model or "").strip():
        raise InputError("choose a model: a cemkit finetune output folder, a .ckpt file or zoo:NAME")
    frames = {}
    for path in resolve_checkpoints(str(model)):
        meta = segmenter_meta(path)
        if meta is None:
            raise InputError(f"checkpoint {path}: not a cemkit segmentation model (encoder weights?); give a "
                             "finetune output folder or its best.ckpt")
        frames[path] = int(meta.get("frames", 1))
    return frames


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

    The settings left ``None`` keep ``conf/predict.yaml``'s defaults. ``models`` (already built
    :class:`~cemkit.predict.Segmenter` objects) replace ``model``. Returns the finished folder and its zarr outputs.
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
    checkpoints = None if models is not None else model_frames(model)
    for frames in (checkpoints.values() if checkpoints is not None else (m.frames for m in models)):
        check_depth(frames, volume.shape[0], volume.name)

    def monitor(stage: str, done: int, total: int) -> None:
        check_cancel(cancel)
        on_event({"kind": "progress", "stage": stage, "done": done, "total": total})

    with written_to(output) as partial:
        record = run_prediction(volume, partial, None if checkpoints is None else list(checkpoints), models=models,
                                settings=settings, monitor=monitor)
        check_cancel(cancel)
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
    from cemkit.finetune.initialization import resolve_init
    from cemkit.finetune.orchestrate import run_finetune
    output = Path(output)
    labels = labels_on_grid(labels, volume.shape, volume.name, labels_name)
    zs = painted_slices(labels, slices)
    if not minutes > 0:
        raise InputError(f"the time budget must be > 0 minutes, got {minutes}")
    check_depth(frames, volume.shape[0], volume.name)
    resolve_init(model, frames)  # model.init's own check: a missing or corrupt file fails before anything is written
    if output.exists():
        raise InputError(f"{output}: exists; choose a new output folder")
    check_cancel(cancel)
    with written_to(output) as partial:
        on_event({"kind": "status", "text": f"writing {len(zs)} labelled slice(s)"})
        entries = write_training_data(volume, labels, zs, frames, partial / "data", not_sure)
        cfg = adapt_config(model, entries, partial, minutes, frames, pixel_size_nm, overrides)
        on_event({"kind": "status", "text": f"adapting on slices {zs} for {minutes:g} min"})
        results = run_finetune(cfg, callbacks=[_adapt_monitor(on_event, cancel)])
        check_cancel(cancel)
        (partial / "adapt.json").write_text(json.dumps(
            {"model": str(model) if model else None, "slices": zs, "frames": frames, "minutes": minutes,
             "not_sure_label": not_sure, "pixel_size_nm": pixel_size_nm, "layer": volume.name}, indent=2))
    return AdaptResult(output, frames, zs, results[frames])
