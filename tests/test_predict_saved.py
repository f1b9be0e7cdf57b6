"""Ensembles of saved probability maps (cemkit.predict.saved): exact combination, records, errors."""

import numpy as np
import pytest

from cemkit.errors import InputError
from cemkit.io import write_tif_stack, write_zarr
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
