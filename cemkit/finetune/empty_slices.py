"""Label slices that hold no foreground at all, among slices that do: unannotated, or truly empty?

A label image that is all background where the other slices of the same data hold 4-7 % mitochondria is
almost always a slice nobody annotated (a blank file exported with the rest), not a slice without
organelles: two of the twelve labelled sections of the VNC ssTEM stack in ``../shared/data`` are such
blanks. Trained on as background, one blank slice teaches the model that every mitochondrion on it is
background; adapting from two slices, it undoes the other one. ``data.empty_slices`` says what to do:

- ``auto`` (default): ``skip`` for labels that are a folder of slice files (each file made on its own, so a
  blank one is most likely not annotated), ``train`` for a stack or container (tif, h5, zarr: labelled as
  a volume, where a slice without the organelle is real);
- ``skip``: such slices give 3fm/5fm context but are not trained or validated on; a warning names them;
- ``train``: train on them as background (a slice labelled empty on purpose, to teach negatives).
"""

from __future__ import annotations

import logging

import numpy as np

from cemkit.errors import ConfigError
from cemkit.finetune.data import LabelledVolume
from cemkit.finetune.losses import IGNORE_INDEX

log = logging.getLogger(__name__)

POLICIES = ("auto", "skip", "train")


def empty_label_slices(vol: LabelledVolume) -> list[int]:
    """The labelled z of ``vol`` whose labels are background (0) wherever they are labelled.

    Examples
    --------
    >>> lab = np.zeros((3, 2, 2), np.uint8); lab[1, 0, 0] = 1; lab[2] = IGNORE_INDEX
    >>> empty_label_slices(LabelledVolume(np.zeros_like(lab), lab, np.array([0, 1]), "v"))
    [0]
    """
    out = []
    for z in vol.slices:
        known = vol.label[z][vol.label[z] != IGNORE_INDEX]
        if known.size and not known.any():
            out.append(int(z))
    return out


def resolve_policy(policy: str, labels_are_files: bool, key: str = "data.empty_slices") -> str:
    """``skip`` or ``train`` for ``policy`` (``auto``: skip for a folder of label files, else train).

    Raises
    ------
    ConfigError
        Not one of ``auto``, ``skip``, ``train``.

    Examples
    --------
    >>> resolve_policy("auto", True), resolve_policy("auto", False), resolve_policy("train", True)
    ('skip', 'train', 'train')
    """
    if policy not in POLICIES:
        raise ConfigError(f"{key} must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "auto":
        return "skip" if labels_are_files else "train"
    return policy


def apply_empty_slice_policy(vol: LabelledVolume, policy: str, key: str = "data.empty_slices") -> LabelledVolume:
    """``vol`` without its empty label slices (``skip``), or unchanged (``train``).

    Nothing is dropped when no labelled slice holds foreground (then nothing says the empty ones are
    unannotated).

    Raises
    ------
    ConfigError
        ``policy`` is not ``skip`` or ``train``.
    """
    if policy not in ("skip", "train"):
        raise ConfigError(f"{key} must be one of {', '.join(POLICIES)}, got {policy!r}")
    empty = empty_label_slices(vol)
    if policy == "train" or not empty or len(empty) == len(vol.slices):
        return vol
    log.warning("%s: label slice(s) z=%s hold no foreground while the other labelled slices do: taken as "
                "not annotated, not trained on (%s=train trains on them as background)",
                vol.name, ", ".join(map(str, empty)), key)
    dropped = set(empty)
    return vol.subset([z for z in vol.slices if z not in dropped])
