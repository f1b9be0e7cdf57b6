"""Object-level (instance) metrics: one-to-one instance matching and detection precision/recall/F1.

For counting objects such as vesicles or mitochondria: a predicted instance is a true positive when
it is matched one-to-one to a ground-truth instance with IoU >= ``iou_threshold``.

Matching: the IoU of every overlapping (prediction, ground truth) pair comes from the contingency
table of the two label images (label 0 = background in both). Pairs with IoU >= threshold are the
candidates; :func:`scipy.optimize.linear_sum_assignment` picks the one-to-one assignment of
candidates with the largest summed IoU (for thresholds > 0.5 a pair can only match one way, so the
assignment is unique). Unmatched predictions are false positives, unmatched ground-truth instances
false negatives. A split (one object predicted as two) therefore gives at most one TP and one FP, a
merge (two objects predicted as one) at most one TP and one FN.

Scores are **pooled over the whole array given** (instances are counted over a 2D image or a whole
3D volume); use :func:`cemkit.metrics.per_image` to average per 2D image instead. Conventions: with
no predicted instance precision is 1.0 if there is no ground-truth instance either, else 0.0; with no
ground-truth instance recall is 1.0 only if nothing was predicted; F1 and the mean matched IoU follow
(1.0 for empty vs empty, 0.0 when nothing matched).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from cemkit.metrics._arrays import as_labels, check_same_shape, compact_ids
from cemkit.metrics.rand import label_components as _label_components

__all__ = ["InstanceMatches", "match_instances", "object_scores"]


@dataclass(frozen=True)
class InstanceMatches:
    """Result of :func:`match_instances`.

    ``pred_ids[k]`` is matched to ``gt_ids[k]`` with IoU ``ious[k]`` (sorted by ground-truth id).
    ``n_pred`` / ``n_gt`` count the non-empty instances in each image.
    """

    pred_ids: np.ndarray
    gt_ids: np.ndarray
    ious: np.ndarray
    n_pred: int
    n_gt: int
    iou_threshold: float

    @property
    def tp(self) -> int:
        return int(self.ious.size)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_gt - self.tp

    def pairs(self) -> list[tuple[int, int, float]]:
        """Matched ``(pred_id, gt_id, iou)`` triples as python values."""
        return [(int(p), int(g), float(i)) for p, g, i in zip(self.pred_ids, self.gt_ids, self.ious)]


def _instances(labels, name: str, label_components: bool, connectivity: int) -> np.ndarray:
    if label_components:
        return _label_components(labels, connectivity)
    return as_labels(labels, name)


def match_instances(pred_labels, gt_labels, iou_threshold: float = 0.5, *, label_components: bool = False,
                    connectivity: int = 1) -> InstanceMatches:
    """Match predicted to ground-truth instances one-to-one by IoU.

    Parameters
    ----------
    pred_labels, gt_labels : array_like of int, same shape (2D or 3D)
        Instance label images, 0 = background. With ``label_components``, binary masks whose
        connected components (``connectivity``: 1 = face neighbours) are the instances.
    iou_threshold : float in (0, 1]
        Smallest IoU of a matched pair.

    Returns
    -------
    InstanceMatches
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pred = _instances(pred_labels, "pred_labels", label_components, connectivity)
    gt = _instances(gt_labels, "gt_labels", label_components, connectivity)
    check_same_shape(pred, gt, ("pred_labels", "gt_labels"))

    p, p_map = compact_ids(pred.reshape(-1))
    g, g_map = compact_ids(gt.reshape(-1))
    pred_area = np.bincount(p)
    gt_area = np.bincount(g)
    n_pred = int(np.count_nonzero(pred_area[1:]))
    n_gt = int(np.count_nonzero(gt_area[1:]))
    empty = np.zeros(0, dtype=np.int64)
    if n_pred == 0 or n_gt == 0:
        return InstanceMatches(empty, empty, np.zeros(0), n_pred, n_gt, iou_threshold)
    gi, pj, iou = _candidate_pairs(p, g, pred_area, gt_area, iou_threshold)
    if iou.size == 0:
        return InstanceMatches(empty, empty, np.zeros(0), n_pred, n_gt, iou_threshold)
    matched_pred, matched_gt, ious = _best_assignment(gi, pj, iou, iou_threshold)
    return InstanceMatches(
        pred_ids=matched_pred if p_map is None else p_map[matched_pred],
        gt_ids=matched_gt if g_map is None else g_map[matched_gt],
        ious=ious,
        n_pred=n_pred,
        n_gt=n_gt,
        iou_threshold=iou_threshold,
    )


