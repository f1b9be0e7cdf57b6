"""Score a prediction volume against a label volume (the logic behind ``cemkit evaluate``).

Pixel metrics are streamed slab by slab (a few z-slices at a time): only confusion counts are kept,
pooled over the volume and per z-slice, for every threshold of the sweep, so volumes of any size
work. V_rand / V_info and object metrics need whole label images (connected components and
instance matching are global): for those the foreground masks at ``threshold`` and the label volume
are held in memory (one byte per voxel for masks, the label dtype for labels), which is fine at
evaluation sizes (a 100 x 2048 x 2048 volume needs ~1 GB); turn them off with
``instance_metrics=False`` for larger volumes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from cemkit.errors import ConfigError, InputError
from cemkit.io.predictions import Prediction
from cemkit.io import Volume
from cemkit.metrics import (
    binary_metrics_from_counts,
    confusion_matrix,
    info_scores,
    iou_per_class,
    label_components,
    object_scores,
    rand_scores,
)

logger = logging.getLogger(__name__)

#: voxels read per slab (z-slices are grouped up to this size)
SLAB_VOXELS = 1 << 24
RATIO_KEYS = ("iou", "dice", "precision", "recall", "accuracy", "specificity")


@dataclass
class Settings:
    """Evaluation options (the keys of ``conf/evaluate.yaml`` other than paths)."""

    threshold: float = 0.5
    sweep: list[float] | None = None
    num_classes: int = 2
    instance_metrics: bool = True
    iou_threshold: float = 0.5
    border_thinning: bool = False
    connectivity: int = 1
    per_image: bool = True
    ignore_value: int | None = None

    def check(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")
        for t in self.sweep or []:
            if not 0.0 <= float(t) <= 1.0:
                raise ConfigError(f"sweep thresholds must be in [0, 1], got {t}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.connectivity not in (1, 2, 3):
            raise ConfigError(f"connectivity must be 1, 2 or 3, got {self.connectivity}")
        if self.ignore_value is not None:
            lowest = 1 if self.num_classes == 2 else self.num_classes
            if int(self.ignore_value) != self.ignore_value or self.ignore_value < lowest:
                raise ConfigError(f"ignore_value must be null or a whole number >= {lowest} (a label value that is "
                                  f"no class; 0 is background), got {self.ignore_value}")


def check_shapes(prediction: Prediction, labels: Volume) -> None:
    """Raise :class:`InputError` naming both paths and shapes when prediction and labels differ."""
    if prediction.volume.shape != labels.shape:
        raise InputError(
            f"prediction {prediction.volume.path} has shape {prediction.volume.shape} (z, y, x) but labels "
            f"{labels.path} have shape {labels.shape}"
        )
    inst = prediction.instances
    if inst is not None and inst.shape != labels.shape:
        raise InputError(
            f"instances {inst.path} have shape {inst.shape} (z, y, x) but labels {labels.path} have shape "
            f"{labels.shape}"
        )


def _slabs(shape: tuple[int, int, int], desc: str):
    step = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    starts = range(0, shape[0], step)
    for z0 in tqdm(starts, desc=desc, unit="slab", disable=len(starts) < 4):
        yield z0, min(z0 + step, shape[0])


def _ratios(tp, fp, fn, tn) -> dict[str, float]:
    m = binary_metrics_from_counts((tp, fp, fn, tn))
    return {k: m[k] for k in RATIO_KEYS}


def evaluate(prediction: Prediction, labels: Volume, settings: Settings) -> dict:
    """Metrics of ``prediction`` against ``labels`` as a JSON-ready dict.

    Binary (``num_classes == 2``): labels are foreground where non-zero; the prediction's foreground
    is ``probability > threshold`` (or non-zero for masks/labels). Reports pooled pixel metrics, the
    per-slice mean (``per_image``), a threshold sweep, and -- with ``instance_metrics`` -- V_rand,
    V_info and object precision/recall/F1 on instances (see :func:`instances_of`).

    Multi-class (``num_classes > 2``): prediction and labels hold class indices; reports the
    confusion matrix, per-class IoU/Dice, mean IoU without background and pixel accuracy.

    Label pixels equal to ``settings.ignore_value`` (not labelled) count nowhere: not in the pixel
    counts, and set to background in both prediction and labels before instance metrics.
    """
    settings.check()
    check_shapes(prediction, labels)
    if settings.num_classes > 2:
        return _evaluate_multiclass(prediction, labels, settings)
    return _evaluate_binary(prediction, labels, settings)


def _header(prediction: Prediction, labels: Volume, settings: Settings) -> dict:
    return {
        "prediction": str(prediction.path),
        "prediction_kind": prediction.kind,
        "labels": str(labels.path),
        "shape": list(labels.shape),
        "num_classes": settings.num_classes,
        "threshold": settings.threshold if prediction.thresholded else None,
    }


def _evaluate_binary(prediction: Prediction, labels: Volume, settings: Settings) -> dict:
    main = float(settings.threshold)
    thresholds = _thresholds(prediction, settings)
    keep = settings.instance_metrics
    counts, pred_full, gt_full, ignored = _count_binary(prediction, labels, thresholds, main, keep,
                                                        settings.ignore_value)
    result = _header(prediction, labels, settings)
    result["pixel"] = binary_metrics_from_counts(counts.confusion(main))
    if settings.per_image:
        result["per_image"] = counts.per_image(main)
    # per-slice counts at the main threshold: what a paired bootstrap of two models needs
    # (cemkit.metrics.iou_difference_interval)
    result["per_slice"] = counts.per_slice(main)
    if len(thresholds) > 1:
        result.update(_sweep(counts, thresholds, settings.per_image))
    if keep:
        pred_inst, gt_inst, sources = instances_of(prediction, pred_full, gt_full, settings.connectivity)
        if ignored is not None and prediction.instances is not None and prediction.kind != "labels":
            pred_inst = np.where(ignored, 0, pred_inst)
        del pred_full, gt_full, ignored
        result.update(_instance_scores(pred_inst, gt_inst, sources, settings))
    result["settings"] = asdict(settings)
    return result


def _thresholds(prediction: Prediction, settings: Settings) -> list[float]:
    """The main threshold, plus the sweep's for a probability prediction (sorted)."""
    main = float(settings.threshold)
    thresholds = [main]
    if settings.sweep:
        if prediction.thresholded:
            thresholds = sorted({main, *(float(t) for t in settings.sweep)})
        else:
            logger.warning("%s is a %s, not probabilities: the threshold sweep is skipped",
                           prediction.volume.path, prediction.kind)
    return thresholds


