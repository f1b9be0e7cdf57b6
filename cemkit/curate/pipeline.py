"""Orchestration of ``cemkit curate``: per-source work units, resume, deterministic assembly.

1. :func:`process_source` (one per source, in a ``multiprocessing`` pool of ``workers``): open
   the source, cut cross-sections and patches, hash and score every patch in batches, dedup within
   the source (seeded), and write the exemplars and a per-patch table under
   ``CORPUS/.work/<source>/``. ``done.json`` is written last, atomically, with a fingerprint of
   the input files and the settings: a rerun skips every source whose ``done.json`` matches, so an
   interrupted run continues where it stopped and ends with the same corpus.
2. :func:`assemble` (main process): filter the exemplars (heuristic scores or the classifier),
   write the shards in a fixed order (sources sorted by name, patches in cutting order), the
   manifest, metadata, optional export and the report. The result does not depend on the number
   of workers or on the order in which sources finish.

An input that cannot be read is logged, listed in ``metadata.json`` and the report, and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from cemkit.curate import corpus as corpus_io
from cemkit.curate.dedup import DedupResult, dedup_source
from cemkit.curate.dhash import dhash_batch, hash_to_hex
from cemkit.curate.filtering import HeuristicThresholds, heuristic_reasons, heuristic_scores
from cemkit.curate.patches import count_tiles, extract_patches
from cemkit.curate.sections import plan_sections, read_section, section_planes, section_shape
from cemkit.curate.sources import Source, discover_sources
from cemkit.errors import CemkitError, ConfigError, InputError

logger = logging.getLogger(__name__)

WORK_DIR = ".work"
TABLE_VERSION = 1
PLANE_CODES = ("xy", "xz", "yz")
MANIFEST_FIELDS = ("patch_id", "source", "file", "plane", "index", "y", "x", "valid_h", "valid_w",
                   "hash", "group", "flat_fraction", "contrast", "artefact", "p_informative",
                   "kept", "reason", "shard", "offset")

#: test hook: called with the source name after a source's results are committed
after_source_hook: Callable[[str], None] | None = None


@dataclass(frozen=True)
class CurateParams:
    """Settings of the per-source work (everything that changes a source's intermediate results)."""

    patch_size: int = 224
    small_images: str = "pad"
    plane_stride: int = 1
    isotropy_tolerance: float = 0.2
    max_volume_mb: float = 2048.0
    hash_size: int = 8
    hamming: int = 12
    dedup: bool = True
    seed: int = 0
    flat_std: float = HeuristicThresholds.flat_std
    batch_size: int = 256
    sample_groups: int = 4
    sample_members: int = 5

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SourceResult:
    """What a work unit reports back (plain values, picklable)."""

    name: str
    status: str  # "done" | "cached" | "failed"
    n_patches: int = 0
    n_exemplars: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)


# ----------------------------------------------------------------------------- per-source work

