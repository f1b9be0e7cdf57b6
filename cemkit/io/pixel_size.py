"""Pixel size (nm) as part of data and models: read it, check it, and resample slices between pixel sizes.

A model learns structures at the pixel size it was trained at. cemkit records that size (finetune)
and brings new data to it (predict, several training sources): the yx plane is resampled by
``data_nm / model_nm``; z is never resampled (sections are what they are).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cemkit.errors import ConfigError, InputError

log = logging.getLogger(__name__)

MIN_NM = 0.1      # below this no EM images a structure (0.1 nm = 1 Å)
MAX_NM = 1000.0   # above 1 µm a pixel is no longer volume EM
SAME_SCALE = 0.02  # pixel sizes within 2 % are the same: no resampling


def check_pixel_size(value: Any, where: str, *, input_error: bool = False) -> float:
    """A pixel size in nm, checked: a finite number within [0.1 nm, 1 µm].

    Parameters
    ----------
    value
        The pixel size (nm); a number or a numeric string.
    where
        The config key or file it came from; named in the error.
    input_error
        Raise :class:`InputError` (the value came from a file) instead of :class:`ConfigError` (a key).

    Raises
    ------
    ConfigError or InputError
        Missing, not a number, zero, negative or implausible.

    Examples
    --------
    >>> check_pixel_size("5.9", "data.voxel_size")
    5.9
    """
    error = InputError if input_error else ConfigError
    try:
        nm = float(value)
    except (TypeError, ValueError):
        raise error(f"{where}: pixel size must be a number of nanometres, got {value!r}") from None
    if not math.isfinite(nm) or nm <= 0:
        raise error(f"{where}: pixel size must be positive, got {value!r} nm")
    if not MIN_NM <= nm <= MAX_NM:
        raise error(f"{where}: pixel size {nm:g} nm is implausible for EM (expected {MIN_NM:g} nm to "
                    f"{MAX_NM:g} nm); give it in nanometres")
    return nm


def pixel_size_of(volume: Any, override: Any = None, where: str = "voxel_size") -> float | None:
    """The yx pixel size (nm) of ``volume``: ``override`` when given, else the file's metadata, else None.

    Parameters
    ----------
    volume
        A :class:`cemkit.io.volume.Volume` (its ``voxel_size`` is ``(z, y, x)`` nm or None) or None.
    override
        A user's value (``data.voxel_size=`` / ``voxel_size=``): a number, or a ``[z, y, x]`` / ``[y, x]``
        list whose last entry (x) is taken.
    where
        The key the override came from, named in errors.

    Raises
    ------
    ConfigError
        An override that is not a plausible pixel size.
    InputError
        Metadata whose pixel size is not plausible (the error names the file).
    """
    if override is not None and override != "":
        if isinstance(override, (list, tuple)) or (hasattr(override, "__len__") and not isinstance(override, str)):
            values = list(override)
            if not values:
                raise ConfigError(f"{where}: empty pixel size")
            return check_pixel_size(values[-1], where)
        return check_pixel_size(override, where)
    vs = getattr(volume, "voxel_size", None)
    if not vs:
        return None
    y, x = float(vs[-2]), float(vs[-1])
    path = getattr(volume, "path", "the input")
    nm = check_pixel_size(x, f"{path} (pixel size in the file's metadata; override it with {where}=)",
                          input_error=True)
    if abs(y - x) > SAME_SCALE * x:
        log.warning("%s: pixels are %g x %g nm (y x); using x = %g nm", path, y, x, x)
    return nm


def scale_factor(data_nm: float | None, model_nm: float | None) -> float | None:
    """How much to zoom data of pixel size ``data_nm`` to reach ``model_nm`` (``data_nm / model_nm``);
    None when either is unknown or they agree within 2 %.

    Examples
    --------
    >>> scale_factor(4.6, 5.9), scale_factor(5.9, 5.95), scale_factor(None, 5.9)
    (0.7796610169491525, None, None)
    """
    if data_nm is None or model_nm is None:
        return None
    f = float(data_nm) / float(model_nm)
    return None if abs(f - 1.0) <= SAME_SCALE else f


def scaled_shape(shape_yx: tuple[int, int], factor: float) -> tuple[int, int]:
    """The yx size after zooming by ``factor`` (rounded, at least 1 px).

    Examples
    --------
    >>> scaled_shape((1024, 1000), 0.78)
    (799, 780)
    """
    return tuple(max(1, int(round(s * factor))) for s in shape_yx)  # type: ignore[return-value]


def resize_yx(array: np.ndarray, out_yx: tuple[int, int], *, labels: bool = False) -> np.ndarray:
    """Resample the last two axes of ``array`` to ``out_yx``.

    Images (any dtype) use antialiased bilinear interpolation and keep their dtype (integers rounded and
    clipped to their range); label images (``labels=True``) use nearest neighbour, so class and ignore
    values stay exact.

    Parameters
    ----------
    array
        ``(y, x)`` or ``(..., y, x)``.
    out_yx
        Output ``(height, width)``.
    labels
        Nearest-neighbour resampling for label maps.
    """
    out_yx = (int(out_yx[0]), int(out_yx[1]))
    if tuple(array.shape[-2:]) == out_yx:
        return array
    lead = array.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(array).reshape((-1, 1) + array.shape[-2:]))
    if labels:
        out = F.interpolate(t.to(torch.float32) if t.dtype not in (torch.float32, torch.float64) else t,
                            size=out_yx, mode="nearest-exact")
    else:
        out = F.interpolate(t.to(torch.float32), size=out_yx, mode="bilinear", align_corners=False,
                            antialias=True)
    res = out.numpy().reshape(lead + out_yx)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if not labels:
            res = np.rint(res)
        res = np.clip(res, info.min, info.max)
    return res.astype(array.dtype, copy=False)
