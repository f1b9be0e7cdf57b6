"""PIL's fixed-point LANCZOS weights for 8-bit images, as one integer matrix per axis.

Pillow resamples 8-bit images with a separable filter in fixed point (``Resample.c``): per output
pixel, filter weights are computed in double precision around the pixel centre
``(i + 0.5) * scale`` with support ``3 * max(scale, 1)``, normalised to sum to one and converted
to integers with ``PRECISION_BITS = 22`` (round half away from zero). :func:`resample_matrix`
reproduces those integers; :mod:`cemkit.curate.dhash_paths` multiplies pixels by them exactly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 22
_LANCZOS_SUPPORT = 3.0


def _sinc(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    nz = x != 0.0
    px = x[nz] * math.pi
    out[nz] = np.sin(px) / px
    return out


def _lanczos(x: np.ndarray) -> np.ndarray:
    """PIL's ``lanczos_filter``: ``sinc(x) * sinc(x / 3)`` on ``[-3, 3)``, else 0."""
    inside = (x >= -3.0) & (x < 3.0)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = _sinc(xi) * _sinc(xi / 3.0)
    return out


@lru_cache(maxsize=64)
def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Fixed-point LANCZOS weights of PIL's resize along one axis.

    Parameters
    ----------
    in_size, out_size : int
        Input and output lengths of the axis.

    Returns
    -------
    np.ndarray
        ``(in_size, out_size)`` float64 matrix holding the integer weights
        (``round(w * 2**22)``, half away from zero) that PIL uses for 8-bit images.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    mat = np.zeros((in_size, out_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C cast truncates toward zero
        xmax = min(int(center + support + 0.5), in_size)
        xs = np.arange(xmin, xmax, dtype=np.float64)
        w = _lanczos((xs - center + 0.5) * ss)
        # PIL sums the weights sequentially in C; reproduce that order for the normalisation.
        ww = 0.0
        for v in w.tolist():
            ww += v
        if ww != 0.0:
            w = w / ww
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)),
                         np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        mat[xmin:xmax, xx] = fixed
    mat.setflags(write=False)
    return mat
