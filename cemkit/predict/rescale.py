"""Pixel size at prediction time: which zoom each model's input needs, and the per-slab resampling.

A model records the yx pixel size (nm) of its training data (``pixel_size_nm`` in its checkpoint).
``cemkit predict`` brings each slab of the input to that size in yx (``input_nm / model_nm``, see
:func:`cemkit.io.pixel_size.scale_factor`), runs the model there and resamples its probabilities back
onto the input's grid. z is never resampled, so resampling a slab is exact per plane and memory stays
bounded by the slab. When the model or the input has no pixel size, or ``rescale=false``, nothing is
resampled (and the log says why).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from cemkit.io.pixel_size import resize_yx, scale_factor, scaled_shape

logger = logging.getLogger(__name__)


def model_scales(input_nm: float | None, model_nms: Sequence[float | None], names: Sequence[str],
                 enabled: bool = True, input_source: str = "the input") -> list[float | None]:
    """The yx zoom of the input for each model (``input_nm / model_nm``), or None where it is fed as is.

    Logs the factor of each model that is rescaled, and at INFO why a model is not (rescaling off,
    the input's or the model's pixel size unknown, or the two within 2 %).

    Parameters
    ----------
    input_nm
        The input's yx pixel size (nm), or None when unknown.
    model_nms
        Each model's recorded pixel size (nm), or None.
    names
        The models' names (for the log).
    enabled
        ``rescale``: False feeds every model the input at its own pixel size.
    input_source
        Where ``input_nm`` came from (``voxel_size=`` or the file's metadata), for the log.

    Examples
    --------
    >>> model_scales(4.6, [5.9, None, 4.6], ["a", "b", "c"])
    [0.7796610169491525, None, None]
    >>> model_scales(None, [5.9], ["a"])
    [None]
    """
    if not enabled:
        logger.info("rescale=false: the input is fed to the model(s) at its own pixel size (%s), not rescaled",
                    "unknown" if input_nm is None else f"{input_nm:g} nm")
        return [None] * len(model_nms)
    scales: list[float | None] = []
    for nm, name in zip(model_nms, names):
        factor = scale_factor(input_nm, nm)
        if input_nm is None and nm is not None:
            logger.info("%s: trained at %g nm, but the input's pixel size is unknown (no metadata in the file; "
                        "give voxel_size=NM): not rescaled", name, nm)
        elif nm is None:
            logger.info("%s: the model records no pixel size (trained before pixel sizes were recorded, or on data "
                        "without one): not rescaled", name)
        elif factor is None:
            logger.info("%s: trained at %g nm, the input is %g nm (%s): same scale, not rescaled", name, nm,
                        input_nm, input_source)
        else:
            logger.info("%s: trained at %g nm, the input is %g nm (%s): yx rescaled by %.4g for the model, and "
                        "its maps back to the input's grid", name, nm, input_nm, input_source, factor)
        scales.append(factor)
    return scales


def to_model_grid(block: np.ndarray, factor: float | None) -> np.ndarray:
    """Planes ``(..., H, W)`` of the input zoomed by ``factor`` in yx (antialiased bilinear, dtype kept);
    the block itself when ``factor`` is None."""
    if factor is None:
        return block
    return resize_yx(block, scaled_shape(tuple(block.shape[-2:]), factor))


def to_input_grid(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Probabilities ``(..., h, w)`` on a model's grid resampled (bilinear, float32) onto the input's
    ``(height, width)``; unchanged when they are already there. Bilinear weights sum to one, so the
    class probabilities of a multi-class map still sum to one."""
    return resize_yx(np.ascontiguousarray(prob, dtype=np.float32), (height, width))