def _candidate_pairs(p: np.ndarray, g: np.ndarray, pred_area: np.ndarray, gt_area: np.ndarray,
                     iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gt id, pred id, IoU)`` of the overlapping pairs with IoU >= ``iou_threshold``.

    ``p`` and ``g`` are the flat compact labels, ``pred_area`` / ``gt_area`` their voxel counts;
    the intersections come from their sparse contingency table.
    """
    both = (p != 0) & (g != 0)
    inter = sparse.coo_array(
        (np.ones(int(both.sum()), dtype=np.int64), (g[both], p[both])),
        shape=(gt_area.size, pred_area.size),
    ).tocsr()
    inter.sum_duplicates()
    coo = inter.tocoo()
    gi, pj, n_ij = coo.row, coo.col, coo.data.astype(np.float64)
    iou = n_ij / (gt_area[gi] + pred_area[pj] - n_ij)
    keep = iou >= iou_threshold
    return gi[keep], pj[keep], iou[keep]


def _best_assignment(gi: np.ndarray, pj: np.ndarray, iou: np.ndarray,
                     iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one assignment of the candidate pairs with the largest summed IoU.

    Solved on the (small) sub-matrix of candidate instances only. Returns the matched
    ``(pred ids, gt ids, ious)``, sorted by ground-truth id.
    """
    g_ids, g_idx = np.unique(gi, return_inverse=True)
    p_ids, p_idx = np.unique(pj, return_inverse=True)
    weights = np.zeros((g_ids.size, p_ids.size))
    weights[g_idx, p_idx] = iou
    rows, cols = linear_sum_assignment(weights, maximize=True)
    chosen = weights[rows, cols]
    ok = chosen >= iou_threshold  # the assignment may pair leftovers at weight 0
    order = np.argsort(g_ids[rows[ok]], kind="stable")
    return p_ids[cols[ok]][order], g_ids[rows[ok]][order], chosen[ok][order]


def object_scores(pred_labels, gt_labels, iou_threshold: float = 0.5, *, label_components: bool = False,
                  connectivity: int = 1) -> dict[str, float]:
    """Object-level detection scores after :func:`match_instances` (pooled over the array given).

    Returns
    -------
    dict
        ``tp, fp, fn, n_pred, n_gt`` (ints), ``precision = tp / n_pred``, ``recall = tp / n_gt``,
        ``f1 = 2 tp / (n_pred + n_gt)`` and ``mean_matched_iou`` (mean IoU of the matched pairs).
    """
    m = match_instances(pred_labels, gt_labels, iou_threshold, label_components=label_components,
                        connectivity=connectivity)
    both_empty = m.n_pred == 0 and m.n_gt == 0
    if both_empty:
        mean_iou = 1.0
    else:
        mean_iou = float(m.ious.mean()) if m.tp else 0.0
    return {
        "tp": m.tp,
        "fp": m.fp,
        "fn": m.fn,
        "n_pred": m.n_pred,
        "n_gt": m.n_gt,
        "precision": m.tp / m.n_pred if m.n_pred else (1.0 if m.n_gt == 0 else 0.0),
        "recall": m.tp / m.n_gt if m.n_gt else (1.0 if m.n_pred == 0 else 0.0),
        "f1": 2 * m.tp / (m.n_pred + m.n_gt) if not both_empty else 1.0,
        "mean_matched_iou": mean_iou,
    }