@dataclass
class _BinaryCounts:
    """Per z-slice counts of a binary evaluation: for each threshold the true positives and the
    predicted positives, and the true (label) positives."""

    tp: dict
    npred: dict
    ntrue: np.ndarray
    counted: np.ndarray  # labelled (not ignored) pixels per slice

    @classmethod
    def zeros(cls, shape: tuple[int, int, int], thresholds: list[float]) -> _BinaryCounts:
        z = shape[0]
        return cls({t: np.zeros(z, np.int64) for t in thresholds},
                   {t: np.zeros(z, np.int64) for t in thresholds},
                   np.zeros(z, np.int64), np.full(z, shape[1] * shape[2], np.int64))

    def confusion(self, t: float, sl: slice = slice(None)) -> tuple[int, int, int, int]:
        """``(tp, fp, fn, tn)`` at threshold ``t`` over the slices ``sl``."""
        tp_, pp, tt = int(self.tp[t][sl].sum()), int(self.npred[t][sl].sum()), int(self.ntrue[sl].sum())
        n = int(self.counted[sl].sum())
        return tp_, pp - tp_, tt - tp_, n - pp - tt + tp_

    def per_image(self, t: float) -> dict[str, float]:
        """The ratio metrics at threshold ``t``, averaged over the z-slices (those with labelled pixels)."""
        scored = [i for i in range(len(self.ntrue)) if self.counted[i] > 0] or list(range(len(self.ntrue)))
        rows = [_ratios(*self.confusion(t, slice(i, i + 1))) for i in scored]
        return {k: float(np.mean([r[k] for r in rows])) for k in RATIO_KEYS}

    def per_slice(self, t: float) -> dict[str, list[int]]:
        """Per-slice tp, fp and fn at threshold ``t``."""
        return {"tp": self.tp[t].tolist(), "fp": (self.npred[t] - self.tp[t]).tolist(),
                "fn": (self.ntrue - self.tp[t]).tolist()}


