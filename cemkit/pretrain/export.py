"""Encoder-only export of a ``cemkit pretrain`` checkpoint (called by ``cemkit export``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from cemkit.errors import InputError
from cemkit.io.atomic import atomic_path
from cemkit.models.encoders import (
    ENCODER_FORMAT,
    ENCODER_FORMAT_VERSION,
    read_encoder_weights,
)

log = logging.getLogger(__name__)


def encoder_export_dict(ckpt_path: str | os.PathLike, corpus_id: str | None = None) -> dict:
    """The ``cemkit-encoder`` dict of the query encoder in a pretrain checkpoint.

    ``{"format": "cemkit-encoder", "version": 1, "arch", "in_chans", "norms": [mean, std],
    "corpus_id", "state_dict"}``; only tensors and plain Python values, so the file loads with
    ``torch.load(weights_only=True)``.
    """
    weights = read_encoder_weights(ckpt_path)
    if weights.meta.get("layout") not in ("cemkit-pretrain", "moco"):
        raise InputError(f"{ckpt_path}: not a pretrain checkpoint (layout {weights.meta.get('layout')}); "
                         "expected a `cemkit pretrain` .ckpt or a MoCo checkpoint")
    if not weights.arch:
        raise InputError(f"{ckpt_path}: the checkpoint does not say which architecture it holds")
    return {
        "format": ENCODER_FORMAT,
        "version": ENCODER_FORMAT_VERSION,
        "arch": weights.arch,
        "in_chans": int(weights.in_chans) if weights.in_chans is not None else None,
        "norms": list(weights.norms) if weights.norms is not None else None,
        "corpus_id": corpus_id if corpus_id is not None else weights.meta.get("corpus_id"),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in weights.state_dict.items()},
    }


def export_encoder(ckpt_path: str | os.PathLike, out_path: str | os.PathLike, corpus_id: str | None = None) -> Path:
    """Write the encoder of a pretrain checkpoint as a ``cemkit-encoder`` file (atomically).

    Parameters
    ----------
    ckpt_path
        ``cemkit pretrain`` checkpoint (e.g. ``OUTPUT/checkpoints/last.ckpt``) or a MoCo
        checkpoint that names its ``arch``.
    out_path
        Encoder file to write (``.pth``); its folder is created.
    corpus_id
        Overrides the corpus identifier stored in the checkpoint.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    blob = encoder_export_dict(ckpt_path, corpus_id)
    out = Path(out_path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(blob, tmp)
    log.info("exported %s encoder (%d tensors, in_chans %s, norms %s) to %s", blob["arch"], len(blob["state_dict"]),
             blob["in_chans"], blob["norms"], out)
    return out
