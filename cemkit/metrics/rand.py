"""Foreground-restricted Rand and information-theoretic scores (V_rand, V_info) of ISBI 2012.

Definitions (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image segmentation
algorithms for connectomics", Front. Neuroanat. 9:142, eqs. 3-7; Fiji ``RandError`` /
``VariationOfInformation`` in Trainable Weka Segmentation):

Let ``n_ij`` be the number of pixels with ground-truth label ``i`` and proposed label ``j``,
counted **only over pixels where the ground truth is non-zero** (foreground restriction: label 0
of the ground truth is background/boundary and is ignored). ``p_ij = n_ij / n``, ``t_i = sum_j p_ij``
(ground-truth segment sizes), ``s_j = sum_i p_ij`` (proposed segment sizes). Proposed pixels with
label 0 inside the ground-truth foreground are unassigned boundary pixels and are counted as
**singletons** (each its own segment), exactly as the ISBI 2012 / SNEMI3D scripts do.

- ``v_rand_split = sum p_ij^2 / sum t_i^2`` (1.0 = no false splits),
  ``v_rand_merge = sum p_ij^2 / sum s_j^2`` (1.0 = no false merges),
  ``v_rand = 2 sum p_ij^2 / (sum s_j^2 + sum t_i^2)``, the harmonic mean of the two. The foreground-
  restricted Rand *error* of the challenge (and of SNEMI3D/CREMI "adapted Rand") is ``1 - v_rand``.
- ``v_info_split = I(S;T) / H(S)``, ``v_info_merge = I(S;T) / H(T)``,
  ``v_info = 2 I(S;T) / (H(S) + H(T))``, with entropies in bits. The classic variation of information
  terms are returned too: ``vi_split = H(S|T)`` (false splits, bits), ``vi_merge = H(T|S)``.

All scores are **pooled**: one contingency table over every pixel/voxel given (2D image or whole 3D
volume). For the ISBI 2012 per-slice protocol average over slices with
:func:`cemkit.metrics.per_image`. The scores only see the ground-truth foreground, so proposed
objects that lie entirely in the ground-truth background cost nothing (a known property of the
foreground restriction); combine with pixel or object metrics. When the ground truth has no
foreground there is nothing to score and every score is 1.0.

Normalisation: ``count_self_pairs=True`` (default) uses the challenge's ``N^2`` normalisation
(``p_ij`` as above, every pixel paired with itself too). ``count_self_pairs=False`` counts only
distinct pixel pairs (``n_ij (n_ij - 1)``), which is what :func:`skimage.metrics.adapted_rand_error`
computes; the two agree to within ``O(1/segment size)``.

Border thinning (``border_thinning=True``, :func:`thin_borders`): in the ISBI 2012 final evaluation
the proposal's boundaries are thinned before scoring, so that the score does not depend on how wide
a method draws its borders. cemkit implements thinning by giving every label-0 pixel of the proposal
that lies inside the ground-truth foreground the label of its nearest proposed segment (Euclidean
distance, :func:`skimage.segmentation.expand_labels`); the segments then meet along zero-width borders
and no singleton boundary pixels remain inside the foreground. This is the "expand the regions until
the boundary inside the ground-truth mask is gone" thinning of the ISBI 2013 / SNEMI3D Python
evaluation scripts, done in one distance-transform pass instead of repeated 3x3 maximum filters
(ties between equidistant segments may be resolved differently). 3D volumes are thinned slice by
slice (the challenge is 2D) unless a voxel ``spacing`` is given, which thins in 3D.

Binary masks (``label_components=True``): both inputs are treated as binary object masks (non-zero =
inside an object, 0 = background/boundary) and labelled by connected components
(``connectivity=1``: 4-neighbours in 2D, 6 in 3D, as in the challenge) before scoring.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from cemkit.metrics._arrays import as_labels, as_mask, check_same_shape, compact_ids

__all__ = [
    "contingency_table",
    "info_scores",
    "label_components",
    "rand_scores",
    "thin_borders",
]


def label_components(mask, connectivity: int = 1) -> np.ndarray:
    """Connected components of a binary mask (non-zero = object) as int32/int64 labels, 0 = background.

    ``connectivity`` is the skimage convention: 1 = face neighbours (4 in 2D, 6 in 3D), ``ndim`` = all
    neighbours (8 in 2D, 26 in 3D).
    """
    from skimage.measure import label

    return label(as_mask(mask, "mask"), connectivity=connectivity)


def thin_borders(labels, mask=None, spacing=None, per_slice: bool = True) -> np.ndarray:
    """Fill label-0 (boundary) pixels with the label of the nearest segment.

    Parameters
    ----------
    labels : array_like of int
        Label image, 0 = boundary/background, 2D or 3D.
    mask : array_like of bool, optional
        Only zeros inside this mask are filled (for scoring: the ground-truth foreground). Default:
        every zero is filled.
    spacing : sequence of float, optional
        Pixel spacing per axis, passed to :func:`skimage.segmentation.expand_labels`.
    per_slice : bool
        For 3D input, thin each z-slice on its own (the 2D operation of the ISBI 2012 challenge, and
        far cheaper in time and memory); ``False`` thins in 3D (give ``spacing`` for anisotropic
        voxels).

    Returns
    -------
    numpy.ndarray
        A copy of ``labels`` in which the selected zero pixels carry their nearest segment's label
        (Euclidean distance). Images (slices) without any segment are returned unchanged.
    """
    lab = as_labels(labels, "labels")
    if mask is None:
        m = np.ones(lab.shape, bool)
    else:
        m = as_mask(mask, "mask")
        check_same_shape(lab, m, ("labels", "mask"))
    if per_slice and lab.ndim == 3:
        out = lab.copy()
        sp = None if spacing is None else tuple(spacing)[-2:]
        for z in range(lab.shape[0]):
            out[z] = _thin(lab[z], m[z], sp)
        return out
    return _thin(lab, m, spacing)


def _thin(lab: np.ndarray, m: np.ndarray, spacing) -> np.ndarray:
    from skimage.segmentation import expand_labels

    todo = m & (lab == 0)
    if not todo.any() or not lab.any():
        return lab.copy()
    grown = expand_labels(lab, distance=np.inf, spacing=1 if spacing is None else spacing)
    return np.where(todo, grown, lab)


def contingency_table(seg, gt, singletons: bool = True) -> sparse.csr_array:
    """Foreground-restricted contingency table ``n_ij`` (rows = ground-truth label, cols = proposed label).

    Only pixels with ``gt != 0`` are counted. With ``singletons`` every proposed label-0 pixel inside
    the ground-truth foreground gets a column of its own (count 1); otherwise proposed label 0 is one
    ordinary segment. Counts are int64; labels index rows/cols directly (the table is sparse).
    """
    s = as_labels(seg, "seg")
    g = as_labels(gt, "gt")
    check_same_shape(s, g, ("seg", "gt"))
    fg = g != 0
    rows, _ = compact_ids(g[fg])
    cols, _ = compact_ids(s[fg])
    if singletons:
        zero = cols == 0
        n_zero = int(np.count_nonzero(zero))
        if n_zero:
            start = int(cols.max()) + 1
            cols = cols.copy()
            cols[zero] = np.arange(start, start + n_zero, dtype=np.int64)
    n_rows = int(rows.max()) + 1 if rows.size else 1
    n_cols = int(cols.max()) + 1 if cols.size else 1
    data = np.ones(rows.size, dtype=np.int64)
    table = sparse.coo_array((data, (rows, cols)), shape=(n_rows, n_cols)).tocsr()
    table.sum_duplicates()
    return table


def _prepare(seg, gt, border_thinning: bool, label_components_: bool, connectivity: int, spacing):
    if label_components_:
        s = label_components(seg, connectivity)
        g = label_components(gt, connectivity)
        check_same_shape(s, g, ("seg", "gt"))
    else:
        s = as_labels(seg, "seg")
        g = as_labels(gt, "gt")
        check_same_shape(s, g, ("seg", "gt"))
    if border_thinning:
        s = thin_borders(s, mask=g != 0, spacing=spacing, per_slice=spacing is None)
    return s, g


def _squares(values: np.ndarray, self_pairs: bool) -> float:
    v = values.astype(np.float64)
    return float(v @ v) if self_pairs else float(v @ v - v.sum())


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def rand_scores(seg, gt, *, border_thinning: bool = False, label_components: bool = False,
                connectivity: int = 1, count_self_pairs: bool = True, spacing=None) -> dict[str, float]:
    """Foreground-restricted Rand scores of a proposed segmentation against the ground truth (pooled).

    Parameters
    ----------
    seg, gt : array_like of int, same shape (2D or 3D)
        Proposed and ground-truth label images; ``gt == 0`` is ignored. With ``label_components``,
        binary masks that are labelled by connected components first.
    border_thinning : bool
        Thin the proposal's borders inside the ground-truth foreground first (:func:`thin_borders`).
    label_components : bool
        Treat both inputs as binary masks and label their connected components (``connectivity``).
    count_self_pairs : bool
        ``True``: ISBI 2012 ``N^2`` normalisation; ``False``: distinct pairs only (skimage).
    spacing : sequence of float, optional
        Pixel spacing for border thinning; when given, 3D inputs are thinned in 3D with it,
        otherwise slice by slice (see :func:`thin_borders`).

    Returns
    -------
    dict
        ``v_rand`` (F-score, 1.0 = perfect; Rand error = 1 - v_rand), ``v_rand_split``, ``v_rand_merge``.
    """
    s, g = _prepare(seg, gt, border_thinning, label_components, connectivity, spacing)
    table = contingency_table(s, g, singletons=True)
    joint = _squares(table.data, count_self_pairs)
    true_sq = _squares(np.asarray(table.sum(axis=1)).ravel(), count_self_pairs)
    pred_sq = _squares(np.asarray(table.sum(axis=0)).ravel(), count_self_pairs)
    return {
        "v_rand": _ratio(2.0 * joint, true_sq + pred_sq),
        "v_rand_split": _ratio(joint, true_sq),
        "v_rand_merge": _ratio(joint, pred_sq),
    }


def _entropy(counts: np.ndarray, n: float) -> float:
    c = counts[counts > 0].astype(np.float64)
    p = c / n
    return float(-(p * np.log2(p)).sum())


def info_scores(seg, gt, *, border_thinning: bool = False, label_components: bool = False,
                connectivity: int = 1, spacing=None) -> dict[str, float]:
    """Foreground-restricted information-theoretic scores (pooled; entropies in bits).

    Same inputs and options as :func:`rand_scores`.

    Returns
    -------
    dict
        ``v_info = 2 I / (H(S) + H(T))`` (1.0 = perfect), ``v_info_split = I / H(S)``,
        ``v_info_merge = I / H(T)``, and the variation-of-information terms ``vi_split = H(S|T)``
        (false splits) and ``vi_merge = H(T|S)`` (false merges), ``vi = vi_split + vi_merge``.
        A score whose entropy denominator is 0 (a single segment) is 1.0 when ``I`` is 0 as well.
    """
    s, g = _prepare(seg, gt, border_thinning, label_components, connectivity, spacing)
    table = contingency_table(s, g, singletons=True)
    n = float(table.data.sum())
    if n == 0:
        return {"v_info": 1.0, "v_info_split": 1.0, "v_info_merge": 1.0,
                "vi_split": 0.0, "vi_merge": 0.0, "vi": 0.0}
    h_joint = _entropy(table.data, n)
    h_true = _entropy(np.asarray(table.sum(axis=1)).ravel(), n)
    h_pred = _entropy(np.asarray(table.sum(axis=0)).ravel(), n)
    mutual = max(h_true + h_pred - h_joint, 0.0)
    vi_split = max(h_joint - h_true, 0.0)  # H(S|T)
    vi_merge = max(h_joint - h_pred, 0.0)  # H(T|S)
    return {
        "v_info": _ratio(2.0 * mutual, h_pred + h_true),
        "v_info_split": _ratio(mutual, h_pred),
        "v_info_merge": _ratio(mutual, h_true),
        "vi_split": vi_split,
        "vi_merge": vi_merge,
        "vi": vi_split + vi_merge,
    }
