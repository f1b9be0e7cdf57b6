"""Score a finetune recipe on real EM, as a user would run it: finetune, predict, evaluate.

    python scripts/real_em_recipe.py NAME [finetune overrides ...]
    python scripts/real_em_recipe.py --dark-slices     # which slices are richest in dark non-mitochondria

1. ``cemkit finetune`` on CDeep3M slices 010-021 (``data.val_slices=2``: 020-021 choose ``best.ckpt``
   and are the only slices a recipe is chosen on) into ``outputs/recipes/NAME``.
2. ``cemkit predict checkpoint=outputs/recipes/NAME`` (no other keys) on slices 024-029: the test
   split, two slices of gap after the training slices; ``cemkit evaluate`` against their labels.
3. The pooled IoU of the best model on the five CEM500K mitochondria patches (other labs' EM), each
   patch predicted whole as a single slice (1fm) or as ``k`` copies of itself (3fm / 5fm).
4. False-positive objects on the test slices: predicted 2D objects (>= 100 px) that touch no labelled
   mitochondrion, and how many of them are dark (mean grey value at most the median of the labelled
   mitochondria): the myelin and other dark structures a "dark means mitochondrion" model marks.

Prints one line ``NAME: test IoU ... | cem500k IoU ... | minutes ...`` and appends it, with the
command, to ``outputs/recipes/results.csv``. The split folders are symbolic links made in
``outputs/recipes/split`` (the data stays in ``../shared/data``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STACK = DATA / "cdeep3m_mito" / "train"
PATCHES = DATA / "cem500k_patches" / "labeled"
OUT = ROOT / "outputs" / "recipes"
TRAIN_Z, TEST_Z = range(10, 22), range(24, 30)
CEMKIT = [sys.executable, "-m", "cemkit.cli.main"]


def split(name: str, zs: range) -> tuple[Path, Path]:
    """``split/NAME/{images,labels}``: links to the CDeep3M slices ``zs``."""
    folder = OUT / "split" / name
    for kind, stem in (("images", "images"), ("labels", "mitos_3D")):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for z in zs:
            link = folder / kind / f"{stem}.{z:03d}.png"
            if not link.is_symlink():
                link.symlink_to(STACK / kind / f"{stem}.{z:03d}.png")
    return folder / "images", folder / "labels"


def cem500k_iou(checkpoint_folder: Path) -> float:
    """Pooled IoU of the finetuned model(s) (mean probability) on the CEM500K mitochondria patches."""
    import torch
    from PIL import Image

    from cemkit.models.checkpoint import load_segmenter

    models = [load_segmenter(p) for p in sorted(checkpoint_folder.glob("*fm/best.ckpt"))]
    inter = union = 0
    for image_path in sorted(PATCHES.glob("images/mitochondria*.png")):
        image = np.asarray(Image.open(image_path).convert("L"), dtype=np.float32) / 255.0
        truth = np.asarray(Image.open(PATCHES / "masks" / image_path.name)) > 0
        probs = []
        for model, meta in models:
            mean, std = meta["norms"]
            x = torch.from_numpy((image - mean) / std)[None, None].repeat(1, model.frames, 1, 1)
            with torch.no_grad():
                probs.append(model.predict_proba(x)[0, 0].numpy())
        pred = np.mean(probs, axis=0) > 0.5
        inter += int((pred & truth).sum())
        union += int((pred | truth).sum())
    return inter / max(1, union)


def false_positive_objects(prediction: Path, images: Path, labels: Path, min_px: int = 100) -> tuple[int, int]:
    """``(all, dark)`` predicted 2D objects of at least ``min_px`` pixels that touch no labelled object."""
    from PIL import Image
    from scipy import ndimage

    from cemkit.io.predictions import open_prediction

    pred = open_prediction(prediction)
    probs = np.asarray(pred.volume[:], dtype=np.float32) * pred.scale
    image = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(images.glob("*.png"))])
    truth = np.stack([np.asarray(Image.open(p)) > 0 for p in sorted(labels.glob("*.png"))])
    level = np.median(image[truth])
    total = dark = 0
    for z in range(len(image)):
        objects, n = ndimage.label(probs[z] > 0.5)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        size = ndimage.sum_labels(np.ones_like(objects), objects, index)
        hits = ndimage.maximum(truth[z], objects, index)
        grey = ndimage.mean(image[z], objects, index)
        wrong = (size >= min_px) & (hits == 0)
        total += int(wrong.sum())
        dark += int((wrong & (grey <= level)).sum())
    return total, dark


def dark_slices() -> None:
    """Print, per labelled slice, the fraction of pixels that are dark (at most the median grey value of
    the slice's mitochondria) and at least 8 px away from any mitochondrion: myelin, membranes, dark
    cytoplasm. The test split 024-029 holds the six richest slices (the hard split)."""
    from PIL import Image
    from scipy import ndimage

    for z in (*TRAIN_Z, 22, 23, *TEST_Z):
        image = np.asarray(Image.open(STACK / "images" / f"images.{z:03d}.png").convert("L"))
        label = np.asarray(Image.open(STACK / "labels" / f"mitos_3D.{z:03d}.png")) > 0
        dark = (image <= np.median(image[label])) & ~ndimage.binary_dilation(label, iterations=8)
        print(f"{z:03d}  dark non-mitochondrial fraction {dark.mean():.4f}  mitochondria {label.mean():.3f}")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    if argv[0] == "--dark-slices":
        dark_slices()
        return
    name, overrides = argv[0], argv[1:]
    train_images, train_labels = split("train_010-021", TRAIN_Z)
    test_images, test_labels = split("test_024-029", TEST_Z)
    run = OUT / name
    t0 = time.monotonic()
    subprocess.run([*CEMKIT, "finetune", f"data.images={train_images}", f"data.labels={train_labels}",
                    f"output={run}", "logger=csv", "trainer.enable_progress_bar=false", *overrides], check=True)
    minutes = (time.monotonic() - t0) / 60
    subprocess.run([*CEMKIT, "predict", f"checkpoint={run}", f"input={test_images}", f"output={run}/predict_test",
                    "progress=false", "overlays=0"], check=True)
    subprocess.run([*CEMKIT, "evaluate", f"prediction={run}/predict_test", f"labels={test_labels}",
                    f"output={run}/evaluate_test", "instance_metrics=false"], check=True)
    metrics = json.loads((run / "evaluate_test" / "metrics.json").read_text())
    pixel = metrics.get("pixel", metrics)
    test_iou, precision, recall = (float(pixel[k]) for k in ("iou", "precision", "recall"))
    patches = cem500k_iou(run)
    fp_all, fp_dark = false_positive_objects(run / "predict_test", test_images, test_labels)
    results = [json.loads(p.read_text()) for p in sorted(run.glob("*fm/result.json"))]
    steps = "/".join(str(r.get("steps")) for r in results)
    val = "/".join(f"{r['best_iou']:.3f}" for r in results if r.get("best_iou") is not None)
    line = (f"{name}: test IoU {test_iou:.4f} (precision {precision:.3f}, recall {recall:.3f}) | "
            f"cem500k IoU {patches:.4f} | false-positive objects {fp_all} ({fp_dark} dark) | val IoU {val} | steps {steps} | finetune {minutes:.1f} min")
    print(line, flush=True)
    table = OUT / "results.csv"
    new = not table.is_file()
    with open(table, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["name", "test_iou", "precision", "recall", "cem500k_iou", "fp_objects", "fp_dark",
                             "val_iou", "steps",
                             "finetune_min", "overrides"])
        writer.writerow([name, f"{test_iou:.4f}", f"{precision:.3f}", f"{recall:.3f}", f"{patches:.4f}", fp_all, fp_dark, val, steps,
                         f"{minutes:.1f}", " ".join(overrides)])


if __name__ == "__main__":
    main(sys.argv[1:])
