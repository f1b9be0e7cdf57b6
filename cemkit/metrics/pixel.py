"""Pixel/voxel-wise segmentation metrics: confusion counts, IoU, Dice, precision, recall, ...

Pooled vs per image
-------------------
Every function here is **pooled**: it counts over all pixels/voxels of the arrays it is given
(a 2D image or a whole 3D volume) and then forms the ratio once. This is the CEM500K 3D test
protocol (per volume, pooled over voxels). The CEM500K 2D test protocol instead computes the
metric for each 2D image and averages the per-image values; use :func:`per_image` for that.
The two differ whenever images differ in foreground size.

Conventions
-----------
- Binary metrics treat any non-zero value as foreground (0/1 and 0/255 masks both work; floats
  are accepted only when they hold 0/1 values). Arrays of any equal shape (2D, 3D) are accepted;
  a shape mismatch raises ``ValueError`` naming both shapes.
- A metric whose denominator is zero is **1.0 when prediction and target agree that there is
  nothing to find, else 0.0**: IoU and Dice of an empty prediction on an empty target are 1.0;
  precision of an empty prediction is 1.0 only if the target is empty too; recall on an empty
  target is 1.0 only if the prediction is empty too; specificity on an all-foreground target is
  1.0 only if the prediction is all foreground too. No epsilon is added, so values are exact.
- Results are python floats (counts are python ints).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cemkit.metrics._arrays import as_mask, check_same_shape

__all__ = [
    "BinaryCounts",
    "accuracy",
    "binary_counts",
    "binary_metrics",
    "binary_metrics_from_counts",
    "confusion_matrix",
    "dice",
    "f1",
    "foreground_iou",
    "iou_per_class",
    "mean_iou",
    "per_image",
    "precision",
    "recall",
    "specificity",
]


class BinaryCounts(NamedTuple):
    """Pooled pixel counts of a binary prediction against a binary target."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other):  # element-wise, so per-slab counts can be accumulated with +
        if isinstance(other, BinaryCounts):
            return BinaryCounts(*(a + b for a, b in zip(self, other)))
        return NotImplemented


def binary_counts(pred, target) -> BinaryCounts:
    """Count true/false positives/negatives of ``pred`` against ``target`` (pooled).

    Parameters
    ----------
    pred, target : array_like of bool or int, same shape
        Binary masks; any non-zero value is foreground.

    Returns
    -------
    BinaryCounts
        ``(tp, fp, fn, tn)`` as python ints; ``tp + fp + fn + tn == pred.size``.
    """
    p = as_mask(pred, "pred")
    t = as_mask(target, "target")
    check_same_shape(p, t)
    tp = int(np.count_nonzero(p & t))
    n_pred = int(np.count_nonzero(p))
    n_true = int(np.count_nonzero(t))
    fp = n_pred - tp
    fn = n_true - tp
    tn = int(p.size) - tp - fp - fn
    return BinaryCounts(tp, fp, fn, tn)


def _ratio(num: int, den: int, agree_empty: bool) -> float:
    if den == 0:
        return 1.0 if agree_empty else 0.0
    return float(num) / float(den)


def foreground_iou(pred, target) -> float:
    """Foreground intersection over union ``tp / (tp + fp + fn)``, pooled; empty/empty = 1.0."""
    tp, fp, fn, _ = binary_counts(pred, target)
    return _ratio(tp, tp + fp + fn, True)


def dice(pred, target) -> float:
    """Dice coefficient = F1 ``2 tp / (2 tp + fp + fn)``, pooled; empty/empty = 1.0."""
    tp, fp, fn, _ = binary_counts(pred, target)
    return _ratio(2 * tp, 2 * tp + fp + fn, True)


f1 = dice


def precision(pred, target) -> float:
    """Precision ``tp / (tp + fp)``, pooled; empty prediction: 1.0 if the target is empty, else 0.0."""
    tp, fp, fn, _ = binary_counts(pred, target)
    return _ratio(tp, tp + fp, fn == 0)


def recall(pred, target) -> float:
    """Recall (sensitivity) ``tp / (tp + fn)``, pooled; empty target: 1.0 if the prediction is empty, else 0.0."""
    tp, fp, fn, _ = binary_counts(pred, target)
    return _ratio(tp, tp + fn, fp == 0)


def accuracy(pred, target) -> float:
    """Pixel accuracy ``(tp + tn) / N``, pooled; zero-size arrays give 1.0."""
    tp, fp, fn, tn = binary_counts(pred, target)
    return _ratio(tp + tn, tp + fp + fn + tn, True)


def specificity(pred, target) -> float:
    """Specificity ``tn / (tn + fp)``, pooled; target without background: 1.0 if the prediction has none either."""
    _, fp, fn, tn = binary_counts(pred, target)
    return _ratio(tn, tn + fp, fn == 0)


