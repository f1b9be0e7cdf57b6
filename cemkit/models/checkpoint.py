"""Segmentation-model checkpoints: what ``cemkit finetune`` writes and how every consumer reads it.

A finetune checkpoint is a Lightning checkpoint (``best.ckpt`` / ``last.ckpt``) whose
``state_dict`` holds the model under the ``model.`` prefix and which carries one extra plain-python
entry, ``"cemkit"``::

    {"format": "cemkit-segmenter", "version": 1,
     "model": {arch, frames, num_classes, decoder_width, dilations, dilated_max_stride, final_relu},
     "meta":  {frames, num_classes, norms: [mean, std], arch, class_names, init, ...}}

``hyper_parameters`` holds the run's settings as plain dicts too, so every file loads with
``torch.load(weights_only=True)``. :func:`save_segmenter` writes the same entry plus a bare
``state_dict`` (no optimizer) for export and the model zoo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cemkit.errors import InputError
from cemkit.io.atomic import atomic_path

FORMAT = "cemkit-segmenter"
VERSION = 1
MODEL_PREFIX = "model."
CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")  # what a finetune model folder holds, in order of preference


def checkpoint_in(folder: str | os.PathLike) -> Path | None:
    """The checkpoint a finetune model folder (``output/{k}fm``) stands for: ``best.ckpt``, else
    ``last.ckpt``; ``None`` when it holds neither."""
    for name in CHECKPOINT_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def segmenter_entry(model, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``"cemkit"`` entry of a checkpoint for ``model`` (plain python only)."""
    meta = dict(meta)
    meta.setdefault("frames", model.frames)
    meta.setdefault("num_classes", model.num_classes)
    meta.setdefault("arch", model.arch)
    if meta.get("norms") is not None:
        meta["norms"] = [float(v) for v in meta["norms"]]
    return {"format": FORMAT, "version": VERSION, "model": dict(model.config), "meta": meta}


def is_segmenter_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a cemkit segmentation checkpoint."""
    return isinstance(obj, dict) and isinstance(obj.get("cemkit"), dict) and obj["cemkit"].get("format") == FORMAT


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with an :class:`InputError` naming the file on failure.

    ``mmap=True`` maps the tensors instead of reading them (for a look at a big checkpoint's metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # pickle / zip errors of all kinds
        raise InputError(f"{path}: cannot read as a weights-only torch checkpoint ({exc})") from exc


def segmenter_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta`` of a segmenter checkpoint (``frames``, ``pixel_size_nm``, ...), read without loading its
    tensors (mapped); ``None`` for another kind of checkpoint (encoder weights).

    Raises
    ------
    InputError
        A missing or unreadable file (named).
    """
    obj = read_checkpoint(path, mmap=True)
    if not is_segmenter_checkpoint(obj):
        return None
    return dict(obj["cemkit"].get("meta") or {})


def segmenter_from_checkpoint(ckpt: dict[str, Any], where: str = "<checkpoint>"):
    """Build the model stored in a loaded checkpoint dict; returns ``(model, meta)``."""
    from cemkit.models.deepem3d import DeepEM3DSegmenter

    if not is_segmenter_checkpoint(ckpt):
        raise InputError(f"{where}: not a cemkit segmentation checkpoint (no 'cemkit' entry of format {FORMAT!r})")
    entry = ckpt["cemkit"]
    if int(entry.get("version", 0)) > VERSION:
        raise InputError(f"{where}: checkpoint version {entry.get('version')} is newer than this cemkit supports ({VERSION})")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict):
        raise InputError(f"{where}: checkpoint has no state_dict")
    if any(k.startswith(MODEL_PREFIX) for k in sd):
        sd = {k[len(MODEL_PREFIX):]: v for k, v in sd.items() if k.startswith(MODEL_PREFIX)}
    model = _build_quietly(DeepEM3DSegmenter, entry["model"])
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{where}: state_dict does not match the stored model description: {exc}") from exc
    model.eval()
    return model, dict(entry.get("meta") or {})


def _build_quietly(cls, config: dict[str, Any]):
    """Build a model from its config without timm downloading anything."""
    return cls.from_config(dict(config))


def load_segmenter(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a finetuned segmentation model (``best.ckpt``, ``last.ckpt`` or a :func:`save_segmenter` file).

    Parameters
    ----------
    path
        Checkpoint file. A folder holding ``best.ckpt``, or a finetune output folder with a single
        ``{k}fm/best.ckpt``, is accepted too.
    map_location
        Device for the tensors.

    Returns
    -------
    (DeepEM3DSegmenter, dict)
        The model in eval mode -- ``model(x)`` maps ``(B, frames, H, W)`` normalised input to logits
        ``(B, C, H, W)``; ``model.predict_proba(x)`` gives probabilities (binary: 1 foreground channel)
        -- and ``meta`` with ``frames``, ``num_classes``, ``norms`` (mean, std of intensities / 255)
        and ``arch``.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / "best.ckpt"] if (path / "best.ckpt").is_file() else sorted(path.glob("*fm/best.ckpt"))
        if len(found) != 1:
            raise InputError(f"{path}: expected best.ckpt or exactly one {{k}}fm/best.ckpt, found {len(found)} "
                             "(give the checkpoint file)")
        path = found[0]
    ckpt = read_checkpoint(path, map_location)
    model, meta = segmenter_from_checkpoint(ckpt, str(path))
    model.to(map_location)
    meta.setdefault("path", str(path))
    return model, meta


def save_segmenter(path: str | os.PathLike, model, meta: dict[str, Any]) -> Path:
    """Write a bare segmenter file (model description, meta and weights; no optimizer state).

    Written to a temporary name and renamed, so an interrupted write leaves no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"cemkit": segmenter_entry(model, meta),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