def _open_items(source: Source) -> tuple[list, list[dict]]:
    """Open a source as one or more lazy volumes; unreadable files are reported, not fatal."""
    from cemkit.io import open_volume

    errors: list[dict] = []
    try:
        return [open_volume(source.path, key=source.key)], errors
    except CemkitError as exc:
        if not source.path.is_dir():
            raise InputError(str(exc)) from exc
        first_error = str(exc)
    # a folder of images that do not form one stack (different sizes, a corrupt file): image by image
    from cemkit.curate.sources import IMAGE_EXTS

    files = sorted(p for p in source.path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
    items = []
    for f in files:
        try:
            items.append(open_volume(f))
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
            errors.append({"source": source.name, "file": str(f), "error": str(exc)})
    if not items:
        raise InputError(first_error)
    logger.info("%s: opened %d image(s) one by one (%s)", source.path, len(items), first_error)
    return items, errors


def _relative(source: Source, path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(source.path.parent))
    except ValueError:
        return str(path)


def _item_label(source: Source, vol) -> str:
    return _relative(source, getattr(vol, "path", source.path))


def _slice_files(source: Source, vol) -> list[str] | None:
    """File of each z-slice when a volume is a folder of 2D images (else None)."""
    files = getattr(vol, "files", None)
    if files is None or len(files) != vol.shape[0] or len(files) <= 1:
        return None
    return [_relative(source, f) for f in files]


def _atomic_save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _sections_of(vol, source: Source, params: CurateParams):
    voxel = source.voxel_size or getattr(vol, "voxel_size", None)
    planes = section_planes(vol.shape, voxel, params.isotropy_tolerance)
    return voxel, planes, plan_sections(vol.shape, planes, params.plane_stride)


def process_source(source: Source, params: CurateParams, work_root: str | Path,
                   progress: bool = False) -> SourceResult:
    """Curate one source into ``work_root/<name>/`` (see the module docstring)."""
    t0 = time.perf_counter()
    out = Path(work_root) / source.name
    done_path = out / "done.json"
    fingerprint = f"{source.fingerprint()}-{params.fingerprint()}-v{TABLE_VERSION}"
    if done_path.is_file():
        done = json.loads(done_path.read_text())
        if done.get("fingerprint") == fingerprint:
            return SourceResult(source.name, "cached", done["n_patches"], done["n_exemplars"], 0.0,
                                done.get("errors", []))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        items, errors = _open_items(source)
    except CemkitError as exc:
        logger.error("skipping source %s: %s", source.name, exc)
        return SourceResult(source.name, "failed", errors=[{"source": source.name, "file": str(source.path),
                                                            "error": str(exc)}])
    P = params.patch_size
    # plan: every section of every item, and an upper bound of the patch count
    plans = []
    total = 0
    for i, vol in enumerate(items):
        voxel, planes, sections = _sections_of(vol, source, params)
        for sec in sections:
            h, w = section_shape(vol.shape, sec.plane)
            total += count_tiles(h, w, P, params.small_images)
        plans.append((i, vol, voxel, planes, sections))
    from numpy.lib.format import open_memmap

    scratch_path = out / "all.tmp.npy"
    scratch = open_memmap(scratch_path, mode="w+", dtype=np.uint8, shape=(max(total, 1), P, P))
    cols = {k: [] for k in ("item", "plane", "index", "y", "x", "valid_h", "valid_w")}
    hashes, scores = [], {"flat_fraction": [], "contrast": [], "artefact": []}
    n = 0
    bar = tqdm(total=total, desc=source.name, unit="patch", disable=not progress, leave=False)
    for i, vol, voxel, planes, sections in plans:
        view = vol.as_uint8() if hasattr(vol, "as_uint8") else vol
        data = view
        nbytes = int(np.prod(vol.shape))
        if len(planes) > 1 and nbytes <= params.max_volume_mb * 2**20:
            try:
                data = np.asarray(view[0:vol.shape[0]])  # xz/yz planes: read the volume once
            except Exception as exc:  # noqa: BLE001
                errors.append({"source": source.name, "file": _item_label(source, vol), "error": str(exc)})
                continue
        for sec in sections:
            try:
                image = read_section(data, sec) if data is not view or sec.plane != "xy" \
                    else np.asarray(view[sec.index:sec.index + 1])[0]
            except Exception as exc:  # noqa: BLE001 - a corrupt slice/file is reported and skipped
                errors.append({"source": source.name, "file": _item_label(source, vol),
                               "plane": sec.plane, "index": sec.index, "error": str(exc)})
                bar.update(count_tiles(*section_shape(vol.shape, sec.plane), P, params.small_images))
                continue
            image = np.asarray(image, dtype=np.uint8)
            patches, origins = extract_patches(image, P, params.small_images)
            k = len(patches)
            if k == 0:
                continue
            scratch[n:n + k] = patches
            hashes.append(dhash_batch(patches, params.hash_size))
            for key, v in heuristic_scores(patches, params.flat_std).items():
                scores[key].append(v)
            hh, ww = image.shape
            cols["item"].append(np.full(k, i, np.int32))
            cols["plane"].append(np.full(k, PLANE_CODES.index(sec.plane), np.uint8))
            cols["index"].append(np.full(k, sec.index, np.int32))
            cols["y"].append(origins[:, 0].astype(np.int32))
            cols["x"].append(origins[:, 1].astype(np.int32))
            cols["valid_h"].append(np.full(k, min(hh, P), np.int16))
            cols["valid_w"].append(np.full(k, min(ww, P), np.int16))
            n += k
            bar.update(k)
    bar.close()
    if n == 0 and errors:
        del scratch
        shutil.rmtree(out, ignore_errors=True)
        logger.error("skipping source %s: no readable data (%s)", source.name, errors[0]["error"])
        return SourceResult(source.name, "failed", errors=errors)

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    table = {k: cat(v, {"item": np.int32, "plane": np.uint8, "index": np.int32, "y": np.int32,
                        "x": np.int32, "valid_h": np.int16, "valid_w": np.int16}[k]) for k, v in cols.items()}
    table["hash"] = cat(hashes, np.uint64)
    for key, v in scores.items():
        table[key] = cat(v, np.float32)
    if params.dedup:
        res = dedup_source(table["hash"], source.name, params.seed, params.hamming)
    else:
        res = DedupResult(group=np.arange(n, dtype=np.int64), exemplar=np.ones(n, bool))
    table["group"] = res.group
    table["exemplar"] = res.exemplar
    ex_idx = np.flatnonzero(res.exemplar)
    stored = np.full(n, -1, np.int64)
    stored[ex_idx] = np.arange(len(ex_idx))
    table["stored"] = stored
    # exemplars, in cutting order
    ex_path = out / "exemplars.npy"
    ex_tmp = out / "exemplars.tmp.npy"
    ex_arr = open_memmap(ex_tmp, mode="w+", dtype=np.uint8, shape=(len(ex_idx), P, P))
    for s in range(0, len(ex_idx), 1024):
        ex_arr[s:s + 1024] = scratch[ex_idx[s:s + 1024]]
    ex_arr.flush()
    del ex_arr
    os.replace(ex_tmp, ex_path)
    # a few duplicate groups for the report (largest first), 2x downsampled
    samples = _duplicate_samples(scratch, res, params)
    del scratch
    scratch_path.unlink()
    _atomic_save_npz(out / "samples.npz", **samples)
    _atomic_save_npz(out / "table.npz", **table)
    item_labels = [_item_label(source, vol) for vol in items]
    slice_files = [_slice_files(source, vol) for vol in items]
    shapes = [list(map(int, vol.shape)) for vol in items]
    voxels = [None if p[2] is None else [float(v) for v in p[2]] for p in plans]
    done = {"fingerprint": fingerprint, "source": source.name, "path": str(source.path),
            "items": item_labels, "slice_files": slice_files, "shapes": shapes, "voxel_sizes": voxels,
            "planes": [list(p[3]) for p in plans], "n_patches": int(n), "n_exemplars": int(len(ex_idx)),
            "errors": errors}
    corpus_io.write_json(done_path, done)
    if after_source_hook is not None:
        after_source_hook(source.name)
    return SourceResult(source.name, "done", int(n), int(len(ex_idx)), time.perf_counter() - t0, errors)


def _downsample2(x: np.ndarray) -> np.ndarray:
    n, h, w = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).astype(np.uint8)


