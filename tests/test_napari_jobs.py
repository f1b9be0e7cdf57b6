"""The napari plugin without Qt: layer arrays as lazy volumes, painted slices and training labels, and the
predict / adapt runs (progress, cancel, bad input) that the widgets start."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cemkit.errors import InputError, RunCancelled
from cemkit.io.zarr_store import open_zarr_array
from cemkit.napari_plugin import jobs
from cemkit.napari_plugin.layer_data import (
    IGNORE_VALUE,
    image_volume,
    label_blocks,
    layer_array,
    painted_slices,
    parse_slices,
    training_labels,
)
from cemkit.predict import Segmenter


class CountingArray:
    """A read-only array-like (as a zarr or dask layer is) that records the size of every block read."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        block = np.asarray(self._data[key])
        self.reads.append(block.size)
        return block


def test_layer_volume_reads_only_the_blocks_asked_for():
    data = CountingArray(np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5))
    vol = image_volume(data, "em")
    assert vol.shape == (4, 6, 5) and vol.name == "em"
    np.testing.assert_array_equal(vol[1:3, 2:4, 1], data._data[1:3, 2:4, 1])
    assert data.reads == [2 * 2 * 1]
    flat = image_volume(np.ones((6, 5), np.float32), "one slice")
    assert flat.shape == (1, 6, 5) and flat[0].shape == (6, 5)
    assert image_volume(np.zeros((1, 1, 3, 6, 5)), "squeezed").shape == (3, 6, 5)


def test_image_volume_refuses_rgb_and_other_shapes_naming_the_layer():
    with pytest.raises(InputError, match=r"layer 'photo' is an RGB image \(8, 8, 3\)"):
        image_volume(np.zeros((8, 8, 3), np.uint8), "photo", rgb=True)
    with pytest.raises(InputError, match=r"layer 'movie' has shape \(2, 3, 8, 8\): predict and adapt take a 2-D"):
        image_volume(np.zeros((2, 3, 8, 8)), "movie")


def test_painted_slices_training_labels_and_blocks_exact_values():
    lab = np.zeros((6, 4, 4), np.uint32)
    lab[1, 0, 0], lab[4, 1:3, 1:3], lab[4, 0, 0] = 7, 3, 9
    assert painted_slices(lab) == [1, 4]
    assert painted_slices(lab, [5, 0, 5]) == [0, 5]
    with pytest.raises(InputError, match=r"labelled slices \[6\] are outside the volume \(slices 0..5\)"):
        painted_slices(lab, [6])
    with pytest.raises(InputError, match="the labels layer has no painted slice"):
        painted_slices(np.zeros((3, 4, 4), np.uint8))
    t = training_labels(lab[4], not_sure=9)
    assert t.dtype == np.uint8 and t[0, 0] == IGNORE_VALUE and t[1, 1] == 1 and t[3, 3] == 0
    assert int((t == 1).sum()) == 4 and int((t == 0).sum()) == 11
    assert label_blocks([1, 4], depth=6, context=2) == [(0, 6)]
    assert label_blocks([0, 5], depth=6, context=1) == [(0, 2), (4, 6)]
    assert parse_slices("8, 2-4 2") == [2, 3, 4, 8]
    with pytest.raises(InputError, match="write numbers and ranges"):
        parse_slices("two")


def test_write_training_data_keeps_predicts_intensity_mapping_and_the_context_slices(tmp_path):
    from cemkit.io import open_volume

    image = np.linspace(0, 1000, 8 * 16 * 16).reshape(8, 16, 16).astype(np.float32)
    vol = image_volume(image, "em")
    lab = np.zeros((8, 16, 16), np.uint8)
    lab[2, :4], lab[6, 8:] = 1, 5
    entries = jobs.write_training_data(vol, lab, [2, 6], frames=3, folder=tmp_path, not_sure=5)
    assert [e["label_slices"] for e in entries] == [[1], [1]]  # blocks 1-3 and 5-7, one labelled slice each
    written = open_volume(entries[0]["images"])
    np.testing.assert_array_equal(written[:], vol.as_uint8()[1:4])  # uint8 exactly as predict sees the layer
    labels = open_volume(entries[1]["labels"])[:]
    assert labels.shape == (1, 16, 16) and set(np.unique(labels)) == {0, IGNORE_VALUE}


