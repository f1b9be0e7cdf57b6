"""The demo's HTML report: data, curation, training curves, overlays, metric table, commands."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from cemkit.demo.pipeline import INITS, MODELS, DemoResult
from cemkit.finetune.fit import read_result
from cemkit.finetune.orchestrate import TRUNK_FOLDER
from cemkit.io.atomic import atomic_write_text

TABLE_METRICS = ("iou", "dice", "precision", "recall", "v_rand", "v_info", "object_f1")


def _img_tag(png: Path | bytes, width: int | None = None, alt: str = "") -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(data).decode()}"/>'


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def read_metric_log(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a Lightning CSVLogger ``metrics.csv`` into ``{column: (steps, values)}`` (blank cells skipped)."""
    series: dict[str, tuple[list, list]] = {}
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(float(step)))
                values.append(float(value))
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()}


def finetune_curves(run_dir: Path, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{model: (steps, values)}`` of metric ``key`` for the trunk (if any) and the 1fm/3fm/5fm models of a
    finetune run folder; models that start from the trunk are drawn from the trunk's last step on."""
    curves = {}
    trunk = read_metric_log(run_dir / TRUNK_FOLDER / "logs" / "metrics.csv")
    if key in trunk:
        curves["trunk (1fm)"] = trunk[key]
    trunk_result = read_result(run_dir / TRUNK_FOLDER)
    offset = int(trunk_result["steps"]) if trunk_result else 0  # the trunk's optimizer steps
    for model in MODELS[:-1]:
        logs = read_metric_log(run_dir / model / "logs" / "metrics.csv")
        if key in logs:
            steps, values = logs[key]
            curves[model] = (steps + offset, values)
    return curves


def _curves_png(panels: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for label, (x, y) in curves.items():
            ax.plot(x, y, marker="o" if len(x) < 12 else None, ms=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)


def metric_value(metrics: dict, name: str) -> float | None:
    """Pick one number out of an evaluate ``metrics.json`` (layouts: flat, or grouped by section)."""
    aliases = {"iou": ("foreground_iou", "iou"), "object_f1": ("object_f1", "f1"), "dice": ("dice", "f1_pixel")}
    names = aliases.get(name, (name,))
    stack = [metrics]
    while stack:
        node = stack.pop(0)
        if not isinstance(node, dict):
            continue
        for n in names:
            if isinstance(node.get(n), (int, float)):
                return float(node[n])
        stack.extend(v for k, v in node.items() if isinstance(v, dict) and k not in ("sweep", "per_image", "per_slice"))
    return None


def ensemble_verdict(init: str, test_iou: dict[str, float], val_iou: dict[str, float | None],
                     per_slice: dict[str, dict] | None = None) -> str:
    """One sentence comparing the ensemble's test IoU with its best member's and their mean.

    Parameters
    ----------
    init
        Encoder initialisation the models were finetuned from (``pretrained`` or ``random``).
    test_iou
        Held-out IoU of ``1fm``, ``3fm``, ``5fm`` and ``ensemble``.
    val_iou
        Best validation IoU of each member during finetuning (``None`` where unknown). The member
        with the highest one is the model a user would pick without test labels.
    per_slice
        ``{model: metrics.json["per_slice"]}`` (per-slice tp/fp/fn). With the ensemble's and the best
        member's, the sentence gives the 95 % paired-bootstrap interval of their difference over the
        test slices (:func:`cemkit.metrics.iou_difference_interval`): whether the test volume can tell
        the two apart.
    """
    members = [m for m in MODELS[:-1] if m in test_iou]
    best = max(members, key=lambda m: test_iou[m])
    ens = test_iou["ensemble"]
    verdict = "at least as good as" if ens >= test_iou[best] - 1e-9 else "below"
    mean = sum(test_iou[m] for m in members) / len(members)
    text = f"{init}: ensemble IoU {ens:.4f} is {verdict} the best single model ({best}, {test_iou[best]:.4f})"
    counts = {m: (per_slice or {}).get(m) for m in ("ensemble", best)}
    if all(counts.values()):
        from cemkit.metrics import iou_difference_interval

        r = iou_difference_interval(counts["ensemble"], counts[best])
        text += (f" (difference {ens - test_iou[best]:+.4f}, {r.level:.0%} interval over the {len(counts[best]['tp'])} test slices "
                 f"[{r.low:+.4f}, {r.high:+.4f}]{': the test volume cannot tell them apart' if r.low <= 0 <= r.high else ''})")
    text += f" and {ens - mean:+.4f} from the members' mean ({mean:.4f})"
    known = [m for m in members if val_iou.get(m) is not None]
    if known:
        pick = max(known, key=lambda m: val_iou[m])
        text += (f"; the member with the best validation IoU, the {pick} ({val_iou[pick]:.4f}), scores "
                 f"{test_iou[pick]:.4f} here")
    return text


def _best_val_iou(run_dir: Path, model: str) -> float | None:
    value = (read_result(run_dir / model) or {}).get("best_iou")
    return None if value is None else float(value)


def _metric_table(result: DemoResult) -> str:
    head = "".join(f"<th>{m}</th>" for m in TABLE_METRICS)
    rows = []
    for init in INITS:
        for model in MODELS:
            vals = [metric_value(result.metrics[init][model], m) for m in TABLE_METRICS]
            cells = "".join(f"<td>{'' if v is None else f'{v:.3f}'}</td>" for v in vals)
            style = ' class="ens"' if model == "ensemble" else ""
            rows.append(f"<tr{style}><td>{init}</td><td>{model}</td>{cells}</tr>")
        test = {m: metric_value(result.metrics[init][m], "iou") or 0.0 for m in MODELS}
        val = {m: _best_val_iou(result.output / f"finetune_{init}", m) for m in MODELS[:-1]}
        slices = {m: result.metrics[init][m].get("per_slice") for m in MODELS}
        rows.append(f'<tr><td colspan="{len(TABLE_METRICS) + 2}" class="note">'
                    f"{html.escape(ensemble_verdict(init, test, val, slices))}</td></tr>")
    return f"<table><tr><th>encoder init</th><th>model</th>{head}</tr>{''.join(rows)}</table>"


def curation_rows(meta: dict) -> list[list[str]]:
    """Rows ``[source, planes, patches, after dedup, kept, dropped]`` of a corpus ``metadata.json``, plus a total.

    ``dropped`` lists the reasons with their counts (``duplicate 24, low_contrast 4``); ``planes`` the
    cross-section planes cut from the source's items (``xy`` for 2-D images).
    """
    rows = []
    for name, c in (meta.get("counts") or {}).items():
        planes = sorted({p for item in c.get("planes", []) for p in (item if isinstance(item, list) else [item])})
        dropped = ", ".join(f"{k} {v}" for k, v in sorted((c.get("dropped") or {}).items()))
        rows.append([name, "/".join(planes), str(c.get("patches", "")), str(c.get("exemplars", "")),
                     str(c.get("kept", "")), dropped])
    t = meta.get("totals") or {}
    if t:
        rows.append(["total", "", str(t.get("patches", "")), str(t.get("exemplars", "")), str(t.get("kept", "")), ""])
    return rows


def _curation_table(corpus: Path) -> str:
    meta_path = corpus / "metadata.json"
    if not meta_path.exists():
        return "<p>(no corpus metadata)</p>"
    meta = json.loads(meta_path.read_text())
    head = "".join(f"<th>{h}</th>" for h in ("source", "planes", "patches", "after dedup", "kept", "dropped"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in curation_rows(meta))
    hs = meta.get("hash") or {}
    facts = [f"{meta.get('n_patches', '?')} patches of {meta.get('patch_size', '?')} px"]
    if "mean" in meta and "std" in meta:
        facts.append(f"intensity mean {meta['mean']:.3f}, std {meta['std']:.3f} (intensity / 255)")
    if hs:
        facts.append(f"near-duplicates: {hs.get('algorithm', 'dhash')} of {hs.get('hash_size')}x{hs.get('hash_size')}, "
                     f"Hamming distance <= {hs.get('hamming')}, per {hs.get('scope', 'source')}")
    failed = meta.get("failed_sources") or []
    if failed:
        facts.append(f"failed sources: {', '.join(map(str, failed))}")
    return (f"<table><tr>{head}</tr>{body}</table><p>Corpus: {html.escape('; '.join(facts))}.</p>"
            '<p>Full curation report with duplicate groups and rejected patches: '
            '<a href="corpus/report.html">corpus/report.html</a></p>')


def write_report(result: DemoResult) -> Path:
    """Write ``<output>/report.html`` and return its path."""
    out = result.output
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
             "tr.ens td{font-weight:bold}td.note{text-align:left;font-style:italic}pre{background:#f6f6f6;padding:6px}"
             "img{margin:4px}")
    intro = ("The whole pipeline on built-in synthetic EM data: curate several synthetic sources, pretrain a MoCoV2 "
             "encoder briefly, finetune 1fm/3fm/5fm models (from a shared 1fm trunk) from that encoder and from "
             "random init, predict a held-out volume with test-time augmentation and the 1fm/3fm/5fm ensemble, "
             "evaluate against its labels.")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cemkit demo report</title>",
             f"<style>{style}</style></head><body><h1>cemkit demo</h1>", f"<p>{intro}</p>"]

    parts.append("<h2>1. Synthetic data</h2><p>Held-out test volume: slices with their mitochondria labels.</p>")
    montage = out / "data" / "montage.png"
    if montage.exists():
        parts.append(_img_tag(montage, width=1000, alt="synthetic EM montage"))

    parts.append("<h2>2. Curation</h2>" + _curation_table(out / "corpus"))

    pre = read_metric_log(out / "pretrain" / "logs" / "metrics.csv")
    panels = [("pretrain: InfoNCE loss", {k: v for k, v in pre.items() if k.startswith("train/loss")}),
              ("pretrain: contrastive top-1", {k: v for k, v in pre.items() if k.startswith("train/acc")})]
    parts.append("<h2>3. Pretraining (MoCoV2)</h2>" + _img_tag(_curves_png(panels), alt="pretrain curves"))
    views = sorted((out / "pretrain" / "images").glob("*.png"))
    if views:
        parts.append("<p>Augmented view pairs:</p>" + _img_tag(views[0], width=700, alt="view pairs"))

    panels = []
    for init in INITS:
        for key, title in (("train/loss", "train loss"), ("val/iou", "validation IoU")):
            panels.append((f"{init}: {title}", finetune_curves(out / f"finetune_{init}", key)))
    parts.append("<h2>4. Finetuning</h2><p>With a shared trunk (<code>model.trunk.steps</code>), the 1fm, 3fm and "
                 "5fm curves continue from the trunk's last step.</p>" + _img_tag(_curves_png(panels), alt="finetune curves"))

    parts.append("<h2>5. Predictions on the held-out volume</h2>")
    for init in INITS:
        overlays = sorted((out / "predict" / f"{init}_ensemble" / "overlays").glob("*.png"))[:2]
        if overlays:
            parts.append(f"<p>{init} encoder, ensemble:</p>" + "".join(_img_tag(p, width=480, alt=p.name) for p in overlays))

    parts.append("<h2>6. Metrics on the held-out volume</h2>" + _metric_table(result))
    parts.append("<p>iou, dice, precision, recall: foreground, pooled over the volume; v_rand / v_info: "
                 "foreground-restricted Rand and information scores of 3-D connected components; object_f1: "
                 "mitochondria matched at IoU >= 0.5.</p>")

    rows = "".join(f"<tr><td style='text-align:left'><code>{html.escape(r.command)}</code></td><td>{r.seconds:.1f}"
                   f"{' (earlier run)' if r.skipped else ''}</td></tr>" for r in result.runs)
    parts.append("<h2>7. Commands (equivalent CLI calls) and their time [s]</h2><table>" + rows + "</table>")
    parts.append("</body></html>")

    return atomic_write_text(out / "report.html", "\n".join(parts))
