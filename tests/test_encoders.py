"""Encoder creation, first-conv adaptation and the one loader for every checkpoint layout."""

from __future__ import annotations

import collections

import pytest
import timm
import torch
import torchvision
from torch import nn

from cemkit.errors import InputError
from cemkit.models.encoders import (
    EncoderWeights,
    adapt_first_conv,
    create_encoder,
    first_conv_name,
    inflate_first_conv,
    load_encoder_weights,
    read_encoder_weights,
)


class _NotATensor:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def _torchvision_resnet(arch: str, in_chans: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    # non-trivial BN buffers, so that buffers are checked as well as parameters
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    return model


def _cellemnet_checkpoint(tv: nn.Module, norms=(0.58331613, 0.09966064)) -> dict:
    """The layout of cem500k_mocov2_resnet50_200ep.pth.tar (DDP-wrapped MoCo of facebookresearch/moco)."""
    enc = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    sd = collections.OrderedDict()
    for k, v in enc.items():
        sd[f"module.encoder_q.{k}"] = v.clone()
    hidden = tv.fc.in_features
    sd["module.encoder_q.fc.0.weight"] = torch.randn(hidden, hidden)
    sd["module.encoder_q.fc.0.bias"] = torch.randn(hidden)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, hidden)
    sd["module.encoder_q.fc.2.bias"] = torch.randn(128)
    for k in list(sd):
        sd[k.replace("encoder_q", "encoder_k")] = torch.randn_like(sd[k].float()).to(sd[k].dtype)
    sd["module.queue"] = torch.randn(128, 256)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.015, "params": [0, 1]}]},
            "norms": list(norms)}


def _assert_same(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(reference)
    for k, v in reference.items():
        assert torch.equal(got[k], v), k


# ----------------------------------------------------------------------------- adapt_first_conv


def test_adapt_one_channel_is_repeat_over_n():
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64)
    for n in (1, 2, 3, 5):
        out = adapt_first_conv(w, n)
        assert out.shape == (8, n, 3, 3)
        assert torch.equal(out, w.repeat(1, n, 1, 1) / n)
        # a grey image replicated into n channels gives exactly the 1-channel response
        x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
        torch.testing.assert_close(nn.functional.conv2d(x.repeat(1, n, 1, 1), out), nn.functional.conv2d(x, w),
                                   rtol=0, atol=1e-12)


def test_adapt_rgb_sums_then_repeats():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    one = adapt_first_conv(w, 1)
    assert torch.equal(one, w.sum(1, keepdim=True))
    assert one[0, 0, 0, 0].item() == 0 + 4 + 8
    five = adapt_first_conv(w, 5)
    assert torch.equal(five, (w.sum(1, keepdim=True).repeat(1, 5, 1, 1) / 5))
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    ref = nn.functional.conv2d(x.repeat(1, 3, 1, 1), w.double())  # grey replicated into RGB
    torch.testing.assert_close(nn.functional.conv2d(x.repeat(1, 5, 1, 1), five.double()), ref, rtol=1e-6, atol=1e-5)
    assert adapt_first_conv(w, 3) is not w and torch.equal(adapt_first_conv(w, 3), w)


def test_inflate_puts_the_kernel_on_the_centre_frames_and_zeros_elsewhere():
    w = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2) + 1
    three = inflate_first_conv(w, 3)
    assert three.shape == (2, 3, 2, 2)
    assert torch.equal(three[:, 1:2], w) and not three[:, 0].any() and not three[:, 2].any()
    w3 = torch.randn(4, 3, 3, 3)
    five = inflate_first_conv(w3, 5)
    assert torch.equal(five[:, 1:4], w3) and not five[:, 0].any() and not five[:, 4].any()
    # any outer slices: the response is the source kernel's on the centre slices
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(nn.functional.conv2d(x, five), nn.functional.conv2d(x[:, 1:4], w3), rtol=0, atol=1e-5)
    assert inflate_first_conv(w, 1) is not w and torch.equal(inflate_first_conv(w, 1), w)
    for bad in ((w, 2), (w3, 1), (torch.randn(2, 2, 3, 3), 4), (torch.randn(2, 3), 5)):
        with pytest.raises(ValueError):
            inflate_first_conv(*bad)