def _three_frame_model() -> Segmenter:
    return Segmenter(torch.nn.Conv2d(5, 1, 1), frames=5, name="5fm")


def test_predict_refuses_a_model_whose_frames_need_more_slices_and_writes_nothing(tmp_path):
    vol = image_volume(np.zeros((2, 32, 32), np.uint8), "two slices")
    with pytest.raises(InputError, match=r"takes 5 slices \(5fm\) and needs at least 3, but layer 'two slices' has 2"):
        jobs.predict_layer(vol, "", tmp_path / "out", models=[_three_frame_model()])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("problem", ["missing", "corrupt", "empty"])
def test_a_missing_or_corrupt_model_file_is_refused_before_anything_is_written(tmp_path, problem):
    vol = image_volume(np.zeros((2, 32, 32), np.uint8), "em")
    spec = {"missing": str(tmp_path / "nope.ckpt"), "corrupt": str(tmp_path / "bad.ckpt"), "empty": ""}[problem]
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    message = {"missing": "nope.ckpt: no such file or folder", "corrupt": "bad.ckpt: cannot read as a weights-only torch checkpoint",
               "empty": "choose a model"}[problem]
    with pytest.raises(InputError, match=message):
        jobs.predict_layer(vol, spec, tmp_path / "out")
    lab = np.ones((2, 32, 32), np.uint8)
    if problem != "empty":  # adapt without a model trains from random init
        with pytest.raises(InputError, match=message.replace(": no such file or folder", "")):
            jobs.adapt_layers(vol, lab, spec, tmp_path / "adapted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_predict_streams_a_lazy_layer_and_cancel_leaves_no_output(tmp_path, one_torch_thread):
    """A (zarr-like) lazy layer is read slab by slab, never whole; a cancelled run removes its partial folder."""
    rng = np.random.default_rng(0)
    data = CountingArray(rng.integers(0, 255, (20, 48, 48), dtype=np.uint8))
    model = Segmenter(torch.nn.Conv2d(1, 1, 3, padding=1), frames=1, name="conv")
    events: list[dict] = []
    result = jobs.predict_layer(image_volume(data, "lazy"), "", tmp_path / "p-1", models=[model],
                                on_event=events.append)
    assert max(data.reads) <= 8 * 48 * 48 < data.shape[0] * 48 * 48  # slab_size planes at a time
    assert open_zarr_array(result.probabilities).shape == (20, 48, 48)
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress[0]["done"] == 0 and progress[-1]["done"] == progress[-1]["total"] == 20 * 48 * 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-1"]

    cancel = threading.Event()

    def stop_after_first_slab(event: dict) -> None:
        if event["kind"] == "progress" and event["done"] > 0:
            cancel.set()

    with pytest.raises(RunCancelled):
        jobs.predict_layer(image_volume(data, "lazy"), "", tmp_path / "p-2", models=[model],
                           on_event=stop_after_first_slab, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-1"]  # neither p-2 nor its temporary folder


def test_next_free_skips_finished_and_partial_folders(tmp_path: Path):
    (tmp_path / "adapted-1").mkdir()
    (tmp_path / ".adapted-2.tmp-123-0123456789abcdef").mkdir()  # being written (cemkit.io.atomic's temporary name)
    assert jobs.next_free(tmp_path, "adapted") == tmp_path / "adapted-3"


def test_a_multiscale_layer_is_read_at_full_resolution():
    from types import SimpleNamespace

    levels = [np.zeros((2, 8, 8), np.uint8), np.zeros((2, 4, 4), np.uint8)]
    assert layer_array(SimpleNamespace(multiscale=True, data=levels)) is levels[0]
    assert layer_array(SimpleNamespace(multiscale=False, data=levels[1])) is levels[1]
