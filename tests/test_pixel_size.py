"""Pixel size is part of a model: checks and resampling (cemkit.io.pixel_size), the factor each model's input
needs (cemkit.predict.rescale), prediction on the input's grid at another pixel size, and the pixel size a
finetuned checkpoint records."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cemkit.errors import ConfigError, InputError
from cemkit.io import open_volume, write_tif_stack
from cemkit.io.pixel_size import check_pixel_size, pixel_size_of, resize_yx, scale_factor, scaled_shape
from cemkit.predict.models import Segmenter, recorded_pixel_size
from cemkit.predict.rescale import model_scales, to_input_grid, to_model_grid
from cemkit.predict.runner import PredictSettings, run_prediction


# ------------------------------------------------------------------------------------ cemkit.io.pixel_size
def test_check_pixel_size_accepts_plausible_values_exactly():
    assert check_pixel_size(5.9, "data.voxel_size") == 5.9
    assert check_pixel_size("4.6", "voxel_size") == 4.6
    assert check_pixel_size(0.1, "k") == 0.1 and check_pixel_size(1000, "k") == 1000.0


@pytest.mark.parametrize("value, problem", [(0, "must be positive"), (-4.6, "must be positive"),
                                            (1500.0, "implausible"), (0.05, "implausible"),
                                            ("nm", "must be a number"), (float("nan"), "must be positive")])
def test_bad_pixel_sizes_name_the_key(value, problem):
    with pytest.raises(ConfigError, match=rf"voxel_size: .*{problem}"):
        check_pixel_size(value, "voxel_size")
    with pytest.raises(InputError, match=rf"stack\.tif: .*{problem}"):
        check_pixel_size(value, "stack.tif", input_error=True)


class _Vol:
    def __init__(self, voxel_size, path="stack.tif"):
        self.voxel_size, self.path = voxel_size, path


def test_pixel_size_of_prefers_the_override_then_the_metadata():
    assert pixel_size_of(_Vol((30.0, 5.9, 5.9)), None) == 5.9
    assert pixel_size_of(_Vol((30.0, 5.9, 5.9)), 4.6) == 4.6
    assert pixel_size_of(_Vol(None), [40, 4.6, 4.6]) == 4.6       # [z, y, x]: x is taken
    assert pixel_size_of(_Vol(None), None) is None
    assert pixel_size_of(None, None) is None
    with pytest.raises(ConfigError, match=r"voxel_size: .*must be positive"):
        pixel_size_of(_Vol((30.0, 5.9, 5.9)), 0)
    with pytest.raises(ConfigError, match=r"data\.voxel_size: empty"):
        pixel_size_of(None, [], "data.voxel_size")
    # metadata in metres (a common mistake of writers) is refused naming the file and the key that overrides it
    with pytest.raises(InputError, match=r"odd\.tif.*voxel_size=.*implausible"):
        pixel_size_of(_Vol((3e-8, 5.9e-9, 5.9e-9), "odd.tif"), None)
    with pytest.raises(InputError, match=r"big\.tif.*implausible"):
        pixel_size_of(_Vol((30.0, 2000.0, 2000.0), "big.tif"), None)


def test_scale_factor_and_scaled_shape_exact():
    assert scale_factor(4.6, 5.9) == 4.6 / 5.9
    assert scale_factor(5.0, 10.0) == 0.5 and scale_factor(10.0, 5.0) == 2.0
    assert scale_factor(5.9, 5.95) is None          # within 2 %: the same scale
    assert scale_factor(None, 5.9) is None and scale_factor(5.9, None) is None
    assert scaled_shape((1024, 1000), 0.78) == (799, 780)
    assert scaled_shape((3, 5), 0.5) == (2, 2)      # round half to even, as Python's round
    assert scaled_shape((1, 1), 0.1) == (1, 1)      # never below one pixel


def test_resize_yx_exact_values():
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    up = resize_yx(labels, (4, 4), labels=True)
    assert up.dtype == np.uint8
    assert up.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]
    assert resize_yx(up, (2, 2), labels=True).tolist() == labels.tolist()
    flat = np.full((2, 6, 6), 77, np.uint8)         # (z, y, x): every plane resampled, z kept
    down = resize_yx(flat, (3, 3))
    assert down.shape == (2, 3, 3) and down.dtype == np.uint8 and (down == 77).all()
    ramp = np.array([[0.0, 1.0]], np.float32)       # bilinear, half-pixel centres: 0, .25, .75, 1
    assert resize_yx(ramp, (1, 4)).tolist() == [[0.0, 0.25, 0.75, 1.0]]
    assert resize_yx(labels, (2, 2)) is labels       # same size: untouched


# ------------------------------------------------------------------------------------ factors and slabs
def test_model_scales_and_why_not(caplog):
    caplog.set_level(logging.INFO, logger="cemkit.predict.rescale")
    assert model_scales(4.6, [5.9, None, 4.65], ["cdeep3m", "old", "vnc"]) == [4.6 / 5.9, None, None]
    text = caplog.text
    assert "cdeep3m: trained at 5.9 nm, the input is 4.6 nm" in text and "rescaled by 0.7797" in text
    assert "old: the model records no pixel size" in text and "not rescaled" in text
    assert "vnc: trained at 4.65 nm" in text and "same scale, not rescaled" in text
    caplog.clear()
    assert model_scales(None, [5.9], ["m"]) == [None]
    assert "input's pixel size is unknown" in caplog.text and "voxel_size=" in caplog.text
    caplog.clear()
    assert model_scales(4.6, [5.9], ["m"], enabled=False) == [None]
    assert "rescale=false" in caplog.text


def test_slab_round_trip_keeps_the_input_grid():
    block = np.arange(2 * 10 * 12, dtype=np.uint8).reshape(2, 10, 12)
    assert to_model_grid(block, None) is block
    small = to_model_grid(block, 0.5)
    assert small.shape == (2, 5, 6) and small.dtype == np.uint8
    prob = np.full((2, 3, 5, 6), 1 / 3, np.float32)  # (S, C, h, w): three classes
    back = to_input_grid(prob, 10, 12)
    assert back.shape == (2, 3, 10, 12) and back.dtype == np.float32
    np.testing.assert_allclose(back.sum(axis=1), 1.0, rtol=1e-6)


def test_recorded_pixel_size_is_checked_naming_the_checkpoint():
    assert recorded_pixel_size({"pixel_size_nm": 5.9}, "m.ckpt") == 5.9
    assert recorded_pixel_size({}, "m.ckpt") is None             # checkpoints from before pixel sizes
    with pytest.raises(InputError, match=r"m\.ckpt .*pixel_size_nm.*must be positive"):
        recorded_pixel_size({"pixel_size_nm": -1}, "m.ckpt")


# ------------------------------------------------------------------------------------ prediction
class ThickDark(torch.nn.Module):
    """A deterministic model that depends on structure size in pixels: foreground where a dark structure is
    at least ``k`` px wide (a morphological opening of the dark pixels). Twice as many pixels per structure
    (half the pixel size) lets thin dark structures (membranes) through, so its maps change with scale."""

    def __init__(self, k: int = 7):
        super().__init__()
        self.k = k

    def forward(self, x):
        dark = torch.sigmoid(8 * (-0.5 - x))
        k, p = self.k, self.k // 2
        opened = F.max_pool2d(-F.max_pool2d(-dark, k, 1, p), k, 1, p)
        return 12 * (opened - 0.5)


def _settings(**kw):
    base = {"tile_size": 64, "overlap": 0.25, "border": 8, "batch_size": 16, "slab_size": 2, "device": "cpu",
            "min_size": 0, "progress": False, "overlays": 0, "instances": False}
    return PredictSettings.defaults(**{**base, **kw})


def _iou(a, b) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def two_scales(tmp_path_factory):
    """One synthetic volume drawn at 5 nm and the same field at 10 nm (2 x 2 pixel means), as tif stacks with
    their voxel size, and the stand-in model trained at 10 nm. (Drawing 10 nm with make_volume again would
    place other mitochondria: its random draws depend on the voxel grid.)"""
    from cemkit.data.synthetic import make_volume

    folder = tmp_path_factory.mktemp("scales")
    fine = make_volume((3, 256, 256), seed=5, voxel_size=(30.0, 5.0, 5.0)).image
    native = fine.reshape(3, 128, 2, 128, 2).mean(axis=(2, 4)).round().astype(np.uint8)
    paths = {"fine": write_tif_stack(folder / "fine.tif", fine, voxel_size=(30.0, 5.0, 5.0)),
             "native": write_tif_stack(folder / "native.tif", native, voxel_size=(30.0, 10.0, 10.0)),
             "plain": write_tif_stack(folder / "plain.tif", fine)}  # no metadata
    norms = (float(fine.mean()) / 255, float(fine.std()) / 255)
    model = Segmenter(ThickDark(7).eval(), norms=norms, name="thick", pixel_size_nm=10.0)
    return folder, paths, model


def _prob(out):
    return np.asarray(open_volume(out / "probabilities.zarr")[...], np.float32)


@pytest.fixture(scope="module")
def fine_map(two_scales):
    """The stand-in model's map of the 5 nm volume, rescaled to its 10 nm (the default settings)."""
    folder, paths, model = two_scales
    rec = run_prediction(paths["fine"], folder / "p_fine", models=[model], settings=_settings())
    return rec, _prob(folder / "p_fine")


