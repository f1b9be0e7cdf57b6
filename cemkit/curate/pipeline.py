"""Orchestration of ``cemkit curate``: per-source work units, resume, deterministic assembly.

1. :func:`~cemkit.curate.source_work.process_source` (one per source, in a ``multiprocessing`` pool of ``workers``): open
   the source, cut cross-sections and patches, hash and score every patch in batches, dedup within
   the source (seeded), and write the exemplars and a per-patch table under
   ``CORPUS/.work/<source>/``. ``done.json`` is written last, atomically, with a fingerprint of
   the input files and the settings: a rerun skips every source whose ``done.json`` matches, so an
   interrupted run continues where it stopped and ends with the same corpus.
2. :func:`~cemkit.curate.assembly.assemble` (main process): filter the exemplars (heuristic scores or the classifier),
   write the shards in a fixed order (sources sorted by name, patches in cutting order), the
   manifest, metadata, optional export and the report. The result does not depend on the number
   of workers or on the order in which sources finish.

An input that cannot be read is logged, listed in ``metadata.json`` and the report, and skipped.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from cemkit.curate.assembly import FilterSettings, assemble, export_patches  # noqa: F401 - public API
from cemkit.curate.source_work import (
    CurateParams,
    SourceResult,
    process_source,
    warm_up,
)
from cemkit.curate.sources import Source, discover_sources
from cemkit.errors import ConfigError

logger = logging.getLogger(__name__)

WORK_DIR = ".work"


def _init_worker() -> None:
    import threading

    tqdm.set_lock(threading.RLock())  # no multiprocessing lock: it would leak when the pool ends
    warm_up()


def _worker(args):
    source, params, work_root = args
    return process_source(source, params, work_root)


def _log_result(r: SourceResult) -> None:
    if r.status == "done":
        rate = r.n_patches / r.seconds if r.seconds > 0 else float("nan")
        logger.info("%s: %d patches -> %d exemplars in %.1f s (%.0f patches/s)", r.name, r.n_patches,
                    r.n_exemplars, r.seconds, rate)
    elif r.status == "cached":
        logger.info("%s: finished in an earlier run (%d patches -> %d exemplars), skipped", r.name,
                    r.n_patches, r.n_exemplars)


def run_sources(sources: list[Source], params: CurateParams, work_root: Path, workers: int = 1) -> list[SourceResult]:
    """Process every source (skipping finished ones), in a pool of ``workers`` processes."""
    work_root.mkdir(parents=True, exist_ok=True)
    results: dict[str, SourceResult] = {}
    if workers > 1:
        import threading

        tqdm.set_lock(threading.RLock())  # bars live in this process only: no multiprocessing lock to leak
    bar = tqdm(total=len(sources), desc="curate sources", unit="source")
    if workers <= 1 or len(sources) <= 1:
        warm_up()
        for s in sources:
            r = process_source(s, params, work_root, progress=True)
            results[s.name] = r
            _log_result(r)
            bar.set_postfix_str(f"{s.name}: {r.status}")
            bar.update(1)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(sources)), initializer=_init_worker) as pool:
            for r in pool.imap_unordered(_worker, [(s, params, work_root) for s in sources]):
                results[r.name] = r
                _log_result(r)
                bar.set_postfix_str(f"{r.name}: {r.status}")
                bar.update(1)
    bar.close()
    return [results[s.name] for s in sources]


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
