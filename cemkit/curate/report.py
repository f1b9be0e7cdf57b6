"""``CORPUS/report.html``: one self-contained page to judge a curation by eye.

Plots (matplotlib, embedded as base64 PNG): patches per source after each step, histograms of
the filter scores with their thresholds. Image grids: the largest duplicate groups of each source
with their exemplar (framed), rejected patches by reason, and a sample of kept patches. Tables:
counts per source, and every input that could not be read.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from cemkit.io.atomic import atomic_write_text

MAX_GRID = 16


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_tag(uri: str, title: str = "") -> str:
    return f'<img src="{uri}" title="{html.escape(title)}">'


def _thumb(img: np.ndarray, size: int = 112) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(img, np.uint8))
    if im.size[0] != size:
        im = im.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _grid(images, captions, framed=None) -> str:
    cells = []
    for k, (img, cap) in enumerate(zip(images, captions)):
        cls = ' class="ex"' if framed is not None and framed[k] else ""
        cells.append(f'<figure{cls}>{_img_tag(_thumb(img), cap)}<figcaption>{html.escape(cap)}</figcaption></figure>')
    return '<div class="grid">' + "".join(cells) + "</div>"


def _counts_plot(meta: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(meta["counts"])
    if not names:
        return ""
    steps = {"patches": [meta["counts"][n]["patches"] for n in names],
             "after dedup": [meta["counts"][n]["exemplars"] for n in names],
             "after filter (kept)": [meta["counts"][n]["kept"] for n in names]}
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 3), 3.5))
    x = np.arange(len(names))
    for k, (label, vals) in enumerate(steps.items()):
        ax.bar(x + (k - 1) * 0.27, vals, width=0.27, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("patches")
    ax.set_title("Patches per source after each step")
    ax.legend()
    return _png(fig)


def _score_plots(tables, probs, settings) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th = settings.thresholds
    panels = [("flat_fraction", th.max_flat_fraction, "flat fraction (drop >=)"),
              ("contrast", th.min_contrast, "contrast p99-p1 (drop <)"),
              ("artefact", th.max_artefact, "artefact score (drop >=)")]
    allp = np.concatenate(probs) if probs else np.zeros(0)
    has_p = np.isfinite(allp).any()
    fig, axes = plt.subplots(1, len(panels) + int(has_p), figsize=(4 * (len(panels) + int(has_p)), 3))
    for ax, (key, thr, title) in zip(axes, panels):
        ex = [st.table[key][st.table["exemplar"]] for st in tables]
        v = np.concatenate(ex) if ex else np.zeros(0)
        ax.hist(v, bins=50, color="tab:blue")
        ax.axvline(thr, color="tab:red", ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
    if has_p:
        ax = axes[-1]
        ax.hist(allp[np.isfinite(allp)], bins=50, range=(0, 1), color="tab:green")
        ax.axvline(0.5, color="tab:red", ls="--")
        ax.set_title("classifier P(informative)", fontsize=9)
    fig.suptitle("Filter scores of the dedup exemplars (red: threshold)", y=1.04)
    return _png(fig)


_STYLE = ("<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:6px}"
          "figure{margin:0;width:120px;font-size:9px;word-break:break-all}figure img{width:112px;height:112px;"
          "border:3px solid transparent}figure.ex img{border-color:#2a2}</style>")


def write_report(out: Path, tables, reasons, probs, meta: dict, settings, seed: int = 0) -> Path:
    """Write ``out/report.html`` (atomically) and return its path.

    Parameters
    ----------
    out : Path
        The corpus folder.
    tables : list of SourceTable
        The finished sources' tables (:mod:`cemkit.curate.assembly`).
    reasons, probs : list of numpy.ndarray
        Per source: the reason each patch is dropped (``""`` = kept) and its classifier probability.
    meta : dict
        The corpus metadata.
    settings : FilterSettings
        The filter thresholds (drawn on the score histograms).
    seed : int
        Seed of the random samples of rejected and kept patches.

    Returns
    -------
    Path
        ``out/report.html``.
    """
    rng = np.random.default_rng(seed)
    parts = _summary(meta)
    parts.append(_sources_table(meta))
    uri = _counts_plot(meta)
    if uri:
        parts.append(_img_tag(uri, "patches per source"))
    if tables:
        parts.append("<h2>Filter scores</h2>" + _img_tag(_score_plots(tables, probs, settings), "scores"))
    parts += _unreadable_section(meta["errors"])
    parts += _duplicates_section(tables)
    parts += _rejected_and_kept_sections(tables, reasons, rng)
    doc = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cemkit curate report</title>{_STYLE}</head><body>" \
          + "\n".join(parts) + "</body></html>"
    return atomic_write_text(Path(out) / "report.html", doc)


def _summary(meta: dict) -> list[str]:
    """The title and the one-paragraph summary of the run (and the classifier's info)."""
    parts = [(f"<h1>cemkit curate report</h1><p>{meta['totals']['patches']} patches from "
              f"{meta['totals']['sources_curated']} of {meta['totals']['sources']} sources; "
              f"{meta['totals']['exemplars']} after dedup (dHash {meta['hash']['hash_size']}x"
              f"{meta['hash']['hash_size']}, Hamming &le; {meta['hash']['hamming']}, per source); "
              f"<b>{meta['totals']['kept']} kept</b> (filter: {html.escape(meta['filter']['method'])}). "
              f"Corpus mean {meta['mean']:.4f}, std {meta['std']:.4f} (intensity / 255).</p>")]
    if meta["filter"].get("classifier"):
        parts.append(f"<p>Classifier: {html.escape(str(meta['filter']['classifier']))}</p>")
    return parts


def _sources_table(meta: dict) -> str:
    """The table of counts per source."""
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{c['items']}</td><td>{html.escape(str(c['planes']))}</td>"
        f"<td>{c['patches']}</td><td>{c['exemplars']}</td><td>{c['kept']}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in c['dropped'].items()))}</td></tr>"
        for n, c in meta["counts"].items())
    return ("<h2>Sources</h2><table><tr><th>source</th><th>items</th><th>planes</th><th>patches</th>"
            f"<th>after dedup</th><th>kept</th><th>dropped by reason</th></tr>{rows}</table>")