def test_half_the_model_pixel_size_gives_a_map_on_the_input_grid(two_scales, fine_map):
    folder, paths, model = two_scales
    rec, prob = fine_map
    assert rec["pixel_size"] == {"input_nm": 5.0, "rescale": True, "scales": [0.5]}
    assert rec["models"][0]["pixel_size_nm"] == 10.0
    assert prob.shape == (3, 256, 256)
    mask = np.asarray(open_volume(folder / "p_fine" / "mask.zarr")[...])
    assert mask.shape == (3, 256, 256) and 0.02 < mask.mean() < 0.5


def test_rescaled_fine_volume_matches_the_native_scale_map(two_scales, fine_map):
    folder, paths, model = two_scales
    run_prediction(paths["native"], folder / "p_native", models=[model], settings=_settings())
    native = _prob(folder / "p_native")
    fine = resize_yx(fine_map[1], native.shape[-2:])
    run_prediction(paths["fine"], folder / "p_off", models=[model], settings=_settings(rescale=False))
    off = resize_yx(_prob(folder / "p_off"), native.shape[-2:])
    assert 0.05 < (native > 0.5).mean() < 0.5
    # rescaled: ~0.97; fed at 5 nm to a model of 10 nm structures: ~0.67 (the test can fail)
    assert _iou(fine, native) > 0.85
    assert _iou(off, native) < 0.8


