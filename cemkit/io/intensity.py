"""Intensity conversion: any stored dtype -> uint8, RGB -> gray.

Pure functions; :class:`cemkit.io.volume.Uint8View`, the lazy view returned by :meth:`Volume.as_uint8`,
applies them.

Rules
-----
* uint8: unchanged.
* bool: False -> 0, True -> 255.
* every other integer (signed or unsigned, 16/32/64 bit, int8) and float: linear stretch
  between a low and a high percentile (default 0.5 and 99.5) of the data, estimated once from
  a deterministic sample of the volume; values outside are clipped; NaN -> 0. When the two
  percentiles are equal (a constant image) everything at or below them maps to 0 and anything
  above to 255: no division by zero.

Signed int8 data (MRC mode 0) is therefore stretched from its real range instead of having its
negative half clipped to 0, which is what a plain ``astype(np.uint8)`` or ``np.clip`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cemkit.errors import ConfigError

if TYPE_CHECKING:  # a type only: cemkit.io.volume imports this module
    from cemkit.io.volume import Volume


#: luminance weights (ITU-R BT.709, as skimage.color.rgb2gray)
RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def rgb_to_gray(array: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) array whose last axis holds the samples; alpha is ignored.

    Integer data keep their dtype (rounded); float data stay float.

    Parameters
    ----------
    array : np.ndarray
        ``(..., 3)`` or ``(..., 4)``; a last axis of 1 or 2 (gray, gray+alpha) keeps channel 0.
    """
    a = np.asarray(array)
    if a.shape[-1] < 3:
        return a[..., 0]
    gray = a[..., :3].astype(np.float64) @ RGB_WEIGHTS
    if a.dtype.kind in "ui":
        info = np.iinfo(a.dtype)
        return np.clip(np.rint(gray), info.min, info.max).astype(a.dtype)
    if a.dtype.kind == "b":
        return gray >= 0.5
    return gray.astype(a.dtype)


def stretch_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto ``[0, 255]``, round half up; clip outside; NaN -> 0.

    Parameters
    ----------
    array : np.ndarray
        Any real-valued array.
    low, high : float
        Intensities mapped to 0 and 255. If ``high <= low`` the result is 0 where
        ``array <= low`` and 255 elsewhere (a constant image becomes all 0).

    Returns
    -------
    np.ndarray of uint8, same shape.

    Examples
    --------
    >>> stretch_to_uint8(np.array([0, 50, 100, 200]), 0, 100)
    array([  0, 128, 255, 255], dtype=uint8)
    """
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    low = float(low)
    high = float(high)
    if not high > low:
        return np.where(a > low, np.uint8(255), np.uint8(0)).astype(np.uint8)
    scaled = a.astype(np.float64)
    scaled -= low
    scaled *= 255.0
    scaled /= high - low
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    scaled += 0.5  # round half up
    return np.floor(scaled, out=scaled).astype(np.uint8)


def sample_slices(volume: Volume, max_slices: int = 16, max_side: int = 512) -> np.ndarray:
    """A deterministic sample of a volume for intensity statistics.

    Up to ``max_slices`` evenly spaced z-slices (first and last included), each subsampled with
    a constant step in y and x so that no side exceeds about ``max_side`` pixels.

    Returns
    -------
    np.ndarray
        Flat array of the sampled values.
    """
    nz, ny, nx = volume.shape
    n = max(1, min(int(max_slices), nz))
    zs = np.unique(np.linspace(0, nz - 1, n).round().astype(int))
    sy = max(1, -(-ny // max_side))
    sx = max(1, -(-nx // max_side))
    parts = [np.asarray(volume[int(z), ::sy, ::sx]).ravel() for z in zs]
    return np.concatenate(parts) if parts else np.empty(0, volume.dtype)


def estimate_percentiles(volume: Volume, percentiles: tuple[float, float] = (0.5, 99.5),
                         max_slices: int = 16) -> tuple[float, float]:
    """Low and high intensity percentiles of a volume from a deterministic slice sample.

    Reads at most ``max_slices`` z-slices (subsampled in y/x, see :func:`sample_slices`), never
    the whole volume. NaNs are ignored; an all-NaN sample gives ``(0.0, 0.0)``.

    Parameters
    ----------
    volume : Volume
        Any volume (or a 3-D numpy array).
    percentiles : (float, float)
        Low and high percentiles in [0, 100], low < high.
    max_slices : int
        Maximum number of z-slices read.

    Returns
    -------
    (low, high) : tuple of float
    """
    lo_p, hi_p = check_percentiles(percentiles)
    sample = sample_slices(volume, max_slices=max_slices)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(sample.astype(np.float64), [lo_p, hi_p])
    return float(low), float(high)


def check_percentiles(percentiles: Any) -> tuple[float, float]:
    """Validate a ``(low, high)`` percentile pair; raises ConfigError."""
    try:
        lo_p, hi_p = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ConfigError(f"percentiles must be two numbers (low, high), got {percentiles!r}") from None
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return lo_p, hi_p