def test_adapt_keeps_dtype_and_validates():
    w = torch.randn(4, 1, 3, 3).to(torch.bfloat16)
    assert adapt_first_conv(w, 3).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        adapt_first_conv(torch.randn(4, 3), 2)
    with pytest.raises(ValueError):
        adapt_first_conv(torch.randn(4, 1, 3, 3), 0)


# ----------------------------------------------------------------------------- create_encoder


def test_create_encoder_has_no_head_and_takes_in_chans():
    model = create_encoder("resnet18", in_chans=1)
    assert model.num_features == 512
    assert "fc.weight" not in model.state_dict()
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 512)
    assert first_conv_name(create_encoder("resnet10t", 3)) == "conv1.0"
    with pytest.raises(InputError, match="unknown timm architecture"):
        create_encoder("no_such_net")


# ----------------------------------------------------------------------------- layouts


def test_cellemnet_moco_checkpoint_loads_with_equal_weights(tmp_path):
    tv = _torchvision_resnet("resnet50", in_chans=1)
    path = tmp_path / "cem500k_mocov2_resnet50_200ep.pth.tar"
    torch.save(_cellemnet_checkpoint(tv), path)

    weights = read_encoder_weights(path)
    assert weights.meta["layout"] == "moco"
    assert weights.arch == "resnet50" and weights.in_chans == 1
    assert weights.norms == pytest.approx((0.58331613, 0.09966064))
    assert weights.meta["epoch"] == 200
    assert "module.encoder_q.fc.0.weight" in weights.meta["dropped"]
    assert not any(k.startswith("fc.") for k in weights.state_dict)

    model = create_encoder("resnet50", in_chans=1)
    result = load_encoder_weights(model, weights)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same(model, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    # identical features to the torchvision network without its classifier
    tv.fc = nn.Identity()
    tv.eval(), model.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))

    # the same file into a 3-frame model: conv1 is w.repeat(1, 3, 1, 1) / 3
    model3 = create_encoder("resnet50", in_chans=3)
    load_encoder_weights(model3, path)
    assert torch.equal(model3.conv1.weight, tv.conv1.weight.repeat(1, 3, 1, 1) / 3)


def test_moco_without_module_prefix_and_loaded_dict():
    tv = _torchvision_resnet("resnet18", in_chans=1, seed=1)
    ck = _cellemnet_checkpoint(tv)
    ck["state_dict"] = {k.removeprefix("module."): v for k, v in ck["state_dict"].items()}
    del ck["norms"], ck["arch"]
    weights = read_encoder_weights(ck)
    assert weights.meta["layout"] == "moco" and weights.norms is None and weights.arch is None
    assert weights.meta["source"] == "<dict>"
    model = create_encoder("resnet18", 1)
    load_encoder_weights(model, weights)
    _assert_same(model, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})


def test_swav_checkpoint(tmp_path):
    tv = _torchvision_resnet("resnet18", in_chans=3, seed=2)
    sd = {f"module.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.randn(16, 512)
    sd["module.projection_head.0.bias"] = torch.randn(16)
    sd["module.prototypes.weight"] = torch.randn(30, 16)
    path = tmp_path / "swav.pth.tar"
    torch.save({"epoch": 3, "state_dict": sd, "norms": [0.57571, 0.12765]}, path)
    weights = read_encoder_weights(path)
    assert weights.meta["layout"] == "swav" and weights.in_chans == 3
    assert sorted(weights.meta["dropped"]) == ["projection_head.0.bias", "projection_head.0.weight", "prototypes.weight"]
    model = create_encoder("resnet18", in_chans=1)
    load_encoder_weights(model, weights)
    assert torch.equal(model.conv1.weight, tv.conv1.weight.double().sum(1, keepdim=True).float())
    assert torch.equal(model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)


def test_plain_torchvision_and_timm_state_dicts(tmp_path):
    tv = _torchvision_resnet("resnet18", in_chans=3, seed=3)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)  # includes fc.weight / fc.bias
    weights = read_encoder_weights(path)
    assert weights.meta["layout"] == "state_dict" and sorted(weights.meta["dropped"]) == ["fc.bias", "fc.weight"]
    model = create_encoder("resnet18", in_chans=3)
    load_encoder_weights(model, weights)
    _assert_same(model, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})

    # timm model with a head and a DDP "module." prefix, non-resnet naming (efficientnet classifier)
    src = timm.create_model("efficientnet_b0", in_chans=1, num_classes=5)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = create_encoder("efficientnet_b0", in_chans=1)
    load_encoder_weights(dst, {"model": sd})
    _assert_same(dst, {k: v for k, v in src.state_dict().items() if not k.startswith("classifier.")})