def test_voxel_size_key_overrides_and_unknown_sizes_do_not_rescale(two_scales, fine_map, caplog):
    folder, paths, model = two_scales
    caplog.set_level(logging.INFO)
    rec = run_prediction(paths["plain"], folder / "p_plain", models=[model], settings=_settings())
    assert rec["pixel_size"]["scales"] == [None] and rec["pixel_size"]["input_nm"] is None
    assert "input's pixel size is unknown" in caplog.text
    caplog.clear()
    rec = run_prediction(paths["plain"], folder / "p_given", models=[model], settings=_settings(voxel_size=5.0))
    assert rec["pixel_size"]["scales"] == [0.5] and "rescaled by 0.5" in caplog.text
    np.testing.assert_array_equal(_prob(folder / "p_given"), fine_map[1])
    unknown = Segmenter(model.module, norms=model.norms, name="old")
    rec = run_prediction(paths["fine"], folder / "p_old", models=[unknown], settings=_settings())
    assert rec["pixel_size"]["scales"] == [None]
    for bad, problem in ((0, "must be positive"), (-5, "must be positive"), (2000, "implausible"),
                         (0.01, "implausible")):
        with pytest.raises(ConfigError, match=rf"voxel_size: .*{problem}"):
            run_prediction(paths["fine"], folder / "p_bad", models=[model], settings=_settings(voxel_size=bad))
    assert not (folder / "p_bad" / "predict.json").exists()


