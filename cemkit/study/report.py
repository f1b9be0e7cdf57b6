"""The study's tables and report: ``study.csv``, ``folds.csv`` and ``report.html``.

The report holds the curve of test IoU against labelled slices (log2 axis; one line per init
through the seed means, a band from the lowest to the highest seed) as an embedded PNG, the
per-init summary, the fold results and every row.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cemkit.io.atomic import atomic_write_text

STUDY_COLUMNS = ("init", "labelled_slices", "seed", "status", "iou", "precision", "recall", "dice", "steps",
                 "seconds", "predict_seconds", "train_slices", "test_slices", "init_kind", "arch", "error")
FOLD_COLUMNS = ("init", "fold", "seed", "status", "iou", "precision", "recall", "dice", "steps", "seconds",
                "predict_seconds", "train_slices", "test_slices", "init_kind", "arch", "error")


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with ``columns``, atomically; floats rounded to 4 decimals, ``None`` empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    atomic_write_text(path, buf.getvalue())
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 4))
    return str(value)


def curve_stats(rows: Sequence[dict]) -> dict[str, list[tuple[int, float, float, float, int]]]:
    """Per init, per labelled count: ``(count, mean, min, max, n)`` of the IoU of the finished runs.

    >>> curve_stats([{"init": "none", "labelled_slices": 1, "iou": 0.2, "status": "ok"},
    ...              {"init": "none", "labelled_slices": 1, "iou": 0.4, "status": "ok"}])
    {'none': [(1, 0.30000000000000004, 0.2, 0.4, 2)]}
    """
    groups: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("status") == "ok" and r.get("iou") is not None:
            groups[str(r["init"])][int(r["labelled_slices"])].append(float(r["iou"]))
    return {init: [(n, sum(v) / len(v), min(v), max(v), len(v)) for n, v in sorted(by_n.items())]
            for init, by_n in groups.items()}


def plot_png(stats: dict[str, list[tuple[int, float, float, float, int]]]) -> bytes:
    """The IoU-against-labelled-slices figure as PNG bytes (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    counts: set[int] = set()
    for init, points in stats.items():
        xs = [p[0] for p in points]
        counts.update(xs)
        line, = ax.plot(xs, [p[1] for p in points], marker="o", label=init)
        ax.fill_between(xs, [p[2] for p in points], [p[3] for p in points], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log", base=2)
    top = max((p[3] for points in stats.values() for p in points), default=1.0)
    ax.set_ylim(0.0, min(1.0, top + 0.05))
    if counts:
        ax.set_xticks(sorted(counts))
        ax.set_xticklabels([str(c) for c in sorted(counts)])
    ax.set_xlabel("labelled training slices")
    ax.set_ylabel("test IoU (pooled pixels)")
    ax.set_title("IoU against labelled slices (line: seed mean, band: min-max)")
    ax.grid(True, alpha=0.3)
    if stats:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fold_stats(rows: Sequence[dict]) -> list[dict]:
    """Per init: mean, standard deviation, min and max of the fold IoUs (over folds and seeds)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("iou") is not None:
            groups[str(r["init"])].append(float(r["iou"]))
    out = []
    for init, v in groups.items():
        mean = sum(v) / len(v)
        sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        out.append({"init": init, "runs": len(v), "mean_iou": mean, "sd": sd, "min": min(v), "max": max(v)})
    return out


def write_report(path: Path, rows: Sequence[dict], fold_rows: Sequence[dict], summary: dict[str, Any]) -> Path:
    """Write ``report.html`` (self-contained: the figure is an embedded base64 PNG)."""
    stats = curve_stats(rows)
    png = base64.b64encode(plot_png(stats)).decode("ascii")
    curve_rows = [{"init": init, "labelled_slices": n, "mean_iou": mean, "min_iou": lo, "max_iou": hi, "runs": k}
                  for init, points in stats.items() for n, mean, lo, hi, k in points]
    failed = [r for r in list(rows) + list(fold_rows) if r.get("status") != "ok"]
    setup = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in summary.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cemkit study</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".failed{color:#a00}</style></head><body>",
        "<h1>cemkit study: IoU against labelled slices</h1>",
        f"<img alt='IoU against labelled slices' src='data:image/png;base64,{png}'>",
        "<h2>Setup</h2>", f"<table>{setup}</table>",
        "<h2>Per init and count (seeds pooled)</h2>",
        _table(curve_rows, ("init", "labelled_slices", "mean_iou", "min_iou", "max_iou", "runs")),
    ]
    if failed:
        parts += ["<h2 class='failed'>Failed runs</h2>",
                  _table(failed, ("init", "labelled_slices", "fold", "seed", "error"))]
    if fold_rows:
        parts += ["<h2>Cross-validation over slices</h2>",
                  "<p>Each fold's held-out block of slices is scored by the model trained on the other slices "
                  "(less those within the gap of the block).</p>",
                  _table(fold_stats(fold_rows), ("init", "runs", "mean_iou", "sd", "min", "max")),
                  _table(fold_rows, FOLD_COLUMNS)]
    parts += ["<h2>All runs (study.csv)</h2>", _table(rows, STUDY_COLUMNS), "</body></html>"]
    atomic_write_text(path, "\n".join(parts))
    return path
