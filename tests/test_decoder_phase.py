"""The DeepEM3D decoder's transposed convolutions computed as phase convolutions + pixel shuffle.

cemkit 0.1 ran them as ``nn.ConvTranspose2d``; the phase form must compute the same function (same
parameters, same checkpoints) for every stride, dilation, frame count and input size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cemkit.models.checkpoint import load_segmenter
from cemkit.models.deepem3d import (
    DeepEM3DSegmenter,
    TapUpsampler,
    dilated_transposed_padding,
    faster_upsample_form,
    phase_kernel,
    transposed_phase_plan,
    upsample_transposed,
)

DATA = Path(__file__).parent / "data"


def test_phase_plan_of_the_plain_branch():
    # kernel 8, stride 4, padding 2: outputs 4q+2, 4q+3 start in the next input cell
    plan = transposed_phase_plan(4, 1, 2)
    assert plan.kernel_index == (2, 3, 0, 1)
    assert plan.offsets == (0, 0, 1, 1)
    assert plan.padding == 1


def test_phase_plan_of_a_dilated_branch():
    # stride 2, dilation 5, padding 7 (DeepEM3D's first dilated pad): m(r) = 5^-1 (r + 7) mod 2
    plan = transposed_phase_plan(2, 5, 7)
    assert plan.kernel_index == (1, 0)
    # b(r) = 1, 4; the least padding is max(d - min b, max b) = 4, so the reads start at b + 4 - 5
    assert plan.offsets == (0, 3)
    assert plan.padding == 4


@pytest.mark.parametrize("stride,dilation,padding", [(2, 2, 3), (1, 1, 0), (4, 1, 3)])
def test_phase_plan_refuses_what_it_cannot_express(stride, dilation, padding):
    with pytest.raises(ValueError):
        transposed_phase_plan(stride, dilation, padding)


def test_phase_kernel_puts_each_kernel_entry_on_its_phase_channel():
    s = 2
    weight = torch.arange(1 * 1 * 4 * 4, dtype=torch.float64).reshape(1, 1, 4, 4)
    plan = transposed_phase_plan(s, 1, 1)
    kernel, bias = phase_kernel(weight, torch.tensor([0.5], dtype=torch.float64), plan)
    assert kernel.shape == (4, 1, 2, 2)
    # phase (0, 0) takes entries m = 1 and s + 1 = 3 on both axes, taps flipped: [[15, 13], [7, 5]]
    assert kernel[0, 0].tolist() == [[15.0, 13.0], [7.0, 5.0]]
    assert bias.tolist() == [0.5] * 4


# every stride with the plain branch; the dilated branches only where DeepEM3D puts them (strides <= 8)
@pytest.mark.parametrize("stride,dilation", [(s, 1) for s in (2, 4, 8, 16, 32)]
                         + [(s, d) for s in (2, 4, 8) for d in (5, 11, 17, 23)])
def test_phase_form_equals_the_transposed_convolution(stride, dilation):
    torch.manual_seed(stride * 100 + dilation)
    conv = torch.nn.ConvTranspose2d(5, 3, 2 * stride, stride, padding=dilated_transposed_padding(stride, dilation),
                                    dilation=dilation).double()
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    for size in [(1, 1), (3, 2), (7, 5)]:
        x = torch.randn(2, 5, *size, dtype=torch.float64)
        expected = conv(x)
        got = upsample_transposed(x, conv)
        assert got.shape == expected.shape == (2, 3, size[0] * stride, size[1] * stride)
        assert torch.allclose(got, expected, atol=1e-10, rtol=0)


def test_layers_outside_the_plan_run_as_transposed_convolutions():
    conv = torch.nn.ConvTranspose2d(2, 1, 4, 2, padding=3, dilation=2).double()  # d and s share a factor
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert torch.equal(upsample_transposed(x, conv), conv(x))


def test_phase_form_gradients_equal_the_transposed_convolution():
    torch.manual_seed(0)
    tap = TapUpsampler(4, 4, width=2, out_channels=1, dilations=(5, 11)).double()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    grads = []
    for reference in (True, False):
        tap.transposed_reference = reference
        tap.zero_grad()
        x.grad = None
        (tap(x) ** 2).sum().backward()
        grads.append([x.grad.clone(), *(p.grad.clone() for p in tap.parameters())])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("frames", [1, 3, 5])
@pytest.mark.parametrize("size", [(64, 64), (45, 70)])
def test_segmenter_equals_its_transposed_reference(frames, size):
    torch.manual_seed(frames)
    model = DeepEM3DSegmenter("resnet10t", frames=frames).double().eval()
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, frames, *size, dtype=torch.float64)
    outputs = {}
    with torch.no_grad():
        for form in ("auto", "phase", "transposed"):
            for tap in model.decoder.taps:
                tap.form = form
            outputs[form] = model(x)
    assert torch.allclose(outputs["phase"], outputs["transposed"], atol=1e-9, rtol=0)
    assert torch.allclose(outputs["auto"], outputs["transposed"], atol=1e-9, rtol=0)


def test_the_faster_form_follows_the_measured_rule():
    # docs/results.md "Precision and decoder form per machine": on a CPU, float32 runs the phase form only
    # at stride 16, bf16 everywhere but stride 2; CUDA keeps the phase form
    cpu32 = [faster_upsample_form("cpu", torch.float32, s) for s in (2, 4, 8, 16, 32)]
    assert cpu32 == ["transposed", "transposed", "transposed", "phase", "transposed"]
    assert faster_upsample_form("cpu", torch.float64, 16) == "phase"
    cpu16 = [faster_upsample_form("cpu", torch.bfloat16, s) for s in (2, 4, 8, 16, 32)]
    assert cpu16 == ["transposed", "phase", "phase", "phase", "phase"]
    assert {faster_upsample_form("cuda", t, s) for t in (torch.float32, torch.bfloat16) for s in (2, 32)} == {"phase"}


def test_auto_picks_the_form_by_the_autocast_dtype(monkeypatch):
    tap = TapUpsampler(4, 2, width=2, out_channels=1, dilations=(5,))
    x = torch.randn(1, 4, 3, 3)
    assert tap.form_for(x) == "transposed" and tap.form_for(x.double()) == "transposed"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tap.form_for(x) == "transposed"  # stride 2
    deep = TapUpsampler(4, 32, width=2, out_channels=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert deep.form_for(x) == "phase"
    assert deep.form_for(x) == "transposed"
    deep.transposed_reference = False
    assert deep.form == "phase" and deep.form_for(x) == "phase"
    deep.form = "fast"
    with pytest.raises(ValueError, match="form must be one of"):
        deep(x)


def test_a_cemkit_0_1_checkpoint_loads_and_predicts_the_same():
    # tests/data/segmenter_v0_1.pt was written by cemkit 0.1 (commit 3cdb6ae, ConvTranspose2d decoder) for a
    # 3fm test_efficientnet model with random decoder weights and BatchNorm statistics; the .npz holds an
    # input of odd size and the logits cemkit 0.1 computed for it
    model, meta = load_segmenter(DATA / "segmenter_v0_1.pt")
    io = np.load(DATA / "segmenter_v0_1_io.npz")
    assert meta["frames"] == 3 and model.config.get("tap_max_stride") is None
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input"])).numpy()
    assert np.abs(io["logits"]).max() > 1.0
    assert np.abs(logits - io["logits"]).max() < 1e-5


def test_tap_max_stride_drops_the_deep_stages():
    full = DeepEM3DSegmenter("resnet10t", frames=1)
    short = DeepEM3DSegmenter("resnet10t", frames=1, tap_max_stride=16)
    assert full.strides == [2, 4, 8, 16, 32] and short.strides == [2, 4, 8, 16]
    assert not any(k.startswith("encoder.layer4.") for k in short.state_dict())
    assert sum(p.numel() for p in short.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    assert short(torch.randn(1, 1, 48, 40)).shape == (1, 1, 48, 40)
    rebuilt = DeepEM3DSegmenter.from_config(short.config)
    rebuilt.load_state_dict(short.state_dict())
    with pytest.raises(ValueError, match="keeps none"):
        DeepEM3DSegmenter("resnet10t", tap_max_stride=1)


def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    model = DeepEM3DSegmenter("resnet10t", frames=1).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        ref = torch.sigmoid(model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = torch.sigmoid(model(x).float())
    assert F.l1_loss(low, ref).item() < 0.01
