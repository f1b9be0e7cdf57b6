"""``cemkit study``: the label-efficiency study from a composed config (see docs/study.md).

1. Read the labelled volume; work out the test split, the training range and, for every
   ``study.labelled`` count, its evenly spaced slices; check it all (before any training).
2. For every seed, count and init (in that order, so an interrupted study has every init at the
   small counts first): one run (:mod:`cemkit.study.runs`), skipped when its ``row.json`` exists.
3. ``study.folds=K``: K-fold cross-validation over the training range, per init and seed.
4. ``study.csv`` (and ``folds.csv``) after every run, ``report.html`` at the end.

An init that fails (a file that does not load, a key mismatch) is logged with its name, gets
``status=failed`` rows with the error, and its remaining runs are not tried; the other inits go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError
from cemkit.study import slices as sl
from cemkit.study.data import StudyVolume, read_study_volume, write_subset
from cemkit.study.report import FOLD_COLUMNS, STUDY_COLUMNS, write_csv, write_report
from cemkit.study.runs import KEEP, RunSpec, check_finetune_config, execute, failed_row, finetune_config, \
    init_slug, predict_settings, read_row, settings_hash

log = logging.getLogger(__name__)



@dataclass
class StudyPlan:
    """Everything decided before training."""

    inits: list[str]
    seeds: list[int]
    test: list[int]
    train: list[int]
    labelled: dict[int, list[int]]               # count -> slices
    folds: list[tuple[list[int], list[int]]]     # (train, held out) per fold
    gap: int
    keep: str                                    # what a finished run keeps (study.keep, checked)
    runs: list[RunSpec] = field(default_factory=list)
    fold_runs: list[RunSpec] = field(default_factory=list)


def init_list(spec: Any) -> list[str]:
    """``study.inits`` as a list of distinct strings."""
    items = [spec] if isinstance(spec, str) else list(spec or [])
    inits = [str(v).strip() for v in items]
    if not inits or any(not v for v in inits):
        raise ConfigError(f"study.inits must list inits (none, an encoder file, zoo:NAME), got {spec!r}")
    if len(set(inits)) != len(inits):
        raise ConfigError(f"study.inits lists an init twice: {inits}")
    return inits


def plan_study(cfg: DictConfig, vol: StudyVolume) -> StudyPlan:
    """Check the ``study`` settings against the volume and name every run (nothing is trained).

    Raises
    ------
    ConfigError
        A test split missing, outside the volume or overlapping the training range (or its gap);
        more labelled slices than the training range holds; bad folds, seeds or inits.
    """
    st = cfg.study
    if st.get("test_slices") is None or OmegaConf.is_missing(st, "test_slices"):
        raise ConfigError("study.test_slices is required: the slices every run is scored on, "
                          "e.g. study.test_slices=14-19")
    test = sl.parse_slices(st.test_slices, "study.test_slices", vol.depth)
    gap = int(st.get("gap", 0))
    train = sl.training_range(st.get("train_slices"), test, gap, vol.depth)
    counts = sl.labelled_counts(st.labelled)
    labelled = {n: sl.evenly_spaced(train, n) for n in counts}
    k = int(st.get("folds") or 0)
    folds = sl.fold_splits(train, k, gap) if k else []
    seeds = sl.seed_list(st.seeds, int(cfg.seed))
    inits = init_list(st.inits)
    keep = str(st.keep)
    if keep not in KEEP:
        raise ConfigError(f"study.keep must be one of {KEEP}, got {keep!r}")
    return StudyPlan(inits, seeds, test, train, labelled, folds, gap, keep)


def add_runs(plan: StudyPlan, vol: StudyVolume, out: Path) -> None:
    """Write the slice subsets (``out/data/``) and fill ``plan.runs`` / ``plan.fold_runs``."""
    test_data = write_subset(vol, plan.test, out / "data" / "test")
    subsets = {n: write_subset(vol, zs, out / "data" / f"train_{n}") for n, zs in plan.labelled.items()}
    for seed in plan.seeds:
        for n, zs in plan.labelled.items():
            for init in plan.inits:
                folder = out / "labelled" / init_slug(init) / f"n{n}_seed{seed}"
                plan.runs.append(RunSpec(init, seed, zs, plan.test, folder, subsets[n], test_data,
                                         {"labelled_slices": n}))
    for i, (train, held) in enumerate(plan.folds):
        train_data = write_subset(vol, train, out / "data" / f"fold{i}_train")
        held_data = write_subset(vol, held, out / "data" / f"fold{i}_test")
        for seed in plan.seeds:
            for init in plan.inits:
                folder = out / "folds" / init_slug(init) / f"fold{i}_seed{seed}"
                plan.fold_runs.append(RunSpec(init, seed, train, held, folder, train_data, held_data, {"fold": i}))


def run_study(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the study into ``cfg.output``; returns paths and rows."""
    out = Path(str(cfg.output))
    st = cfg.study
    # every check before any training: the finetune settings of a run, the predict settings, the split
    settings = predict_settings(st)
    vol = read_study_volume(cfg.data.images, cfg.data.labels, cfg.data.image_key, cfg.data.label_key)
    plan = plan_study(cfg, vol)
    out.mkdir(parents=True, exist_ok=True)
    add_runs(plan, vol, out)
    for spec in plan.runs[:1] + plan.fold_runs[:1]:
        check_finetune_config(finetune_config(cfg, spec))
    log.info("study: test slices %s (gap %d), training range %s; %d inits x %d counts %s x %d seeds = %d runs%s",
             sl.format_slices(plan.test), plan.gap, sl.format_slices(plan.train), len(plan.inits),
             len(plan.labelled), list(plan.labelled), len(plan.seeds), len(plan.runs),
             f", + {len(plan.fold_runs)} fold runs ({len(plan.folds)} folds)" if plan.folds else "")

    broken: dict[str, str] = {}
    rows = _run_all(cfg, plan.runs, settings, plan.keep, broken, out / "study.csv", STUDY_COLUMNS)
    fold_rows = _run_all(cfg, plan.fold_runs, settings, plan.keep, broken, out / "folds.csv", FOLD_COLUMNS) \
        if plan.fold_runs else []
    first = finetune_config(cfg, (plan.runs or plan.fold_runs)[0])
    report = write_report(out / "report.html", rows, fold_rows, plan_summary(plan, first, vol))
    return {"output": str(out), "csv": str(out / "study.csv"), "report": str(report), "rows": rows,
            "fold_rows": fold_rows, "failed_inits": broken,
            "folds_csv": str(out / "folds.csv") if plan.fold_runs else None}


