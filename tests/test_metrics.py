"""cemkit.metrics against hand-computed values on tiny arrays (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from cemkit.metrics import (
    BinaryCounts,
    accuracy,
    binary_counts,
    binary_metrics,
    binary_metrics_from_counts,
    confusion_matrix,
    contingency_table,
    dice,
    f1,
    foreground_iou,
    info_scores,
    iou_per_class,
    label_components,
    match_instances,
    mean_iou,
    object_scores,
    per_image,
    precision,
    rand_scores,
    recall,
    specificity,
    thin_borders,
)

# ----------------------------------------------------------------------------- pixel metrics

PRED = np.array([[1, 1, 0, 0],
                 [1, 0, 0, 0],
                 [0, 0, 1, 1]])
TARGET = np.array([[1, 0, 0, 0],
                   [1, 1, 0, 0],
                   [0, 0, 1, 0]])
# tp: (0,0) (1,0) (2,2) = 3; fp: (0,1) (2,3) = 2; fn: (1,1) = 1; tn: 12 - 6 = 6


def test_binary_counts_and_metrics_hand_computed():
    assert binary_counts(PRED, TARGET) == BinaryCounts(tp=3, fp=2, fn=1, tn=6)
    assert foreground_iou(PRED, TARGET) == pytest.approx(3 / 6)          # tp / (tp+fp+fn)
    assert dice(PRED, TARGET) == pytest.approx(6 / 9)                    # 2tp / (2tp+fp+fn)
    assert f1(PRED, TARGET) == dice(PRED, TARGET)
    assert precision(PRED, TARGET) == pytest.approx(3 / 5)               # tp / (tp+fp)
    assert recall(PRED, TARGET) == pytest.approx(3 / 4)                  # tp / (tp+fn)
    assert accuracy(PRED, TARGET) == pytest.approx(9 / 12)               # (tp+tn) / N
    assert specificity(PRED, TARGET) == pytest.approx(6 / 8)             # tn / (tn+fp)
    m = binary_metrics(PRED, TARGET)
    assert m == pytest.approx({"iou": 0.5, "dice": 2 / 3, "precision": 0.6, "recall": 0.75,
                               "accuracy": 0.75, "specificity": 0.75, "tp": 3, "fp": 2, "fn": 1, "tn": 6})
    assert all(type(v) is float for k, v in m.items() if k not in ("tp", "fp", "fn", "tn"))


def test_binary_metrics_accept_0_255_bool_float01_and_3d():
    expected = binary_metrics(PRED, TARGET)
    assert binary_metrics((PRED * 255).astype(np.uint8), TARGET.astype(bool)) == expected
    assert binary_metrics(PRED.astype(np.float32), TARGET) == expected
    # a 3D stack of the same image twice pools the counts: every count doubles, ratios stay
    stack = binary_metrics(np.stack([PRED, PRED]), np.stack([TARGET, TARGET]))
    assert (stack["tp"], stack["fp"], stack["fn"], stack["tn"]) == (6, 4, 2, 12)
    assert stack["iou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(np.full((2, 2), 0.7), np.ones((2, 2), np.uint8))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        foreground_iou(PRED, TARGET.T)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        confusion_matrix(PRED, TARGET[:2], 2)


def test_empty_prediction_and_empty_target_conventions():
    zeros = np.zeros((2, 3), np.uint8)
    ones = np.ones((2, 3), np.uint8)
    some = np.array([[1, 0, 0], [0, 0, 0]], np.uint8)
    # empty vs empty: nothing to find, nothing found -> 1.0 everywhere
    assert binary_metrics(zeros, zeros) == pytest.approx(
        {"iou": 1, "dice": 1, "precision": 1, "recall": 1, "accuracy": 1, "specificity": 1,
         "tp": 0, "fp": 0, "fn": 0, "tn": 6})
    # empty prediction, target with 1 px: tp=0 fp=0 fn=1 tn=5
    m = binary_metrics(zeros, some)
    assert (m["iou"], m["dice"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["specificity"] == 1.0 and m["accuracy"] == pytest.approx(5 / 6)
    # 1 px predicted on an empty target: tp=0 fp=1 fn=0 tn=5
    m = binary_metrics(some, zeros)
    assert (m["iou"], m["dice"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["specificity"] == pytest.approx(5 / 6)
    # all-foreground target: specificity has no negatives; 1.0 only if the prediction agrees
    assert specificity(ones, ones) == 1.0 and specificity(some, ones) == 0.0
    assert binary_metrics_from_counts((0, 0, 0, 0))["accuracy"] == 1.0


def test_binary_counts_add_up_slab_by_slab():
    a = binary_counts(PRED[:1], TARGET[:1])
    b = binary_counts(PRED[1:], TARGET[1:])
    assert a + b == binary_counts(PRED, TARGET)


MC_TARGET = np.array([[0, 0, 1, 1],
                      [2, 2, 2, 0]])
MC_PRED = np.array([[0, 1, 1, 1],
                    [2, 2, 0, 0]])
# confusion (rows target, cols pred):
#   target 0 -> pred 0 at (0,0),(1,3); pred 1 at (0,1)      row0 = [2, 1, 0]
#   target 1 -> pred 1 at (0,2),(0,3)                       row1 = [0, 2, 0]
#   target 2 -> pred 2 at (1,0),(1,1); pred 0 at (1,2)      row2 = [1, 0, 2]
# IoU_c = C_cc / (row_c + col_c - C_cc): class0 2/(3+3-2)=1/2, class1 2/(2+3-2)=2/3, class2 2/(3+2-2)=2/3


def test_confusion_matrix_and_multiclass_mean_iou():
    cm = confusion_matrix(MC_PRED, MC_TARGET, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 0, 2]])
    np.testing.assert_allclose(iou_per_class(cm), [1 / 2, 2 / 3, 2 / 3])
    assert mean_iou(MC_PRED, MC_TARGET, 3) == pytest.approx(2 / 3)                        # (2/3+2/3)/2
    assert mean_iou(MC_PRED, MC_TARGET, 3, include_background=True) == pytest.approx(11 / 18)  # (1/2+4/3)/3
    # class 3 absent from both -> IoU 1.0 (empty/empty): (2/3 + 2/3 + 1) / 3 = 7/9
    assert mean_iou(MC_PRED, MC_TARGET, 4) == pytest.approx(7 / 9)
    # ignore_index: target pixels labelled 255 are not counted
    t = MC_TARGET.copy()
    t[1, 2] = 255  # drops the (target 2, pred 0) pixel: class2 IoU 2/2, class0 2/(3+2-2)=2/3
    np.testing.assert_allclose(iou_per_class(confusion_matrix(MC_PRED, t, 3, ignore_index=255)),
                               [2 / 3, 2 / 3, 1.0])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(MC_PRED, MC_TARGET, 2)


def test_binary_mean_iou_equals_foreground_iou():
    assert mean_iou(PRED, TARGET, 2) == foreground_iou(PRED, TARGET)


def test_per_image_differs_from_pooled():
    preds = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    targets = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    # image 0: tp=1 fp=1 fn=0 -> IoU 1/2; image 1: empty/empty -> 1.0; mean = 3/4
    assert per_image(foreground_iou, preds, targets) == pytest.approx(0.75)
    # pooled over both images: tp=1 fp=1 fn=0 -> 1/2
    assert foreground_iou(preds, targets) == pytest.approx(0.5)
    # lists of differently sized images work, and dict-valued metrics average per key
    out = per_image(binary_metrics, [preds[0], np.ones((3, 3))], [targets[0], np.ones((3, 3))])
    assert out["iou"] == pytest.approx((0.5 + 1.0) / 2)
    assert per_image(mean_iou, MC_PRED, MC_TARGET, num_classes=3) == mean_iou(MC_PRED, MC_TARGET, 3)


# ----------------------------------------------------------------------------- V_rand / V_info


def test_rand_and_info_merge_hand_computed():
    gt = np.array([[1, 1, 2, 2]])
    seg = np.array([[1, 1, 1, 1]])
    # n_ij: (1,1)=2 (2,1)=2 -> sum n^2 = 8; gt sizes 2,2 -> 8; seg size 4 -> 16
    r = rand_scores(seg, gt)
    assert r == pytest.approx({"v_rand_split": 8 / 8, "v_rand_merge": 8 / 16, "v_rand": 16 / 24})
    # H(T)=1 bit, H(S)=0, H(S,T)=1 -> I=0; split I/H(S)=0/0 -> 1.0 (no splits); merge 0/1
    i = info_scores(seg, gt)
    assert i == pytest.approx({"v_info": 0.0, "v_info_split": 1.0, "v_info_merge": 0.0,
                               "vi_split": 0.0, "vi_merge": 1.0, "vi": 1.0})


def test_rand_and_info_partial_overlap_hand_computed():
    gt = np.array([[1, 1, 2, 2]])
    seg = np.array([[1, 1, 1, 2]])
    # n_ij: (1,1)=2 (2,1)=1 (2,2)=1 -> sum n^2 = 6; gt sizes 2,2 -> 8; seg sizes 3,1 -> 10
    r = rand_scores(seg, gt)
    assert r == pytest.approx({"v_rand_split": 6 / 8, "v_rand_merge": 6 / 10, "v_rand": 12 / 18})
    # H(T) = 1; H(S) = -(3/4 log 3/4 + 1/4 log 1/4) = 2 - 3/4 log2 3; H(S,T): p = 1/2,1/4,1/4 -> 3/2
    h_s = 2 - 0.75 * math.log2(3)
    mi = 1 + h_s - 1.5  # = 3/2 - 3/4 log2 3
    i = info_scores(seg, gt)
    assert i["v_info_split"] == pytest.approx(mi / h_s)
    assert i["v_info_merge"] == pytest.approx(mi / 1.0)
    assert i["v_info"] == pytest.approx(2 * mi / (h_s + 1.0))
    assert i["vi_split"] == pytest.approx(1.5 - 1.0)   # H(S|T) = H(S,T) - H(T)
    assert i["vi_merge"] == pytest.approx(1.5 - h_s)   # H(T|S) = H(S,T) - H(S)
    # distinct pairs only (skimage normalisation): n(n-1) sums: joint 2+0+0=2, gt 2+2=4, seg 6+0=6
    r2 = rand_scores(seg, gt, count_self_pairs=False)
    assert r2["v_rand"] == pytest.approx(2 * 2 / (4 + 6))
    assert r2["v_rand"] == pytest.approx(1 - adapted_rand_error(gt, seg)[0])


def test_rand_foreground_restriction_singletons_and_border_thinning():
    gt = np.ones((2, 6), np.uint8)
    gt_bg = np.concatenate([gt, np.zeros((2, 2), np.uint8)], axis=1)   # 2 ignored background columns
    seg = np.array([[1, 1, 0, 0, 2, 2],
                    [1, 1, 0, 0, 2, 2]])
    seg_bg = np.concatenate([seg, np.full((2, 2), 7)], axis=1)          # object 7 lies in gt background
    # foreground n = 12; segments 1 (4 px), 2 (4 px) and 4 boundary pixels as singletons
    # sum n_ij^2 = 16 + 16 + 4 = 36; gt: 12^2 = 144; seg: 16 + 16 + 4 = 36
    expected = {"v_rand_split": 36 / 144, "v_rand_merge": 1.0, "v_rand": 72 / 180}
    assert rand_scores(seg, gt) == pytest.approx(expected)
    assert rand_scores(seg_bg, gt_bg) == pytest.approx(expected)   # background of gt is ignored
    # thinning: column 2 is 1 px from label 1 (2 px from label 2) -> 1; column 3 -> 2
    np.testing.assert_array_equal(thin_borders(seg), [[1, 1, 1, 2, 2, 2]] * 2)
    # thinned: segments 6 + 6 -> sum n^2 = 72; gt 144; seg 72
    assert rand_scores(seg, gt, border_thinning=True) == pytest.approx(
        {"v_rand_split": 72 / 144, "v_rand_merge": 1.0, "v_rand": 144 / 216})
    # info: H(T) = 0; unthinned H(S) over sizes 4,4,1,1,1,1 of 12 = log2(3) + 2/3, I = 0
    i = info_scores(seg, gt)
    assert i["vi_split"] == pytest.approx(math.log2(3) + 2 / 3)
    assert (i["v_info_split"], i["v_info_merge"], i["v_info"]) == pytest.approx((0.0, 1.0, 0.0))
    assert info_scores(seg, gt, border_thinning=True)["vi_split"] == pytest.approx(1.0)  # two halves


def test_thin_borders_respects_mask_and_empty_images():
    labels = np.array([[1, 0, 0, 0, 0, 2]])
    # distances: col1 1 vs 4 -> 1; col2 2 vs 3 -> 1; col3 3 vs 2 -> 2; col4 -> 2
    np.testing.assert_array_equal(thin_borders(labels), [[1, 1, 1, 2, 2, 2]])
    mask = np.array([[0, 1, 0, 0, 1, 0]], bool)
    np.testing.assert_array_equal(thin_borders(labels, mask=mask), [[1, 1, 0, 0, 2, 2]])
    np.testing.assert_array_equal(thin_borders(np.zeros((3, 3), int)), np.zeros((3, 3)))
    # 3D: slice by slice by default; in 3D the pixel at (0, 0, 4) is 1 voxel from label 2 (slice 1)
    # but 4 from label 1 in its own slice
    vol = np.array([[[1, 0, 0, 0, 0]], [[0, 0, 0, 0, 2]]])
    np.testing.assert_array_equal(thin_borders(vol), [[[1, 1, 1, 1, 1]], [[2, 2, 2, 2, 2]]])
    np.testing.assert_array_equal(thin_borders(vol, per_slice=False)[0, 0, 4], 2)


def test_rand_info_on_binary_masks_with_connected_components():
    gt = np.array([[1, 1, 0, 1, 1]])   # two components (4 fg px)
    seg = np.array([[1, 1, 1, 1, 1]])  # one component covering both -> a merge
    # n_ij (1,1)=2 (2,1)=2: split 8/8, merge 8/16, v_rand 16/24
    r = rand_scores(seg, gt, label_components=True)
    assert r == pytest.approx({"v_rand_split": 1.0, "v_rand_merge": 0.5, "v_rand": 2 / 3})
    # without labelling both masks are one segment each on the foreground -> perfect
    assert rand_scores(seg, gt)["v_rand"] == 1.0


def test_rand_info_empty_ground_truth_and_large_ids():
    zeros = np.zeros((3, 3), int)
    assert rand_scores(np.ones((3, 3), int), zeros) == {"v_rand": 1.0, "v_rand_split": 1.0, "v_rand_merge": 1.0}
    assert info_scores(np.ones((3, 3), int), zeros)["v_info"] == 1.0
    gt = np.array([[1, 1, 2, 2]])
    seg = np.array([[1, 1, 1, 2]], np.int64) * 10**12   # huge ids must not build huge tables
    assert rand_scores(seg, gt) == rand_scores(np.array([[1, 1, 1, 2]]), gt)
    assert contingency_table(seg, gt).shape[1] < 10


def test_rand_info_agree_with_skimage_when_no_unassigned_pixels():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, (4, 40, 40))
    seg = rng.integers(1, 9, (4, 40, 40))   # no label 0: skimage and ISBI agree on the segments
    seg[:, :20] = gt[:, :20] + 10           # half identical partition for non-trivial scores
    are, _, _ = adapted_rand_error(gt, seg)
    assert rand_scores(seg, gt, count_self_pairs=False)["v_rand"] == pytest.approx(1 - are, rel=1e-12)
    h_seg_given_gt, h_gt_given_seg = variation_of_information(gt, seg, ignore_labels=[0])
    i = info_scores(seg, gt)
    assert i["vi_split"] == pytest.approx(h_seg_given_gt, rel=1e-9)
    assert i["vi_merge"] == pytest.approx(h_gt_given_seg, rel=1e-9)
    # identical segmentations score 1.0 everywhere
    assert rand_scores(gt, gt)["v_rand"] == 1.0 and info_scores(gt, gt)["v_info"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- object metrics


def assert_pairs(matches, expected):
    got = matches.pairs()
    assert [(p, g) for p, g, _ in got] == [(p, g) for p, g, _ in expected]
    np.testing.assert_allclose([i for _, _, i in got], [i for _, _, i in expected], rtol=1e-12)


#            GT1 (4px)   bg  GT2 (4 px)  gap GT3  bg  GT4  bg
OBJ_GT = np.array([[1, 1, 1, 1, 0, 2, 2, 2, 2, 0, 3, 3, 0, 4, 4, 0]])
OBJ_PRED = np.array([[5, 5, 5, 6, 0, 7, 7, 7, 7, 7, 7, 7, 0, 8, 8, 9]])
# split: GT1 -> pred 5 (3 px, IoU 3/4) + pred 6 (1 px, IoU 1/4)
# merge: pred 7 (7 px) covers GT2 (IoU 4/(4+7-4) = 4/7) and GT3 (IoU 2/7)
# exact: pred 8 = GT4 (IoU 1); pred 9 is a 1 px false positive in the background


def test_object_matching_with_split_and_merge():
    m = match_instances(OBJ_PRED, OBJ_GT, iou_threshold=0.5)
    assert_pairs(m, [(5, 1, 3 / 4), (7, 2, 4 / 7), (8, 4, 1.0)])
    s = object_scores(OBJ_PRED, OBJ_GT, iou_threshold=0.5)
    # tp 3; fp: 6, 9 -> 2; fn: GT3 -> 1; precision 3/5, recall 3/4, f1 2*3/(5+4)
    assert s == pytest.approx({"tp": 3, "fp": 2, "fn": 1, "n_pred": 5, "n_gt": 4, "precision": 3 / 5,
                               "recall": 3 / 4, "f1": 6 / 9, "mean_matched_iou": (3 / 4 + 4 / 7 + 1) / 3})
    # at 0.8 only the exact object survives
    s = object_scores(OBJ_PRED, OBJ_GT, iou_threshold=0.8)
    assert (s["tp"], s["fp"], s["fn"], s["mean_matched_iou"]) == (1, 4, 3, 1.0)
    # at 0.25 more candidates but still one-to-one: pred 7 takes GT2 (4/7 > 2/7), pred 5 takes GT1
    assert_pairs(match_instances(OBJ_PRED, OBJ_GT, iou_threshold=0.25),
                 [(5, 1, 3 / 4), (7, 2, 4 / 7), (8, 4, 1.0)])


def test_object_matching_is_an_assignment_not_greedy():
    gt = np.array([[1] * 10 + [2] * 4])     # GT1: x 0-9, GT2: x 10-13
    pred = np.array([[2] * 4 + [1] * 10])   # P2: x 0-3, P1: x 4-13
    # IoU(P1,GT1) = 6/(10+10-6) = 3/7; IoU(P2,GT1) = 4/10; IoU(P1,GT2) = 4/(4+10-4) = 2/5
    # greedy (best pair first) takes (P1,GT1) = 3/7 and leaves P2, GT2 unmatched;
    # the assignment takes (P2,GT1) + (P1,GT2) = 0.8 > 3/7: two matches
    assert_pairs(match_instances(pred, gt, 0.35), [(2, 1, 0.4), (1, 2, 0.4)])
    assert object_scores(pred, gt, 0.35)["f1"] == 1.0
    assert object_scores(pred, gt, 0.5)["tp"] == 0


def test_object_scores_on_binary_masks_and_edge_cases():
    gt = np.array([[1, 1, 0, 1, 1, 1, 0, 0]])
    pred = np.array([[1, 1, 1, 1, 1, 1, 0, 1]])
    # components: gt {0,1} {3,4,5}; pred {0..5} {7}. IoU(P1,G1)=2/6, IoU(P1,G2)=3/6 -> match at 0.5
    s = object_scores(pred, gt, 0.5, label_components=True)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    # diagonal neighbours: one object with connectivity 2, two with connectivity 1
    diag = np.array([[1, 0], [0, 1]])
    assert label_components(diag).max() == 2 and label_components(diag, connectivity=2).max() == 1
    empty = np.zeros((3, 3), int)
    assert object_scores(empty, empty) == {"tp": 0, "fp": 0, "fn": 0, "n_pred": 0, "n_gt": 0,
                                           "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                           "mean_matched_iou": 1.0}
    s = object_scores(np.zeros((1, 9), int), OBJ_GT[:, :9])
    assert (s["fn"], s["precision"], s["recall"], s["f1"], s["mean_matched_iou"]) == (2, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(OBJ_PRED, OBJ_GT, 0.0)
