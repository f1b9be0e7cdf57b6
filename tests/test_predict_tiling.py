"""Tiling geometry, blending weights and stitching of cemkit.predict."""

import numpy as np
import pytest
import torch

from cemkit.predict.models import Segmenter
from cemkit.predict.tiling import (
    blend_tiles,
    blending_weights,
    plane_geometry,
    reflect_pad,
    window_starts,
)
from tiny_predictors import plain_predictor as _predictor, small_tiles as _tiles


def test_window_starts_exact():
    assert window_starts(100, 32, 0.25) == [0, 24, 48, 68]      # stride 24, last snapped to 100-32
    assert window_starts(96, 32, 0.0) == [0, 32, 64]
    assert window_starts(96, 32, 0.5) == [0, 16, 32, 48, 64]
    assert window_starts(32, 32, 0.25) == [0]
    assert window_starts(20, 32, 0.25) == [0]
    assert window_starts(33, 32, 0.9) == [0, 1]                 # stride floors at 1 pixel
    with pytest.raises(ValueError):
        window_starts(10, 4, 1.0)


def test_geometry_and_reflect_padding():
    g = plane_geometry(20, 50, tile=32, overlap=0.25, border=4)
    assert g.pad_y == (4, 4 + 32 - 28) and g.pad_x == (4, 4)
    assert g.padded_shape == (32, 58)
    assert g.ys == (0,) and g.xs == (0, 24, 26)
    plane = np.arange(20 * 50, dtype=np.float32).reshape(20, 50)
    padded = reflect_pad(plane, g)
    assert padded.shape == (32, 58)
    np.testing.assert_array_equal(g.crop(padded), plane)
    np.testing.assert_array_equal(padded[3, 4:-4], plane[1])      # mirror without repeating the edge
    np.testing.assert_array_equal(padded[4:-8, 0], plane[:, 4])


def test_gaussian_weights_match_monai_numbers():
    w = blending_weights(8, "gaussian", sigma_scale=0.125, floor=0.0)
    # 1-D profile of MONAI's size-8 map with sigma = 1: 0.0022, 0.0439, 0.3247, 0.8825, ...
    profile = w[3] / w[3, 3] * np.exp(-0.125)
    np.testing.assert_allclose(profile[:4], [0.0022, 0.0439, 0.3247, 0.8825], atol=5e-5)
    np.testing.assert_allclose(w, w.T)
    assert blending_weights(8, "gaussian").min() == pytest.approx(1e-3)   # clamped at the floor
    b = blending_weights(16, "bump", floor=0.0)
    u = 7.5 / 16                                   # centre pixels of an even tile
    assert b.max() == pytest.approx(np.exp(1.5 * (1 - 1 / (4 * u * (1 - u)))) ** 2, rel=1e-6)
    assert b[0, 0] < 1e-6 and (blending_weights(16, "constant") == 1).all()
    with pytest.raises(ValueError):
        blending_weights(8, "linear")


@pytest.mark.parametrize("mode", ["gaussian", "bump", "constant"])
def test_blend_tiles_reconstructs_identity(mode):
    rng = np.random.default_rng(0)
    plane = rng.random((2, 45, 70)).astype(np.float32)
    g = plane_geometry(45, 70, tile=16, overlap=0.25, border=3)
    padded = reflect_pad(plane, g)
    tiles = np.stack([padded[:, y:y + 16, x:x + 16] for y, x in g.positions])
    out = blend_tiles(tiles, g.positions, g, blending_weights(16, mode))
    np.testing.assert_allclose(out, plane, atol=1e-6)


class PixelNet(torch.nn.Module):
    """Pointwise non-linear net (1x1 convs): exactly translation-equivariant."""

    def __init__(self, frames=1):
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Conv2d(frames, 4, 1)
        self.b = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class ConvNet(torch.nn.Module):
    """Two 3x3 convs with zero padding: equivariant except within 2 px of a tile edge."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _volume(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _whole(module, vol, norms=(0.0, 1.0)):
    x = (torch.from_numpy(vol).float()[:, None] / 255.0 - norms[0]) / norms[1]
    with torch.no_grad():
        return torch.sigmoid(module(x))[:, 0].numpy()


@pytest.mark.parametrize("mode", ["gaussian", "bump", "constant"])
def test_pointwise_model_tiled_equals_whole_image(mode):
    vol = _volume((3, 70, 90))
    model = Segmenter(PixelNet().eval(), frames=1, norms=(0.4, 0.2))
    pred = _predictor([model], _tiles(tile_size=32, overlap=0.25, blending=mode, border=5,
                                                batch_size=3))
    out = pred.predict_slab(vol, 0, 3)
    assert out.shape == (3, 1, 70, 90)
    np.testing.assert_allclose(out[:, 0], _whole(model.module, vol, (0.4, 0.2)), atol=1e-5)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_conv_model_tiled_equals_whole_image_away_from_tile_edges(mode):
    vol = _volume((2, 64, 80), seed=3)
    tile, overlap, radius = 32, 0.5, 2
    model = Segmenter(ConvNet().eval())
    out = _predictor([model], _tiles(tile_size=tile, overlap=overlap, blending=mode)) \
        .predict_slab(vol, 0, 2)[:, 0]
    whole = _whole(model.module, vol)
    # pixels that every covering tile sees at >= radius from its edges (or at the image edge, where
    # whole-image inference zero-pads the same way) must agree exactly
    g = plane_geometry(64, 80, tile, overlap)
    clean = np.ones((64, 80), bool)
    for y, x in g.positions:
        inner = np.zeros((64, 80), bool)
        y0 = y + radius if y > 0 else 0
        x0 = x + radius if x > 0 else 0
        y1 = y + tile - radius if y + tile < 64 else 64
        x1 = x + tile - radius if x + tile < 80 else 80
        inner[y0:y1, x0:x1] = True
        covered = np.zeros((64, 80), bool)
        covered[y:y + tile, x:x + tile] = True
        clean &= ~covered | inner
    assert clean.mean() > 0.6
    np.testing.assert_allclose(out[:, clean], whole[:, clean], atol=1e-5)
    assert np.abs(out - whole).max() > 1e-4       # and the tile edges really do differ
