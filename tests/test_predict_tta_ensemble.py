"""TTA variants and their exact inversion, z context, and ensembles of cemkit.predict."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cemkit.predict.ensemble import RunningEnsemble, combine, model_votes, normalised_weights
from cemkit.predict.models import Segmenter
from cemkit.predict.streaming import frame_indices, slab_ranges
from cemkit.predict.tta import select_variants, tta_apply, variant
from tiny_predictors import plain_predictor as _predictor, small_tiles as _tiles

# the in-plane transforms written independently with numpy, in CDeep3M order


NUMPY_D4 = [
    lambda a: a,
    lambda a: a[..., ::-1, :],
    lambda a: a[..., :, ::-1],
    lambda a: np.rot90(a, 1, axes=(-2, -1)),
    lambda a: np.rot90(a, -1, axes=(-2, -1)),
    lambda a: np.swapaxes(a, -2, -1)[..., ::-1, ::-1],
    lambda a: np.swapaxes(a, -2, -1),
    lambda a: a[..., ::-1, ::-1],
]


def test_variants_match_numpy_and_invert():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    seen = set()
    for i in range(16):
        v = variant(i)
        expected = NUMPY_D4[i % 8](x.numpy()[:, ::-1] if i >= 8 else x.numpy())
        np.testing.assert_array_equal(v.forward(x).numpy(), expected)
        seen.add(v.forward(x).numpy().tobytes())
        y = x[:, :1]
        np.testing.assert_array_equal(v.inverse(v.forward(y)).numpy(), y.numpy())
    assert len(seen) == 16


def test_presets():
    assert [len(select_variants(n, 3)) for n in (0, 1, 2, 4, 8, 16)] == [1, 1, 2, 4, 8, 16]
    assert [len(select_variants(n, 1)) for n in (0, 2, 4, 8, 16)] == [1, 2, 4, 8, 8]
    assert all(not v.zflip for v in select_variants(16, 1))
    assert {v.index for v in select_variants(16, 5)} == set(range(16))
    assert {v.d4 for v in select_variants(8, 3)} == set(range(8))
    with pytest.raises(ValueError):
        select_variants(3, 1)


def test_tta_inversion_with_asymmetric_conv():
    """inverse(f(g x)) of a conv f with kernel K equals the conv of x with g^-1 K (z-flip: frames reversed)."""
    torch.manual_seed(0)
    kernel = torch.randn(1, 3, 3, 3)          # asymmetric in y, x and in the frame order
    f = lambda t: F.conv2d(t, kernel, padding=1)
    x = torch.randn(2, 3, 12, 12)
    outputs = []
    for i in range(16):
        v = variant(i)
        k = v.inverse(kernel)
        if v.zflip:
            k = k.flip(1)
        got = tta_apply(f, x, [v])
        torch.testing.assert_close(got, F.conv2d(x, k, padding=1), atol=1e-5, rtol=1e-5)
        outputs.append(got)
    assert min((a - b).abs().max() for a in outputs for b in outputs if a is not b) > 1e-3
    mean = tta_apply(f, x, [variant(i) for i in range(16)])
    torch.testing.assert_close(mean, torch.stack(outputs).mean(0), atol=1e-5, rtol=1e-5)


class CentreFrame(torch.nn.Module):
    def predict_proba(self, x):
        return x[:, x.shape[1] // 2:x.shape[1] // 2 + 1]


class FirstFrame(torch.nn.Module):
    def predict_proba(self, x):
        return x[:, :1]


def test_tta_of_identity_model_is_exact_through_the_tiler():
    vol = np.random.default_rng(0).integers(0, 256, (4, 40, 40), dtype=np.uint8)
    for tta in (2, 4, 8, 16):
        model = Segmenter(CentreFrame(), frames=3)
        out = _predictor([model], _tiles(tile_size=16, overlap=0.25, tta=tta)).predict_slab(vol, 0, 4)
        np.testing.assert_allclose(out[:, 0], vol / 255.0, atol=1e-6)


def test_frame_indices_mirror_padding():
    assert frame_indices(0, 10, 5).tolist() == [2, 1, 0, 1, 2]
    assert frame_indices(9, 10, 3).tolist() == [8, 9, 8]
    assert frame_indices(4, 10, 5).tolist() == [2, 3, 4, 5, 6]
    assert frame_indices(0, 1, 5).tolist() == [0, 0, 0, 0, 0]
    assert frame_indices(0, 2, 5).tolist() == [0, 1, 0, 1, 0]
    assert slab_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError):
        frame_indices(0, 4, 2)


@pytest.mark.parametrize("frames", [3, 5])
def test_kframe_context_from_neighbouring_slices(frames):
    vol = np.random.default_rng(1).integers(0, 256, (7, 24, 20), dtype=np.uint8)
    pred = _predictor([Segmenter(FirstFrame(), frames=frames)], _tiles(tile_size=16))
    half = frames // 2
    for z0, z1 in [(0, 3), (3, 7)]:
        out = pred.predict_slab(vol, z0, z1)[:, 0]
        expected = np.stack([vol[abs(z - half) if z - half >= 0 else half - z] for z in range(z0, z1)])
        np.testing.assert_allclose(out, expected / 255.0, atol=1e-6)
    # z-flip TTA sees the last frame instead of the first: the mean of both
    tta = _predictor([Segmenter(FirstFrame(), frames=3)], _tiles(tile_size=16, tta=16)) \
        .predict_slab(vol, 6, 7)[0, 0]
    np.testing.assert_allclose(tta, (vol[5] / 255.0 + vol[5] / 255.0) / 2, atol=1e-6)   # 6 -> (5, 6, 5)
    tta = _predictor([Segmenter(FirstFrame(), frames=3)], _tiles(tile_size=16, tta=2)) \
        .predict_slab(vol, 3, 4)[0, 0]
    np.testing.assert_allclose(tta, (vol[2] / 255.0 + vol[4] / 255.0) / 2, atol=1e-6)


def test_ensemble_methods_exact():
    a = np.array([[0.2, 0.6, 0.9, 0.4]], np.float32)
    b = np.array([[0.4, 0.2, 0.8, 0.6]], np.float32)
    c = np.array([[0.9, 0.7, 0.1, 0.5]], np.float32)
    np.testing.assert_allclose(combine([a, b, c]), [[0.5, 0.5, 0.6, 0.5]], atol=1e-7)
    np.testing.assert_allclose(combine([a, b, c], "weighted", [2, 1, 1]),
                               [[0.425, 0.525, 0.675, 0.475]], atol=1e-7)
    np.testing.assert_allclose(combine([a, b, c], "vote"), [[1 / 3, 2 / 3, 2 / 3, 1 / 3]], atol=1e-7)
    # multi-class vote: one-hot of each model's arg-max
    p1 = np.array([[0.1, 0.5], [0.7, 0.2], [0.2, 0.3]], np.float32)
    p2 = np.array([[0.6, 0.1], [0.3, 0.1], [0.1, 0.8]], np.float32)
    np.testing.assert_allclose(combine([p1, p2], "vote"), [[0.5, 0.5], [0.5, 0.0], [0.0, 0.5]])
    run = RunningEnsemble(3, "weighted", [2, 1, 1])
    for p in (a, b, c):
        run.add(p)
    np.testing.assert_allclose(run.result(), combine([a, b, c], "weighted", [2, 1, 1]), atol=1e-7)
    with pytest.raises(ValueError):
        normalised_weights(3, "weighted", [1, 2])
    with pytest.raises(ValueError):
        normalised_weights(2, "weighted", None)


def test_ensemble_of_models_through_the_tiler():
    vol = np.random.default_rng(2).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    models = [Segmenter(CentreFrame(), frames=1), Segmenter(FirstFrame(), frames=3)]
    out = _predictor(models, _tiles(tile_size=16), ensemble="weighted", weights=[3, 1]) \
        .predict_slab(vol, 1, 2)[0, 0]
    np.testing.assert_allclose(out, 0.75 * vol[1] / 255.0 + 0.25 * vol[0] / 255.0, atol=1e-6)


def test_vote_over_a_slab_of_several_planes():
    """A slab is (planes, classes, H, W): votes are taken over the classes, not over the planes."""
    vol = np.random.default_rng(3).integers(0, 256, (4, 20, 20), dtype=np.uint8)
    models = [Segmenter(CentreFrame(), frames=1), Segmenter(FirstFrame(), frames=3), Segmenter(CentreFrame(), frames=3)]
    out = _predictor(models, _tiles(tile_size=16), ensemble="vote").predict_slab(vol, 1, 4)
    prev = vol[[0, 1, 2]] / 255.0                        # FirstFrame of a 3fm model: the plane before
    centre = vol[1:4] / 255.0
    expected = (2 * (centre > 0.5) + (prev > 0.5)) / 3.0
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-6)
    # multi-class slab (2 planes, 3 classes, 1 pixel): one-hot arg-max along axis 1
    slab = np.array([[[[0.1]], [[0.7]], [[0.2]]], [[[0.5]], [[0.2]], [[0.3]]]], np.float32)
    np.testing.assert_array_equal(model_votes(slab, class_axis=1)[:, :, 0, 0], [[0, 1, 0], [1, 0, 0]])
