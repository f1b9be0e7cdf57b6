"""Assembly of the corpus from the finished per-source results (``.work/<source>/``).

Filters the exemplars (heuristic scores, a trained classifier, or nothing), writes the shards in
a fixed order (sources by name, patches in cutting order), the manifest, the metadata (with the
mean/std for normalisation), the optional PNG/TIFF export and the report.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cemkit.io import corpus as corpus_io
from cemkit.curate.dhash import hash_to_hex
from cemkit.curate.filtering import HeuristicThresholds, heuristic_reasons
from cemkit.curate.source_work import PLANE_CODES, CurateParams, SourceResult
from cemkit.curate.sources import Source
from cemkit.errors import ConfigError, InputError
from cemkit.io.atomic import atomic_path

logger = logging.getLogger(__name__)

MANIFEST_FIELDS = ("patch_id", "source", "file", "plane", "index", "y", "x", "valid_h", "valid_w",
                   "hash", "group", "flat_fraction", "contrast", "artefact", "p_informative",
                   "kept", "reason", "shard", "offset")


@dataclass
class SourceTable:
    """A finished source's per-patch table, loaded from ``.work``."""

    name: str
    done: dict
    table: dict
    exemplars: np.ndarray  # memory map (K, P, P)
    samples: dict


def load_source_table(work_root: Path, name: str) -> SourceTable:
    d = work_root / name
    done = json.loads((d / "done.json").read_text())
    with np.load(d / "table.npz") as z:
        table = {k: z[k] for k in z.files}
    with np.load(d / "samples.npz") as z:
        samples = {k: z[k] for k in z.files}
    return SourceTable(name, done, table, np.load(d / "exemplars.npy", mmap_mode="r"), samples)


def patch_ids(st: SourceTable) -> np.ndarray:
    """``source:item:plane:index:y:x`` ids of a source's patches (stable across runs)."""
    t = st.table
    return np.asarray([f"{st.name}:{i}:{PLANE_CODES[p]}:{z}:{y}:{x}" for i, p, z, y, x in
                       zip(t["item"].tolist(), t["plane"].tolist(), t["index"].tolist(),
                           t["y"].tolist(), t["x"].tolist())], dtype=object)


@dataclass
class FilterSettings:
    """How exemplars are filtered (``filter`` in conf/curate.yaml)."""

    method: str = "heuristic"  # heuristic | classifier | none
    thresholds: HeuristicThresholds = field(default_factory=HeuristicThresholds)
    labels: str | None = None
    model: str | None = None
    classifier: dict = field(default_factory=dict)


def _classifier_probabilities(tables: list[SourceTable], ids: list[np.ndarray], settings: FilterSettings,
                              out: Path, seed: int) -> tuple[list[np.ndarray], dict]:
    from cemkit.curate.classifier import (
        ClassifierConfig,
        PatchClassifier,
        read_labels,
        train_classifier,
    )

    cc = ClassifierConfig(**settings.classifier)
    info: dict = {}
    if settings.labels:
        labels = read_labels(settings.labels)
        imgs, ys = [], []
        found = set()
        for st, pid in zip(tables, ids):
            rows = np.flatnonzero([p in labels for p in pid])
            for r in rows.tolist():
                k = int(st.table["stored"][r])
                if k < 0:
                    continue  # a near-duplicate: its exemplar carries the content
                imgs.append(np.asarray(st.exemplars[k]))
                ys.append(labels[pid[r]])
                found.add(pid[r])
        missing = len(labels) - len(found)
        if missing:
            logger.warning("%s: %d of %d labelled patch ids are not exemplars of this run and are ignored",
                           settings.labels, missing, len(labels))
        if not imgs:
            raise InputError(f"{settings.labels}: none of the labelled patch ids occur in this run "
                             f"(ids look like {ids[0][0] if len(ids) and len(ids[0]) else 'source:0:xy:0:0:0'})")
        clf = train_classifier(np.stack(imgs), np.asarray(ys), cc, seed=seed)
        clf.save(out / "classifier.pt")
        info = {"trained_on": len(imgs), "labels_file": str(settings.labels), "ignored_labels": missing,
                **clf.metrics}
    elif settings.model:
        clf = PatchClassifier.load(settings.model)
        info = {"model": str(settings.model), **clf.metrics}
    else:
        raise ConfigError("filter.method=classifier needs filter.labels (a CSV of patch_id,label to train on) "
                          "or filter.model (a classifier.pt from an earlier run)")
    probs = []
    for st in tables:
        p = np.full(len(st.table["hash"]), np.nan, np.float32)
        ex = st.table["stored"] >= 0
        if ex.any():
            p[ex] = clf.predict(st.exemplars)
        probs.append(p)
    info["threshold"] = cc.threshold
    return probs, info