def _duplicate_samples(scratch, res: DedupResult, params: CurateParams) -> dict:
    n = len(res.group)
    if n == 0 or params.sample_groups <= 0:
        return {"images": np.zeros((0, 1, 1), np.uint8), "group": np.zeros(0, np.int64),
                "is_exemplar": np.zeros(0, bool)}
    sizes = np.bincount(res.group, minlength=n)
    candidates = np.flatnonzero(sizes > 1)
    top = candidates[np.lexsort((candidates, -sizes[candidates]))][: params.sample_groups]
    idx, grp, isex = [], [], []
    for g in top:
        members = np.flatnonzero((res.group == g) & (np.arange(n) != g))[: params.sample_members]
        for m in [g, *members.tolist()]:
            idx.append(m)
            grp.append(g)
            isex.append(m == g)
    images = _downsample2(np.asarray(scratch[np.asarray(idx, np.int64)])) if idx else np.zeros((0, 1, 1), np.uint8)
    return {"images": images, "group": np.asarray(grp, np.int64), "is_exemplar": np.asarray(isex, bool)}


def _worker(args):
    source, params, work_root = args
    return process_source(source, params, work_root)


def run_sources(sources: list[Source], params: CurateParams, work_root: Path, workers: int = 1) -> list[SourceResult]:
    """Process every source (skipping finished ones), in a pool of ``workers`` processes."""
    work_root.mkdir(parents=True, exist_ok=True)
    results: dict[str, SourceResult] = {}
    bar = tqdm(total=len(sources), desc="curate sources", unit="source")
    if workers <= 1 or len(sources) <= 1:
        for s in sources:
            r = process_source(s, params, work_root, progress=True)
            results[s.name] = r
            bar.set_postfix_str(f"{s.name}: {r.status}")
            bar.update(1)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(sources))) as pool:
            for r in pool.imap_unordered(_worker, [(s, params, work_root) for s in sources]):
                results[r.name] = r
                bar.set_postfix_str(f"{r.name}: {r.status}")
                bar.update(1)
    bar.close()
    return [results[s.name] for s in sources]


