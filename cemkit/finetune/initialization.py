"""What ``model.init=`` points at: nothing, encoder weights, or a finetuned segmenter.

- ``none``: random initialisation (timm's ImageNet weights with ``model.encoder.timm_pretrained=true``).
- a path to encoder weights: anything :func:`cemkit.models.encoders.read_encoder_weights` reads
  (cemkit export, CEM500K / cellemnet MoCo ``.pth.tar``, SwAV, timm / torchvision state dicts).
- a path to a finetuned cemkit checkpoint (``best.ckpt``), or a finetune output folder
  (``DIR/{k}fm/best.ckpt`` is picked for ``k`` frames): domain adaptation -- the whole model
  continues training on the new data with a fresh optimizer, schedule and step budget.
- ``zoo:NAME``: resolved to a local file by the model zoo (:mod:`cemkit.models.references`), then as above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cemkit.errors import InputError
from cemkit.models.references import is_reference, resolve_reference

log = logging.getLogger(__name__)


@dataclass
class InitSource:
    """A resolved ``model.init``: ``kind`` is ``none``, ``encoder`` or ``segmenter``."""

    kind: str
    path: Path | None = None
    weights: Any = None            # EncoderWeights for kind == "encoder"
    checkpoint: dict | None = None  # loaded segmenter checkpoint for kind == "segmenter"
    meta: dict = field(default_factory=dict)


def _segmenter_file(folder: Path, frames: int) -> Path:
    for cand in (folder / f"{frames}fm" / "best.ckpt", folder / "best.ckpt"):
        if cand.is_file():
            return cand
    raise InputError(f"{folder}: model.init folder holds no {frames}fm/best.ckpt or best.ckpt "
                     "(give a finetune output folder or a checkpoint file)")


def init_file(spec: Any, frames: int) -> Path | None:
    """The file ``model.init`` names for a ``frames``-frame model (a zoo reference resolved, a finetune output
    folder's ``{k}fm/best.ckpt``), or None for random init.

    Raises
    ------
    InputError
        A missing file, or a folder without a model for ``frames``.
    """
    text = "none" if spec is None else str(spec).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    path = resolve_reference(text) if is_reference(text) else Path(text).expanduser()
    if path.is_dir():
        path = _segmenter_file(path, frames)
    if not path.exists():
        raise InputError(f"{path}: model.init file not found")
    return path


def resolve_init(spec: Any, frames: int) -> InitSource:
    """Resolve ``model.init`` for a ``frames``-frame model.

    Raises
    ------
    InputError
        A missing or unreadable file, or a file that is neither encoder weights nor a segmenter.
    """
    from cemkit.models.checkpoint import is_segmenter_checkpoint, read_checkpoint

    path = init_file(spec, frames)
    if path is None:
        return InitSource("none")
    obj = read_checkpoint(path)
    if is_segmenter_checkpoint(obj):
        return InitSource("segmenter", path, checkpoint=obj, meta=dict(obj["cemkit"].get("meta") or {}))
    from cemkit.models.encoders import read_encoder_weights

    weights = read_encoder_weights(obj)
    weights.meta["source"] = str(path)
    return InitSource("encoder", path, weights=weights)


def init_pixel_size(spec: Any, frames: int) -> float | None:
    """The pixel size (nm) a segmenter ``model.init`` was trained at, or None (no init, encoder weights, an
    older checkpoint without one). Adapting brings the new data to it, as predict does.

    Raises
    ------
    InputError
        As :func:`resolve_init`.
    """
    from cemkit.models.checkpoint import segmenter_meta

    path = init_file(spec, frames)
    meta = None if path is None else segmenter_meta(path)
    value = None if meta is None else meta.get("pixel_size_nm")
    return None if value is None else float(value)