def assemble(sources: list[Source], results: list[SourceResult], work_root: Path, out: Path,
             settings: FilterSettings, params: CurateParams, shard_size: int = 4096,
             export: str | None = None, report: bool = True, config: dict | None = None) -> dict:
    """Filter, write shards, manifest, metadata, export and report. Returns the metadata.

    Parameters
    ----------
    sources : list of Source
        Every source of the run (for the totals).
    results : list of SourceResult
        The per-source results; finished ones (``done``/``cached``) are assembled in this order.
    work_root : Path
        The ``.work`` folder holding the per-source results.
    out : Path
        The corpus folder.
    settings : FilterSettings
        How exemplars are filtered.
    params : CurateParams
        The per-source settings (patch size, hashing, seed), recorded in the metadata.
    shard_size : int
        Patches per shard.
    export : {None, "png", "tif"}
        Also write every kept patch as an image file.
    report : bool
        Write ``report.html``.
    config : dict, optional
        The run's configuration, stored in the metadata.

    Returns
    -------
    dict
        The corpus metadata (also written to ``metadata.json``).
    """
    finished = [r.name for r in results if r.status in ("done", "cached")]
    tables = [load_source_table(work_root, name) for name in finished]
    ids = [patch_ids(st) for st in tables]
    reasons, probs, clf_info = _filter_reasons(tables, ids, settings, out, params.seed)
    writer, counts = _write_shards_and_manifest(out, tables, ids, reasons, probs, params, shard_size)
    meta = _metadata(sources, results, tables, writer, counts, settings, clf_info, params, config)
    corpus_io.write_json(out / corpus_io.METADATA, meta)
    if export:
        export_patches(out, export)
    if report:
        from cemkit.curate.report import write_report

        write_report(out, tables, reasons, probs, meta, settings)
    return meta


