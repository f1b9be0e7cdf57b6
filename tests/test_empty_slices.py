"""data.empty_slices: label slices with no foreground among slices with foreground are taken as not annotated."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from cemkit.errors import ConfigError
from cemkit.finetune.data import LabelledVolume
from cemkit.finetune.empty_slices import apply_empty_slice_policy, empty_label_slices, resolve_policy
from cemkit.finetune.inputs import load_data
from cemkit.finetune.losses import IGNORE_INDEX
from cemkit.io import write_tif_stack


def _vol(label: np.ndarray, slices) -> LabelledVolume:
    return LabelledVolume(np.zeros(label.shape, np.uint8), label, np.asarray(slices), "v")


def test_empty_slices_are_found_and_skipped_only_where_others_hold_foreground():
    lab = np.zeros((4, 3, 3), np.uint8)
    lab[0, 1, 1] = 1
    lab[2, 0, 0] = IGNORE_INDEX  # partly unlabelled, the rest background: empty
    lab[3] = IGNORE_INDEX        # nothing labelled: not a labelled slice at all
    vol = _vol(lab, [0, 1, 2])
    assert empty_label_slices(vol) == [1, 2]
    assert apply_empty_slice_policy(vol, "skip").slices.tolist() == [0]
    assert apply_empty_slice_policy(vol, "train").slices.tolist() == [0, 1, 2]
    blank = _vol(np.zeros((2, 3, 3), np.uint8), [0, 1])  # no foreground anywhere: nothing says they are unannotated
    assert apply_empty_slice_policy(blank, "skip").slices.tolist() == [0, 1]
    with pytest.raises(ConfigError, match="data.empty_slices must be one of auto, skip, train, got 'drop'"):
        apply_empty_slice_policy(vol, "drop")
    assert [resolve_policy("auto", True), resolve_policy("auto", False), resolve_policy("skip", False)] == \
        ["skip", "train", "skip"]


@pytest.mark.parametrize("policy, trained", [("skip", [0, 2]), ("train", [0, 1, 2]), ("auto", [0, 1, 2])])
def test_a_blank_label_slice_of_a_stack_is_trained_on_unless_skip(tmp_path, caplog, policy, trained):
    """A tif stack is labelled as a volume: auto trains on its empty slices (a folder of files: below)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)
    label = np.zeros((3, 32, 32), np.uint8)
    label[0, 4:12, 4:12] = 255
    label[2, 20:28, 20:28] = 255  # slice 1 is blank, as two of the VNC sections are
    write_tif_stack(tmp_path / "im.tif", image)
    write_tif_stack(tmp_path / "lab.tif", label)
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        cfg = compose(config_name="finetune", overrides=[f"data.images={tmp_path / 'im.tif'}",
                                                         f"data.labels={tmp_path / 'lab.tif'}", "data.val_slices=0",
                                                         f"data.empty_slices={policy}"])
    with caplog.at_level(logging.WARNING):
        data = load_data(cfg.data, frames=3)
    assert data.train[0].slices.tolist() == trained
    assert data.train[0].image.shape[0] == 3  # the blank slice still gives 3fm context
    assert ("z=1 hold no foreground" in caplog.text) == (policy == "skip")


def test_a_blank_label_file_in_a_folder_is_skipped_by_default(tmp_path, caplog):
    """Folders of label files (CDeep3M, the VNC sections): a blank file among files with foreground is not
    annotated, and auto skips it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for z in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "images" / f"s_{z:02d}.png")
        label = np.zeros((32, 32), np.uint8)
        if z != 1:
            label[4:12, 4:12] = 255
        Image.fromarray(label).save(tmp_path / "labels" / f"s_{z:02d}.png")
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        cfg = compose(config_name="finetune", overrides=[f"data.images={tmp_path / 'images'}",
                                                         f"data.labels={tmp_path / 'labels'}", "data.val_slices=0"])
    assert cfg.data.empty_slices == "auto"
    with caplog.at_level(logging.WARNING):
        data = load_data(cfg.data, frames=1)
    assert data.train[0].slices.tolist() == [0, 2]
    assert "z=1 hold no foreground" in caplog.text