def test_an_ensemble_resamples_per_model(two_scales, fine_map):
    folder, paths, model = two_scales
    same = Segmenter(model.module, norms=model.norms, name="fine-model", pixel_size_nm=5.0)
    rec = run_prediction(paths["fine"], folder / "p_mixed", models=[model, same], settings=_settings())
    assert rec["pixel_size"]["scales"] == [0.5, None]
    mixed = _prob(folder / "p_mixed")
    run_prediction(paths["fine"], folder / "p_same", models=[same], settings=_settings())
    # the mean of the two members, each run on its own grid and brought back to the input's (float16 maps)
    np.testing.assert_allclose(mixed, (fine_map[1] + _prob(folder / "p_same")) / 2, atol=2e-3)


def test_orthoplane_with_rescaling_is_refused(two_scales):
    folder, paths, model = two_scales
    with pytest.raises(ConfigError, match=r"orthoplane=true.*rescale=false"):
        run_prediction(paths["fine"], folder / "p_ortho", models=[model], settings=_settings(orthoplane=True))


def _rescaled_peak_bytes(tmp_path, depth, name, model):
    import tracemalloc

    from cemkit.io import write_zarr

    rng = np.random.default_rng(0)
    vol = write_zarr(tmp_path / f"{name}.zarr", rng.integers(0, 256, (depth, 128, 128), dtype=np.uint8),
                     chunks=(2, 128, 128), voxel_size=(30.0, 5.0, 5.0))
    tracemalloc.start()
    try:
        rec = run_prediction(vol, tmp_path / f"out_{name}", models=[model],
                             settings=_settings(tile_size=32, border=4, prob_dtype="float32"))
        assert rec["pixel_size"]["scales"] == [0.5]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rescaled_prediction_memory_does_not_grow_with_the_volume(two_scales, tmp_path):
    model = two_scales[2]
    small = _rescaled_peak_bytes(tmp_path, 8, "small", model)
    large = _rescaled_peak_bytes(tmp_path, 64, "large", model)
    assert large < 0.25 * 64 * 128 * 128 * 4, (small, large)   # a quarter of the float32 map it wrote
    assert large < 1.3 * small + 2**20, (small, large)


# ------------------------------------------------------------------------------------ checkpoint, export and zoo
@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    """A tiny segmenter saved as finetune saves its model (meta with the training data's pixel size)."""
    from cemkit.models.checkpoint import save_segmenter
    from cemkit.models.deepem3d import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("resnet10t", frames=1, num_classes=2)[0].eval()
    path = save_segmenter(tmp_path_factory.mktemp("seg") / "seg.pth", model,
                          {"norms": [0.5, 0.2], "class_names": None, "pixel_size_nm": 5.9})
    return path, model


def test_predict_and_export_read_the_recorded_pixel_size(segmenter_file):
    from cemkit.export.metadata import export_metadata
    from cemkit.models.checkpoint import load_segmenter
    from cemkit.predict.models import load_segmenters

    path, _ = segmenter_file
    (loaded,) = load_segmenters([path])
    assert loaded.pixel_size_nm == 5.9 and loaded.describe()["pixel_size_nm"] == 5.9
    model, meta = load_segmenter(path)
    info = export_metadata(model, meta, "probabilities", str(path))
    assert info["pixel_size_nm"] == 5.9 and "trained at 5.9 nm per pixel" in info["input"]
    assert export_metadata(model, {"norms": None}, "probabilities")["pixel_size_nm"] is None