def _filter_reasons(tables: list[SourceTable], ids: list[np.ndarray], settings: FilterSettings,
                    out: Path, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Per source, the reason each patch is dropped (``""`` = kept) and the classifier
    probabilities (NaN without a classifier); and the classifier's info."""
    reasons, probs = [], []
    clf_info: dict = {}
    if settings.method == "classifier":
        probs, clf_info = _classifier_probabilities(tables, ids, settings, out, seed)
    for k, st in enumerate(tables):
        t = st.table
        n = len(t["hash"])
        reason = np.full(n, "", dtype=object)
        if settings.method == "heuristic":
            reason = heuristic_reasons({s: t[s] for s in ("flat_fraction", "contrast", "artefact")},
                                       settings.thresholds)
        elif settings.method == "classifier":
            reason[probs[k] < clf_info["threshold"]] = "classifier"
        if settings.method != "classifier":
            probs.append(np.full(n, np.nan, np.float32))
        reason[~t["exemplar"]] = "duplicate"
        reasons.append(reason)
    return reasons, probs, clf_info


def _write_shards_and_manifest(out: Path, tables: list[SourceTable], ids: list[np.ndarray],
                               reasons: list[np.ndarray], probs: list[np.ndarray],
                               params: CurateParams, shard_size: int):
    """Write the kept patches to shards and every patch to the manifest, in a fixed order
    (sources by name, patches in cutting order). Returns the (closed) shard writer and the
    per-source counts."""
    shard_tmp = out / corpus_io.SHARD_DIR
    if shard_tmp.exists():
        shutil.rmtree(shard_tmp)
    counts: dict = {}
    # the manifest is renamed into place after the shard writer has flushed its last shard
    with atomic_path(out / corpus_io.MANIFEST) as manifest_tmp, \
            corpus_io.ShardWriter(out, params.patch_size, shard_size) as writer, \
            manifest_tmp.open("w", newline="") as mf:
        w = csv.writer(mf)
        w.writerow(MANIFEST_FIELDS)
        for st, pid, reason, prob in zip(tables, ids, reasons, probs):
            counts[st.name] = _write_source_rows(w, writer, st, pid, reason, prob, params.hash_size)
    return writer, counts


def _write_source_rows(w, writer, st: SourceTable, pid: np.ndarray, reason: np.ndarray,
                       prob: np.ndarray, hash_size: int) -> dict:
    """Add one source's kept patches to the shards and all its rows to the manifest; its counts."""
    t = st.table
    keep = reason == ""
    kept_rows = np.flatnonzero(keep)
    locs = np.full((len(reason), 2), -1, np.int64)
    for s in range(0, len(kept_rows), 1024):
        rows = kept_rows[s:s + 1024]
        got = writer.add(np.asarray(st.exemplars[t["stored"][rows]]))
        locs[rows] = np.asarray(got, np.int64).reshape(-1, 2)
    items = st.done["items"]
    slice_files = st.done.get("slice_files") or [None] * len(items)
    group_ids = pid[t["group"]] if len(pid) else pid
    for r in range(len(reason)):
        item, plane, z = int(t["item"][r]), int(t["plane"][r]), int(t["index"][r])
        files = slice_files[item]
        fname = files[z] if files is not None and plane == 0 else items[item]
        w.writerow([pid[r], st.name, fname, PLANE_CODES[plane], z,
                    int(t["y"][r]), int(t["x"][r]), int(t["valid_h"][r]), int(t["valid_w"][r]),
                    hash_to_hex(t["hash"][r], hash_size), group_ids[r],
                    f"{t['flat_fraction'][r]:.4f}", f"{t['contrast'][r]:.1f}", f"{t['artefact'][r]:.4f}",
                    "" if np.isnan(prob[r]) else f"{prob[r]:.4f}", int(keep[r]), reason[r],
                    int(locs[r, 0]), int(locs[r, 1])])
    uniq, cnt = np.unique(reason[reason != ""].astype(str), return_counts=True)
    return {"patches": len(reason), "exemplars": int(t["exemplar"].sum()),
            "kept": int(keep.sum()),
            "dropped": {str(u): int(c) for u, c in zip(uniq, cnt)},
            "items": len(items), "planes": st.done["planes"]}


def _metadata(sources: list[Source], results: list[SourceResult], tables: list[SourceTable],
              writer, counts: dict, settings: FilterSettings, clf_info: dict,
              params: CurateParams, config: dict | None) -> dict:
    """The content of ``metadata.json``."""
    errors = [e for r in results for e in r.errors]
    failed = [r.name for r in results if r.status == "failed"]
    totals = {"sources": len(sources), "sources_curated": len(tables), "sources_failed": len(failed),
              "patches": sum(c["patches"] for c in counts.values()),
              "exemplars": sum(c["exemplars"] for c in counts.values()),
              "kept": writer.count}
    return {"format": corpus_io.FORMAT, "version": corpus_io.VERSION, "patch_size": params.patch_size,
            "n_patches": writer.count, "mean": writer.mean, "std": writer.std, "seed": params.seed,
            "shards": [{"file": f, "count": c} for f, c in writer.shards],
            "hash": {"algorithm": "dhash", "hash_size": params.hash_size, "hamming": params.hamming,
                     "scope": "source"},
            "filter": {"method": settings.method, "thresholds": asdict(settings.thresholds), **(
                {"classifier": clf_info} if clf_info else {})},
            "totals": totals, "counts": counts, "failed_sources": failed, "errors": errors,
            "params": asdict(params), "config": config or {}}


def export_patches(out: Path, fmt: str) -> int:
    """Write every kept patch as ``export/<source>/<patch_id>.<png|tif>`` (``:`` -> ``_``)."""
    if fmt not in ("png", "tif"):
        raise ConfigError(f"export must be null, png or tif, got {fmt!r}")
    corpus = corpus_io.open_corpus(out)
    root = out / "export"
    if root.exists():
        shutil.rmtree(root)
    n = 0
    with (out / corpus_io.MANIFEST).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kept"] == "1"]
    for i, row in enumerate(tqdm(rows, desc="export", unit="patch")):
        d = root / row["source"]
        d.mkdir(parents=True, exist_ok=True)
        name = row["patch_id"].replace(":", "_")
        img = corpus[i]
        if fmt == "png":
            from PIL import Image

            Image.fromarray(img).save(d / f"{name}.png")
        else:
            import tifffile

            tifffile.imwrite(d / f"{name}.tif", img)
        n += 1
    return n


