"""The labelled volume of a study and the slice subsets its runs train and test on.

The whole volume is read once (converted to uint8 once, so every subset shares one intensity
scaling), checked (binary labels 0/1 or 0/255), and each subset a run needs is written as a pair
of ``.npy`` volumes that ``cemkit finetune`` (``data.images`` / ``data.labels``) and
``cemkit predict`` (``input``) read like any other volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cemkit.errors import InputError
from cemkit.io import open_volume
from cemkit.io.writers import write_npy

log = logging.getLogger(__name__)


@dataclass
class StudyVolume:
    """uint8 images and binary (0/1) labels, z-y-x."""

    image: np.ndarray
    label: np.ndarray
    images_path: str
    labels_path: str

    @property
    def depth(self) -> int:
        return int(self.image.shape[0])


def read_study_volume(images: Any, labels: Any, image_key: str | None = None,
                      label_key: str | None = None) -> StudyVolume:
    """Read ``data.images`` / ``data.labels`` (anything :func:`cemkit.io.open_volume` opens).

    Raises
    ------
    InputError
        A missing file, an image / label size mismatch, or labels other than 0/1 or 0/255.
    """
    for what, path in (("data.images", images), ("data.labels", labels)):
        if not Path(str(path)).exists():
            raise InputError(f"{path}: {what} not found")
    ivol, lvol = open_volume(str(images), key=image_key), open_volume(str(labels), key=label_key)
    if tuple(ivol.shape) != tuple(lvol.shape):
        raise InputError(f"image/label size mismatch: {images} is {tuple(ivol.shape)} (z, y, x) but {labels} is "
                         f"{tuple(lvol.shape)}")
    image = np.ascontiguousarray(ivol.as_uint8()[:])
    raw = np.asarray(lvol[:])
    values = set(np.unique(raw).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        shown = sorted(values)[:10]
        raise InputError(f"{labels}: a study scores binary labels (0/1 or 0/255), found values {shown}")
    log.info("study volume %s: %d slices of %dx%d", images, image.shape[0], image.shape[1], image.shape[2])
    return StudyVolume(image, (raw > 0).astype(np.uint8), str(images), str(labels))


def write_subset(vol: StudyVolume, slices: list[int], folder: Path) -> tuple[Path, Path]:
    """Write the ``slices`` of ``vol`` as ``folder/images.npy`` and ``folder/labels.npy`` (atomically).

    Existing files with the same content are kept (a resumed study rewrites nothing).
    """
    folder.mkdir(parents=True, exist_ok=True)
    idx = np.asarray(slices, dtype=np.int64)
    paths = []
    for name, arr in (("images.npy", vol.image[idx]), ("labels.npy", vol.label[idx])):
        path = folder / name
        if not (path.is_file() and _same(path, arr)):
            write_npy(path, arr)
        paths.append(path)
    return paths[0], paths[1]


def _same(path: Path, arr: np.ndarray) -> bool:
    try:
        old = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return old.shape == arr.shape and old.dtype == arr.dtype and bool(np.array_equal(old, arr))
