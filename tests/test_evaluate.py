"""`cemkit evaluate` end to end on the real CDeep3M mitochondria labels.

Predictions are made by perturbing the labels in known ways; expected values are computed here with
plain numpy / scipy.ndimage, independently of cemkit.metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import ndimage

from cemkit.cli.main import main
from cemkit.errors import InputError
from cemkit.evaluate.command import run
from cemkit.io.predictions import infer_kind, open_prediction
from cemkit.io import ArrayVolume, open_volume, write_npy, write_png_folder, write_zarr
from cemkit.metrics import pooled_iou

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LABELS = DATA / "cdeep3m_mito" / "train" / "labels"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gt_stack():
    if not LABELS.is_dir():
        pytest.skip(f"{LABELS} not present")
    return open_volume(LABELS)[:4] != 0   # (4, 1024, 1024) bool, palette indices 0/1


@pytest.fixture()
def small_labels(tmp_path):
    """A 4-slice copy of the real label folder (keeps the end-to-end runs short)."""
    if not LABELS.is_dir():
        pytest.skip(f"{LABELS} not present")
    out = tmp_path / "labels"
    out.mkdir()
    for f in sorted(LABELS.glob("*.png"))[:4]:
        shutil.copy(f, out / f.name)
    return out


def numpy_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    tp = int(np.sum(pred & gt))
    fp = int(np.sum(pred & ~gt))
    fn = int(np.sum(~pred & gt))
    return {"tp": tp, "fp": fp, "fn": fn, "iou": tp / (tp + fp + fn), "dice": 2 * tp / (2 * tp + fp + fn),
            "precision": tp / (tp + fp), "recall": tp / (tp + fn)}


def numpy_per_slice_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    vals = []
    for p, g in zip(pred, gt):
        union = np.sum(p | g)
        vals.append(1.0 if union == 0 else np.sum(p & g) / union)
    return float(np.mean(vals))


def cli(*args) -> int:
    return main(["evaluate", *map(str, args)])


def test_predict_folder_with_sweep_matches_numpy(tmp_path, small_labels, gt_stack, capsys):
    gt = gt_stack[:4]
    # uint8 probabilities (0-255): 230 on mitochondria, 0 elsewhere, then two known perturbations:
    prob = np.where(gt, 230, 0).astype(np.uint8)
    prob[:, :200][gt[:, :200]] = 102            # top 200 rows of mitochondria at p = 0.4: missed above 0.4
    band = np.zeros_like(gt)
    band[:, :, :64] = True
    prob[band & ~gt] = 153                      # background in the left 64 columns at p = 0.6: FP below 0.6
    pred_dir = tmp_path / "pred"
    write_zarr(pred_dir / "probabilities.zarr", prob)
    instances = ndimage.label(gt)[0].astype(np.int32)   # predict's labels.zarr: here the true instances
    write_zarr(pred_dir / "labels.zarr", instances)
    out = tmp_path / "eval"

    assert cli(f"prediction={pred_dir}", f"labels={small_labels}", f"output={out}", "sweep=[0.3,0.5,0.7]") == 0
    result = json.loads((out / "metrics.json").read_text())

    p = prob.astype(np.float32) / 255
    for row, t in zip(result["sweep"], (0.3, 0.5, 0.7)):
        exp = numpy_scores(p > t, gt)
        assert row["threshold"] == t
        for k in ("iou", "dice", "precision", "recall"):
            assert row[k] == pytest.approx(exp[k], rel=1e-12)
        assert row["per_image_iou"] == pytest.approx(numpy_per_slice_iou(p > t, gt), rel=1e-12)
    exp = numpy_scores(p > 0.5, gt)
    assert {k: result["pixel"][k] for k in ("tp", "fp", "fn")} == {k: exp[k] for k in ("tp", "fp", "fn")}
    assert result["pixel"]["iou"] == pytest.approx(exp["iou"], rel=1e-12)
    assert result["per_image"]["iou"] == pytest.approx(numpy_per_slice_iou(p > 0.5, gt), rel=1e-12)
    m = p > 0.5  # per-slice counts at the main threshold, for paired comparisons of two models
    assert result["per_slice"] == {"tp": (m & gt).sum(axis=(1, 2)).tolist(), "fp": (m & ~gt).sum(axis=(1, 2)).tolist(),
                                   "fn": (~m & gt).sum(axis=(1, 2)).tolist()}
    assert result["prediction_kind"] == "probabilities" and result["shape"] == [4, 1024, 1024]
    # at 0.3 the FP band is in and nothing is missed; at 0.7 the band is out but the top rows are missed
    assert result["sweep"][0]["recall"] == 1.0 and result["sweep"][2]["precision"] == 1.0
    best = max(result["sweep"], key=lambda r: r["iou"])
    assert result["best_threshold"] == {"threshold": best["threshold"], "iou": best["iou"]}
    # object / V_rand metrics use labels.zarr (the true instances), not the perturbed mask
    assert result["instances"]["prediction"].endswith("labels.zarr")
    assert result["objects"]["f1"] == 1.0 and result["objects"]["tp"] == int(instances.max())
    assert result["rand"]["v_rand"] == 1.0 and result["info"]["v_info"] == pytest.approx(1.0)
    table = capsys.readouterr().out
    assert "threshold sweep" in table and f"{exp['iou']:.4f}" in table and "v_rand" in table


def test_float_probability_volume_shifted_labels(tmp_path, small_labels, gt_stack):
    gt = gt_stack[:4]
    shifted = np.roll(gt, 3, axis=2)           # the labels moved 3 px to the right
    prob = np.where(shifted, 0.9, 0.1).astype(np.float32)
    write_npy(tmp_path / "prob.npy", prob)
    out = tmp_path / "eval"
    assert cli(f"prediction={tmp_path / 'prob.npy'}", f"labels={small_labels}", f"output={out}",
               "iou_threshold=0.5") == 0
    result = json.loads((out / "metrics.json").read_text())
    exp = numpy_scores(shifted, gt)
    assert result["pixel"]["iou"] == pytest.approx(exp["iou"], rel=1e-12)
    assert result["pixel"]["tp"] == exp["tp"] and result["pixel"]["fp"] == exp["fp"]
    # a 3 px shift keeps each mitochondrion its own 6-connected component: instances are
    # counted independently with scipy.ndimage (default structure = face neighbours)
    n_gt = ndimage.label(gt)[1]
    n_pred = ndimage.label(shifted)[1]
    obj = result["objects"]
    assert obj["n_gt"] == n_gt and obj["n_pred"] == n_pred
    assert obj["tp"] + obj["fn"] == n_gt and obj["tp"] + obj["fp"] == n_pred
    assert 0.5 < result["rand"]["v_rand"] < 1.0
    assert "sweep" not in result


def test_binary_mask_folder_with_known_false_positives(tmp_path, small_labels, gt_stack):
    gt = gt_stack[:4]
    mask = gt.copy()
    mask[:, 500:550, 500:550] = True            # a 50 x 50 square of added foreground per slice
    mask[:, :, 1000:] = False                   # and the last 24 columns erased
    write_png_folder(tmp_path / "mask", mask.astype(np.uint8) * 255)
    out = tmp_path / "eval"
    assert cli(f"prediction={tmp_path / 'mask'}", f"labels={small_labels}", f"output={out}",
               "sweep=[0.2,0.8]", "instance_metrics=false") == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["prediction_kind"] == "mask" and result["threshold"] is None
    exp = numpy_scores(mask, gt)
    assert (result["pixel"]["tp"], result["pixel"]["fp"], result["pixel"]["fn"]) == (exp["tp"], exp["fp"], exp["fn"])
    assert result["pixel"]["iou"] == pytest.approx(exp["iou"], rel=1e-12)
    assert result["per_slice"]["fp"] == (mask & ~gt).sum(axis=(1, 2)).tolist()
    assert sum(result["per_slice"]["tp"]) == exp["tp"] and sum(result["per_slice"]["fn"]) == exp["fn"]
    assert "sweep" not in result and "rand" not in result   # a mask has no threshold to sweep


def test_shape_mismatch_is_an_input_error_naming_both(tmp_path, small_labels):
    write_npy(tmp_path / "prob.npy", np.zeros((3, 1024, 1024), np.float32))
    cfg = OmegaConf.load(REPO / "conf" / "evaluate.yaml")
    del cfg["defaults"]
    cfg.prediction, cfg.labels, cfg.output = str(tmp_path / "prob.npy"), str(small_labels), str(tmp_path / "o")
    with pytest.raises(InputError) as info:
        run(cfg)
    msg = str(info.value)
    assert "prob.npy" in msg and str(small_labels) in msg and "(3, 1024, 1024)" in msg and "(4, 1024, 1024)" in msg
    assert not (tmp_path / "o" / "metrics.json").exists()
    assert cli(f"prediction={tmp_path / 'prob.npy'}", f"labels={small_labels}", f"output={tmp_path / 'o'}") == 2


def test_multiclass_class_maps(tmp_path, gt_stack):
    gt = gt_stack[:2, :256, :256]
    labels = gt.astype(np.uint8)
    labels[:, :, 128:][gt[:, :, 128:]] = 2      # mitochondria in the right half are "class 2"
    pred = labels.copy()
    pred[:, :64] = 0                            # the top 64 rows predicted as background
    swap = pred[:, 192:, :128]
    swap[swap == 1] = 2                         # class 1 called class 2 in a corner: fn of 1, fp of 2
    write_npy(tmp_path / "labels.npy", labels)
    write_npy(tmp_path / "pred.npy", pred)
    out = tmp_path / "eval"
    assert cli(f"prediction={tmp_path / 'pred.npy'}", f"labels={tmp_path / 'labels.npy'}", f"output={out}",
               "num_classes=3") == 0
    result = json.loads((out / "metrics.json").read_text())
    ious = []
    for c in (1, 2):
        inter = np.sum((pred == c) & (labels == c))
        union = np.sum((pred == c) | (labels == c))
        ious.append(inter / union)
    assert result["pixel"]["mean_iou"] == pytest.approx(np.mean(ious), rel=1e-12)
    assert result["pixel"]["accuracy"] == pytest.approx(np.mean(pred == labels), rel=1e-12)
    assert np.array(result["pixel"]["confusion"]).sum() == labels.size
    # per slice and foreground class: the counts a paired bootstrap of the mean IoU resamples
    per_slice = result["per_slice"]
    for z in range(2):
        for i, c in enumerate((1, 2)):
            p, t = pred[z] == c, labels[z] == c
            assert [per_slice[k][z][i] for k in ("tp", "fp", "fn")] == [np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)]
    assert np.sum(per_slice["fn"], axis=0)[0] > 0 and np.sum(per_slice["fp"], axis=0)[1] > 0   # the swap
    assert pooled_iou(per_slice) == pytest.approx(result["pixel"]["mean_iou"], rel=1e-12)


def test_infer_kind_of_prediction_volumes(tmp_path):
    def vol(a):
        return ArrayVolume(a, layout="zyx", voxel_size=None, name="x", path=tmp_path / "x")

    m = np.zeros((2, 8, 8), np.uint8)
    m[0, :4] = 1
    assert infer_kind(vol(m)) == ("mask", 1.0)
    assert infer_kind(vol(m * 255)) == ("mask", 1.0)
    ramp = np.arange(128, dtype=np.uint8).reshape(2, 8, 8)
    assert infer_kind(vol(ramp)) == ("probabilities", 1 / 255)
    assert infer_kind(vol(m.astype(np.int32) * 7 + m.astype(np.int32))) == ("labels", 1.0)
    assert infer_kind(vol(m.astype(np.float32) / 2)) == ("probabilities", 1.0)
    write_npy(tmp_path / "bad.npy", np.full((1, 4, 4), 3.0, np.float32))
    pred = open_prediction(tmp_path / "bad.npy")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pred.probabilities(pred.volume[:])
