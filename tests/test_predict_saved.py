"""Ensembles of saved probability maps (cemkit.predict.saved): exact combination, records, errors."""

import numpy as np
import pytest

from cemkit.errors import InputError
from cemkit.io import open_volume, write_tif_stack, write_zarr
from cemkit.predict.saved import SavedMapCombiner, open_saved_predictions, saved_record


@pytest.fixture()
def maps(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((4, 6, 5)).astype(np.float32)
    b = rng.integers(0, 256, (4, 6, 5)).astype(np.uint8)     # uint8 probabilities, 0-255
    c = rng.random((4, 6, 5)).astype(np.float32)
    write_tif_stack(tmp_path / "a.tif", a)
    write_tif_stack(tmp_path / "b.tif", b)
    write_zarr(tmp_path / "c.zarr", c)
    return [tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.zarr"], [a, b / np.float32(255), c]


def test_weighted_and_vote_of_saved_maps_are_exact(maps):
    paths, probs = maps
    saved = open_saved_predictions(paths, (4, 6, 5))
    out = SavedMapCombiner(saved, "weighted", [2, 1, 1]).predict_slab(None, 1, 3)
    assert out.shape == (2, 1, 6, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], (2 * probs[0] + probs[1] + probs[2])[1:3] / 4, atol=1e-6)
    vote = SavedMapCombiner(saved, "vote", threshold=0.4).predict_slab(None, 0, 4)
    np.testing.assert_allclose(vote[:, 0], sum((p > 0.4).astype(np.float32) for p in probs) / 3, atol=1e-6)
    rec = saved_record(saved[0])
    assert rec["prediction"] == str(paths[0].resolve()) and "models" not in rec   # a plain volume: no predict.json


def test_saved_maps_errors_name_the_path(maps, tmp_path):
    paths, _ = maps
    with pytest.raises(InputError, match="a.tif: probabilities of shape"):
        open_saved_predictions(paths, (4, 6, 6))
    write_tif_stack(tmp_path / "mask.tif", np.zeros((4, 6, 5), np.uint8) + np.eye(6, 5, dtype=np.uint8))
    with pytest.raises(InputError, match="mask.tif.*not probabilities"):
        open_saved_predictions([tmp_path / "mask.tif"], (4, 6, 5))
    with pytest.raises(InputError, match="missing"):
        open_saved_predictions([tmp_path / "missing"], (4, 6, 5))
    with pytest.raises(InputError, match="at least one"):
        open_saved_predictions([], (4, 6, 5))


@pytest.mark.parametrize("watershed, objects", [(False, 1), (True, 2)])
def test_saved_map_of_touching_spheres_gives_one_component_or_two_watershed_objects(tmp_path, watershed, objects):
    import csv

    from cemkit.predict.runner import PredictSettings, run_prediction

    zz, yy, xx = np.indices((16, 32, 48))
    fg = np.zeros((16, 32, 48), bool)
    for cx in (16, 30):
        fg |= (zz - 8) ** 2 + (yy - 16) ** 2 + (xx - cx) ** 2 <= 7 ** 2
    write_zarr(tmp_path / "prob.zarr", np.where(fg, 0.9, 0.1).astype(np.float32))
    write_tif_stack(tmp_path / "image.tif", np.zeros(fg.shape, np.uint8))
    settings = PredictSettings.defaults(watershed=watershed, slab_size=4, overlays=0, progress=False)
    out = tmp_path / "out"
    record = run_prediction(tmp_path / "image.tif", out, predictions=[tmp_path / "prob.zarr"], settings=settings)
    with open(out / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == objects and sum(int(r["voxels"]) for r in rows) == int(fg.sum())
    labels = np.asarray(open_volume(out / "labels.zarr")[...])
    assert ((labels > 0) == fg).all() and (labels[8, 16, 16] != labels[8, 16, 30]) == watershed
    assert record["outputs"]["objects"].endswith("objects.csv")


def _class_probs(rng, shape, classes=3):
    logits = rng.normal(size=(classes, *shape))
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def _bare_zarr(path, data):
    import zarr

    zarr.open_array(str(path), mode="w", shape=data.shape, dtype=data.dtype)[...] = data


@pytest.fixture()
def class_maps(tmp_path):
    """Two 3-class maps: a predict folder (OME-Zarr group, float16) and a bare uint8 zarr array."""
    from cemkit.io.writers import create_zarr

    rng = np.random.default_rng(1)
    a, b = _class_probs(rng, (4, 6, 5)), _class_probs(rng, (4, 6, 5))
    folder = tmp_path / "member_a"
    folder.mkdir()
    create_zarr(folder / "probabilities.zarr", a.shape, "float16")[...] = a
    b8 = np.round(b * 255).astype(np.uint8)
    _bare_zarr(tmp_path / "b.zarr", b8)
    return [folder, tmp_path / "b.zarr"], [a.astype(np.float16).astype(np.float32), b8 / np.float32(255)]


def test_multiclass_saved_maps_are_combined_per_class(class_maps):
    paths, probs = class_maps
    saved = open_saved_predictions(paths, (4, 6, 5))
    assert [m.channels for m in saved] == [3, 3]
    out = SavedMapCombiner(saved, "weighted", [3, 1]).predict_slab(None, 1, 4)
    assert out.shape == (3, 3, 6, 5)                      # (planes, classes, y, x)
    want = (3 * probs[0] + probs[1]) / 4
    np.testing.assert_allclose(out, want[:, 1:4].transpose(1, 0, 2, 3), atol=1e-6)
    vote = SavedMapCombiner(saved, "vote").predict_slab(None, 0, 4)
    onehot = [np.eye(3, dtype=np.float32)[p.argmax(axis=0)].transpose(0, 3, 1, 2) for p in probs]   # (z, c, y, x)
    np.testing.assert_allclose(vote, (onehot[0] + onehot[1]) / 2, atol=1e-6)


def test_multiclass_saved_maps_errors_name_the_path(class_maps, maps, tmp_path):
    paths, _ = class_maps
    with pytest.raises(InputError, match=r"b.zarr: holds 3 class probabilities, but .*a.tif holds a foreground"):
        open_saved_predictions([maps[0][0], paths[1]], (4, 6, 5))
    with pytest.raises(InputError, match=r"member_a: probabilities of shape \(3, 4, 6, 5\), but the input volume"):
        open_saved_predictions(paths, (4, 6, 6))
    _bare_zarr(tmp_path / "ints.zarr", np.zeros((3, 4, 6, 5), np.int32))
    with pytest.raises(InputError, match="ints.zarr: class probabilities must be float or uint8"):
        open_saved_predictions([tmp_path / "ints.zarr"], (4, 6, 5))


def test_run_prediction_on_multiclass_saved_maps_writes_their_mean_and_its_argmax(class_maps, tmp_path):
    from cemkit.predict.runner import PredictSettings, run_prediction

    paths, probs = class_maps
    write_tif_stack(tmp_path / "image.tif", np.zeros((4, 6, 5), np.uint8))
    out = tmp_path / "out"
    record = run_prediction(tmp_path / "image.tif", out, predictions=paths,
                            settings=PredictSettings.defaults(slab_size=2, overlays=0, progress=False))
    mean = (probs[0] + probs[1]) / 2
    assert record["channels"] == 3
    written = np.asarray(open_volume(out / "mask.zarr")[...])
    np.testing.assert_array_equal(written, mean.argmax(axis=0))
    from cemkit.io.zarr_store import open_zarr_array

    np.testing.assert_allclose(np.asarray(open_zarr_array(out / "probabilities.zarr")[...], np.float32), mean,
                               atol=1e-3)   # float16 storage
    # cemkit evaluate num_classes=3 on the folder scores its arg-max class map
    from cemkit.io.predictions import open_prediction

    pred = open_prediction(out, num_classes=3)
    assert pred.kind == "labels" and pred.volume.path.name == "mask.zarr"
