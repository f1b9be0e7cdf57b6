"""Paired bootstrap of an IoU difference over slices: exact values on cases small enough to enumerate."""

import numpy as np
import pytest

from cemkit.metrics import iou_difference_interval, pooled_iou


def test_pooled_iou_sums_the_counts_of_all_slices():
    assert pooled_iou([[1, 1, 0], [3, 1, 0]]) == 4 / 6
    assert pooled_iou([[0, 0, 0], [0, 0, 0]]) == 1.0  # nothing to find and nothing found


def test_two_slices_give_the_enumerable_bootstrap_extremes():
    # a: slice IoUs 1/2 and 3/4; b: 1/4 and 3/4. Resamples (0,0): +1/4; (1,1): 0; mixed: 4/6 - 4/8 = 1/6.
    # Each extreme has probability 1/4 > 2.5 %, so the 95 % interval is exactly [0, 1/4].
    r = iou_difference_interval([[1, 1, 0], [3, 1, 0]], [[1, 3, 0], [3, 1, 0]])
    assert r.difference == pytest.approx(4 / 6 - 4 / 8, abs=1e-15)
    assert (r.low, r.high, r.level, r.resamples) == (0.0, 0.25, 0.95, 10000)
    # metrics.json's per_slice mappings give the same result as the (n_slices, 3) arrays
    per_slice = {"tp": [1, 3], "fp": [1, 1], "fn": [0, 0]}
    assert iou_difference_interval(per_slice, {"tp": [1, 3], "fp": [3, 1], "fn": [0, 0]}) == r
    assert pooled_iou(per_slice) == 4 / 6


def test_multiclass_counts_compare_the_mean_of_the_per_class_ious():
    # class 1 as in the two-slice case above; class 2 the same in a and b (IoU 1/2 pooled in every resample),
    # so each resampled difference is half of the one-class difference: {1/4, 1/6, 0} / 2
    a = np.stack([[[1, 2], [1, 2], [0, 0]], [[3, 0], [1, 0], [0, 2]]])   # (slices, tp/fp/fn, classes)
    b = np.stack([[[1, 2], [3, 2], [0, 0]], [[3, 0], [1, 0], [0, 2]]])
    assert pooled_iou(a) == pytest.approx((4 / 6 + 2 / 6) / 2, abs=1e-15)
    r = iou_difference_interval(a, b)
    assert r.difference == pytest.approx((4 / 6 - 4 / 8) / 2, abs=1e-15)
    assert (r.low, r.high) == (0.0, 0.125)
    per_slice = {"tp": a[:, 0].tolist(), "fp": a[:, 1].tolist(), "fn": a[:, 2].tolist()}   # metrics.json layout
    assert iou_difference_interval(per_slice, b) == r
    with pytest.raises(ValueError, match="same classes"):
        iou_difference_interval(a, b[:, :, :1])


def test_identical_predictions_differ_by_exactly_zero():
    counts = np.array([[120, 7, 9], [0, 0, 0], [55, 30, 2]])
    r = iou_difference_interval(counts, counts)
    assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0)


def test_empty_slices_count_as_agreement_in_a_resample():
    # slice 0 is empty for both (IoU 1); slice 1 is perfect for a and missed by b. A resample of slice 0
    # only (probability 1/4) gives 0; one that holds slice 1 gives 1.
    r = iou_difference_interval([[0, 0, 0], [5, 0, 0]], [[0, 0, 0], [0, 0, 5]])
    assert (r.difference, r.low, r.high) == (1.0, 0.0, 1.0)


def test_a_model_better_on_every_slice_has_an_interval_above_zero_and_the_mirror_below():
    rng = np.random.default_rng(3)
    tp = rng.integers(500, 1000, 32)
    fp, fn = rng.integers(50, 100, 32), rng.integers(50, 100, 32)
    better = np.column_stack([tp, fp // 2, fn])   # same slices, half the false positives
    worse = np.column_stack([tp, fp, fn])
    up = iou_difference_interval(better, worse)
    down = iou_difference_interval(worse, better)
    assert 0 < up.low < up.difference < up.high
    assert (down.difference, down.low, down.high) == pytest.approx((-up.difference, -up.high, -up.low), abs=1e-12)
    assert iou_difference_interval(better, worse, seed=1) != up  # the seed picks the resamples
    assert iou_difference_interval(better, worse) == up         # ...and nothing else does
    wide = iou_difference_interval(better, worse, level=0.99)
    assert wide.low <= up.low and wide.high >= up.high


@pytest.mark.parametrize("a, b, level, match", [
    ([[1, 0, 0]], [[1, 0, 0], [1, 0, 0]], 0.95, "same slices"),
    ([[1, 0]], [[1, 0]], 0.95, r"shape \(n_slices, 3\)"),
    ([[1, -1, 0]], [[1, 0, 0]], 0.95, "negative"),
    ([[1, 0, 0]], [[1, 0, 0]], 1.0, "level"),
    ({"tp": [1], "fp": [0]}, [[1, 0, 0]], 0.95, "a has no fn counts"),
    ({"tp": [1, 2], "fp": [0], "fn": [0, 0]}, [[1, 0, 0]], 0.95, "differ in length"),
])
def test_bad_input_is_refused_with_a_message(a, b, level, match):
    with pytest.raises(ValueError, match=match):
        iou_difference_interval(a, b, level=level)
