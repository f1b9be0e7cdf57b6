"""Tiling rule: cut a 2D cross-section into non-overlapping square patches.

Along each axis of length ``size`` with patch side ``P``:

* ``size // P`` full tiles start at ``0, P, 2P, ...``;
* a remainder strip ``r = size % P`` is kept when ``2 * r >= P`` (at least half a patch, the
  paper's rule without CEM500K's banker's rounding): its tile is placed flush with the image end
  (start ``size - P``), so it holds ``P`` real pixels and overlaps its neighbour by ``P - r < P/2``
  pixels. A remainder ``r < P/2`` is discarded. CEM500K instead kept a short tile and resized it
  for hashing only; full-size tiles need no resize and fit fixed-shape shards;
* an axis shorter than ``P`` but at least ``P/2`` long gives one tile that is mirror-padded
  (``numpy.pad(mode="symmetric")``) to ``P`` when ``small="pad"`` (default) or no tile when
  ``small="drop"``; an axis shorter than ``P/2`` gives no tile. The manifest keeps the real
  height and width of every patch (``valid_h``, ``valid_w``).
"""

from __future__ import annotations

import numpy as np

SMALL_MODES = ("pad", "drop")


def tile_starts(size: int, patch: int, small: str = "pad") -> np.ndarray:
    """Start offsets of the tiles along one axis (see the module docstring for the rule).

    Examples
    --------
    >>> tile_starts(1024, 224).tolist()   # 4 full tiles + a 128 px remainder (>= 112): flush tile
    [0, 224, 448, 672, 800]
    >>> tile_starts(1000, 224).tolist()   # remainder 104 < 112: discarded
    [0, 224, 448, 672]
    >>> tile_starts(150, 224).tolist(), tile_starts(150, 224, small="drop").tolist()
    ([0], [])
    """
    if small not in SMALL_MODES:
        raise ValueError(f"small must be one of {SMALL_MODES}, got {small!r}")
    if patch < 1:
        raise ValueError(f"patch size must be positive, got {patch}")
    n_full, rem = divmod(int(size), int(patch))
    starts = [i * patch for i in range(n_full)]
    if n_full == 0:
        if 2 * size >= patch and small == "pad":
            starts = [0]
    elif 2 * rem >= patch:
        starts.append(size - patch)
    return np.asarray(starts, dtype=np.int64)


def tile_grid(height: int, width: int, patch: int, small: str = "pad") -> np.ndarray:
    """``(n, 2)`` int64 array of tile origins ``(y, x)`` in row-major order."""
    ys = tile_starts(height, patch, small)
    xs = tile_starts(width, patch, small)
    if len(ys) == 0 or len(xs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def count_tiles(height: int, width: int, patch: int, small: str = "pad") -> int:
    """Number of tiles :func:`tile_grid` gives, without building it."""
    return len(tile_starts(height, patch, small)) * len(tile_starts(width, patch, small))


def extract_patches(image: np.ndarray, patch: int, small: str = "pad") -> tuple[np.ndarray, np.ndarray]:
    """Cut one 2D image into patches.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` array (any dtype; the corpus uses uint8).
    patch : int
        Patch side in pixels.
    small : {"pad", "drop"}
        What to do with an axis shorter than ``patch`` but at least ``patch / 2``.

    Returns
    -------
    patches : np.ndarray
        ``(n, patch, patch)`` array of the image's dtype.
    origins : np.ndarray
        ``(n, 2)`` int64 tile origins ``(y, x)`` in the image.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    h, w = image.shape
    origins = tile_grid(h, w, patch, small)
    pad_y, pad_x = max(0, patch - h), max(0, patch - w)
    if len(origins) and (pad_y or pad_x):
        image = np.pad(image, ((0, pad_y), (0, pad_x)), mode="symmetric")
    out = np.empty((len(origins), patch, patch), dtype=image.dtype)
    if len(origins):
        for i, (y, x) in enumerate(origins):
            out[i] = image[y:y + patch, x:x + patch]
    return out, origins
