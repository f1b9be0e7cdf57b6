"""The demo pipeline: synthetic data -> curate -> pretrain -> finetune (pretrained and random init,
1fm/3fm/5fm) -> predict (TTA, single models and the ensemble) -> evaluate -> report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cemkit.demo.branches import BranchSpec, run_branches, worker_plan
from cemkit.demo.stages import StageRun, run_stage
from cemkit.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

INITS = ("pretrained", "random")
MODELS = ("1fm", "3fm", "5fm", "ensemble")


@dataclass
class DemoResult:
    """What the report needs: paths, stage runs and the metric table."""

    output: Path
    runs: list[StageRun] = field(default_factory=list)
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)  # init -> model -> metrics.json

    def to_json(self) -> dict:
        return {
            "output": str(self.output),
            "runs": [{"command": r.command, "seconds": round(r.seconds, 1), "skipped": r.skipped} for r in self.runs],
            "metrics": self.metrics,
        }


class _Steps:
    """Runs each step once: a finished step leaves a marker and is skipped by a resumed demo."""

    def __init__(self, output: Path, resume: bool, runs: list[StageRun]):
        self.marks = output / ".done"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.runs = runs

    def stage(self, key: str, name: str, overrides: list[str]) -> StageRun:
        mark = self.marks / key
        if self.resume and mark.exists():
            record = StageRun(name, overrides, seconds=float(mark.read_text() or 0), skipped=True)
            log.info("demo step %s already done, skipped", key)
        else:
            record = run_stage(name, overrides)
            mark.write_text(f"{record.seconds:.3f}")
        self.runs.append(record)
        return record


def make_data(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """Write the synthetic raw folder (for curate) and the labelled train / held-out test volumes."""
    from cemkit.data.synthetic import make_volume, save_montage, write_raw_folder
    from cemkit.io import write_tif_stack

    data = out / "data"
    paths = {
        "raw": data / "raw",
        "train_image": data / "train_image.tif",
        "train_labels": data / "train_labels.tif",
        "test_image": data / "test_image.tif",
        "test_labels": data / "test_labels.tif",
        "montage": data / "montage.png",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    data.mkdir(parents=True, exist_ok=True)
    if not paths["raw"].exists():
        write_raw_folder(paths["raw"], n_sources=int(cfg.data.sources), seed=int(cfg.seed))
    voxel = tuple(float(v) for v in cfg.data.voxel_size) if cfg.data.voxel_size else None
    train = make_volume(tuple(cfg.data.train_shape), seed=int(cfg.seed) + 101, style=cfg.data.style, voxel_size=voxel)
    test = make_volume(tuple(cfg.data.test_shape), seed=int(cfg.seed) + 202, style=cfg.data.style, voxel_size=voxel)
    write_tif_stack(paths["train_image"], train.image, voxel_size=train.voxel_size)
    write_tif_stack(paths["train_labels"], train.mito, voxel_size=train.voxel_size)
    write_tif_stack(paths["test_image"], test.image, voxel_size=test.voxel_size)
    write_tif_stack(paths["test_labels"], test.mito, voxel_size=test.voxel_size)
    save_montage(paths["montage"], test.image, test.mito, n=4)
    return paths


def run_demo(cfg: DictConfig) -> DemoResult:
    """Run every step of the demo into ``cfg.output`` and return what the report shows.

    After pretraining, each encoder init (pretrained, random) is a *branch*: finetune its 1fm/3fm/5fm
    models, predict the test volume with each and with their ensemble, evaluate. The branches are
    independent; with ``jobs: 2`` they run side by side in two processes (:mod:`cemkit.demo.branches`).
    """
    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    steps = _Steps(out, bool(cfg.resume), result.runs)
    lists = {k: [str(o) for o in OmegaConf.to_container(cfg[k])] for k in ("curate", "pretrain", "finetune", "predict", "evaluate")}

    paths = make_data(cfg, out)
    corpus = out / "corpus"
    steps.stage("curate", "curate", [f"input={paths['raw']}", f"output={corpus}", f"seed={cfg.seed}", *lists["curate"]])

    pretrain = out / "pretrain"
    steps.stage("pretrain", "pretrain", [f"data.corpus={corpus}", f"output={pretrain}", f"seed={cfg.seed}",
                                         "ckpt_path=auto", *lists["pretrain"]])
    encoder = pretrain / "encoder.pth"

    specs = [BranchSpec(init, str(encoder) if init == "pretrained" else "none", out, paths, lists,
                        seed=int(cfg.seed), tta=int(cfg.tta), resume=bool(cfg.resume)) for init in INITS]
    jobs, threads = worker_plan(cfg.jobs, cfg.threads, len(specs))
    for init, (runs, metrics) in zip(INITS, run_branches(run_branch, specs, jobs, threads)):
        result.runs.extend(runs)
        result.metrics[init] = metrics

    atomic_write_json(out / "demo.json", result.to_json(), indent=2, default=_json_default)
    return result


def run_branch(spec: BranchSpec) -> tuple[list[StageRun], dict[str, dict]]:
    """One encoder init: finetune 1fm/3fm/5fm, predict the test volume with each and the ensemble, evaluate.

    Returns the stage runs and ``{model: metrics.json}``.
    """
    out, paths, lists, init = spec.output, spec.paths, spec.lists, spec.init
    runs: list[StageRun] = []
    steps = _Steps(out, spec.resume, runs)
    run_dir = out / f"finetune_{init}"
    steps.stage(f"finetune_{init}", "finetune", [
        f"data.images={paths['train_image']}", f"data.labels={paths['train_labels']}", "model.frames=all",
        f"model.init={spec.init_value}", f"output={run_dir}", f"seed={spec.seed}", *lists["finetune"]])

    metrics: dict[str, dict] = {}
    for model in MODELS:
        pred = out / "predict" / f"{init}_{model}"
        if model == "ensemble":  # the members' saved maps, combined (no model runs twice)
            members = ",".join(str(out / "predict" / f"{init}_{m}") for m in MODELS if m != "ensemble")
            source = [f"predictions=[{members}]"]
        else:
            source = [f"checkpoint={run_dir / model / 'best.ckpt'}", f"tta={spec.tta}"]
        steps.stage(f"predict_{init}_{model}", "predict", [
            *source, f"input={paths['test_image']}", f"output={pred}", *lists["predict"]])
        ev = out / "evaluate" / f"{init}_{model}"
        steps.stage(f"evaluate_{init}_{model}", "evaluate", [
            f"prediction={pred}", f"labels={paths['test_labels']}", f"output={ev}", *lists["evaluate"]])
        metrics[model] = json.loads((ev / "metrics.json").read_text())
    return runs, metrics


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj))
