"""Numerical check of an exported model against the PyTorch model it came from."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from cemkit.errors import CemkitError

logger = logging.getLogger(__name__)


class ExportCheckError(CemkitError):
    """The exported model does not reproduce the PyTorch model within the tolerance."""


def check_inputs(frames: int, tile: int, stride: int, seed: int = 0) -> list[torch.Tensor]:
    """Random normalised inputs whose sizes differ from the ``tile`` x ``tile`` export example.

    One is a multiple of ``stride`` (no padding), one is not (the padding path), with batch 2.
    """
    g = torch.Generator().manual_seed(seed)
    big = max(stride, tile) + stride
    odd = max(stride + 3, tile // 2 + 13)
    return [torch.randn(1, frames, big, max(stride, tile), generator=g),
            torch.randn(2, frames, odd, odd + 6, generator=g)]


def compare(reference: Callable[[torch.Tensor], torch.Tensor],
            candidate: Callable[[torch.Tensor], np.ndarray | torch.Tensor],
            inputs: list[torch.Tensor], tolerance: float, what: str) -> float:
    """Largest absolute difference of ``candidate`` vs ``reference`` over ``inputs``.

    Raises
    ------
    ExportCheckError
        On a shape mismatch or a difference above ``tolerance``.
    """
    worst = 0.0
    for x in inputs:
        ref = reference(x).detach().cpu().numpy()
        got = candidate(x)
        got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
        if got.shape != ref.shape:
            raise ExportCheckError(f"{what}: output shape {got.shape} for input {tuple(x.shape)} "
                                   f"differs from PyTorch's {ref.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise ExportCheckError(f"{what}: output differs from PyTorch by {diff:.3g} (> tolerance "
                                   f"{tolerance:g}) for input {tuple(x.shape)}; nothing was written")
    logger.info("%s matches PyTorch: max |difference| %.3g <= %g on inputs %s", what, worst,
                tolerance, [tuple(x.shape) for x in inputs])
    return worst
