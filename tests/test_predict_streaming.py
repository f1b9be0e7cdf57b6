"""Streaming prediction through cemkit.io: bounded memory, resume, orthoplane and output formats."""

import json
import tracemalloc

import numpy as np
import pytest
import torch

from cemkit.io import open_volume, write_zarr
from cemkit.predict.models import Segmenter
from cemkit.predict.orthoplane import VIEWS, AxisView, average_views
from cemkit.predict.runner import PredictSettings, run_prediction
from cemkit.predict.streaming import SlabPredictor


class PixelNet(torch.nn.Module):
    def __init__(self, frames=1):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(frames, 4, 1)
        self.b = torch.nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.b.weight.mul_(8)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class ConvNet(torch.nn.Module):
    def __init__(self, frames=3):
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Conv2d(frames, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _blobs(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), (1, 3, 3))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def _settings(**kw):
    base = {"tile_size": 32, "overlap": 0.25, "border": 4, "batch_size": 8, "slab_size": 2, "device": "cpu",
            "min_size": 0, "progress": False, "overlays": 2}
    base.update(kw)
    return PredictSettings.defaults(**base)


def _read(path):
    return np.asarray(open_volume(path)[...])


def _peak_bytes(tmp_path, depth, name):
    vol = tmp_path / f"{name}.zarr"
    write_zarr(vol, _blobs((depth, 128, 128)), chunks=(2, 128, 128))
    models = [Segmenter(PixelNet().eval())]
    tracemalloc.start()
    try:
        run_prediction(vol, tmp_path / f"out_{name}", models=models,
                       settings=_settings(tile_size=64, prob_dtype="float32", instances=False, overlays=0))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_volume(tmp_path):
    small = _peak_bytes(tmp_path, 8, "small")
    large = _peak_bytes(tmp_path, 96, "large")
    large_prob_bytes = 96 * 128 * 128 * 4          # the float32 probability volume written
    assert large < 0.25 * large_prob_bytes, (small, large)
    assert large < 1.3 * small + 2**20, (small, large)