def _unreadable_section(errors: list[dict]) -> list[str]:
    """The table of inputs that could not be read (skipped)."""
    parts = ["<h2>Unreadable inputs (skipped)</h2>"]
    if errors:
        parts.append("<table><tr><th>source</th><th>file</th><th>error</th></tr>" + "".join(
            f"<tr><td>{html.escape(str(e.get('source')))}</td><td>{html.escape(str(e.get('file')))}"
            f"{' ' + html.escape(str(e.get('plane')) + ' ' + str(e.get('index'))) if 'plane' in e else ''}</td>"
            f"<td>{html.escape(str(e.get('error')))}</td></tr>" for e in errors) + "</table>")
    else:
        parts.append("<p>None.</p>")
    return parts


def _duplicates_section(tables) -> list[str]:
    """Grids of the largest duplicate groups of each source, exemplars framed."""
    parts = ["<h2>Duplicate groups</h2><p>Largest near-duplicate groups of each source; the framed "
             "patch is the exemplar that is kept, the others are dropped as duplicates.</p>"]
    any_dup = False
    for st in tables:
        s = st.samples
        if len(s["group"]) == 0:
            continue
        any_dup = True
        caps = [("exemplar" if e else "duplicate") + f" (group {g})" for g, e in zip(s["group"], s["is_exemplar"])]
        parts.append(f"<h3>{html.escape(st.name)}</h3>" + _grid(s["images"], caps, s["is_exemplar"]))
    if not any_dup:
        parts.append("<p>No duplicates found.</p>")
    return parts


def _pick(lst: list, rng) -> list:
    """At most :data:`MAX_GRID` entries of ``lst``, drawn at random, in their order."""
    if len(lst) > MAX_GRID:
        sel = np.sort(rng.choice(len(lst), MAX_GRID, replace=False))
        lst = [lst[i] for i in sel]
    return lst


def _caption(st, r: int) -> str:
    t = st.table
    return (f"{st.name} {['xy', 'xz', 'yz'][t['plane'][r]]}{t['index'][r]} y{t['y'][r]} x{t['x'][r]} "
            f"flat {t['flat_fraction'][r]:.2f} c {t['contrast'][r]:.0f} a {t['artefact'][r]:.2f}")


def _patch_grid(lst: list) -> str:
    return _grid([st.exemplars[st.table['stored'][r]] for st, r in lst], [_caption(st, r) for st, r in lst])


def _rejected_and_kept_sections(tables, reasons, rng) -> list[str]:
    """Grids of rejected exemplars by reason, then a random sample of kept ones."""
    parts = ["<h2>Rejected patches by reason</h2>"]
    by_reason: dict[str, list] = {}
    kept: list = []
    for st, reason in zip(tables, reasons):
        stored = st.table["stored"]
        for r in np.flatnonzero(stored >= 0):
            key = reason[r] or "kept"
            (kept if key == "kept" else by_reason.setdefault(key, [])).append((st, int(r)))
    if not by_reason:
        parts.append("<p>No patch was rejected by the filter.</p>")
    for reason_name in sorted(by_reason):
        lst = _pick(by_reason[reason_name], rng)
        parts.append(f"<h3>{html.escape(reason_name)} ({len(by_reason[reason_name])})</h3>" + _patch_grid(lst))
    parts.append(f"<h2>Kept patches (random sample of {min(MAX_GRID, len(kept))} of {len(kept)})</h2>")
    parts.append(_patch_grid(_pick(kept, rng)))
    return parts
