"""Corpus shards: writer, reader API used by the pretraining loader, pickling, mean/std."""

import pickle

import numpy as np
import pytest

from cemkit.io.corpus import ShardWriter, open_corpus, write_json
from cemkit.errors import InputError


def _write(tmp_path, patches, shard_size):
    with ShardWriter(tmp_path, patches.shape[1], shard_size) as w:
        locs = w.add(patches[:5]) + w.add(patches[5:])
    write_json(tmp_path / "metadata.json", {
        "format": "cemkit-corpus", "version": 1, "patch_size": patches.shape[1], "n_patches": w.count,
        "mean": w.mean, "std": w.std, "shards": [{"file": f, "count": c} for f, c in w.shards]})
    return w, locs


def test_roundtrip_random_access_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (11, 16, 16), dtype=np.uint8)
    w, locs = _write(tmp_path, patches, shard_size=4)
    assert [c for _, c in w.shards] == [4, 4, 3]
    assert locs[:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    c = open_corpus(tmp_path)
    assert len(c) == 11 and c.patch_size == 16
    for i in (0, 3, 4, 10, -1):
        np.testing.assert_array_equal(c[i], patches[i])
        assert c[i].dtype == np.uint8 and c[i].shape == (16, 16)
    v = patches.astype(np.float64) / 255
    assert c.mean == pytest.approx(v.mean(), abs=1e-12)
    assert c.std == pytest.approx(v.std(), abs=1e-9)
    with pytest.raises(IndexError):
        c[11]
    c2 = pickle.loads(pickle.dumps(c))  # DataLoader workers
    np.testing.assert_array_equal(c2[7], patches[7])
    np.testing.assert_array_equal(np.stack(list(c2)), patches)


def test_open_corpus_errors(tmp_path):
    with pytest.raises(InputError, match="not a cemkit corpus"):
        open_corpus(tmp_path)
    write_json(tmp_path / "metadata.json", {"format": "other"})
    with pytest.raises(InputError, match="format"):
        open_corpus(tmp_path)
