"""Which image slice each label slice belongs to, when labels may cover only some slices.

Three cases, in this order:

- ``data.label_slices=[z, ...]`` given: label slice ``i`` is image slice ``z_i`` (any layout; the
  one way for a tif stack / h5 / zarr of labels with fewer slices than the images).
- As many label slices as image slices: paired in order (natural sort order for folders), as before.
- Two folders of 2D files with fewer labels: paired by file name -- the same stem (``vnc_03.png`` with
  ``vnc_03.png``), else the same last number in the stem (CDeep3M's ``images.012.png`` with
  ``mitos_3D.012.png``).

Anything else is an :class:`~cemkit.errors.InputError` that says how to pair them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cemkit.errors import ConfigError, InputError

_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def stem_number(stem: str) -> int | None:
    """The last run of digits in a file stem, as an int (None without digits).

    Examples
    --------
    >>> stem_number("mitos_3D.012"), stem_number("vnc_07"), stem_number("slice")
    (12, 7, None)
    """
    m = _LAST_NUMBER.search(stem)
    return None if m is None else int(m.group(1))


def pair_by_name(image_files: Sequence[Path], label_files: Sequence[Path], where: str) -> np.ndarray:
    """Image index of each label file: same stem, else the same last number in the stem.

    Raises
    ------
    InputError
        A label file with no image of that name (or number), or a number shared by several images.
    """
    by_stem = {Path(f).stem: i for i, f in enumerate(image_files)}
    numbers: dict[int, list[int]] = {}
    for i, f in enumerate(image_files):
        k = stem_number(Path(f).stem)
        if k is not None:
            numbers.setdefault(k, []).append(i)
    out = []
    for f in label_files:
        stem = Path(f).stem
        if stem in by_stem:
            out.append(by_stem[stem])
            continue
        k = stem_number(stem)
        found = numbers.get(k, []) if k is not None else []
        if len(found) != 1:
            why = "no image file has that name or number" if not found else \
                f"{len(found)} image files have the number {k}"
            raise InputError(f"{where}.labels: label file {f} has no image to pair with: {why} in "
                             f"{Path(image_files[0]).parent}")
        out.append(found[0])
    z = np.asarray(out, dtype=np.int64)
    if len(set(out)) != len(out):
        dup = [Path(label_files[i]).name for i in range(len(out)) if out.count(out[i]) > 1]
        raise InputError(f"{where}.labels: label files {dup} pair with the same image slice")
    return z


def label_positions(images: Any, labels: Any, label_slices: Sequence[int] | None, where: str) -> np.ndarray:
    """The image z of each label slice of ``labels`` (volumes of :func:`cemkit.io.open_volume`).

    Parameters
    ----------
    images, labels
        The opened image and label volumes; folders of 2D files carry ``files``.
    label_slices
        ``data.label_slices``: the image z of each label slice, or None.
    where
        The config key of the pair (``data``, ``data.sources[0]``), named in errors.

    Raises
    ------
    ConfigError
        ``label_slices`` of the wrong length, out of range or repeated.
    InputError
        Fewer (or more) label slices than image slices that cannot be paired by name.
    """
    n, m = int(images.shape[0]), int(labels.shape[0])
    if label_slices is not None:
        zs = [int(z) for z in label_slices]
        key = f"{where}.label_slices"
        if len(zs) != m:
            raise ConfigError(f"{key} lists {len(zs)} slices but {labels.path} holds {m} label slices")
        if any(not 0 <= z < n for z in zs) or len(set(zs)) != len(zs):
            raise ConfigError(f"{key} must list distinct image slices in 0..{n - 1} ({images.path} has {n}), "
                              f"got {zs}")
        return np.asarray(zs, dtype=np.int64)
    if m == n:
        return np.arange(n, dtype=np.int64)
    image_files, label_files = getattr(images, "files", None), getattr(labels, "files", None)
    if image_files is not None and label_files is not None and len(image_files) > 1:
        return pair_by_name(image_files, label_files, where)
    raise InputError(f"{where}: {labels.path} holds {m} label slices but {images.path} holds {n} image slices: "
                     f"give {where}.label_slices=[z, ...] (the image slice of each label slice), or use folders "
                     f"of 2D files, which pair by file name")
