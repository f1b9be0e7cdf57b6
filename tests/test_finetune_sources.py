"""`data.sources`: several labelled volumes in one finetune run, sampled by weight and brought to one pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cemkit.data.synthetic import make_volume
from cemkit.errors import ConfigError, InputError
from cemkit.finetune.data import PatchDataset
from cemkit.finetune.inputs import load_data
from cemkit.finetune.sources import rescale
from cemkit.io import write_tif_stack

DATA_DEFAULTS = OmegaConf.load(Path(__file__).parents[1] / "conf" / "finetune.yaml").data


def _data_cfg(**overrides):
    return OmegaConf.merge(DATA_DEFAULTS, overrides)


def _pair(folder: Path, name: str, shape=(4, 64, 64), seed=0, voxel_size=None) -> dict:
    """A synthetic image / 0-255 label pair as tif stacks (with a voxel size in their metadata when given)."""
    sv = make_volume(shape=shape, seed=seed)
    return {"images": str(write_tif_stack(folder / f"{name}_img.tif", sv.image, voxel_size=voxel_size)),
            "labels": str(write_tif_stack(folder / f"{name}_lab.tif", (sv.mito * 255).astype(np.uint8),
                                          voxel_size=voxel_size))}


def test_two_sources_are_both_sampled_by_weight_and_rescaled_to_one_pixel_size(tmp_path):
    a = _pair(tmp_path, "a", seed=0, voxel_size=(40, 5.0, 5.0))
    b = _pair(tmp_path, "b", seed=1, voxel_size=(45, 10.0, 10.0))
    data = load_data(_data_cfg(sources=[a, {**b, "weight": 3.0}], val_slices=1), frames=3)
    assert data.pixel_size_nm == 5.0 and data.weights == [1.0, 3.0]
    assert data.train[0].image.shape == (4, 64, 64) and data.train[1].image.shape == (4, 128, 128)  # 10 nm -> 5 nm
    assert [v.slices.tolist() for v in data.val] == [[3], [3]]
    ds = PatchDataset(data.train, 3, 32, 400, (0.5, 0.2), seed=7, weights=data.weights)
    picked = []
    cut = ds._cut
    ds._cut = lambda vol, z, cy, cx: (picked.append(vol.image.shape[1]), cut(vol, z, cy, cx))[1]
    for i in range(400):
        ds[i]
    share_b = picked.count(128) / len(picked)
    assert picked.count(64) > 0 and 0.65 < share_b < 0.85  # weight 3 of 4
    # patches stay a function of (seed, index)
    x1, y1 = ds[123]
    x2, y2 = PatchDataset(data.train, 3, 32, 400, (0.5, 0.2), seed=7, weights=data.weights)[123]
    assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())


def test_data_voxel_size_is_the_target_and_metadata_fills_in(tmp_path):
    a = _pair(tmp_path, "a", seed=0, voxel_size=(40, 4.0, 4.0))
    b = _pair(tmp_path, "b", seed=1)  # no metadata: its voxel_size is given
    data = load_data(_data_cfg(sources=[a, {**b, "voxel_size": 8.0}], voxel_size=8.0, val_slices=1), frames=1)
    assert data.pixel_size_nm == 8.0
    assert data.train[0].image.shape[1:] == (32, 32) and data.train[1].image.shape[1:] == (64, 64)
    # the one-source shorthand: data.voxel_size is the data's pixel size (no resampling), else its metadata
    one = load_data(_data_cfg(images=a["images"], labels=a["labels"], voxel_size=6.0), frames=1)
    assert one.pixel_size_nm == 6.0 and one.train[0].image.shape[1:] == (64, 64) and one.weights is None
    assert load_data(_data_cfg(images=a["images"], labels=a["labels"]), frames=1).pixel_size_nm == 4.0
    assert load_data(_data_cfg(images=b["images"], labels=b["labels"]), frames=1).pixel_size_nm is None


def test_rescale_keeps_label_values_exact():
    from cemkit.finetune.data import LabelledVolume
    from cemkit.finetune.losses import IGNORE_INDEX

    image = np.zeros((2, 8, 8), np.uint8)
    image[:, :, 4:] = 200
    label = np.zeros((2, 8, 8), np.uint8)
    label[0, :4, :4] = 1
    label[1] = IGNORE_INDEX
    vol = rescale(LabelledVolume(image, label, np.array([0]), "v"), 0.5)
    assert vol.image.shape == (2, 4, 4) and vol.slices.tolist() == [0]
    assert vol.label[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert (vol.label[1] == IGNORE_INDEX).all()
    assert vol.image[0, :, 0].tolist() == [0] * 4 and vol.image[0, :, 3].tolist() == [200] * 4
    assert rescale(vol, None) is vol


def test_bad_sources_name_the_entry_key_and_file(tmp_path):
    a = _pair(tmp_path, "a", voxel_size=(40, 5.0, 5.0))
    b = _pair(tmp_path, "b", voxel_size=(40, 5.0, 5.0))
    missing = {**b, "labels": str(tmp_path / "nowhere" / "labels")}
    with pytest.raises(InputError, match=r"data\.sources\[1\]\.labels: .*nowhere/labels: no such file or folder"):
        load_data(_data_cfg(sources=[a, missing]), frames=1)
    small = str(write_tif_stack(tmp_path / "small.tif", np.zeros((4, 32, 64), np.uint8)))
    with pytest.raises(InputError, match=r"data\.sources\[1\]: image/label size mismatch: .*b_img\.tif .*small\.tif"):
        load_data(_data_cfg(sources=[a, {**b, "labels": small}]), frames=1)
    c = _pair(tmp_path, "c")  # no pixel size anywhere
    with pytest.raises(ConfigError, match=r"data\.sources\[1\]\.voxel_size is needed: .*c_img\.tif"):
        load_data(_data_cfg(sources=[a, c]), frames=1)
    for bad in (0, -5, 2000, 0.01):
        with pytest.raises(ConfigError, match=r"data\.sources\[1\]\.voxel_size"):
            load_data(_data_cfg(sources=[a, {**c, "voxel_size": bad}]), frames=1)
        with pytest.raises(ConfigError, match=r"data\.voxel_size"):
            load_data(_data_cfg(sources=[a, b], voxel_size=bad), frames=1)
    odd = _pair(tmp_path, "odd", voxel_size=(40, 5000.0, 5000.0))
    with pytest.raises(InputError, match=r"odd_img\.tif \(pixel size in the file's metadata"):
        load_data(_data_cfg(sources=[a, odd]), frames=1)
    with pytest.raises(ConfigError, match=r"leave data\.images"):
        load_data(_data_cfg(sources=[a], images=a["images"]), frames=1)
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]: unknown key\(s\) \['image'\]"):
        load_data(_data_cfg(sources=[{**a, "image": "x"}]), frames=1)
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.labels is missing"):
        load_data(_data_cfg(sources=[{"images": a["images"]}]), frames=1)
    with pytest.raises(ConfigError, match=r"data\.sources\[1\]\.weight must be a number > 0"):
        load_data(_data_cfg(sources=[a, {**b, "weight": 0}]), frames=1)
    with pytest.raises(ConfigError, match=r"data\.images=PATH data\.labels=PATH, or data\.sources"):
        load_data(_data_cfg(), frames=1)


def test_sources_from_the_command_line(tmp_path):
    """The override syntax of the docs composes into entries that load_data reads (no training: that part is
    the same as with one source)."""
    from hydra import compose, initialize_config_module

    a = _pair(tmp_path, "a", seed=0, voxel_size=(40, 5.0, 5.0))
    b = _pair(tmp_path, "b", seed=1, voxel_size=(40, 4.0, 4.0))
    sources = (f"data.sources=[{{images:{a['images']},labels:{a['labels']}}},"
               f"{{images:{b['images']},labels:{b['labels']},voxel_size:4.0,weight:2}}]")
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        cfg = compose(config_name="finetune", overrides=[sources, "data.voxel_size=5.0"])
    data = load_data(cfg.data, frames=1)
    assert data.weights == [1.0, 2.0] and data.pixel_size_nm == 5.0
    assert data.train[1].image.shape[1:] == (51, 51)  # 64 px at 4 nm -> 5 nm
