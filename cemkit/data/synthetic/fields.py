"""Smooth random fields and voxel coordinates used to build synthetic anatomy."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Below this correlation length (in voxels) an axis is smoothed by a Gaussian, not splines.
_FINE_PX = 4.0


def _bspline_matrix(n: int, spacing_px: float, offset: float) -> np.ndarray:
    """Cubic B-spline interpolation matrix from a coarse control grid to ``n`` samples.

    Parameters
    ----------
    n : int
        Number of output samples along the axis.
    spacing_px : float
        Distance between control points, in output samples (>= 1e-6).
    offset : float
        Phase of the control grid in [0, 1) control spacings (random, so fields are not aligned).

    Returns
    -------
    numpy.ndarray
        ``(n, m)`` float32 matrix; each row sums to 1.
    """
    t = (np.arange(n, dtype=np.float64) + 0.5) / spacing_px + offset
    m = int(np.floor(t.max())) + 4
    base = np.floor(t).astype(np.int64)
    frac = t - base
    w = np.stack(
        [
            (1 - frac) ** 3 / 6,
            (3 * frac**3 - 6 * frac**2 + 4) / 6,
            (-3 * frac**3 + 3 * frac**2 + 3 * frac + 1) / 6,
            frac**3 / 6,
        ],
        axis=1,
    )
    mat = np.zeros((n, m), dtype=np.float32)
    rows = np.arange(n)
    for k in range(4):
        mat[rows, base + k] = w[:, k]  # columns differ within one k: plain assignment is exact
    return mat


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    voxel_size: tuple[float, ...],
    scale_nm: float,
) -> np.ndarray:
    """Smooth Gaussian-like random field with correlation length ``scale_nm``.

    Cubic B-spline interpolation of i.i.d. normal control points spaced ``scale_nm`` apart in
    physical space, so the field has the same physical smoothness along anisotropic axes.
    Values have zero mean in expectation and unit root-mean-square.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
        Output shape (any number of dimensions).
    voxel_size : tuple of float
        Physical size of one voxel along each axis (nm).
    scale_nm : float
        Spacing of the control points (nm).

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``.
    """
    # Coarse axes: cubic B-spline expansion of control points. Fine axes (correlation length
    # under a few voxels): full-resolution white noise smoothed by a small Gaussian instead.
    mats: list[np.ndarray | None] = []
    sizes = []
    for n, vs in zip(shape, voxel_size):
        scale_px = scale_nm / vs
        if scale_px < _FINE_PX:
            mats.append(None)
            sizes.append(n)
        else:
            mat = _bspline_matrix(n, scale_px, rng.random())
            mats.append(mat)
            sizes.append(mat.shape[1])
    field = rng.standard_normal(sizes, dtype=np.float32)
    for axis, (n, vs) in enumerate(zip(shape, voxel_size)):
        if mats[axis] is None and scale_nm / vs >= 0.6:
            field = ndimage.gaussian_filter1d(field, 0.5 * scale_nm / vs, axis=axis, mode="wrap")
    # Contract the smallest dimensions first: cheap, the result grows to `shape` at the end.
    for axis, mat in enumerate(mats):
        if mat is not None:
            field = np.moveaxis(np.tensordot(mat, field, axes=([1], [axis])), 0, axis)
    # Smoothing shrinks the variance; rescale to unit root-mean-square (not the realised std:
    # a field with few control points can be mostly offset, and dividing by its small std
    # would blow it up).
    rms = float(np.sqrt(np.mean(np.square(field, dtype=np.float64))))
    return field / np.float32(rms) if rms > 0 else field

def axis_coords(shape: tuple[int, ...], voxel_size: tuple[float, ...]) -> list[np.ndarray]:
    """Physical coordinates (nm) of voxel centres along each axis, as 1D float32 arrays."""
    return [((np.arange(n, dtype=np.float32) + 0.5) * np.float32(v)) for n, v in zip(shape, voxel_size)]
