"""The adapt preset (`+experiment=adapt`): adapting a trained model to new data from a few labelled slices,
from a model folder and from a checkpoint file, on a time budget; and from random init for comparison."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from cemkit.errors import InputError
from cemkit.finetune.orchestrate import run_finetune
from tiny_data import labelled_tif_pair

TINY = ["data.crop=64", "data.batch_size=4", "val.tile=null", "val.overlays=0", "logger=none"]


def _cfg(*overrides: str):
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        return compose(config_name="finetune", overrides=list(overrides))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny trained model (resnet10t, one lab's synthetic style) to adapt."""
    root = tmp_path_factory.mktemp("adapt_source")
    images, labels = labelled_tif_pair(root, shape=(6, 64, 64), seed=1, style=0)
    out = root / "model"
    run_finetune(_cfg("+experiment=tiny_finetune", f"data.images={images}", f"data.labels={labels}",
                      f"output={out}", "data.val_slices=0", "trainer.max_steps=20", "val.every=20", "logger=none",
                      "data.voxel_size=10"))
    return out


@pytest.fixture(scope="module")
def new_data(tmp_path_factory) -> tuple[Path, Path]:
    """Two labelled slices of another 'lab' (another synthetic style), at half the source's pixel size."""
    return labelled_tif_pair(tmp_path_factory.mktemp("adapt_new"), shape=(2, 128, 128), seed=5, style=2)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}


@pytest.mark.parametrize("init", ["folder", "file"])
def test_adapt_starts_from_a_trained_model_and_ends_on_its_time_budget(source, new_data, tmp_path, init, caplog):
    spec = source if init == "folder" else source / "1fm" / "best.ckpt"
    out = tmp_path / "adapted"
    cfg = _cfg("+experiment=adapt", f"model.init={spec}", f"data.images={new_data[0]}",
               f"data.labels={new_data[1]}", f"output={out}", "trainer.max_time=6", "val.every=2",
               "data.voxel_size=5", *TINY)
    assert cfg.trainer.max_steps == 100000 and cfg.data.val_slices == 0  # the time decides; every slice trains
    with caplog.at_level(logging.INFO, logger="cemkit.finetune.inputs"):
        run_finetune(cfg)
    assert "adapting a model trained at 10 nm: the data (5 nm) is resampled to it" in caplog.text
    result = json.loads((out / "1fm" / "result.json").read_text())
    assert result["init_kind"] == "segmenter" and result["init"] == str(spec)
    assert result["arch"] == "resnet10t"  # the trained model's architecture, not the preset's resnet18
    assert result["pixel_size_nm"] == 10.0  # the 5 nm data was brought to the model's 10 nm, as predict does
    assert result["budget"]["seconds"] == 6.0 and result["steps"] == result["budget"]["planned_steps"] > 0
    before, after = _weights(source / "1fm" / "best.ckpt"), _weights(out / "1fm" / "best.ckpt")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained


def test_adapt_without_a_model_trains_from_random_init(new_data, tmp_path):
    out = tmp_path / "random"
    run_finetune(_cfg("+experiment=adapt", f"data.images={new_data[0]}", f"data.labels={new_data[1]}",
                      f"output={out}", "trainer.max_time=null", "trainer.max_steps=2", "val.every=2",
                      "model/encoder=resnet10t", *TINY))
    result = json.loads((out / "1fm" / "result.json").read_text())
    assert result["init_kind"] == "none" and result["steps"] == 2


def test_adapting_a_model_whose_frames_need_more_slices_fails_before_training(source, new_data, tmp_path):
    """A 5fm model needs 3 consecutive slices (the ends mirror-padded); the new data has 2: the error names the data, and nothing is
    trained or written."""
    out = tmp_path / "five"
    cfg = _cfg("+experiment=adapt", f"model.init={source / '1fm' / 'best.ckpt'}", "model.frames=5",
               f"data.images={new_data[0]}",
               f"data.labels={new_data[1]}", f"output={out}", *TINY)
    with pytest.raises(InputError, match=r"images.tif: 5-frame inputs need at least 3 consecutive slices, found 2"):
        run_finetune(cfg)
    assert not (out / "5fm" / "best.ckpt").exists()
