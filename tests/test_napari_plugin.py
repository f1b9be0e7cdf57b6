"""The napari plugin in a real viewer (Xvfb through pytest-xvfb, pytest-qt): the manifest, sample data, the
Predict and Adapt widgets, the predict -> correct -> adapt -> predict loop, Cancel, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")  # the napari extra; `make test` installs it (the dev extra includes it)
if not os.environ.get("DISPLAY"):  # pytest-xvfb sets it when Xvfb is installed (`make test` installs it)
    pytest.skip("no X display: install Xvfb (make display) or run in a desktop session", allow_module_level=True)

from cemkit.napari_plugin import sample_data  # noqa: E402
from cemkit.napari_plugin.adapt_widget import AdaptWidget  # noqa: E402
from cemkit.napari_plugin.predict_widget import PredictWidget  # noqa: E402

WAIT_MS = 240_000
TINY_ADAPT = ("val.every=1000",)  # the preset (128 px crops) on its time budget; one validation at the end
STEPS_ADAPT = ("trainer.max_time=null", "trainer.max_steps=60", "val.every=60",  # the same steps and numbers
               "trainer.precision=32-true")                                    # on any CPU


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The sample data's tiny model (trained here, not taken from the user's cache)."""
    return sample_data.sample_model(steps=60, root=tmp_path_factory.mktemp("sample_model"))


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The error notifications the widgets show."""
    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda text: shown.append(str(text)))
    return shown


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    a, b = pred > 0, truth > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT_MS)


def test_the_manifest_declares_both_widgets_and_the_sample_data(make_napari_viewer):
    import npe2

    manifest = npe2.PluginManifest.from_distribution("cemkit")  # the installed package's napari.manifest entry
    viewer = make_napari_viewer()
    pm = npe2.PluginManager.instance()
    if "cemkit" not in {m.name for m in pm.iter_manifests()}:  # napari's test viewer may start without plugins
        pm.register(manifest)
    assert {w.display_name for w in manifest.contributions.widgets} == {"Predict", "Adapt"}
    assert {s.key for s in manifest.contributions.sample_data} == {"synthetic_em", "synthetic_em_with_model"}
    _, widget = viewer.window.add_plugin_dock_widget("cemkit", "Predict")
    assert isinstance(widget, PredictWidget)
    viewer.open_sample("cemkit", "synthetic_em")
    assert [layer.name for layer in viewer.layers] == ["synthetic EM", "true mitochondria"]
    assert viewer.layers["synthetic EM"].data.shape == sample_data.SAMPLE_SHAPE


def test_predict_adds_probabilities_and_objects_on_the_layers_grid(make_napari_viewer, qtbot, model, tmp_path):
    viewer = make_napari_viewer()
    image, _ = sample_data.sample_volume(shape=(4, 96, 96))
    layer = viewer.add_image(image, name="em", scale=(30.0, 5.0, 5.0), translate=(10.0, 2.0, 3.0))
    widget = PredictWidget(viewer)
    widget.model.value, widget.output.value = str(model), tmp_path
    assert widget.tta.value == 0 and widget.threshold.value == 0.5  # conf/predict.yaml's defaults
    assert widget.run()
    _wait(qtbot, widget)
    probs, objects = viewer.layers["em probabilities"], viewer.layers["em objects"]
    assert isinstance(objects, napari.layers.Labels)
    assert probs.data.shape == objects.data.shape == (4, 96, 96)
    assert probs.data.dtype == np.float16 and objects.data.dtype == np.uint32
    for out in (probs, objects):
        np.testing.assert_array_equal(out.scale, layer.scale)
        np.testing.assert_array_equal(out.translate, layer.translate)
    assert isinstance(probs.data, np.ndarray)  # an in-memory layer gets in-memory outputs (editable labels)
    assert widget.first_layer_s is not None and [p.name for p in tmp_path.iterdir()] == ["predict-em-1"]


def test_a_zarr_layer_gets_lazy_outputs(make_napari_viewer, qtbot, model, tmp_path):
    import zarr

    viewer = make_napari_viewer()
    image, _ = sample_data.sample_volume(shape=(12, 64, 64))
    store = zarr.open_array(str(tmp_path / "em.zarr"), mode="w", shape=image.shape, chunks=(1, 64, 64),
                            dtype=image.dtype)
    store[:] = image
    layer = viewer.add_image(store, name="lazy em", contrast_limits=(0, 255))
    reads: list[tuple] = []
    original = type(store).__getitem__

    class Spy(type(store)):  # records each block cemkit reads from the layer's zarr array
        def __getitem__(self, key):
            block = original(self, key)
            reads.append(np.shape(block))
            return block

    store.__class__ = Spy
    widget = PredictWidget(viewer)
    widget.model.value, widget.output.value = str(model), tmp_path / "out"
    assert widget.run(layer)
    _wait(qtbot, widget)
    out = viewer.layers["lazy em probabilities"].data
    assert not isinstance(out, np.ndarray) and out.shape == (12, 64, 64)  # a zarr array, read as displayed
    assert reads and max(int(np.prod(r)) for r in reads) < store.size  # never the whole layer at once


def test_predict_correct_adapt_predict_again(make_napari_viewer, qtbot, model, tmp_path):
    """The loop: predict, correct two slices of the prediction, adapt, and the new prediction is better there."""
    viewer = make_napari_viewer()
    image, truth = sample_data.sample_volume(shape=(10, 128, 128))
    viewer.add_image(image, name="em")
    predict = PredictWidget(viewer)
    predict.model.value, predict.output.value = str(model), tmp_path
    assert predict.run()
    _wait(qtbot, predict)
    before = np.asarray(viewer.layers["em probabilities"].data) > 0.5
    objects = viewer.layers["em objects"]
    for z in (2, 7):  # the user corrects two slices: paints the mitochondria, erases the rest
        zz, yy, xx = np.nonzero(np.ones_like(truth[z:z + 1]))
        objects.data_setitem((zz + z, yy, xx), truth[z].ravel().astype(np.uint32))
    adapt = AdaptWidget(viewer)
    adapt.image.value, adapt.label_layer.value = viewer.layers["em"], objects
    adapt.output.value, adapt.minutes.value = tmp_path, 0.3
    assert adapt.model.value == ""  # no model in the layer's metadata: typed here
    adapt.model.value = str(model)
    assert adapt.run(overrides=STEPS_ADAPT)
    _wait(qtbot, adapt)
    assert adapt.last_result.slices == [2, 7]  # the edited slices of the prediction, nothing else
    assert any(e["kind"] == "train" and e["loss"] is not None for e in adapt.history)
    assert any(e["kind"] == "val" and e["iou"] is not None for e in adapt.history)
    assert "IoU" in adapt.progress.value
    qtbot.waitUntil(lambda: "em probabilities [1]" in viewer.layers, timeout=WAIT_MS)  # Predict ran again
    _wait(qtbot, predict)
    assert predict.model.value == str(tmp_path / "adapted-1")
    after = np.asarray(viewer.layers["em probabilities [1]"].data) > 0.5
    painted = [2, 7]
    iou_before, iou_after = _iou(before[painted], truth[painted]), _iou(after[painted], truth[painted])
    assert iou_after > iou_before + 0.2, (iou_before, iou_after)
    assert (tmp_path / "adapted-1" / "1fm" / "best.ckpt").exists()


def test_cancel_and_layer_removal_stop_adapt_and_leave_no_output(make_napari_viewer, qtbot, model, tmp_path):
    viewer = make_napari_viewer()
    image, truth = sample_data.sample_volume(shape=(3, 96, 96))
    viewer.add_image(image, name="em")
    labels = viewer.add_labels(np.where(np.arange(3)[:, None, None] == 1, truth, 0).astype(np.uint8), name="paint")
    widget = AdaptWidget(viewer)
    widget.model.value, widget.output.value, widget.minutes.value = str(model), tmp_path, 5.0
    for stop in (lambda: widget.cancel_button.clicked(), lambda: viewer.layers.remove(labels)):
        assert widget.run(overrides=TINY_ADAPT)
        qtbot.waitUntil(lambda: any(e["kind"] == "train" for e in widget.history), timeout=WAIT_MS)
        stop()
        _wait(qtbot, widget)
        assert widget.status.value == "cancelled: nothing was written"
        assert list(tmp_path.iterdir()) == []  # neither adapted-1 nor its temporary folder


def test_bad_input_gives_a_notification_and_writes_nothing(make_napari_viewer, qtbot, model, tmp_path, errors):
    viewer = make_napari_viewer()
    image, _ = sample_data.sample_volume(shape=(2, 64, 64))
    em = viewer.add_image(image, name="em")
    empty = viewer.add_labels(np.zeros((2, 64, 64), np.uint8), name="empty")
    small = viewer.add_labels(np.ones((2, 32, 32), np.uint8), name="small")
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    adapt, predict = AdaptWidget(viewer), PredictWidget(viewer)
    adapt.output.value = predict.output.value = tmp_path
    adapt.model.value = predict.model.value = str(model)

    def refused(widget, expected: str, **settings) -> None:
        for key, value in settings.items():
            getattr(widget, key).value = value
        started = widget.run()
        if started:  # refused inside the run (the model is loaded there)
            _wait(qtbot, widget)
        assert errors and expected in errors[-1], (expected, errors)
        assert list(tmp_path.iterdir()) == []

    refused(adapt, "has no painted slice", image=em, label_layer=empty)
    refused(adapt, "labels layer 'small' has shape (2, 32, 32) but image layer 'em' has (2, 64, 64)", label_layer=small)
    refused(predict, "layer 'photo' is an RGB image", image=rgb)
    refused(adapt, "the model takes 5 slices (5fm) and needs at least 3, but layer 'em' has 2",
            image=em, label_layer=viewer.add_labels(np.ones((2, 64, 64), np.uint8), name="painted"), frames=5)
    (tmp_path.parent / "corrupt.ckpt").write_bytes(b"\x00not a checkpoint")
    refused(predict, "corrupt.ckpt: cannot read", image=em, model=str(tmp_path.parent / "corrupt.ckpt"))
    refused(predict, "missing.ckpt: no such file or folder", model=str(tmp_path.parent / "missing.ckpt"))


def test_closing_the_viewer_cancels_a_run_and_leaves_no_output(make_napari_viewer, qtbot, model, tmp_path):
    viewer = make_napari_viewer()
    image, truth = sample_data.sample_volume(shape=(3, 96, 96))
    viewer.add_image(image, name="em")
    viewer.add_labels(np.where(np.arange(3)[:, None, None] == 1, truth, 0).astype(np.uint8), name="paint")
    widget = AdaptWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Adapt (cemkit)")
    widget.model.value, widget.output.value, widget.minutes.value = str(model), tmp_path, 5.0
    assert widget.run(overrides=TINY_ADAPT)
    job = widget.job
    qtbot.waitUntil(lambda: any(e["kind"] == "train" for e in widget.history), timeout=WAIT_MS)
    viewer.close()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert job.cancel_event.is_set() and list(tmp_path.iterdir()) == []
