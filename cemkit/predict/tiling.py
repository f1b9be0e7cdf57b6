"""Sliding-window geometry, reflect padding and blending weights for tiled 2-D inference.

Everything here is pure numpy: window positions along an axis, the padded geometry of a plane,
the blending weight map of a tile, and the accumulate-and-normalise stitching of tile predictions.
The conventions follow MONAI's ``sliding_window_inference`` (``overlap`` is a fraction of the tile,
the last window is snapped to the edge, Gaussian weights with ``sigma = 0.125 * tile`` clamped
below at ``1e-3``) so that results can be compared with it one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BLENDING_MODES = ("gaussian", "bump", "constant")


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start positions of windows of size ``tile`` covering ``[0, length)``.

    Parameters
    ----------
    length : int
        Axis length (already padded so that ``length >= tile``; a shorter axis gives ``[0]``).
    tile : int
        Window size.
    overlap : float
        Fraction of the tile shared by neighbouring windows, ``0 <= overlap < 1``.

    Returns
    -------
    list of int
        Increasing starts; consecutive windows are ``int(tile * (1 - overlap))`` apart (at least 1)
        and the last window ends exactly at ``length`` (snapped to the edge).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(count)]
    return sorted(set(starts))


@dataclass(frozen=True)
class PlaneGeometry:
    """How one (H, W) plane is padded and cut into square tiles.

    The plane is reflect-padded by ``border`` pixels of context on every side, and further at the
    bottom/right when it is still smaller than one tile. Tiles are cut from the padded plane at all
    combinations of ``ys`` x ``xs``; the result is cropped back with :meth:`crop`.
    """

    height: int
    width: int
    tile: int
    border: int
    pad_y: tuple[int, int]
    pad_x: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (self.height + sum(self.pad_y), self.width + sum(self.pad_x))

    @property
    def positions(self) -> list[tuple[int, int]]:
        """All tile origins (y, x) in the padded plane, row-major."""
        return [(y, x) for y in self.ys for x in self.xs]

    def crop(self, padded: np.ndarray) -> np.ndarray:
        """Cut the original plane out of an array whose last two axes are the padded plane."""
        return padded[..., self.pad_y[0]:self.pad_y[0] + self.height,
                      self.pad_x[0]:self.pad_x[0] + self.width]


def plane_geometry(height: int, width: int, tile: int, overlap: float, border: int = 0) -> PlaneGeometry:
    """Padding and tile positions for a ``height`` x ``width`` plane.

    Parameters
    ----------
    height, width : int
        Plane size.
    tile : int
        Square tile size.
    overlap : float
        Fractional overlap of neighbouring tiles (see :func:`window_starts`).
    border : int
        Reflect-padded context added on every side before tiling, so that border pixels are seen
        with context instead of at a tile edge. ``0`` pads only planes smaller than a tile.
    """
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")

    def axis(n: int) -> tuple[tuple[int, int], tuple[int, ...]]:
        before = border
        after = border + max(0, tile - (n + 2 * border))
        return (before, after), tuple(window_starts(n + before + after, tile, overlap))

    pad_y, ys = axis(height)
    pad_x, xs = axis(width)
    return PlaneGeometry(height, width, tile, border, pad_y, pad_x, ys, xs)


def reflect_pad(planes: np.ndarray, geometry: PlaneGeometry) -> np.ndarray:
    """Reflect-pad the last two axes of ``planes`` as ``geometry`` says (edge pixel not repeated)."""
    if not any(geometry.pad_y) and not any(geometry.pad_x):
        return planes
    widths = [(0, 0)] * (planes.ndim - 2) + [geometry.pad_y, geometry.pad_x]
    if min(planes.shape[-2:]) < 2:  # reflect is undefined for a single row/column
        return np.pad(planes, widths, mode="edge")
    return np.pad(planes, widths, mode="reflect")


def blending_weights(tile: int, mode: str = "gaussian", sigma_scale: float = 0.125,
                     floor: float = 1e-3, bump_t: float = 1.5) -> np.ndarray:
    """Weight map (tile, tile) float32 used to blend overlapping tile predictions.

    Parameters
    ----------
    tile : int
        Tile size.
    mode : {"gaussian", "bump", "constant"}
        ``gaussian``: product of 1-D Gaussians centred on the tile with ``sigma = sigma_scale * tile``
        (MONAI's map, not renormalised), clamped below at ``floor``.
        ``bump``: product of ``exp(t * (1 - 1 / (4 u (1 - u))))`` over ``u = (i + 0.5) / tile``, the
        smooth bump of Lee et al. 2017 used by PyTorch Connectomics (1 at the centre, -> 0 at the edges),
        clamped below at ``floor``. ``constant``: ones (plain averaging).
    sigma_scale, floor, bump_t : float
        Parameters of the Gaussian, the lower clamp, and the bump steepness.
    """
    return _blending_weights(int(tile), str(mode), float(sigma_scale), float(floor), float(bump_t)).copy()


@lru_cache(maxsize=16)
def _blending_weights(tile: int, mode: str, sigma_scale: float, floor: float, bump_t: float) -> np.ndarray:
    if mode == "constant":
        return np.ones((tile, tile), dtype=np.float32)
    if mode == "gaussian":
        sigma = sigma_scale * tile
        x = np.arange(-(tile - 1) / 2.0, (tile - 1) / 2.0 + 1.0, dtype=np.float32)[:tile]
        g = np.exp(x.astype(np.float32) ** 2 / np.float32(-2.0 * sigma ** 2)).astype(np.float32)
    elif mode == "bump":
        u = (np.arange(tile, dtype=np.float64) + 0.5) / tile
        g = np.exp(bump_t * (1.0 - 1.0 / (4.0 * u * (1.0 - u)))).astype(np.float32)
    else:
        raise ValueError(f"unknown blending mode {mode!r}; choose one of {BLENDING_MODES}")
    w = g[:, None] * g[None, :]
    return np.maximum(w, np.float32(floor)).astype(np.float32)


def weight_sum(geometry: PlaneGeometry, weights: np.ndarray) -> np.ndarray:
    """Sum of the tile weight maps over all tiles of ``geometry`` on the padded plane (float32)."""
    total = np.zeros(geometry.padded_shape, dtype=np.float32)
    t = geometry.tile
    for y, x in geometry.positions:
        total[y:y + t, x:x + t] += weights
    return total


def blend_tiles(tiles: np.ndarray, positions: list[tuple[int, int]], geometry: PlaneGeometry,
                weights: np.ndarray) -> np.ndarray:
    """Stitch tile predictions of one plane into a full plane.

    Parameters
    ----------
    tiles : np.ndarray
        ``(N, C, tile, tile)`` predictions, one per position.
    positions : list of (y, x)
        Tile origins in the padded plane (normally ``geometry.positions``).
    geometry : PlaneGeometry
    weights : np.ndarray
        ``(tile, tile)`` blending weights.

    Returns
    -------
    np.ndarray
        ``(C, H, W)`` float32: the weighted sum of the tiles divided by the summed weights,
        cropped to the original plane.
    """
    acc = np.zeros((tiles.shape[1], *geometry.padded_shape), dtype=np.float32)
    t = geometry.tile
    for tile_pred, (y, x) in zip(tiles, positions):
        acc[:, y:y + t, x:x + t] += tile_pred * weights
    acc /= weight_sum(geometry, weights)
    return geometry.crop(acc)
