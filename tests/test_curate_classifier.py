"""Trainable patch classifier: label vocabularies, AUROC, tiny training, weights_only reload."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cemkit.curate.classifier import (
    ClassifierConfig,
    PatchClassifier,
    auroc,
    read_labels,
    train_classifier,
)
from cemkit.curate.patches import extract_patches
from cemkit.errors import InputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_read_labels_both_vocabularies(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("patch_id,label\na:0,informative\nb:0,uninformative\nc:0,good\nd:0,BAD\ne:0,none\nf:0,1\n")
    assert read_labels(f) == {"a:0": 1, "b:0": 0, "c:0": 1, "d:0": 0, "f:0": 1}
    f.write_text("patch_id,label\na,maybe\n")
    with pytest.raises(InputError, match="maybe"):
        read_labels(f)
    f.write_text("id,quality\na,good\n")
    with pytest.raises(InputError, match="patch_id"):
        read_labels(f)


def test_auroc_exact():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([1, 2, 3], [0, 1, 1]) == 1.0
    assert auroc([0.5, 0.5], [0, 1]) == 0.5
    assert np.isnan(auroc([1, 2], [1, 1]))


def test_train_apply_save_load(tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    files = sorted((DATA / "cdeep3m_mito" / "train" / "images").glob("*.png"))[:2]
    good = np.concatenate([extract_patches(np.asarray(Image.open(f)), 112)[0] for f in files])[:48]
    rng = np.random.default_rng(0)
    bad = np.clip(rng.normal(rng.uniform(60, 200, (48, 1, 1)), 6, (48, 112, 112)), 0, 255).astype(np.uint8)
    x = np.concatenate([good, bad])
    y = np.r_[np.ones(len(good)), np.zeros(len(bad))]
    cfg = ClassifierConfig(input_size=32, epochs=3, batch_size=16, lr=3e-3, val_fraction=0.25, threads=1)
    clf = train_classifier(x, y, cfg, seed=0)
    assert clf.metrics["n_val"] == 24 and clf.metrics["n_train"] == 72
    assert clf.metrics["val_auroc"] >= 0.9
    p = clf.predict(x)
    assert p.shape == (96,) and ((p >= 0.5) == (y == 1)).mean() >= 0.9
    clf.save(tmp_path / "clf.pt")
    raw = torch.load(tmp_path / "clf.pt", weights_only=True)
    assert raw["format"] == "cemkit-patch-classifier" and raw["arch"] == "resnet10t"
    again = PatchClassifier.load(tmp_path / "clf.pt")
    np.testing.assert_allclose(again.predict(x[:8]), p[:8], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="both classes"):
        train_classifier(x[:10], np.ones(10), cfg)


def test_stratified_split_holds_out_both_classes():
    from cemkit.curate.classifier import stratified_split

    labels = np.array([1] * 8 + [0] * 2)
    val, train = stratified_split(labels, 0.25, seed=3)
    assert sorted(labels[val].tolist()) == [0, 1, 1]  # round(0.5) -> at least one of the rare class
    assert sorted(np.r_[val, train].tolist()) == list(range(10))
    np.testing.assert_array_equal(val, stratified_split(labels, 0.25, seed=3)[0])
