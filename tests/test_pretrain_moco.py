"""MoCo maths: EMA update, queue, InfoNCE, split BatchNorm, augmentations, data order, LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cemkit.errors import ConfigError
from cemkit.models.encoders import create_encoder
from cemkit.pretrain.augment import TwoViewTransform
from cemkit.pretrain.data import StepBatchSampler, TwoViewDataset
from cemkit.pretrain.moco import (
    MoCoV2,
    SplitBatchNorm2d,
    contrastive_accuracy,
    convert_split_batchnorm,
    embedding_std,
    enqueue,
    infonce_logits,
    infonce_loss,
    momentum_update,
)
from cemkit.pretrain.module import LRSchedule, scaled_lr
from tiny_pretrain_config import data_settings

AUG = {
    "rotate": {"limit": 180, "p": 0.5, "border_mode": "constant"},
    "crop": {"scale": [0.2, 1.0], "ratio": [0.75, 1.3333333]},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "p": 1.0},
    "blur": {"sigma": [0.1, 2.0], "p": 0.5},
    "flip": {"horizontal": 0.5, "vertical": 0.5},
    "noise": {"std": [0.00316, 0.01], "p": 0.5},
}
NO_AUG = {
    "rotate": {"limit": 180, "p": 0.0, "border_mode": "constant"},
    "crop": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "p": 0.0},
    "blur": {"sigma": [0.1, 2.0], "p": 0.0},
    "flip": {"horizontal": 0.0, "vertical": 0.0},
    "noise": {"std": [0.00316, 0.01], "p": 0.0},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- EMA


def test_momentum_update_is_ema_of_parameters_only():
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        online.bias.copy_(torch.tensor([4.0, 0.0, -4.0]))
        target.weight.copy_(torch.tensor([0.0, 0.0, 0.0]))
        target.bias.copy_(torch.tensor([1.0, 1.0, 1.0]))
        online.running_mean.fill_(5.0)
    momentum_update(online, target, 0.75)
    assert torch.equal(target.weight, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.equal(target.bias, torch.tensor([1.75, 0.75, -0.25]))
    assert torch.equal(target.running_mean, torch.zeros(3))  # buffers are not averaged
    momentum_update(online, target, 0.0)
    assert torch.equal(target.weight, online.weight)


# ----------------------------------------------------------------------------- queue


def test_enqueue_writes_columns_and_wraps():
    queue = torch.zeros(2, 5)
    ptr = torch.zeros(1, dtype=torch.long)
    keys = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    enqueue(queue, ptr, keys)
    assert ptr.item() == 3
    assert queue.tolist() == [[1, 2, 3, 0, 0], [10, 20, 30, 0, 0]]
    enqueue(queue, ptr, torch.tensor([[4.0, 40.0], [5.0, 50.0], [6.0, 60.0]]))  # columns 3, 4, then 0
    assert ptr.item() == 1
    assert queue.tolist() == [[6, 2, 3, 4, 5], [60, 20, 30, 40, 50]]
    big = torch.arange(14, dtype=torch.float32).reshape(7, 2)  # more keys than the queue holds
    enqueue(queue, ptr, big)
    assert ptr.item() == (1 + 7) % 5
    # the last 5 keys (rows 2..6) land in columns 3, 4, 0, 1, 2
    assert queue[0].tolist() == [8, 10, 12, 4, 6]
    with pytest.raises(ValueError):
        enqueue(queue, ptr, torch.zeros(2, 3))


# ----------------------------------------------------------------------------- InfoNCE


def test_infonce_logits_loss_and_accuracy():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queue = torch.tensor([[0.0, -1.0, 0.6], [1.0, 0.0, 0.8]])
    logits = infonce_logits(q, k, queue, temperature=0.5)
    expected = torch.tensor([[1.0, 0.0, -1.0, 0.6], [0.0, 1.0, 0.0, 0.8]]) / 0.5
    assert torch.equal(logits, expected)
    assert contrastive_accuracy(logits).item() == 0.5
    ref = -(torch.log_softmax(expected, dim=1)[:, 0]).mean()
    torch.testing.assert_close(infonce_loss(logits), ref)
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert embedding_std(z).item() == pytest.approx(math.sqrt(2 / 3))
    assert embedding_std(torch.ones(4, 8)).item() == 0.0


# ----------------------------------------------------------------------------- split BN


def test_split_batchnorm_uses_per_split_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    split = SplitBatchNorm2d(3)
    split.load_state_dict(bn.state_dict())
    split.num_splits = 2
    x = torch.randn(8, 3, 5, 5, dtype=torch.float32) * 3 + 1
    out_channels_last = split(x.contiguous(memory_format=torch.channels_last))
    split.load_state_dict(bn.state_dict())
    out = split(x)
    torch.testing.assert_close(out_channels_last, out)
    for s in range(2):  # split s = samples s, s + 2, s + 4, s + 6
        ref_bn = nn.BatchNorm2d(3)
        ref_bn.load_state_dict(bn.state_dict())
        torch.testing.assert_close(out[s::2], ref_bn(x[s::2]), rtol=1e-5, atol=1e-5)
    assert out_channels_last.is_contiguous(memory_format=torch.channels_last)
    # running stats: mean of the two splits' updates (momentum 0.1; unbiased variances as BatchNorm)
    mean_s = torch.stack([x[s::2].mean(dim=(0, 2, 3)) for s in range(2)])
    var_s = torch.stack([x[s::2].var(dim=(0, 2, 3), unbiased=True) for s in range(2)])
    torch.testing.assert_close(split.running_mean, 0.1 * mean_s.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.running_var, 0.9 + 0.1 * var_s.mean(0), rtol=1e-5, atol=1e-6)
    # gradients equal those of per-split BatchNorm
    xg = x.clone().requires_grad_(True)
    split.train()
    (split(xg) * torch.arange(8.0).view(8, 1, 1, 1)).sum().backward()
    ref, xr = nn.BatchNorm2d(3), x.clone().requires_grad_(True)
    ref.load_state_dict(bn.state_dict())
    ref_out = torch.empty_like(x)
    for s in range(2):
        ref_out[s::2] = ref(xr[s::2])
    (ref_out * torch.arange(8.0).view(8, 1, 1, 1)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-5)
    # eval: plain BN with running statistics
    split.eval(), bn.eval()
    torch.testing.assert_close(split(x), nn.functional.batch_norm(x, split.running_mean, split.running_var,
                                                                   split.weight, split.bias, False, 0.1, split.eps))


def test_convert_split_batchnorm_keeps_keys_and_handles_bn_act():
    model = create_encoder("resnet10t", in_chans=1)
    keys = list(model.state_dict())
    n = convert_split_batchnorm(model, 4)
    assert n == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and n > 0
    assert list(model.state_dict()) == keys
    eff = create_encoder("efficientnet_b0", in_chans=1)
    ref = create_encoder("efficientnet_b0", in_chans=1)
    ref.load_state_dict(eff.state_dict())
    convert_split_batchnorm(eff, 1)  # one split: identical to plain BN + activation
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(eff(x), ref(x))
    assert type(eff.bn1).__name__ == "SplitBatchNormAct2d"


def test_moco_key_encoder_gets_no_gradient_and_queue_moves():
    torch.manual_seed(0)
    model = MoCoV2(create_encoder("resnet10t", 1), dim=16, queue_size=12, mlp_hidden=32, bn_splits=2)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    x = torch.randn(4, 1, 32, 32)
    logits, q, k = model(x, x.flip(-1))
    assert logits.shape == (4, 13) and q.shape == (4, 16)
    infonce_loss(logits).backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.encoder_q.conv1[0].weight.grad is not None
    assert model.queue_ptr.item() == 4 and torch.equal(model.queue[:, :4], k.T)
    assert {"queue", "queue_ptr"} <= set(model.state_dict())


# ----------------------------------------------------------------------------- augmentations


def test_two_views_are_seeded_and_normalised():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(80, 70), dtype=np.uint8)
    t = TwoViewTransform(AUG, 48, mean=0.5, std=0.25)
    a, b = t(img, seed=7), t(img, seed=7)
    assert a.shape == (2, 1, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, t(img, seed=8))
    # with every random step off, a view is exactly (image / 255 - mean) / std
    square = rng.integers(0, 256, size=(48, 48), dtype=np.uint8)
    plain = TwoViewTransform(NO_AUG, 48, mean=0.5, std=0.25)(square, seed=1)
    ref = (torch.from_numpy(square).float() / 255.0 - 0.5) / 0.25
    torch.testing.assert_close(plain[0, 0], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain[1, 0], ref, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError):
        TwoViewTransform(dict(AUG, rotate={"limit": 10, "p": 0.5, "border_mode": "mirror"}), 48, 0.5, 0.25)


def test_view_warp_is_crop_resize_rotation_and_flips_in_one_resampling():
    import cv2

    from cemkit.pretrain.augment import crop_box, view_matrix

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)

    def warp(size, box, angle, fh, fv):
        m = view_matrix(size, box, angle, img.shape, fh, fv)
        return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

    np.testing.assert_array_equal(warp(40, (0, 0, 40, 40), 0.0, False, False), img)
    np.testing.assert_array_equal(warp(40, (0, 0, 40, 40), 0.0, True, True), img[::-1, ::-1])
    np.testing.assert_array_equal(warp(20, (10, 5, 20, 20), 0.0, True, False), img[10:30, 5:25][:, ::-1])
    # a crop resized to half its size: the pixel-centre-aligned mean of 2 x 2 blocks, as cv2.resize
    # (fixed-point rounding of the two OpenCV paths differs by at most 1)
    half = warp(10, (4, 8, 20, 20), 0.0, False, False).astype(int)
    assert np.abs(half - cv2.resize(img[4:24, 8:28], (10, 10), interpolation=cv2.INTER_LINEAR)).max() <= 1
    # 90 degrees counter-clockwise about the centre, as np.rot90
    assert np.abs(warp(40, (0, 0, 40, 40), 90.0, False, False).astype(int) - np.rot90(img)).max() <= 1
    # crops: inside the image, area fraction within scale, aspect within ratio (up to rounding)
    for _ in range(200):
        top, left, h, w = crop_box(rng, 60, 80, (0.2, 1.0), (0.75, 4 / 3))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.2 * 4800 * 0.9 <= h * w <= 4800 and 0.7 <= w / h <= 1.4


# ----------------------------------------------------------------------------- data order


def test_step_batches_split_the_global_batch_over_ranks():
    r0 = list(StepBatchSampler(8, rank=0, world=2, start_step=0, total_steps=3))
    r1 = list(StepBatchSampler(8, rank=1, world=2, start_step=0, total_steps=3))
    assert r0 == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert r1 == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23]]
    assert list(StepBatchSampler(8, 0, 2, start_step=2, total_steps=3)) == r0[2:]
    with pytest.raises(ConfigError):
        StepBatchSampler(6, 0, 4, 0, 1)


def test_dataset_visits_every_patch_once_per_pass():
    patches = [np.full((40, 40), i, np.uint8) for i in range(10)]
    ds = TwoViewDataset(patches, TwoViewTransform(NO_AUG, 32, 0.0, 1.0), seed=3)
    first = [ds.patch_index(i) for i in range(10)]
    second = [ds.patch_index(i) for i in range(10, 20)]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    assert ds.patch_index(13) == TwoViewDataset(patches, ds.transform, seed=3).patch_index(13)
    value = ds[5][0, 0, 0, 0].item() * 255.0
    assert value == pytest.approx(ds.patch_index(5), abs=1e-3)


# ----------------------------------------------------------------------------- LR


def test_lr_schedules():
    assert scaled_lr(0.03, 128) == pytest.approx(0.015)
    step = LRSchedule(1000, "step", [0.6, 0.8], 0.1)
    assert [step(0), step(599), step(600), step(799), step(800)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cos = LRSchedule(100, "cosine", warmup_steps=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    with pytest.raises(ConfigError):
        LRSchedule(10, "linear")
    with pytest.raises(ConfigError):
        LRSchedule(10, "step", [120, 160])


# ----------------------------------------------------------------------------- sources and command helpers


def _write_corpus(root, patches, mean=0.4, std=0.2):
    """A minimal corpus in the `cemkit curate` layout (shards/*.npy + metadata.json)."""
    import json

    (root / "shards").mkdir(parents=True)
    np.save(root / "shards" / "patches_00000.npy", patches)
    meta = {"format": "cemkit-corpus", "version": 1, "patch_size": patches.shape[1], "mean": mean, "std": std,
            "shards": [{"file": "shards/patches_00000.npy", "count": len(patches)}]}
    (root / "metadata.json").write_text(json.dumps(meta))


def test_sources_corpus_and_images(tmp_path):
    from cemkit.io import write_png_folder
    from cemkit.pretrain.data import open_source

    patches = np.stack([np.full((32, 32), 10 * i, np.uint8) for i in range(5)])
    _write_corpus(tmp_path / "corpus", patches)
    src = open_source(data_settings(corpus=str(tmp_path / "corpus"), images=None))
    assert len(src) == 5 and (src.mean, src.std) == (0.4, 0.2)
    assert np.array_equal(src.patches[3], patches[3]) and src.source_id.startswith("corpus-")
    assert open_source(data_settings(corpus=str(tmp_path / "corpus"), mean=0.5)).mean == 0.5

    img = np.zeros((2, 100, 130), np.uint8)
    img[0, :, :65], img[1] = 200, 100
    write_png_folder(tmp_path / "imgs", img)
    src = open_source(data_settings(images=str(tmp_path / "imgs"), tile_size=50))
    assert len(src) == 2 * 2 * 2  # two 100 x 130 images -> 2 x 2 tiles of 50 px each
    assert src.mean == pytest.approx((0.5 * 200 + 100) / 2 / 255)
    assert src.patches[0].shape == (50, 50)
    whole = open_source(data_settings(images=str(tmp_path / "imgs"), tile_size=None))
    assert len(whole) == 2 and whole.patches[1].shape == (100, 130)
    with pytest.raises(ConfigError, match="exactly one"):
        open_source(data_settings(corpus=None, images=None))
    from cemkit.errors import InputError

    with pytest.raises(InputError, match="not a cemkit corpus"):
        open_source(data_settings(corpus=str(tmp_path / "imgs")))


def test_a_queue_longer_than_one_pass_over_the_data_is_named():
    from cemkit.pretrain.command import queue_overlap_warning

    # 410 patches, batch 64: at most 346 keys fit without keys of the queries' own patches
    assert queue_overlap_warning(256, 410, 64) is None
    assert queue_overlap_warning(346, 410, 64) is None
    message = queue_overlap_warning(347, 410, 64)
    assert "moco.queue_size=347" in message and "410 patches" in message and "<= 346" in message
    assert "<= 0" in queue_overlap_warning(2048, 32, 64)


def test_ckpt_path_and_run_length(tmp_path):
    from omegaconf import OmegaConf

    from cemkit.errors import InputError
    from cemkit.pretrain.command import resolve_ckpt_path, total_steps

    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("auto", tmp_path) is None
    with pytest.raises(InputError, match="last.ckpt"):
        resolve_ckpt_path("last", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"epochs": 3, "data": {"batch_size": 8}, "trainer": {"max_steps": 5}})
    assert total_steps(cfg, num_patches=30) == 3 * 3
    cfg.epochs = None
    assert total_steps(cfg, num_patches=30) == 5
    cfg.trainer.max_steps = -1
    with pytest.raises(ConfigError):
        total_steps(cfg, 30)