def _count_binary(prediction: Prediction, labels: Volume, thresholds: list[float], main: float,
                  keep: bool, ignore_value: int | None = None):
    """Stream the volumes slab by slab into per-slice counts; with ``keep``, also the whole
    prediction (foreground at ``main``, or the label ids) and label volumes, and where labels are
    ``ignore_value`` (None without one). Ignored pixels are not counted and are background in the
    kept volumes."""
    counts = _BinaryCounts.zeros(labels.shape, thresholds)
    gt_full = np.empty(labels.shape, labels.dtype) if keep else None
    keep_ids = keep and prediction.kind == "labels"
    pred_full = np.empty(labels.shape, prediction.volume.dtype if keep_ids else bool) if keep else None
    ignored = np.zeros(labels.shape, bool) if keep and ignore_value is not None else None
    for z0, z1 in _slabs(labels.shape, "evaluate"):
        raw_t = labels[z0:z1]
        raw_p = prediction.volume[z0:z1]
        labelled = None if ignore_value is None else raw_t != ignore_value
        if labelled is not None:
            counts.counted[z0:z1] = np.count_nonzero(labelled, axis=(1, 2))
            if ignored is not None:
                ignored[z0:z1] = ~labelled
            raw_t = np.where(labelled, raw_t, 0)
            if keep_ids:
                raw_p = np.where(labelled, raw_p, 0)
        target = raw_t != 0
        counts.ntrue[z0:z1] = np.count_nonzero(target, axis=(1, 2))
        probs = prediction.probabilities(raw_p) if prediction.thresholded else None
        for t in thresholds:
            mask = probs > t if probs is not None else raw_p != 0
            if labelled is not None:
                mask &= labelled
            counts.tp[t][z0:z1] = np.count_nonzero(mask & target, axis=(1, 2))
            counts.npred[t][z0:z1] = np.count_nonzero(mask, axis=(1, 2))
            if keep and t == main:
                pred_full[z0:z1] = raw_p if keep_ids else mask
        if keep:
            gt_full[z0:z1] = raw_t
    return counts, pred_full, gt_full, ignored


def _sweep(counts: _BinaryCounts, thresholds: list[float], per_image: bool) -> dict:
    """``sweep`` (the ratios at every threshold) and ``best_threshold`` (by pooled IoU)."""
    rows = []
    for t in thresholds:
        row = {"threshold": t, **_ratios(*counts.confusion(t))}
        if per_image:
            row["per_image_iou"] = counts.per_image(t)["iou"]
        rows.append(row)
    best = max(rows, key=lambda r: r["iou"])
    return {"sweep": rows, "best_threshold": {"threshold": best["threshold"], "iou": best["iou"]}}


def _instance_scores(pred_inst: np.ndarray, gt_inst: np.ndarray, sources: dict,
                     settings: Settings) -> dict:
    """V_rand, V_info and object scores of the instance volumes."""
    logger.info("instance metrics on %d predicted / %d ground-truth instances", int(pred_inst.max()),
                int(gt_inst.max()))
    return {"rand": rand_scores(pred_inst, gt_inst, border_thinning=settings.border_thinning),
            "info": info_scores(pred_inst, gt_inst, border_thinning=settings.border_thinning),
            "objects": object_scores(pred_inst, gt_inst, settings.iou_threshold),
            "instances": sources}


