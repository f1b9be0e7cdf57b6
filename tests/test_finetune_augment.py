"""Training augmentations keep image and labels aligned, and every frame gets the same geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cemkit.finetune.data import build_augmentation


def _blobs(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 6)
    return (field > np.quantile(field, 0.8)).astype(np.uint8)


@pytest.mark.parametrize("geometric", [False, True])
def test_geometric_changes_move_image_and_labels_together(geometric):
    aug = build_augmentation(True, photometric=False, geometric=geometric)
    moved = 0
    for seed in range(20):
        label = _blobs(seed)
        image = np.repeat((label * 200 + 20)[..., None], 3, axis=2).astype(np.uint8)
        aug.set_random_seed(seed)
        out = aug(image=image, mask=label)
        img, lab = out["image"], out["mask"]
        assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
        # the image was drawn from the labels: it must still show them where they are (interpolated edges aside)
        assert np.mean((img[..., 1] > 120) == (lab > 0)) > 0.98
        assert np.array_equal(img[..., 0], img[..., 2])  # every frame moved the same way
        moved += not np.array_equal(lab, label)
    assert moved >= 10


def test_strong_photometric_changes_grey_levels_but_not_labels():
    aug = build_augmentation(True, photometric="strong", geometric=False)
    label = _blobs(1)
    image = np.full((96, 96, 1), 90, np.uint8)
    changed = 0
    for seed in range(20):
        aug.set_random_seed(seed)
        out = aug(image=image, mask=label)
        flips = [label, label[::-1], label[:, ::-1], label[::-1, ::-1]]
        assert any(np.array_equal(np.rot90(f, k), out["mask"]) or np.array_equal(np.rot90(f, k).T, out["mask"])
                   for f in flips for k in range(4))
        changed += abs(float(out["image"].mean()) - 90) > 5
    assert changed >= 8


def test_unknown_photometric_setting_is_refused():
    with pytest.raises(ValueError, match="strong"):
        build_augmentation(True, photometric="extreme")


def test_hard_negative_centres_lie_on_dark_background_away_from_labels():
    from cemkit.finetune.data import LabelledVolume, PatchDataset, dark_background

    image = np.full((3, 64, 64), 200, np.uint8)
    label = np.zeros((3, 64, 64), np.uint8)
    image[:, 10:16, 10:16] = 40          # a labelled dark object
    label[:, 10:16, 10:16] = 1
    image[:, 40:44, :] = 30              # a dark unlabelled band (myelin-like)
    vol = LabelledVolume(image, label, np.arange(3), "v")
    centres = dark_background(vol)
    assert len(centres) == 3 * 4 * 64
    assert set(centres[:, 1].tolist()) == {40, 41, 42, 43}
    ds = PatchDataset([vol], 1, 16, 50, (0.5, 0.2), seed=0, hard_negatives=1.0)
    for i in range(10):
        _, y = ds[i]
        assert int(y.sum()) == 0  # a 16 px patch on the band never reaches the object
    plain = PatchDataset([vol], 1, 16, 50, (0.5, 0.2), seed=0)
    same = PatchDataset([vol], 1, 16, 50, (0.5, 0.2), seed=0, hard_negatives=0.0)
    assert all(torch_equal(plain[i], same[i]) for i in range(5))  # off = the patches of before


def torch_equal(a, b) -> bool:
    return all(bool((x == y).all()) for x, y in zip(a, b))
