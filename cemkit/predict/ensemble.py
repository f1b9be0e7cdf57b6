"""Combining the probability maps of several models: mean, weighted mean, majority vote."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METHODS = ("mean", "weighted", "vote")


def normalised_weights(count: int, method: str, weights: Sequence[float] | None) -> np.ndarray:
    """Per-model weights (float64, summing to 1) for ``method``.

    ``mean`` and ``vote`` ignore ``weights`` (equal weights). ``weighted`` needs one non-negative
    weight per model with a positive sum.
    """
    if method not in METHODS:
        raise ValueError(f"ensemble must be one of {METHODS}, got {method!r}")
    if method != "weighted" or weights is None:
        if method == "weighted":
            raise ValueError("ensemble=weighted needs weights=[w1, w2, ...], one per checkpoint")
        return np.full(count, 1.0 / count)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (count,):
        raise ValueError(f"weights has {w.size} values but there are {count} checkpoints")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def model_votes(prob: np.ndarray, threshold: float = 0.5, class_axis: int = 0) -> np.ndarray:
    """One model's vote per pixel as float32, shaped like ``prob``.

    A 1-channel (binary) map votes ``prob > threshold``; a C-channel map votes for its arg-max class
    (one-hot). ``class_axis`` is the axis of the channels (0 for ``(C, ...)``, 1 for a slab
    ``(S, C, H, W)``).
    """
    if prob.shape[class_axis] == 1:
        return (prob > threshold).astype(np.float32)
    winner = np.expand_dims(prob.argmax(axis=class_axis), class_axis)
    classes = np.arange(prob.shape[class_axis]).reshape([-1 if a == class_axis % prob.ndim else 1
                                                         for a in range(prob.ndim)])
    return (classes == winner).astype(np.float32)


def combine(probs: Sequence[np.ndarray], method: str = "mean", weights: Sequence[float] | None = None,
            threshold: float = 0.5, class_axis: int = 0) -> np.ndarray:
    """Combine per-model probability maps of one shape (classes on ``class_axis``) into one float32 map.

    Parameters
    ----------
    probs : sequence of np.ndarray
        One map per model, all the same shape, classes on ``class_axis``.
    method : {"mean", "weighted", "vote"}
        ``mean``: arithmetic mean (CDeep3M's ensemble). ``weighted``: mean with ``weights``.
        ``vote``: fraction of models voting for each class (see :func:`model_votes`), so that a
        threshold of 0.5 on the result is a strict majority.
    weights : sequence of float, optional
        Per-model weights for ``weighted``.
    threshold : float
        Binary decision threshold used by ``vote``.
    class_axis : int
        Axis of the classes in each map (``vote`` only).
    """
    w = normalised_weights(len(probs), method, weights)
    total = np.zeros(probs[0].shape, dtype=np.float32)
    for p, wi in zip(probs, w):
        total += np.float32(wi) * (model_votes(p, threshold, class_axis) if method == "vote" else p)
    return total


class RunningEnsemble:
    """Accumulates :func:`combine` one model at a time (only one map in memory besides the sum)."""

    def __init__(self, count: int, method: str = "mean", weights: Sequence[float] | None = None,
                 threshold: float = 0.5, class_axis: int = 0):
        self.method = method
        self.threshold = threshold
        self.class_axis = class_axis
        self.weights = normalised_weights(count, method, weights)
        self.total: np.ndarray | None = None
        self._next = 0

    def add(self, prob: np.ndarray) -> None:
        term = model_votes(prob, self.threshold, self.class_axis) if self.method == "vote" else prob
        weight = np.float32(self.weights[self._next])
        self._next += 1
        if self.total is None:  # a single model keeps its map as is (no copy)
            self.total = term.astype(np.float32, copy=False) if weight == 1 else weight * term
        else:
            self.total += weight * term

    def result(self) -> np.ndarray:
        if self._next != len(self.weights):
            raise RuntimeError(f"{self._next} of {len(self.weights)} models added")
        return self.total