def test_resume_after_interruption_gives_identical_output(tmp_path, monkeypatch):
    vol = tmp_path / "vol.zarr"
    write_zarr(vol, _blobs((9, 40, 50), seed=1))
    models = [Segmenter(ConvNet(3).eval(), frames=3, norms=(0.5, 0.25)), Segmenter(PixelNet().eval())]
    settings = {"tta": 4, "ensemble": "mean"}
    full = run_prediction(vol, tmp_path / "full", models=models, settings=_settings(**settings))
    assert full["objects"] > 0

    calls = {"n": 0}
    original = SlabPredictor.predict_slab

    def flaky(self, source, z0, z1):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, source, z0, z1)

    monkeypatch.setattr(SlabPredictor, "predict_slab", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_prediction(vol, tmp_path / "resumed", models=models, settings=_settings(**settings))
    state = json.loads((tmp_path / "resumed" / ".progress.json").read_text())
    assert state["done"] == ["xy:0", "xy:1"]
    monkeypatch.setattr(SlabPredictor, "predict_slab", original)

    seen = []
    monkeypatch.setattr(SlabPredictor, "predict_slab",
                        lambda self, s, z0, z1: seen.append(z0) or original(self, s, z0, z1))
    again = run_prediction(vol, tmp_path / "resumed", models=models, settings=_settings(**settings))
    assert seen == [4, 6, 8] and again["resumed"]
    for name in ("probabilities", "mask", "labels"):
        np.testing.assert_array_equal(_read(tmp_path / "resumed" / f"{name}.zarr"),
                                      _read(tmp_path / "full" / f"{name}.zarr"))
    assert (tmp_path / "resumed" / "objects.csv").read_text() == (tmp_path / "full" / "objects.csv").read_text()
    # post-processing settings reuse the finished slabs; other settings recompute everything
    seen.clear()
    relabelled = run_prediction(vol, tmp_path / "resumed", models=models, settings=_settings(min_size=10**9, **settings))
    assert seen == [] and relabelled["objects"] == 0 < full["objects"]
    seen.clear()
    run_prediction(vol, tmp_path / "resumed", models=models, settings=_settings(tta=2))
    assert seen == [0, 2, 4, 6, 8]


def test_outputs_layout_and_formats(tmp_path):
    data = _blobs((5, 48, 56), seed=2)
    vol = tmp_path / "vol.zarr"
    write_zarr(vol, data, voxel_size=(40.0, 6.0, 6.0))
    models = [Segmenter(PixelNet().eval())]
    rec = run_prediction(vol, tmp_path / "z", models=models, settings=_settings(prob_dtype="uint8"))
    out = tmp_path / "z"
    prob = _read(out / "probabilities.zarr")
    mask = _read(out / "mask.zarr")
    labels = _read(out / "labels.zarr")
    assert prob.dtype == np.uint8 and mask.dtype == np.uint8 and labels.dtype == np.uint32
    assert open_volume(out / "probabilities.zarr").voxel_size == (40.0, 6.0, 6.0)
    # mask = probability > threshold, labels = its components
    expected = SlabPredictor(models, _settings().tile_settings(), amp=False, ensemble="mean", threshold=0.5) \
        .predict_slab(data, 0, 5)[:, 0]
    np.testing.assert_array_equal(mask, (expected > 0.5).astype(np.uint8))
    np.testing.assert_allclose(prob / 255.0, expected, atol=0.5 / 255 + 1e-6)
    assert ((labels > 0) == (mask > 0)).all() and labels.max() == rec["objects"] > 0
    assert len(list((out / "overlays").glob("*.png"))) == 2
    header = (out / "objects.csv").read_text().splitlines()[0]
    assert header.startswith("id,voxels,centroid_z") and "volume_nm3" in header
    assert json.loads((out / "predict.json").read_text())["outputs"]["labels"].endswith("labels.zarr")

    run_prediction(vol, tmp_path / "t", models=models, settings=_settings(output_format="tif"))
    np.testing.assert_array_equal(_read(tmp_path / "t" / "mask.tif"), mask)
    np.testing.assert_array_equal(_read(tmp_path / "t" / "labels.tif"), labels)
    assert _read(tmp_path / "t" / "probabilities.tif").dtype == np.float16
    assert not (tmp_path / "t" / ".work").exists()
    run_prediction(vol, tmp_path / "p", models=models, settings=_settings(output_format="png"))
    np.testing.assert_array_equal(_read(tmp_path / "p" / "mask"), mask)
    assert len(list((tmp_path / "p" / "probabilities").glob("*.png"))) == 5


def test_axis_views_round_trip():
    data = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    for order in VIEWS.values():
        view = AxisView(data, order)
        np.testing.assert_array_equal(view[1:3], np.transpose(data, order)[1:3])
    stores = {name: np.transpose(data.astype(np.float32), order) for name, order in VIEWS.items()}
    np.testing.assert_array_equal(average_views(stores, 1, 3, channels=False)[0], data[1:3])


def test_orthoplane_averages_the_three_views(tmp_path):
    data = _blobs((12, 16, 20), seed=3)
    vol = tmp_path / "vol.zarr"
    write_zarr(vol, data)
    models = [Segmenter(ConvNet(1).eval())]
    s = _settings(orthoplane=True, tile_size=16, prob_dtype="float32", instances=False, overlays=0)
    run_prediction(vol, tmp_path / "o", models=models, settings=s)
    got = _read(tmp_path / "o" / "probabilities.zarr")
    pred = SlabPredictor(models, s.tile_settings(), amp=s.amp, ensemble=s.ensemble, threshold=s.threshold)
    views = []
    for order in VIEWS.values():
        v = np.transpose(data, order)
        p = pred.predict_slab(v, 0, v.shape[0])[:, 0]
        views.append(np.transpose(p, np.argsort(order)))
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=1e-6)
    assert min(np.abs(views[0] - views[1]).max(), np.abs(views[0] - views[2]).max()) > 1e-3
    assert not (tmp_path / "o" / ".views").exists()
