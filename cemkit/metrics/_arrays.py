"""Input checks shared by the metric modules (shapes, label and mask conversion)."""

from __future__ import annotations

import numpy as np


def check_same_shape(pred: np.ndarray, target: np.ndarray, names: tuple[str, str] = ("pred", "target")) -> None:
    """Raise ``ValueError`` naming both shapes when ``pred`` and ``target`` differ in shape."""
    if pred.shape != target.shape:
        raise ValueError(
            f"shape mismatch: {names[0]} has shape {tuple(pred.shape)}, {names[1]} has shape {tuple(target.shape)}"
        )


def as_mask(array, name: str = "array") -> np.ndarray:
    """Return ``array != 0`` as a bool array.

    Integer and bool arrays are accepted as they are (any non-zero value is foreground, so 0/1 and
    0/255 masks both work). Float arrays are accepted only when every value is 0 or 1: a float array
    with other values is a probability map and must be thresholded by the caller.
    """
    a = np.asarray(array)
    if a.dtype == bool:
        return a
    if a.dtype.kind in "iu":
        return a != 0
    if a.dtype.kind == "f":
        mask = a != 0
        if not np.all(a[mask] == 1):
            raise ValueError(
                f"{name} is a float array with values other than 0 and 1; threshold probabilities first "
                "(e.g. `probabilities >= 0.5`)"
            )
        return mask
    raise ValueError(f"{name} must be a bool or integer array, got dtype {a.dtype}")


def as_labels(array, name: str = "array") -> np.ndarray:
    """Return a non-negative integer label array (bool -> 0/1; floats must hold whole numbers)."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"{name} is a float array with non-integer values; labels must be integers")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label array, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{name} has negative labels (min {a.min()}); labels must be >= 0")
    return a


def compact_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Map large label ids to ``0..k-1`` when they would make id-indexed tables needlessly big.

    Returns ``(compact, ids)`` with ``ids[compact] == values``; when the ids are already small
    (max id <= 2 * size + 1024) the input comes back unchanged with ``ids=None``.
    Label 0 stays 0 whenever it occurs, since ``ids`` is sorted.
    """
    v = values.astype(np.int64, copy=False)
    if v.size == 0 or int(v.max()) <= 2 * v.size + 1024:
        return v, None
    ids, inverse = np.unique(v, return_inverse=True)
    if ids[0] != 0:  # keep 0 meaning background
        ids = np.concatenate([[0], ids])
        inverse = inverse + 1
    return inverse.reshape(v.shape).astype(np.int64), ids