# ----------------------------------------------------------------------------- assembly

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
    from cemkit.curate.classifier import ClassifierConfig, PatchClassifier, read_labels, train_classifier

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
    """Filter, write shards, manifest, metadata, export and report. Returns the metadata."""
    finished = [r.name for r in results if r.status in ("done", "cached")]
    tables = [load_source_table(work_root, name) for name in finished]
    ids = [patch_ids(st) for st in tables]
    errors = [e for r in results for e in r.errors]
    failed = [r.name for r in results if r.status == "failed"]
    # filter decision per patch
    reasons, probs = [], []
    clf_info: dict = {}
    if settings.method == "classifier":
        probs, clf_info = _classifier_probabilities(tables, ids, settings, out, params.seed)
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
    # shards + manifest (fixed order: sources by name, patches in cutting order)
    shard_tmp = out / corpus_io.SHARD_DIR
    if shard_tmp.exists():
        shutil.rmtree(shard_tmp)
    counts: dict = {}
    manifest_tmp = out / (corpus_io.MANIFEST + ".tmp")
    with corpus_io.ShardWriter(out, params.patch_size, shard_size) as writer, \
            manifest_tmp.open("w", newline="") as mf:
        w = csv.writer(mf)
        w.writerow(MANIFEST_FIELDS)
        for st, pid, reason, prob in zip(tables, ids, reasons, probs):
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
                            hash_to_hex(t["hash"][r], params.hash_size), group_ids[r],
                            f"{t['flat_fraction'][r]:.4f}", f"{t['contrast'][r]:.1f}", f"{t['artefact'][r]:.4f}",
                            "" if np.isnan(prob[r]) else f"{prob[r]:.4f}", int(keep[r]), reason[r],
                            int(locs[r, 0]), int(locs[r, 1])])
            uniq, cnt = np.unique(reason[reason != ""].astype(str), return_counts=True)
            counts[st.name] = {"patches": int(len(reason)), "exemplars": int(t["exemplar"].sum()),
                               "kept": int(keep.sum()),
                               "dropped": {str(u): int(c) for u, c in zip(uniq, cnt)},
                               "items": len(items), "planes": st.done["planes"]}
    os.replace(manifest_tmp, out / corpus_io.MANIFEST)
    totals = {"sources": len(sources), "sources_curated": len(tables), "sources_failed": len(failed),
              "patches": sum(c["patches"] for c in counts.values()),
              "exemplars": sum(c["exemplars"] for c in counts.values()),
              "kept": writer.count}
    meta = {"format": corpus_io.FORMAT, "version": corpus_io.VERSION, "patch_size": params.patch_size,
            "n_patches": writer.count, "mean": writer.mean, "std": writer.std, "seed": params.seed,
            "shards": [{"file": f, "count": c} for f, c in writer.shards],
            "hash": {"algorithm": "dhash", "hash_size": params.hash_size, "hamming": params.hamming,
                     "scope": "source"},
            "filter": {"method": settings.method, "thresholds": asdict(settings.thresholds), **(
                {"classifier": clf_info} if clf_info else {})},
            "totals": totals, "counts": counts, "failed_sources": failed, "errors": errors,
            "params": asdict(params), "config": config or {}}
    corpus_io.write_json(out / corpus_io.METADATA, meta)
    if export:
        export_patches(out, export)
    if report:
        from cemkit.curate.report import write_report

        write_report(out, tables, reasons, probs, meta, settings)
    return meta


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


def parse_part(part: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``1 <= i <= n``; None stays None."""
    if part in (None, "", "null"):
        return None
    try:
        i, n = (int(v) for v in str(part).split("/"))
    except ValueError:
        raise ConfigError(f"part must look like 'i/n' (e.g. 3/8), got {part!r}") from None
    if not 1 <= i <= n:
        raise ConfigError(f"part {part!r}: need 1 <= i <= n")
    return i, n


def curate(input_path: str | Path, output: str | Path, params: CurateParams, settings: FilterSettings,
           workers: int = 1, shard_size: int = 4096, export: str | None = None, report: bool = True,
           keep_work: bool = True, config: dict | None = None, part: str | None = None) -> dict:
    """Run the whole curate stage; returns the corpus metadata.

    With ``part="i/n"`` only every n-th source (the i-th, 1-based, in name order) is curated into
    ``output/.work`` and nothing is assembled: n such jobs (on any machines sharing ``output``, or
    whose ``.work`` folders are copied together) followed by one run without ``part`` give the
    same corpus as a single run. Returns ``{"part": ..., "results": ...}`` in that case.
    """
    if settings.method not in ("heuristic", "classifier", "none"):
        raise ConfigError(f"filter.method must be heuristic, classifier or none, got {settings.method!r}")
    if params.patch_size < 8 or params.patch_size % 2:
        raise ConfigError(f"patch_size must be an even number >= 8, got {params.patch_size}")
    if not 0 <= params.hamming <= params.hash_size ** 2:
        raise ConfigError(f"dedup.hamming must be in 0..{params.hash_size ** 2}, got {params.hamming}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    sources = discover_sources(input_path)
    logger.info("curate: %d source(s) in %s -> %s", len(sources), input_path, out)
    work_root = out / WORK_DIR
    chosen = parse_part(part)
    if chosen is not None:
        i, n = chosen
        mine = sources[i - 1::n]
        logger.info("curate part %d/%d: %d of %d sources; assembly is left to a run without part=",
                    i, n, len(mine), len(sources))
        results = run_sources(mine, params, work_root, workers)
        return {"part": f"{i}/{n}", "results": [asdict(r) for r in results]}
    results = run_sources(sources, params, work_root, workers)
    meta = assemble(sources, results, work_root, out, settings, params, shard_size, export, report, config)
    if not keep_work:
        shutil.rmtree(work_root, ignore_errors=True)
    return meta