def binary_metrics_from_counts(counts) -> dict[str, float]:
    """All binary metrics from ``(tp, fp, fn, tn)`` counts (e.g. accumulated slab by slab).

    Returns a dict with ``iou, dice, precision, recall, accuracy, specificity`` (floats, same
    conventions as the single functions) and ``tp, fp, fn, tn`` (ints).
    """
    tp, fp, fn, tn = (int(c) for c in counts)
    return {
        "iou": _ratio(tp, tp + fp + fn, True),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, True),
        "precision": _ratio(tp, tp + fp, fn == 0),
        "recall": _ratio(tp, tp + fn, fp == 0),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, True),
        "specificity": _ratio(tn, tn + fp, fn == 0),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def binary_metrics(pred, target) -> dict[str, float]:
    """Pooled binary metrics of ``pred`` against ``target`` in one pass over the data.

    Returns ``iou, dice, precision, recall, accuracy, specificity, tp, fp, fn, tn``; see
    :func:`binary_metrics_from_counts`.
    """
    return binary_metrics_from_counts(binary_counts(pred, target))


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Pooled ``(num_classes, num_classes)`` confusion matrix, rows = target class, cols = predicted class.

    Parameters
    ----------
    pred, target : array_like of int or bool, same shape
        Class indices in ``[0, num_classes)``.
    num_classes : int
    ignore_index : int, optional
        Pixels whose *target* equals this value are not counted (it may lie outside the class range,
        e.g. 255).

    Returns
    -------
    numpy.ndarray of int64, shape (num_classes, num_classes)
    """
    p = np.asarray(pred)
    t = np.asarray(target)
    check_same_shape(p, t)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for arr, name in ((p, "pred"), (t, "target")):
        if arr.dtype.kind not in "biu":
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    p = p.reshape(-1)
    t = t.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for arr, name in ((p, "pred"), (t, "target")):
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
            raise ValueError(
                f"{name} has class values in [{int(arr.min())}, {int(arr.max())}], outside [0, {num_classes})"
            )
    index = t.astype(np.int64) * num_classes + p.astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix: ``C[c,c] / (row_c + col_c - C[c,c])``.

    A class absent from both target and prediction gets 1.0 (empty/empty convention).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    out = np.ones_like(inter)
    nz = union > 0
    out[nz] = inter[nz] / union[nz]
    return out


def mean_iou(pred, target, num_classes: int, include_background: bool = False,
             ignore_index: int | None = None) -> float:
    """Mean over classes of the pooled per-class IoU.

    Each class's IoU is pooled over all pixels given (see :func:`iou_per_class`; a class absent from
    both gets 1.0), then the classes are averaged with equal weight. Class 0 is background and is
    left out unless ``include_background``. With ``num_classes=2`` and ``include_background=False``
    this equals :func:`foreground_iou`. For the CEM500K 2D protocol (per image, then mean over
    images) wrap it with :func:`per_image`.
    """
    ious = iou_per_class(confusion_matrix(pred, target, num_classes, ignore_index=ignore_index))
    if not include_background:
        if num_classes < 2:
            raise ValueError("mean_iou without background needs num_classes >= 2")
        ious = ious[1:]
    return float(ious.mean())


def _images(arrays) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray) or hasattr(arrays, "shape"):
        a = np.asarray(arrays)
        if a.ndim == 2:
            return [a]
        if a.ndim == 3:
            return [a[i] for i in range(a.shape[0])]
        raise ValueError(f"per_image expects a 2D image, a (z, y, x) stack or a list of 2D images, got shape {a.shape}")
    return [np.asarray(a) for a in arrays]


def per_image(fn: Callable[..., float | dict], preds, targets, **kwargs) -> float | dict[str, float]:
    """Average ``fn(pred, target, **kwargs)`` over 2D images (the CEM500K 2D test protocol).

    ``preds`` and ``targets`` are (z, y, x) stacks (one image per z), single 2D images, or equally
    long sequences of 2D images (which may differ in size). Each image is scored on its own (with
    ``fn``'s empty/empty convention, so an image with no foreground in either counts 1.0 for IoU),
    then the per-image values are averaged with equal weight (a ``fn`` returning a dict, such as
    :func:`cemkit.metrics.rand_scores`, gives a dict of per-key means). Compare with calling ``fn`` on the
    whole stack, which pools the counts over all images.

    Example: ``per_image(foreground_iou, pred_stack, label_stack)`` or
    ``per_image(mean_iou, preds, targets, num_classes=3)``.
    """
    p_list = _images(preds)
    t_list = _images(targets)
    if len(p_list) != len(t_list):
        raise ValueError(f"per_image got {len(p_list)} predictions but {len(t_list)} targets")
    if not p_list:
        raise ValueError("per_image got no images")
    values = [fn(p, t, **kwargs) for p, t in zip(p_list, t_list)]
    if isinstance(values[0], dict):
        return {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    return float(np.mean([float(v) for v in values]))
