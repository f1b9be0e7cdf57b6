"""Present evaluation results: a plain-text table for the terminal and an atomically written JSON."""

from __future__ import annotations

import json
from pathlib import Path

from cemkit.io.atomic import atomic_write_text

PIXEL_ROWS = ("iou", "dice", "precision", "recall", "accuracy", "specificity")
RAND_ROWS = (("rand", "v_rand"), ("rand", "v_rand_split"), ("rand", "v_rand_merge"),
             ("info", "v_info"), ("info", "v_info_split"), ("info", "v_info_merge"),
             ("info", "vi_split"), ("info", "vi_merge"))
OBJECT_ROWS = ("precision", "recall", "f1", "mean_matched_iou", "tp", "fp", "fn")


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}"


def format_table(result: dict) -> str:
    """The metrics of :func:`cemkit.evaluate.evaluation.evaluate` as an aligned text table."""
    shape = " x ".join(str(s) for s in result["shape"])
    if result.get("threshold") is not None:
        how = f"probabilities > {result['threshold']:g}"
    elif result["num_classes"] > 2:
        how = "class indices"
    else:
        how = result["prediction_kind"]
    lines = [f"prediction {result['prediction']} ({how})", f"labels     {result['labels']} ({shape})", ""]
    pixel, per_image = result["pixel"], result.get("per_image")
    if "mean_iou" in pixel:  # multi-class
        lines.append(f"{'metric':<22}{'pooled':>10}" + (f"{'per-image':>11}" if per_image else ""))
        lines.append(f"{'mean IoU (no bg)':<22}{_fmt(pixel['mean_iou']):>10}"
                     + (f"{_fmt(per_image['mean_iou']):>11}" if per_image else ""))
        lines.append(f"{'accuracy':<22}{_fmt(pixel['accuracy']):>10}")
        lines += ["", f"{'class (pooled)':<22}{'IoU':>10}{'Dice':>11}"]
        for c, (iou, dice) in enumerate(zip(pixel["per_class_iou"], pixel["per_class_dice"])):
            lines.append(f"{c:<22}{_fmt(iou):>10}{_fmt(dice):>11}")
        return "\n".join(lines)
    lines.append(f"{'pixel metric':<22}{'pooled':>10}" + (f"{'per-image':>11}" if per_image else ""))
    for key in PIXEL_ROWS:
        lines.append(f"{key:<22}{_fmt(pixel[key]):>10}" + (f"{_fmt(per_image[key]):>11}" if per_image else ""))
    lines.append(f"{'tp / fp / fn':<22}{pixel['tp']} / {pixel['fp']} / {pixel['fn']}")
    if "rand" in result:
        lines += ["", f"{'segmentation (pooled)':<22}{'score':>10}"]
        for group, key in RAND_ROWS:
            lines.append(f"{key:<22}{_fmt(result[group][key]):>10}")
        obj = result["objects"]
        iou_thr = result["settings"]["iou_threshold"]
        lines += ["", f"{f'objects (IoU >= {iou_thr:g})':<22}{'score':>10}"]
        for key in OBJECT_ROWS:
            lines.append(f"{key:<22}{_fmt(obj[key]):>10}")
    if result.get("sweep"):
        header = f"{'threshold':>10}" + "".join(f"{k:>11}" for k in ("iou", "dice", "precision", "recall"))
        has_pi = "per_image_iou" in result["sweep"][0]
        header += f"{'img iou':>11}" if has_pi else ""
        lines += ["", "threshold sweep (pooled; img iou = per-image mean)", header]
        for row in result["sweep"]:
            line = f"{row['threshold']:>10g}" + "".join(f"{_fmt(row[k]):>11}" for k in ("iou", "dice", "precision", "recall"))
            line += f"{_fmt(row['per_image_iou']):>11}" if has_pi else ""
            lines.append(line)
        best = result["best_threshold"]
        lines.append(f"best threshold {best['threshold']:g} (IoU {best['iou']:.4f})")
    return "\n".join(lines)


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
