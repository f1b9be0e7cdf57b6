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
    from cemkit.finetune.checkpoint import save_segmenter
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
