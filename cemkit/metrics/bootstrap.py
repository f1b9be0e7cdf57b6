"""How sure is a difference in IoU? Paired bootstrap over the slices of one test volume.

Two models scored on the same volume differ by a pooled IoU difference; whether that difference
says more than "these slices happened to suit one model" depends on how it varies from slice to
slice. :func:`iou_difference_interval` resamples the slices with replacement (the same slices for
both models: a *paired* bootstrap) and gives the percentile interval of the pooled difference.

Multi-class counts (one ``(tp, fp, fn)`` per foreground class) compare the mean over those classes
of the pooled per-class IoU, the ``mean_iou`` of ``cemkit evaluate``.

Slices of one volume are correlated, so the interval is a lower bound on the uncertainty of a
difference on *other* volumes: an interval that includes 0 means the volume cannot tell the
two models apart; one that excludes 0 says the difference holds on this volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = ["IoUDifference", "iou_difference_interval", "pooled_iou"]


class IoUDifference(NamedTuple):
    """Pooled IoU of ``a`` minus that of ``b``, with its bootstrap interval ``[low, high]``."""

    difference: float
    low: float
    high: float
    level: float
    resamples: int


def _counts(name: str, counts) -> np.ndarray:
    if isinstance(counts, Mapping):  # cemkit evaluate's metrics.json "per_slice": {"tp": [...], "fp": [...], "fn": [...]}
        missing = [k for k in ("tp", "fp", "fn") if k not in counts]
        if missing:
            raise ValueError(f"{name} has no {', '.join(missing)} counts (expected a metrics.json 'per_slice')")
        try:
            counts = np.stack([np.asarray(counts[k], dtype=np.float64) for k in ("tp", "fp", "fn")], axis=1)
        except ValueError as exc:
            raise ValueError(f"{name}: its tp, fp and fn counts differ in length ({exc})") from None
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[1] != 3 or arr.shape[0] == 0 or (arr.ndim == 3 and arr.shape[2] == 0):
        raise ValueError(f"{name} must be per-slice (tp, fp, fn) counts of shape (n_slices, 3), or "
                         f"(n_slices, 3, n_classes) for several classes, got {arr.shape}")
    if (arr < 0).any():
        raise ValueError(f"{name} has negative counts")
    return arr


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``tp / (tp + fp + fn)`` elementwise, 1.0 where the union is empty."""
    union = tp + fp + fn
    return np.divide(tp, union, out=np.ones_like(tp), where=union > 0)


def pooled_iou(counts) -> float:
    """IoU pooled over slices from per-slice ``(tp, fp, fn)`` counts or a ``per_slice`` mapping (1.0 when all
    are zero); for ``(n_slices, 3, n_classes)`` counts, the mean over the classes of each class's pooled IoU."""
    total = _counts("counts", counts).sum(axis=0)
    return float(np.mean(_iou(total[0], total[1], total[2])))


def iou_difference_interval(a, b, level: float = 0.95, resamples: int = 10000, seed: int = 0) -> IoUDifference:
    """Pooled IoU of ``a`` minus ``b`` and its paired-bootstrap percentile interval over slices.

    Parameters
    ----------
    a, b : array-like, shape (n_slices, 3) or (n_slices, 3, n_classes), or mapping
        Per-slice ``(tp, fp, fn)`` pixel counts of two predictions of the same volume (per foreground
        class for multi-class predictions: the statistic is then the mean of the per-class pooled
        IoUs), or the ``per_slice`` entries (``{"tp": [...], "fp": [...], "fn": [...]}``) of their
        ``cemkit evaluate`` ``metrics.json``.
    level : float
        Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
    resamples : int
        Bootstrap resamples; each draws ``n_slices`` slice indices with replacement and uses them
        for both ``a`` and ``b``.
    seed : int
        Seed of the resampling (the result is a pure function of the inputs).

    Returns
    -------
    IoUDifference
        ``difference`` (on all slices), ``low``, ``high``, ``level``, ``resamples``.

    Examples
    --------
    Two slices; ``a`` is better on the first (IoU 1/2 against 1/4) and equal on the second (3/4):

    >>> r = iou_difference_interval([[1, 1, 0], [3, 1, 0]], [[1, 3, 0], [3, 1, 0]])
    >>> round(r.difference, 4), r.low, r.high
    (0.1667, 0.0, 0.25)
    """
    ca, cb = _counts("a", a), _counts("b", b)
    if ca.shape[0] != cb.shape[0]:
        raise ValueError(f"a and b must count the same slices, got {ca.shape[0]} and {cb.shape[0]}")
    if ca.shape != cb.shape:
        raise ValueError(f"a and b must count the same classes, got counts of shape {ca.shape} and {cb.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    n = ca.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))

    def resampled_iou(c: np.ndarray) -> np.ndarray:
        iou = _iou(*(c[:, k][idx].sum(axis=1) for k in range(3)))  # (resamples,) or (resamples, n_classes)
        return iou if iou.ndim == 1 else iou.mean(axis=1)

    diffs = resampled_iou(ca) - resampled_iou(cb)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return IoUDifference(pooled_iou(ca) - pooled_iou(cb), float(low), float(high), float(level), int(resamples))
