"""Which slices a k-frame model reads (1fm / 3fm / 5fm): the input contract of training and prediction.

Slices ``z - k//2 .. z + k//2`` become the input channels of the prediction for slice ``z``; the
volume ends are mirror-padded (``-1 -> 1``, ``n -> n-2``), as in CDeep3M.
"""

from __future__ import annotations

import numpy as np


def min_slices(frames: int) -> int:
    """Fewest slices a volume needs for ``frames``-frame inputs with mirror padding (``frames // 2 + 1``)."""
    return frames // 2 + 1


def frame_indices(z: int, n_slices: int, frames: int) -> np.ndarray:
    """Slice indices of the ``frames``-slice input centred on slice ``z``, mirror-padded at the ends.

    Parameters
    ----------
    z
        Centre slice, ``0 <= z < n_slices``.
    n_slices
        Number of slices of the volume.
    frames
        Odd number of input slices (1, 3, 5, ...).

    Returns
    -------
    numpy.ndarray
        ``frames`` int indices; out-of-range neighbours are reflected without repeating the edge
        slice: ``frame_indices(0, 10, 5) == [2, 1, 0, 1, 2]``, ``frame_indices(9, 10, 5) == [7, 8, 9, 8, 7]``.

    Raises
    ------
    ValueError
        ``frames`` even or < 1, ``z`` out of range, or too few slices to mirror (``n_slices < frames // 2 + 1``).
    """
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"frames must be odd and >= 1, got {frames}")
    if not 0 <= z < n_slices:
        raise ValueError(f"slice {z} out of range for {n_slices} slices")
    half = frames // 2
    if n_slices < min_slices(frames):
        raise ValueError(f"{frames} frames need at least {min_slices(frames)} slices, the volume has {n_slices}")
    idx = np.arange(z - half, z + half + 1)
    idx = np.where(idx < 0, -idx, idx)
    idx = np.where(idx >= n_slices, 2 * (n_slices - 1) - idx, idx)
    return idx.astype(np.int64)