def instances_of(prediction: Prediction, pred_full: np.ndarray, gt_full: np.ndarray, connectivity: int):
    """Instance label volumes for V_rand / V_info / object metrics.

    Ground truth: the label volume itself when it holds more than one non-zero id (an instance
    labelling), else the connected components of its foreground. Prediction: ``labels.zarr`` of a
    predict folder or an instance-label prediction as given, else the connected components of the
    mask at ``threshold``. Components use ``connectivity`` (1 = face neighbours, in 3D).

    Returns ``(pred_instances, gt_instances, description)``.
    """
    nz = gt_full[gt_full != 0]
    if nz.size and nz.min() != nz.max():
        gt_inst, gt_src = gt_full, "label ids"
    else:
        gt_inst, gt_src = label_components(gt_full, connectivity), f"connected components (connectivity {connectivity})"
    if prediction.kind == "labels":
        pred_inst, pred_src = pred_full, "label ids"
    elif prediction.instances is not None:
        pred_inst, pred_src = np.asarray(prediction.instances[...]), str(prediction.instances.path)
    else:
        pred_inst = label_components(pred_full, connectivity)
        pred_src = f"connected components (connectivity {connectivity})"
    return pred_inst, gt_inst, {"prediction": pred_src, "labels": gt_src}


def _evaluate_multiclass(prediction: Prediction, labels: Volume, settings: Settings) -> dict:
    c = settings.num_classes
    if prediction.thresholded:
        raise InputError(
            f"{prediction.volume.path}: multi-class evaluation (num_classes={c}) needs a class-index "
            "prediction (arg-max), not probabilities"
        )
    total = np.zeros((c, c), np.int64)
    slice_miou = []
    slice_counts = []  # per slice: (3, c - 1) tp, fp, fn of the foreground classes
    for z0, z1 in _slabs(labels.shape, "evaluate"):
        raw_t, raw_p = labels[z0:z1], prediction.volume[z0:z1]
        for i in range(z1 - z0):
            try:
                cm = confusion_matrix(raw_p[i], raw_t[i], c, ignore_index=settings.ignore_value)
            except ValueError as exc:
                raise InputError(f"{prediction.volume.path} / {labels.path} slice {z0 + i}: {exc}") from None
            total += cm
            if cm.sum() or settings.ignore_value is None:
                slice_miou.append(float(iou_per_class(cm)[1:].mean()))
            tp = np.diag(cm)[1:]
            slice_counts.append((tp, cm.sum(axis=0)[1:] - tp, cm.sum(axis=1)[1:] - tp))  # rows: target
    ious = iou_per_class(total)
    inter = np.diag(total).astype(np.float64)
    sizes = total.sum(axis=0) + total.sum(axis=1)
    dice = np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0)
    result = _header(prediction, labels, settings)
    result["pixel"] = {
        "mean_iou": float(ious[1:].mean()),
        "accuracy": float(np.trace(total) / max(1, total.sum())),
        "per_class_iou": [float(v) for v in ious],
        "per_class_dice": [float(v) for v in dice],
        "confusion": total.tolist(),
    }
    if settings.per_image:
        result["per_image"] = {"mean_iou": float(np.mean(slice_miou)) if slice_miou else float("nan")}
    # per slice, per foreground class 1..c-1: what a paired bootstrap of the mean IoU needs
    result["per_slice"] = {k: [[int(v) for v in row[i]] for row in slice_counts] for i, k in enumerate(("tp", "fp", "fn"))}
    if settings.instance_metrics:
        logger.info("instance metrics (V_rand, V_info, objects) are binary only: skipped for %d classes", c)
    result["settings"] = asdict(settings)
    return result