def test_cli_voxel_size_and_rescale_keys(segmenter_file, tmp_path):
    from cemkit.cli.main import main as cli

    path, _ = segmenter_file
    tif = write_tif_stack(tmp_path / "in.tif", np.random.default_rng(0).integers(0, 256, (2, 40, 48), np.uint8))
    common = [f"checkpoint={path}", f"input={tif}", "tile_size=64", "border=8", "overlays=0", "instances=false",
              "progress=false", "device=cpu"]
    assert cli(["predict", *common, "voxel_size=[30,11.8,11.8]", f"output={tmp_path / 'p'}"]) == 0
    rec = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert rec["pixel_size"] == {"input_nm": 11.8, "rescale": True, "scales": [2.0]}   # 11.8 nm data, 5.9 nm model
    assert _prob(tmp_path / "p").shape == (2, 40, 48)
    assert cli(["predict", *common, "voxel_size=11.8", "rescale=false", f"output={tmp_path / 'q'}"]) == 0
    assert json.loads((tmp_path / "q" / "predict.json").read_text())["pixel_size"]["scales"] == [None]
    assert cli(["predict", *common, "voxel_size=-3", f"output={tmp_path / 'r'}"]) == 2


def test_zoo_card_records_the_pixel_size(segmenter_file, tmp_path, monkeypatch):
    from cemkit.zoo.cards import card_from_dict, read_card
    from cemkit.zoo.registry import register

    monkeypatch.setenv("CEMKIT_CACHE", str(tmp_path / "cache"))
    path, _ = segmenter_file
    card = register(path, name="seg_5nm9")
    assert card.kind == "segmentation" and card.pixel_size_nm == 5.9
    assert read_card(card.source).pixel_size_nm == 5.9          # written to and read back from the YAML
    assert register(path, name="seg_vnc", pixel_size_nm=4.6).pixel_size_nm == 4.6  # explicit value wins
    base = {"name": "m", "kind": "segmentation", "frames": 1, "in_chans": 1, "path": str(path)}
    for bad, problem in ((0, "must be positive"), (-2, "must be positive"), (5000, "implausible")):
        with pytest.raises(InputError, match=rf"model card my\.yaml: pixel_size_nm: .*{problem}"):
            card_from_dict({**base, "pixel_size_nm": bad}, source="my.yaml")


# ------------------------------------------------------------------------------------ finetune records it
def test_finetune_records_the_pixel_size_and_predict_uses_it(tmp_path, capsys):
    from cemkit.cli.main import main as cli
    from cemkit.models.checkpoint import load_segmenter
    from cemkit.predict.models import load_segmenters
    from tiny_data import labelled_tif_pair

    img, lab = labelled_tif_pair(tmp_path, shape=(6, 64, 64), seed=2)
    out = tmp_path / "ft"
    assert cli(["finetune", "+experiment=tiny_finetune", f"data.images={img}", f"data.labels={lab}",
                "data.voxel_size=5.9", "trainer.max_steps=2", "val.every=2", f"output={out}"]) == 0
    result = json.loads((out / "1fm" / "result.json").read_text())
    assert result["pixel_size_nm"] == 5.9
    _, meta = load_segmenter(out / "1fm" / "best.ckpt")
    assert meta["pixel_size_nm"] == 5.9
    raw = torch.load(out / "1fm" / "last.ckpt", weights_only=True)
    assert raw["hyper_parameters"]["pixel_size_nm"] == 5.9
    assert raw["hyper_parameters"]["config"]["data"]["voxel_size"] == 5.9
    assert load_segmenters([out / "1fm" / "best.ckpt"])[0].pixel_size_nm == 5.9
    # a bad value stops the command naming the key (every kind of bad value: the check_pixel_size tests)
    assert cli(["finetune", "+experiment=tiny_finetune", f"data.images={img}", f"data.labels={lab}",
                "data.voxel_size=0", "trainer.max_steps=2", f"output={tmp_path / 'bad'}"]) == 2
    said = capsys.readouterr()
    assert "data.voxel_size: pixel size must be positive" in said.out + said.err
    assert not (tmp_path / "bad" / "1fm" / "result.json").exists()