def _run_all(cfg: DictConfig, specs: list[RunSpec], settings, keep: str, broken: dict[str, str], csv_path: Path,
             columns: tuple[str, ...]) -> list[dict]:
    rows: dict[int, dict] = {}
    done = {i: read_row(s.folder) for i, s in enumerate(specs)}
    rows.update({i: r for i, r in done.items() if r is not None})
    todo = [i for i, r in done.items() if r is None]
    if len(todo) < len(specs):
        log.info("%d of %d runs are finished (row.json present): skipped", len(specs) - len(todo), len(specs))
        stale = [specs[i].folder for i, r in done.items()
                 if r is not None and r.get("settings") != settings_hash(finetune_config(cfg, specs[i]), settings)]
        if stale:
            log.warning("%d finished runs were made with other settings than this command's (e.g. %s): their rows "
                        "are kept; delete their folders (or use another output) to redo them", len(stale), stale[0])
    write_csv(csv_path, _ordered(rows), columns)
    for count, i in enumerate(todo, 1):
        spec = specs[i]
        if spec.init in broken:
            rows[i] = failed_row(spec, f"not run: init failed earlier ({broken[spec.init]})")
            write_csv(csv_path, _ordered(rows), columns)
            continue
        log.info("run %d/%d: init %s, %s, seed %d, training slices %s -> %s", count, len(todo), spec.init,
                 ", ".join(f"{k} {v}" for k, v in spec.fields.items()), spec.seed, sl.format_slices(spec.train),
                 spec.folder)
        try:
            rows[i] = execute(cfg, spec, settings, keep)
            log.info("  IoU %.4f on slices %s (%s steps, %.0f s)", rows[i]["iou"], sl.format_slices(spec.test),
                     rows[i]["steps"], rows[i]["seconds"])
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one init failing must not end the study
            message = f"{type(exc).__name__}: {exc}"
            first = not any(r.get("status") == "ok" and r.get("init") == spec.init for r in rows.values())
            log.error("run %s of init %s failed: %s%s", spec.folder, spec.init, message,
                      "; the init's other runs are skipped, the study goes on" if first else "")
            if first:
                broken[spec.init] = message
            rows[i] = failed_row(spec, message)
        write_csv(csv_path, _ordered(rows), columns)
    return _ordered(rows)


def _ordered(rows: dict[int, dict]) -> list[dict]:
    return [rows[i] for i in sorted(rows)]


def plan_summary(plan: StudyPlan, cfg: DictConfig, vol: StudyVolume) -> dict[str, Any]:
    """What the report says about the setup (``cfg``: the finetune config of a run)."""
    t = cfg.trainer
    return {"images": vol.images_path, "labels": vol.labels_path,
            "test_slices": sl.format_slices(plan.test), "gap": plan.gap,
            "train_slices": sl.format_slices(plan.train),
            "labelled": {n: sl.format_slices(z) for n, z in plan.labelled.items()},
            "seeds": plan.seeds, "inits": plan.inits, "encoder": str(cfg.model.encoder.arch),
            "budget": f"max_steps={t.max_steps}, max_time={t.max_time}",
            "crop": cfg.data.crop, "batch_size": cfg.data.batch_size, "folds": len(plan.folds)}
