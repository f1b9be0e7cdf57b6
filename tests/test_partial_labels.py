"""Labels for only some slices (paired by file name or data.label_slices) and an ignore value in label images:
unlabelled slices and pixels never enter the patch sampling, the loss, the validation metrics or `cemkit evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cemkit.cli.main import main as cli
from cemkit.data.synthetic import make_volume
from cemkit.errors import ConfigError, InputError
from cemkit.finetune.data import PatchDataset, check_ignore_value, convert_labels, read_labelled_volume
from cemkit.finetune.losses import IGNORE_INDEX, SegmentationLoss
from cemkit.finetune.pairing import stem_number
from cemkit.io import write_png_folder, write_tif_stack


def _folder(path, stems, arrays):
    path.mkdir(parents=True)
    from PIL import Image

    for stem, a in zip(stems, arrays):
        Image.fromarray(a).save(path / f"{stem}.png")
    return path


# ------------------------------------------------------------------------------------ pairing label slices
def test_folders_pair_by_name_and_unlabelled_slices_are_not_background(tmp_path):
    sv = make_volume(shape=(6, 48, 48), seed=0)
    images = _folder(tmp_path / "images", [f"vnc_{i:02d}" for i in range(6)], sv.image)
    labels = _folder(tmp_path / "labels", ["vnc_01", "vnc_02", "vnc_04"], (sv.mito[[1, 2, 4]] * 255).astype(np.uint8))
    vol = read_labelled_volume(images, labels, frames=5)
    assert vol.slices.tolist() == [1, 2, 4] and vol.image.shape == (6, 48, 48)
    assert np.array_equal(vol.label[[1, 2, 4]], sv.mito[[1, 2, 4]])
    assert (vol.label[[0, 3, 5]] == IGNORE_INDEX).all()  # never background
    # CDeep3M names: images.NNN with mitos_3D.NNN pair by the number
    cd_img = _folder(tmp_path / "cd_images", [f"images.{i:03d}" for i in range(10, 14)], sv.image[:4])
    cd_lab = _folder(tmp_path / "cd_labels", ["mitos_3D.011", "mitos_3D.013"], sv.mito[[1, 3]].astype(np.uint8))
    assert read_labelled_volume(cd_img, cd_lab).slices.tolist() == [1, 3]
    assert stem_number("mitos_3D.012") == 12 and stem_number("x") is None


def test_a_label_file_without_its_image_and_a_missing_label_folder_are_named(tmp_path):
    sv = make_volume(shape=(4, 32, 32), seed=1)
    images = _folder(tmp_path / "images", ["a_0", "a_1", "a_2", "a_3"], sv.image)
    labels = _folder(tmp_path / "labels", ["a_1", "b_9"], sv.mito[:2].astype(np.uint8))
    with pytest.raises(InputError, match=r"data\.labels: label file .*b_9\.png has no image"):
        read_labelled_volume(images, labels)
    with pytest.raises(InputError, match=r"data\.labels: .*no_labels_here: no such file or folder"):
        read_labelled_volume(images, tmp_path / "no_labels_here")


def test_a_container_with_fewer_label_slices_needs_label_slices(tmp_path):
    sv = make_volume(shape=(6, 32, 32), seed=2)
    img = write_tif_stack(tmp_path / "img.tif", sv.image)
    lab = write_tif_stack(tmp_path / "lab.tif", sv.mito[[0, 5]].astype(np.uint8))
    with pytest.raises(InputError, match=r"lab\.tif holds 2 label slices but .*img\.tif holds 6.*data\.label_slices"):
        read_labelled_volume(img, lab)
    vol = read_labelled_volume(img, lab, label_slices=[0, 5])
    assert vol.slices.tolist() == [0, 5] and np.array_equal(vol.label[5], sv.mito[5])
    with pytest.raises(ConfigError, match=r"data\.label_slices lists 3 slices"):
        read_labelled_volume(img, lab, label_slices=[0, 1, 2])
    with pytest.raises(ConfigError, match=r"distinct image slices in 0\.\.5"):
        read_labelled_volume(img, lab, label_slices=[0, 6])


def test_unlabelled_slices_give_context_but_never_enter_the_loss_or_validation(tmp_path, monkeypatch):
    """A 3fm run on 8 slices of which 2, 3 and 6 are labelled: the sampled centre slices, the loss targets and
    the validation slices are labelled ones only, while the 3-frame inputs do read unlabelled neighbours."""
    sv = make_volume(shape=(8, 64, 64), seed=3)
    names = [f"s_{i}" for i in range(8)]
    images = _folder(tmp_path / "images", names, sv.image)
    labels = _folder(tmp_path / "labels", [names[i] for i in (2, 3, 6)], (sv.mito[[2, 3, 6]] * 255).astype(np.uint8))
    centres, frames_read, targets, validated = [], set(), [], []
    cut = PatchDataset._cut

    def spy_cut(self, vol, z, cy, cx):
        centres.append(z)
        from cemkit.models.frames import frame_indices

        frames_read.update(frame_indices(z, vol.image.shape[0], self.frames).tolist())
        return cut(self, vol, z, cy, cx)

    forward = SegmentationLoss.forward

    def spy_loss(self, logits, target, taps=None):
        targets.append(target.detach().clone())
        return forward(self, logits, target, taps)

    from cemkit.finetune.data import SliceDataset

    getitem = SliceDataset.__getitem__

    def spy_val(self, index):
        validated.append(self.items[index % len(self.items)][1])
        return getitem(self, index)

    monkeypatch.setattr(PatchDataset, "_cut", spy_cut)
    monkeypatch.setattr(SegmentationLoss, "forward", spy_loss)
    monkeypatch.setattr(SliceDataset, "__getitem__", spy_val)
    out = tmp_path / "out"
    assert cli(["finetune", "+experiment=tiny_finetune", f"data.images={images}", f"data.labels={labels}",
                "model.frames=3", "data.val_slices=1", "data.crop=32", "data.batch_size=4", "trainer.max_steps=2",
                "val.every=2", f"output={out}"]) == 0
    assert centres and set(centres) <= {2, 3}  # slice 6 is held out for validation
    assert {1, 4} & frames_read  # unlabelled neighbours are read as context
    assert set(validated) == {6}
    assert targets and all(not (t == IGNORE_INDEX).any() for t in targets)  # nothing unlabelled reached the loss
    assert json.loads((out / "3fm" / "result.json").read_text())["steps"] == 2


# ------------------------------------------------------------------------------------ the ignore value
def test_ignore_value_is_checked_and_mapped():
    labels = np.array([[0, 255, 2], [2, 0, 255]], np.uint8)
    assert convert_labels(labels, 2, "x", ignore_value=2).tolist() == [[0, 1, 255], [255, 0, 1]]
    assert convert_labels(np.array([[0, 1, 255]]), 2, "x", ignore_value=255).tolist() == [[0, 1, 255]]
    assert convert_labels(np.array([[0, 2, 7]]), 3, "x", ignore_value=7).tolist() == [[0, 2, 255]]
    with pytest.raises(InputError, match=r"lab\.png: binary labels must be 0/1 or 0/255 \(and data\.ignore_value=2"):
        convert_labels(np.array([[0, 1, 2, 3]]), 2, "lab.png", ignore_value=2)
    assert check_ignore_value(None, 2) is None and check_ignore_value(2, 2) == 2
    for bad, classes in ((1, 2), (0, 2), (2, 3), (-1, 2), (2.5, 2), ("x", 2)):
        with pytest.raises(ConfigError, match="data.ignore_value"):
            check_ignore_value(bad, classes)


def _ignored_batch(num_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    channels = 1 if num_classes == 2 else num_classes
    logits = torch.randn(2, channels, 16, 16, generator=g) * 3
    target = torch.randint(0, num_classes, (2, 16, 16), generator=g)
    target[:, :, 10:] = IGNORE_INDEX  # the last 6 columns are not labelled
    return logits, target


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("terms", [{"ce": 1.0}, {"dice": 1.0}, {"focal": 1.0}, {"ce": 1.0, "dice": 1.0, "focal": 0.5}])
@pytest.mark.parametrize("balance", [False, True])
def test_ignored_pixels_change_no_loss_term(num_classes, terms, balance):
    logits, target = _ignored_batch(num_classes)
    weights = [0.5] + [2.0] * (num_classes - 1)
    loss = SegmentationLoss(terms, num_classes, class_weights=weights, auto_balance=balance)
    total, parts = loss(logits, target)
    # anything at the ignored pixels -- other logits, even inf -- gives exactly the same loss
    flipped = logits.clone()
    flipped[..., 10:] = -flipped[..., 10:] * 7
    flipped[0, 0, 0, 12] = float("inf")
    total_f, parts_f = loss(flipped, target)
    assert torch.equal(total, total_f) and all(torch.equal(parts[k], parts_f[k]) for k in parts)
    # and it is the loss of the labelled pixels alone
    cropped, _ = loss(logits[..., :10].contiguous(), target[..., :10].contiguous())
    assert torch.allclose(total, cropped, rtol=1e-5, atol=1e-6)


def _stub_module(logits: torch.Tensor):
    from cemkit.finetune.module import SegmentationModule

    class Fixed(torch.nn.Module):
        out_channels, num_classes = logits.shape[1], max(2, logits.shape[1])

        def forward(self, x):
            return logits

    return SegmentationModule(Fixed(), SegmentationLoss({"ce": 1.0, "dice": 1.0}, 2), {"frames": 1},
                              {"encoder_lr": 0, "decoder_lr": 0, "weight_decay": 0, "schedule": "constant"}, 1)


def test_ignored_pixels_change_no_validation_metric():
    logits, target = _ignored_batch(2, seed=1)
    counted = torch.tensor([[0, 0, 16, 16]] * 2)
    results = []
    for lg in (logits, torch.where(torch.arange(16) >= 10, -logits * 5, logits)):
        module = _stub_module(lg)
        module.validation_step((torch.zeros(2, 1, 16, 16), target, torch.arange(2), counted), 0)
        results.append((module._counts.copy(), module._val_loss))
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    labelled = target[..., :10].numpy()
    pred = (logits[:, 0, :, :10] > 0).numpy()
    tp = int((pred & (labelled == 1)).sum())
    assert results[0][0].tolist() == [tp, int(pred.sum()) - tp, int((labelled == 1).sum()) - tp,
                                      int((~pred & (labelled == 0)).sum())]
    assert results[0][0].sum() == 2 * 16 * 10


def test_an_ignore_value_in_label_files(tmp_path):
    sv = make_volume(shape=(4, 32, 32), seed=4)
    labels = (sv.mito * 255).astype(np.uint8)
    labels[:, :, 20:] = 2  # the right part of every slice is not labelled
    img = write_tif_stack(tmp_path / "img.tif", sv.image)
    lab = write_tif_stack(tmp_path / "lab.tif", labels)
    with pytest.raises(InputError, match=r"lab\.tif: binary labels must be 0/1 or 0/255, found values \[0, 2, 255\]"):
        read_labelled_volume(img, lab)  # without data.ignore_value, 2 is not a label
    vol = read_labelled_volume(img, lab, ignore_value=2)
    assert (vol.label[:, :, 20:] == IGNORE_INDEX).all() and np.array_equal(vol.label[:, :, :20], sv.mito[:, :, :20])
    # patches are never centred on unlabelled pixels
    ds = PatchDataset([vol], 1, 8, 50, (0.5, 0.2), background_keep=1.0, seed=0)
    centres = []
    cut = ds._cut
    ds._cut = lambda v, z, cy, cx: (centres.append(cx), cut(v, z, cy, cx))[1]
    for i in range(50):
        ds[i]
    assert max(centres) < 20


# ------------------------------------------------------------------------------------ cemkit evaluate
def test_evaluate_skips_ignored_pixels(tmp_path, capsys):
    """Pixel counts, the threshold sweep and the instance metrics of `cemkit evaluate` with ignore_value=2: the
    same as on the labelled pixels alone, whatever the prediction says at the ignored ones."""
    rng = np.random.default_rng(0)
    gt = np.zeros((2, 40, 40), np.uint8)
    gt[:, 5:15, 5:15] = 255
    gt[:, 25:35, 8:18] = 255
    labels = gt.copy()
    labels[:, :, 30:] = 2  # the right quarter is not labelled
    prob = np.clip(rng.random(gt.shape) * 0.6 + (gt > 0) * 0.3, 0, 1).astype(np.float32)
    write_tif_stack(tmp_path / "labels.tif", labels)
    results = []
    for i, p in enumerate((prob, np.where(np.arange(40) >= 30, 1.0 - prob, prob).astype(np.float32))):
        np.save(tmp_path / f"prob{i}.npy", p)
        assert cli(["evaluate", f"prediction={tmp_path / f'prob{i}.npy'}", f"labels={tmp_path / 'labels.tif'}",
                    "ignore_value=2", "sweep=[0.3,0.5,0.7]", f"output={tmp_path / f'ev{i}'}"]) == 0
        results.append(json.loads((tmp_path / f"ev{i}" / "metrics.json").read_text()))
    for key in ("pixel", "per_image", "per_slice", "sweep", "objects"):
        assert results[0][key] == results[1][key], key
    pred, target = prob[..., :30] > 0.5, gt[..., :30] > 0
    tp = int((pred & target).sum())
    assert results[0]["pixel"]["tp"] == tp and results[0]["pixel"]["fp"] == int(pred.sum()) - tp
    assert results[0]["pixel"]["tn"] == int((~pred & ~target).sum())
    assert results[0]["pixel"]["tp"] + results[0]["pixel"]["fp"] + results[0]["pixel"]["fn"] + \
        results[0]["pixel"]["tn"] == 2 * 40 * 30
    # without ignore_value the 2s are foreground: other counts
    assert cli(["evaluate", f"prediction={tmp_path / 'prob0.npy'}", f"labels={tmp_path / 'labels.tif'}",
                "instance_metrics=false", f"output={tmp_path / 'plain'}"]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert plain["pixel"]["tp"] + plain["pixel"]["fn"] > results[0]["pixel"]["tp"] + results[0]["pixel"]["fn"]
    assert cli(["evaluate", f"prediction={tmp_path / 'prob0.npy'}", f"labels={tmp_path / 'labels.tif'}",
                "ignore_value=0", f"output={tmp_path / 'bad'}"]) == 2
    captured = capsys.readouterr()
    assert "ignore_value must be null or a whole number >= 1" in captured.out + captured.err


def test_evaluate_multiclass_skips_ignored_pixels(tmp_path):
    gt = np.random.default_rng(1).integers(0, 3, (2, 16, 16)).astype(np.uint8)
    labels = gt.copy()
    labels[:, :4] = 9
    pred = gt.copy()
    pred[:, :6] = (pred[:, :6] + 1) % 3  # wrong in the ignored rows and two labelled rows
    write_tif_stack(tmp_path / "labels.tif", labels)
    np.save(tmp_path / "pred.npy", pred)
    assert cli(["evaluate", f"prediction={tmp_path / 'pred.npy'}", f"labels={tmp_path / 'labels.tif'}",
                "prediction_kind=labels", "num_classes=3", "ignore_value=9", f"output={tmp_path / 'ev'}"]) == 0
    confusion = np.array(json.loads((tmp_path / "ev" / "metrics.json").read_text())["pixel"]["confusion"])
    assert confusion.sum() == 2 * 12 * 16 and np.trace(confusion) == 2 * 10 * 16
