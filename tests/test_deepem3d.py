"""DeepEM3D-style segmentation model: decoder geometry, first-conv adaptation, freezing, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cemkit.models.checkpoint import load_segmenter, save_segmenter
from cemkit.models.deepem3d import (
    DeepEM3DSegmenter,
    TapUpsampler,
    bilinear_kernel,
    build_segmenter,
    dilated_transposed_padding,
    inflate_segmenter,
)
from cemkit.models.encoders import EncoderWeights, create_encoder


def test_dilated_padding_reproduces_every_cdeep3m_pad():
    # the pads of the CDeep3M prototxts (reference section 2): per stride, plain then d = 5/11/17/23
    expected = {2: [1, 7, 16, 25, 34], 4: [2, 16, 37, 58, 79], 8: [4, 34, 79, 124, 169]}
    for s, pads in expected.items():
        assert [dilated_transposed_padding(s, d) for d in (1, 5, 11, 17, 23)] == pads
    with pytest.raises(ValueError):
        dilated_transposed_padding(3, 5)


@pytest.mark.parametrize("stride", [2, 4, 8, 16, 32])
def test_every_branch_upsamples_exactly(stride):
    n = 5
    tap = TapUpsampler(3, stride, width=2, out_channels=1, dilations=(5, 11, 17, 23))
    x = torch.randn(1, 3, n, n + 1)
    for conv in [tap.plain, *tap.dilated]:
        assert conv(x).shape[-2:] == (n * stride, (n + 1) * stride)


def test_bilinear_initialisation_maps_a_constant_to_the_channel_mean():
    tap = TapUpsampler(4, 8, width=2, out_channels=1)
    x = torch.stack([torch.full((6, 6), v) for v in (1.0, 2.0, 3.0, 6.0)])[None]
    y = tap.plain(x)[0]
    # away from the border (first/last half stride) every output pixel is the mean 3.0, exactly
    inner = y[:, 4:-4, 4:-4]
    assert torch.allclose(inner, torch.full_like(inner, 3.0), atol=1e-5)
    k = bilinear_kernel(4)
    assert np.allclose(k[0], [0.0625, 0.1875, 0.1875, 0.0625])


@pytest.mark.parametrize("arch,first_stride", [("resnet10t", 2), ("efficientnet_b0", 2), ("convnext_atto", 4)])
def test_output_has_input_size_for_any_timm_encoder(arch, first_stride):
    model = DeepEM3DSegmenter(arch, frames=3, num_classes=2).eval()
    assert model.strides[0] == first_stride and model.strides[-1] == 32
    # dilated branches only on taps with stride <= 8
    assert [len(t.dilated) for t in model.decoder.taps] == [4 if s <= 8 else 0 for s in model.strides]
    x = torch.randn(2, 3, 70, 45)  # not multiples of 32: padded and cropped inside
    with torch.no_grad():
        logits, taps = model.forward_with_taps(x)
    assert logits.shape == (2, 1, 70, 45)
    assert all(t.shape == (2, 1, 70, 45) for t in taps)
    assert torch.allclose(logits, torch.stack(taps).sum(0), atol=1e-5)


def test_multiclass_probabilities_are_a_softmax():
    model = DeepEM3DSegmenter("resnet10t", frames=1, num_classes=4).eval()
    p = model.predict_proba(torch.randn(1, 1, 64, 64))
    assert p.shape == (1, 4, 64, 64)
    assert torch.allclose(p.sum(1), torch.ones(1, 64, 64), atol=1e-5)
    binary = DeepEM3DSegmenter("resnet10t", frames=1, num_classes=2, final_relu=True).eval()
    with torch.no_grad():
        assert (binary(torch.randn(1, 1, 64, 64)) >= 0).all()  # DeepEM3D parity: non-negative logits


def _features(model: DeepEM3DSegmenter, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.encoder.forward_intermediates(x, indices=model.n_taps, intermediates_only=True)


@pytest.mark.parametrize("source_chans", [1, 3])
@pytest.mark.parametrize("frames", [3, 5])
def test_adapted_first_conv_gives_single_slice_features_for_identical_slices(source_chans, frames):
    torch.manual_seed(0)
    src = create_encoder("resnet10t", in_chans=source_chans)
    with torch.no_grad():  # non-trivial BN statistics
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    weights = EncoderWeights(state_dict=src.state_dict(), arch="resnet10t", in_chans=source_chans)
    model, report = build_segmenter("resnet10t", frames, 2, weights=weights)
    assert report["missing"] == [] and report["unexpected"] == []
    model.eval()
    src.eval()
    grey = torch.randn(2, 1, 64, 64)
    stacked = _features(model, grey.repeat(1, frames, 1, 1))
    with torch.no_grad():  # the source encoder on the single slice (grey replicated for an RGB stem)
        reference = src.forward_intermediates(grey.repeat(1, source_chans, 1, 1), indices=model.n_taps,
                                              intermediates_only=True)
    for a, b in zip(stacked, reference):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), float((a - b).abs().max())


def test_freezing_keeps_encoder_and_its_batchnorm_statistics_unchanged():
    torch.manual_seed(0)
    model = DeepEM3DSegmenter("resnet18", frames=1, num_classes=2)
    frozen = model.freeze_encoder(2)  # stem + layer1
    assert "conv1" in frozen and "layer1.1.bn2" in frozen and not any(n.startswith("layer2") for n in frozen)
    model.train()
    assert not model.encoder.bn1.training and not model.encoder.layer1[0].bn1.training
    assert model.encoder.layer2[0].bn1.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 1, 64, 64)).mean().backward()
        opt.step()
    after = model.state_dict()
    for k, value in before.items():
        changed = not torch.equal(value, after[k])
        if k.startswith(("encoder.conv1", "encoder.bn1", "encoder.layer1")):
            assert not changed, k
    assert not torch.equal(before["encoder.layer2.0.bn1.running_mean"], after["encoder.layer2.0.bn1.running_mean"])
    assert not torch.equal(before["decoder.taps.0.plain.weight"], after["decoder.taps.0.plain.weight"])
    enc, dec = model.parameter_groups()
    assert all(p.requires_grad for p in enc) and len(dec) == len(list(model.decoder.parameters()))
    model.freeze_encoder("all")
    model.train()
    assert not any(m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.parameter_groups()[0] == []


def test_saved_segmenter_round_trips_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = DeepEM3DSegmenter("resnet10t", frames=5, num_classes=3, decoder_width=4).eval()
    path = save_segmenter(tmp_path / "model.pt", model, {"norms": (0.5, 0.1)})
    raw = torch.load(path, weights_only=True)
    assert raw["cemkit"]["format"] == "cemkit-segmenter"
    loaded, meta = load_segmenter(path)
    assert meta["frames"] == 5 and meta["num_classes"] == 3 and meta["norms"] == [0.5, 0.1]
    assert meta["arch"] == "resnet10t" and not loaded.training
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("arch", ["resnet10t", "efficientnet_b0"])
def test_inflated_segmenter_computes_the_source_model_on_the_centre_slice(arch):
    torch.manual_seed(0)
    one = DeepEM3DSegmenter(arch, frames=1, decoder_width=4).eval()
    # non-trivial BatchNorm statistics so that eval-mode outputs depend on every copied buffer
    for m in one.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    three = inflate_segmenter(one, 3).eval()
    five = inflate_segmenter(three, 5).eval()
    assert (three.frames, five.frames) == (3, 5) and five.config["frames"] == 5
    assert five.config["decoder_width"] == 4 and inflate_segmenter(five, 5) is five
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        ref = one(x[:, 2:3])
        torch.testing.assert_close(three(x[:, 1:4]), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(five(x), ref, rtol=0, atol=1e-5)
        # the outer slices are really ignored at the start (and only there: they get gradients)
        torch.testing.assert_close(five(torch.cat([x[:, :2] * 0 + 3, x[:, 2:3], -x[:, 3:]], 1)), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        inflate_segmenter(five, 3)


@pytest.mark.parametrize("with_weights", [True, False])
def test_centre_frame_init_starts_as_the_single_slice_model(with_weights):
    torch.manual_seed(0)
    src = create_encoder("resnet10t", in_chans=1)
    weights = EncoderWeights(state_dict=src.state_dict(), arch="resnet10t", in_chans=1) if with_weights else None
    torch.manual_seed(1)
    single, _ = build_segmenter("resnet10t", 1, 2, weights=weights, decoder_width=4)
    torch.manual_seed(1)  # same random draws: the 5fm model is the 1fm model, inflated
    five, report = build_segmenter("resnet10t", 5, 2, weights=weights, decoder_width=4, frame_init="centre")
    assert five.frames == 5 and (report.get("missing") == [] if with_weights else report == {})
    first = five.encoder.conv1[0].weight if isinstance(five.encoder.conv1, nn.Sequential) else five.encoder.conv1.weight
    assert first.shape[1] == 5 and not first[:, [0, 1, 3, 4]].any()
    x = torch.randn(2, 5, 64, 64)
    single.eval(), five.eval()
    with torch.no_grad():
        torch.testing.assert_close(five(x), single(x[:, 2:3]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        build_segmenter("resnet10t", 3, 2, frame_init="middle")
