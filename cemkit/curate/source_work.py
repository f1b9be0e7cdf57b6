"""The per-source work unit of ``cemkit curate``: one source dataset -> ``.work/<source>/``.

:func:`process_source` opens a source, cuts its cross-sections into patches, hashes and scores
every patch in batches, deduplicates within the source (seeded) and writes

* ``exemplars.npy`` -- the dedup exemplars, ``(K, P, P)`` uint8, in cutting order;
* ``table.npz`` -- one row per patch: item, plane, index, y, x, real size, hash, scores, group,
  exemplar flag and row in ``exemplars.npy``;
* ``samples.npz`` -- the largest duplicate groups (2x downsampled) for the report;
* ``done.json`` -- written last, atomically: the fingerprint of the inputs and settings, counts,
  slice files and unreadable inputs. A source whose ``done.json`` matches is not redone.

Raw patches wait in a temporary memory-mapped file (``all.tmp.npy``) while the source is hashed,
so memory stays bounded by one cross-section whatever the size of the source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cemkit.io import corpus as corpus_io
from cemkit.curate.dedup import DedupResult, dedup_source
from cemkit.curate.dhash import dhash_batch
from cemkit.curate.filtering import HeuristicThresholds, heuristic_scores
from cemkit.curate.patches import count_tiles, extract_patches
from cemkit.curate.sections import (
    plan_sections,
    read_section,
    section_planes,
    section_shape,
)
from cemkit.curate.sources import Source
from cemkit.errors import CemkitError, InputError
from cemkit.io.atomic import atomic_path

logger = logging.getLogger(__name__)

TABLE_VERSION = 1
PLANE_CODES = ("xy", "xz", "yz")

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
    with atomic_path(path, keep_suffix=True) as tmp:  # np.savez appends .npz to other names
        np.savez(tmp, **arrays)


def _sections_of(vol, source: Source, params: CurateParams):
    voxel = source.voxel_size or getattr(vol, "voxel_size", None)
    planes = section_planes(vol.shape, voxel, params.isotropy_tolerance)
    return voxel, planes, plan_sections(vol.shape, planes, params.plane_stride)


def process_source(source: Source, params: CurateParams, work_root: str | Path,
                   progress: bool = False) -> SourceResult:
    """Curate one source into ``work_root/<name>/`` (see the module docstring).

    Parameters
    ----------
    source : Source
        The source dataset (a file or a folder).
    params : CurateParams
        Patch, hashing, dedup and filter-score settings.
    work_root : str or Path
        The ``.work`` folder; the results go to ``work_root/<source name>/``.
    progress : bool
        Show a tqdm bar over the source's patches.

    Returns
    -------
    SourceResult
        ``"cached"`` when a matching ``done.json`` exists, ``"failed"`` when nothing of the source
        could be read (the errors say why), else ``"done"``.
    """
    t0 = time.perf_counter()
    out = Path(work_root) / source.name
    fingerprint = f"{source.fingerprint()}-{params.fingerprint()}-v{TABLE_VERSION}"
    cached = _cached_result(out / "done.json", source.name, fingerprint)
    if cached is not None:
        return cached
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        items, errors = _open_items(source)
    except CemkitError as exc:
        return _unopenable(source, exc)
    plans, total = _plan_items(items, source, params)
    scratch_path = out / "all.tmp.npy"
    scratch = _scratch(scratch_path, total, params.patch_size)
    columns = _cut_patches(plans, source, params, scratch, errors, total, progress)
    n = columns.n
    if n == 0 and errors:
        del scratch
        shutil.rmtree(out, ignore_errors=True)
        logger.error("skipping source %s: no readable data (%s)", source.name, errors[0]["error"])
        return SourceResult(source.name, "failed", errors=errors)
    table = columns.table()
    res = _dedup(table, source, params)
    ex_idx = np.flatnonzero(res.exemplar)
    _write_exemplars(out / "exemplars.npy", scratch, ex_idx, params.patch_size)
    # a few duplicate groups for the report (largest first), 2x downsampled
    samples = _duplicate_samples(scratch, res, params)
    del scratch
    scratch_path.unlink()
    _atomic_save_npz(out / "samples.npz", **samples)
    _atomic_save_npz(out / "table.npz", **table)
    corpus_io.write_json(out / "done.json", _done_record(source, items, plans, fingerprint, n,
                                                         len(ex_idx), errors))
    if after_source_hook is not None:
        after_source_hook(source.name)
    return SourceResult(source.name, "done", int(n), len(ex_idx), time.perf_counter() - t0, errors)


def _cached_result(done_path: Path, name: str, fingerprint: str) -> SourceResult | None:
    """The result of an earlier run whose ``done.json`` has ``fingerprint``, else None."""
    if done_path.is_file():
        done = json.loads(done_path.read_text())
        if done.get("fingerprint") == fingerprint:
            return SourceResult(name, "cached", done["n_patches"], done["n_exemplars"], 0.0,
                                done.get("errors", []))
    return None


def _unopenable(source: Source, exc: CemkitError) -> SourceResult:
    """The failed result of a source that cannot be opened at all (logged)."""
    logger.error("skipping source %s: %s", source.name, exc)
    return SourceResult(source.name, "failed", errors=[{"source": source.name, "file": str(source.path),
                                                        "error": str(exc)}])


def _scratch(path: Path, total: int, patch_size: int):
    """The memory-mapped ``(total, P, P)`` uint8 file that holds the raw patches while hashing."""
    from numpy.lib.format import open_memmap

    return open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(total, 1), patch_size, patch_size))


def _plan_items(items: list, source: Source, params: CurateParams) -> tuple[list, int]:
    """Every section of every item, ``(i, vol, voxel, planes, sections)``, and a patch-count bound."""
    plans = []
    total = 0
    for i, vol in enumerate(items):
        voxel, planes, sections = _sections_of(vol, source, params)
        for sec in sections:
            h, w = section_shape(vol.shape, sec.plane)
            total += count_tiles(h, w, params.patch_size, params.small_images)
        plans.append((i, vol, voxel, planes, sections))
    return plans, total


_COLUMN_DTYPES = {"item": np.int32, "plane": np.uint8, "index": np.int32, "y": np.int32,
                  "x": np.int32, "valid_h": np.int16, "valid_w": np.int16}


def _concat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


@dataclass
class _PatchColumns:
    """Per-patch columns of one source (position, hash, scores), gathered section by section."""

    cols: dict = field(default_factory=lambda: {k: [] for k in _COLUMN_DTYPES})
    hashes: list = field(default_factory=list)
    scores: dict = field(default_factory=lambda: {"flat_fraction": [], "contrast": [], "artefact": []})
    n: int = 0

    def add(self, scratch, patches: np.ndarray, origins: np.ndarray, item: int, sec,
            image_shape: tuple[int, int], params: CurateParams) -> None:
        """Store ``patches`` of one section in ``scratch`` and append their rows."""
        k, P = len(patches), params.patch_size
        scratch[self.n:self.n + k] = patches
        self.hashes.append(dhash_batch(patches, params.hash_size))
        for key, v in heuristic_scores(patches, params.flat_std).items():
            self.scores[key].append(v)
        hh, ww = image_shape
        self.cols["item"].append(np.full(k, item, np.int32))
        self.cols["plane"].append(np.full(k, PLANE_CODES.index(sec.plane), np.uint8))
        self.cols["index"].append(np.full(k, sec.index, np.int32))
        self.cols["y"].append(origins[:, 0].astype(np.int32))
        self.cols["x"].append(origins[:, 1].astype(np.int32))
        self.cols["valid_h"].append(np.full(k, min(hh, P), np.int16))
        self.cols["valid_w"].append(np.full(k, min(ww, P), np.int16))
        self.n += k

    def table(self) -> dict:
        """The columns as arrays: positions, ``hash`` and the filter scores."""
        table = {k: _concat(v, _COLUMN_DTYPES[k]) for k, v in self.cols.items()}
        table["hash"] = _concat(self.hashes, np.uint64)
        for key, v in self.scores.items():
            table[key] = _concat(v, np.float32)
        return table


def _item_data(vol, planes, source: Source, params: CurateParams, errors: list):
    """``(view, data)`` of one item: data is the whole volume in memory when xz/yz planes are cut
    from a volume small enough, else the lazy uint8 view. None (error recorded) if unreadable."""
    view = vol.as_uint8() if hasattr(vol, "as_uint8") else vol
    data = view
    nbytes = int(np.prod(vol.shape))
    if len(planes) > 1 and nbytes <= params.max_volume_mb * 2**20:
        try:
            data = np.asarray(view[0:vol.shape[0]])  # xz/yz planes: read the volume once
        except Exception as exc:  # noqa: BLE001
            errors.append({"source": source.name, "file": _item_label(source, vol), "error": str(exc)})
            return None
    return view, data


def _cut_patches(plans: list, source: Source, params: CurateParams, scratch, errors: list,
                 total: int, progress: bool) -> _PatchColumns:
    """Cut, hash and score the patches of every planned section; unreadable ones go to ``errors``."""
    P = params.patch_size
    columns = _PatchColumns()
    bar = tqdm(total=total, desc=source.name, unit="patch", disable=not progress, leave=False)
    for i, vol, _voxel, planes, sections in plans:
        got = _item_data(vol, planes, source, params, errors)
        if got is None:
            continue
        view, data = got
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
            if len(patches) == 0:
                continue
            columns.add(scratch, patches, origins, i, sec, image.shape, params)
            bar.update(len(patches))
    bar.close()
    return columns


def _dedup(table: dict, source: Source, params: CurateParams) -> DedupResult:
    """Dedup the source's patches (or keep each as its own group) and add ``group``, ``exemplar``
    and ``stored`` (row in ``exemplars.npy``, -1 for a duplicate) to ``table``."""
    n = len(table["hash"])
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
    return res


def _write_exemplars(path: Path, scratch, ex_idx: np.ndarray, patch_size: int) -> None:
    """Copy the exemplar patches, in cutting order, from ``scratch`` into ``path`` (atomically)."""
    from numpy.lib.format import open_memmap

    with atomic_path(path) as ex_tmp:
        ex_arr = open_memmap(ex_tmp, mode="w+", dtype=np.uint8, shape=(len(ex_idx), patch_size, patch_size))
        for s in range(0, len(ex_idx), 1024):
            ex_arr[s:s + 1024] = scratch[ex_idx[s:s + 1024]]
        ex_arr.flush()
        del ex_arr


def _done_record(source: Source, items: list, plans: list, fingerprint: str, n: int,
                 n_exemplars: int, errors: list) -> dict:
    """The content of ``done.json``."""
    item_labels = [_item_label(source, vol) for vol in items]
    slice_files = [_slice_files(source, vol) for vol in items]
    shapes = [list(map(int, vol.shape)) for vol in items]
    voxels = [None if p[2] is None else [float(v) for v in p[2]] for p in plans]
    return {"fingerprint": fingerprint, "source": source.name, "path": str(source.path),
            "items": item_labels, "slice_files": slice_files, "shapes": shapes, "voxel_sizes": voxels,
            "planes": [list(p[3]) for p in plans], "n_patches": int(n), "n_exemplars": n_exemplars,
            "errors": errors}


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


def warm_up() -> None:
    """Load the hashing backend (torch) once per process, so that source timings are fair."""
    dhash_batch(np.zeros((1, 16, 16), np.uint8))