def test_cemkit_encoder_export_layout():
    src = create_encoder("resnet10t", in_chans=1)
    blob = {"format": "cemkit-encoder", "version": 1, "arch": "resnet10t", "in_chans": 1,
            "norms": [0.5, 0.125], "corpus_id": "abc123", "state_dict": src.state_dict()}
    weights = read_encoder_weights(blob)
    assert (weights.arch, weights.in_chans, weights.norms) == ("resnet10t", 1, (0.5, 0.125))
    assert weights.meta["corpus_id"] == "abc123" and weights.meta["layout"] == "cemkit-encoder"
    dst = create_encoder("resnet10t", in_chans=1)
    load_encoder_weights(dst, weights)
    _assert_same(dst, src.state_dict())
    with pytest.raises(InputError, match="version 9"):
        read_encoder_weights(dict(blob, version=9))


def test_features_only_model_gets_the_weights():
    src = create_encoder("convnext_atto", in_chans=1)
    feat = timm.create_model("convnext_atto", in_chans=1, features_only=True)
    load_encoder_weights(feat, EncoderWeights(src.state_dict(), arch="convnext_atto", meta={"layout": "state_dict"}))
    assert torch.equal(feat.stages_2.blocks[0].conv_dw.weight, src.stages[2].blocks[0].conv_dw.weight)
    assert torch.equal(feat.stem_0.weight, src.stem[0].weight)


# ----------------------------------------------------------------------------- failures


def test_key_mismatch_fails_loudly_naming_file_and_keys(tmp_path):
    tv = _torchvision_resnet("resnet50", in_chans=1)
    ck = _cellemnet_checkpoint(tv)
    del ck["state_dict"]["module.encoder_q.layer3.2.bn1.running_mean"]
    ck["state_dict"]["module.encoder_q.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth.tar"
    torch.save(ck, path)
    model = create_encoder("resnet50", in_chans=1)
    before = model.conv1.weight.clone()
    with pytest.raises(InputError) as err:
        load_encoder_weights(model, path)
    msg = str(err.value)
    assert str(path) in msg and "layer3.2.bn1.running_mean" in msg and "extra.weight" in msg
    assert "1 missing keys" in msg and "1 unexpected keys" in msg
    assert torch.equal(model.conv1.weight, before)  # nothing was loaded
    # non-strict loads the rest and reports the difference
    result = load_encoder_weights(model, path, strict=False)
    assert result.missing_keys == ["layer3.2.bn1.running_mean"] and result.unexpected_keys == ["extra.weight"]
    assert torch.equal(model.conv1.weight, tv.conv1.weight)


def test_wrong_architecture_names_the_arch(tmp_path):
    path = tmp_path / "r50.pth.tar"
    torch.save(_cellemnet_checkpoint(_torchvision_resnet("resnet50", 1)), path)
    with pytest.raises(InputError, match="arch='resnet50'"):
        load_encoder_weights(create_encoder("resnet18", 1), path)


def test_unreadable_or_unsafe_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_encoder_weights(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="weights-only"):
        read_encoder_weights(junk)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _NotATensor()}, unsafe)
    with pytest.raises(InputError, match="weights-only"):
        read_encoder_weights(unsafe)
    with pytest.raises(InputError, match="no encoder weights"):
        read_encoder_weights({"optimizer": {}})
