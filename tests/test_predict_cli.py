"""`cemkit predict` end to end through the CLI with real finetune-format checkpoints on real EM data."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cemkit.cli.main import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cdeep3m_mito"


def _save_model(path: Path, frames: int, seed: int) -> None:
    from cemkit.models.checkpoint import save_segmenter
    from cemkit.models.deepem3d import build_segmenter

    torch.manual_seed(seed)
    model, _ = build_segmenter("resnet10t", frames, num_classes=2, decoder_width=8)
    save_segmenter(path, model, {"frames": frames, "num_classes": 2, "norms": [0.5, 0.2], "arch": "resnet10t"})


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    for seed, frames in enumerate((1, 3, 5)):
        _save_model(root / f"{frames}fm" / "best.ckpt", frames, seed)
    return root


@pytest.fixture(scope="module")
def em_stack(tmp_path_factory):
    from PIL import Image

    from cemkit.io import write_tif_stack

    if not DATA.is_dir():
        pytest.skip("shared CDeep3M sample data not present")
    files = sorted((DATA / "test" / "images").glob("*.png"))
    crop = np.stack([np.asarray(Image.open(f))[200:264, 300:364] for f in files])
    path = tmp_path_factory.mktemp("em") / "test_crop.tif"
    write_tif_stack(path, crop, voxel_size=(40.0, 5.9, 5.9))
    return path


def test_cli_predict_ensemble_writes_all_outputs(run_folder, em_stack, tmp_path):
    out = tmp_path / "pred"
    code = main(["predict", f"checkpoint={run_folder}", f"input={em_stack}", f"output={out}",
                 "tile_size=64", "overlap=0.25", "border=0", "batch_size=8", "slab_size=5", "tta=2", "threshold=0.5",
                 "device=cpu", "progress=false", "overlays=2", "min_size=2"])
    assert code == 0
    rec = json.loads((out / "predict.json").read_text())
    assert [m["frames"] for m in rec["models"]] == [1, 3, 5]
    assert rec["input"]["shape"] == [5, 64, 64]
    from cemkit.io import open_volume

    prob = open_volume(out / "probabilities.zarr")
    assert prob.shape == (5, 64, 64) and prob.dtype == np.float16
    p = np.asarray(prob[...]).astype(np.float32)
    assert 0.0 <= p.min() and p.max() <= 1.0 and p.std() > 0
    mask = np.asarray(open_volume(out / "mask.zarr")[...])
    clear = np.abs(p - 0.5) > 1e-3                      # float16 storage rounds near the threshold
    np.testing.assert_array_equal(mask[clear], (p[clear] > 0.5).astype(np.uint8))
    labels = np.asarray(open_volume(out / "labels.zarr")[...])
    with open(out / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == labels.max() == rec["objects"]
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_cli_predict_bad_input_exits_2(run_folder, tmp_path):
    assert main(["predict", f"checkpoint={run_folder}", f"input={tmp_path / 'missing.tif'}",
                 f"output={tmp_path / 'o'}", "device=cpu"]) == 2
    assert main(["predict", f"checkpoint={tmp_path / 'nope.ckpt'}", f"input={tmp_path}",
                 f"output={tmp_path / 'o'}"]) == 2
    assert main(["predict", f"checkpoint={run_folder}", f"input={tmp_path}", "tta=3",
                 f"output={tmp_path / 'o'}"]) == 2


def test_cli_predict_combines_saved_predictions_like_the_models(run_folder, em_stack, tmp_path):
    """predictions=[...] (CDeep3M's EnsemblePredictions) gives the map of checkpoint=FOLDER without rerunning."""
    from cemkit.io import open_volume

    common = [f"input={em_stack}", "tile_size=64", "border=0", "batch_size=8", "slab_size=5", "tta=2",
              "device=cpu", "progress=false", "overlays=0", "min_size=2", "prob_dtype=float32"]
    members = []
    for frames in (1, 3, 5):
        out = tmp_path / f"p_{frames}fm"
        assert main(["predict", f"checkpoint={run_folder / f'{frames}fm' / 'best.ckpt'}", f"output={out}", *common]) == 0
        members.append(out)
    assert main(["predict", f"checkpoint={run_folder}", f"output={tmp_path / 'direct'}", *common]) == 0
    saved = tmp_path / "saved"
    assert main(["predict", f"predictions=[{','.join(map(str, members))}]", f"output={saved}", *common]) == 0

    direct = np.asarray(open_volume(tmp_path / "direct" / "probabilities.zarr")[...])
    combined = np.asarray(open_volume(saved / "probabilities.zarr")[...])
    np.testing.assert_allclose(combined, direct, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(open_volume(saved / "labels.zarr")[...]),
                                  np.asarray(open_volume(tmp_path / "direct" / "labels.zarr")[...]))
    rec = json.loads((saved / "predict.json").read_text())
    assert [p["prediction"] for p in rec["predictions"]] == [str(m.resolve()) for m in members]
    assert [m["frames"] for m in rec["models"]] == [1, 3, 5] and not rec["resumed"]
    assert main(["predict", f"predictions=[{','.join(map(str, members))}]", f"output={saved}", *common]) == 0
    assert json.loads((saved / "predict.json").read_text())["resumed"]          # same members: nothing to redo

    vote = tmp_path / "vote"
    assert main(["predict", f"predictions=[{','.join(map(str, members))}]", f"output={vote}", "ensemble=vote",
                 *common]) == 0
    maps = [np.asarray(open_volume(m / "probabilities.zarr")[...]) for m in members]
    np.testing.assert_allclose(np.asarray(open_volume(vote / "probabilities.zarr")[...]),
                               sum((p > 0.5).astype(np.float32) for p in maps) / 3, atol=1e-6)


def test_cli_predict_saved_prediction_errors(run_folder, em_stack, tmp_path):
    from cemkit.io import write_tif_stack

    other = tmp_path / "other.tif"
    write_tif_stack(other, np.full((5, 32, 32), 0.5, np.float32))
    mask = tmp_path / "mask.tif"
    write_tif_stack(mask, np.zeros((5, 64, 64), np.uint8))
    out = f"output={tmp_path / 'o'}"
    assert main(["predict", f"input={em_stack}", out]) == 2                                   # neither
    assert main(["predict", f"checkpoint={run_folder}", f"predictions=[{other}]", f"input={em_stack}", out]) == 2
    assert main(["predict", f"predictions=[{other}]", f"input={em_stack}", out]) == 2         # wrong shape
    assert main(["predict", f"predictions=[{tmp_path / 'missing'}]", f"input={em_stack}", out]) == 2
    assert main(["predict", f"predictions=[{mask}]", f"input={em_stack}", out]) == 2          # a mask
    assert main(["predict", f"predictions=[{other},{other}]", f"input={em_stack}", "ensemble=weighted",
                 "weights=[1]", out]) == 2
    assert not (tmp_path / "o" / "predict.json").exists()
