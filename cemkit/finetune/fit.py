"""The fit step: one finetune run (one frame count) from a composed config.

:func:`train_one` skips a finished run, checks a resume, then builds the model
(:mod:`cemkit.finetune.build`) and the data (:mod:`cemkit.finetune.inputs`), fits with Lightning and
writes the result. Output of a run in ``out_dir``: ``best.ckpt`` (best ``val/iou``), ``last.ckpt``,
``logs/`` (CSV metrics by default), ``overlays/`` (PNG validation overlays unless the logger is W&B) and
``result.json`` (written last: its presence marks the run as finished; a finished run is skipped when
the command is run again).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError, InputError
from cemkit.finetune.budget import TimeBudget, parse_duration
from cemkit.finetune.build import build_model, build_module, freeze, plain
from cemkit.finetune.data import check_global_batch
from cemkit.finetune.initialization import resolve_init
from cemkit.finetune.inputs import FinetuneData, build_loaders, input_norms
from cemkit.io.atomic import atomic_write_json
from cemkit.io.csv_rows import rows_kept

log = logging.getLogger(__name__)


RESULT_FILE = "result.json"


# Trainer options finetune sets itself: a run is counted in optimizer steps (trainer.max_steps or
# trainer.max_time) and validated every val.every steps. Another value in the config is refused
# (:func:`cemkit.finetune.orchestrate.check_trainer_options`).
STAGE_TRAINER_OPTIONS = {"max_epochs": -1, "check_val_every_n_epoch": 1, "val_check_interval": None,
                         "num_sanity_val_steps": 0}


def train_one(cfg: DictConfig, frames: int, data: FinetuneData, out_dir: Path,
              init_spec: Any = None, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one ``frames``-frame model into ``out_dir``; returns the run's result dict.

    ``init_spec`` replaces ``cfg.model.init`` when given (``model.chain_frames`` passes the
    previous model's checkpoint, ``model.trunk`` the trunk's). ``callbacks`` are added to the trainer's.
    """
    import pytorch_lightning as pl

    started = time.monotonic()
    budget_s = parse_duration(cfg.trainer.max_time)
    warn_about_the_cpu(cfg, budget_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    finished, overwrite = read_result(out_dir), bool(cfg.overwrite)
    if finished is not None and not overwrite:
        log.info("%s is finished (%s exists): skipped (overwrite=true retrains)", out_dir, RESULT_FILE)
        return finished
    resume = _ckpt_path(cfg.ckpt_path, out_dir)
    if resume is not None:
        _check_resumable(resume, cfg)

    pl.seed_everything(int(cfg.seed), workers=True)
    init_value = cfg.model.init if init_spec is None else init_spec
    init = resolve_init(init_value, frames)
    model, init_norms, report = build_model(cfg, frames, init)
    frozen = freeze(model, cfg.model.freeze_encoder)
    norms, norms_source = input_norms(cfg.data.norms, init_norms, init.kind, data)
    log.info("%dfm: input norms mean %.4f std %.4f (from %s)", frames, norms[0], norms[1], norms_source)
    val_every, total = plan_steps(int(cfg.trainer.max_steps), int(cfg.val.every))
    loaders = build_loaders(cfg, frames, data, norms, val_every)
    module = build_module(cfg, frames, model, init_value, init, norms, norms_source, total, out_dir,
                          pixel_size_nm=data.pixel_size_nm)

    trainer, roles = fit(cfg, module, loaders, out_dir, frames, data.held_out, resume, val_every, total,
                         budget_s, started, extra_callbacks=callbacks)
    best = roles["best"].best_model_score if data.held_out else None
    result = {"frames": frames, "steps": int(trainer.global_step), "best_iou": None if best is None else float(best),
              "held_out_validation": data.held_out,
              "best_checkpoint": str(out_dir / "best.ckpt"), "last_checkpoint": str(out_dir / "last.ckpt"),
              "history": module.history, "norms": list(norms), "init": str(init_value), "init_kind": init.kind,
              "load_report": report, "frozen_modules": len(frozen), "arch": model.arch,
              "pixel_size_nm": data.pixel_size_nm,
              "precision": str(trainer.precision)}  # trainer.precision=auto resolved (cemkit/precision.py)
    budget = roles.get("budget")
    if budget is not None:
        result["budget"] = {"seconds": budget.seconds, "step_seconds": budget.step_s, "planned_steps": budget.total,
                            "elapsed": round(budget.elapsed(), 1)}
    if trainer.is_global_zero:  # under DDP every rank has the result; one writes it
        _write_json(out_dir / RESULT_FILE, result)
    return result


def plan_steps(max_steps: int, val_every: int) -> tuple[int, int]:
    """``(steps between validations, total steps)``: ``trainer.max_steps`` rounded up to a whole number of
    ``val.every`` blocks, so that the run ends with a validation.

    Examples
    --------
    >>> plan_steps(250, 100)
    (100, 300)
    >>> plan_steps(40, 100)
    (40, 40)
    """
    if max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0, got {max_steps}")
    every = max(1, min(val_every, max_steps))
    total = math.ceil(max_steps / every) * every
    if total != max_steps:
        log.info("trainer.max_steps %d rounded up to %d so the run ends with a validation (val.every=%d)",
                 max_steps, total, every)
    return every, total


def fit(cfg: DictConfig, module, loaders, out_dir: Path, frames: int, held_out: bool, resume: str | None,
        val_every: int, total: int, budget_s: float | None, started: float, extra_callbacks: Sequence[Any] = ()):
    """Fit ``module`` with Lightning: checkpoints, the time budget, the logger; returns the trainer and the
    callbacks by role (``best``, ``last``, ``budget`` when ``trainer.max_time`` is set).
    ``extra_callbacks`` are added after cemkit's own."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from cemkit.finetune.callbacks import RankFailureReport, ResumePointCheckpoint
    from cemkit.tracking import build_trainer, csv_metrics_path

    d = cfg.data
    # best.ckpt is the model (weights, config, norms: a third of the size); last.ckpt is the resume point.
    # Without held-out slices (data.val_slices=0) no validation can choose: best.ckpt is the latest model.
    ckpt_cb = ModelCheckpoint(dirpath=str(out_dir), filename="best", monitor="val/iou" if held_out else None,
                              mode="max", save_top_k=1,
                              save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                              save_on_train_epoch_end=False, save_weights_only=True)
    # last.ckpt after every val.last_every-th validation and the last one (save_last=True on the callback
    # above only writes it when the best model improves in pytorch_lightning 2.6: the final model was lost)
    last_cb = ResumePointCheckpoint(val_every, _last_every(cfg), total, dirpath=str(out_dir), filename="last",
                                    monitor=None, save_top_k=1, auto_insert_metric_name=False,
                                    enable_version_counter=False, save_on_train_epoch_end=False)
    logger = _logger_for(cfg.logger, out_dir, f"{frames}fm")
    roles: dict[str, Any] = {"best": ckpt_cb, "last": last_cb}
    callbacks: list[Any] = [ckpt_cb, last_cb, RankFailureReport(), *extra_callbacks]
    tuned_steps = cfg.budget.tuned_steps
    if budget_s is not None:
        pixels = val_every * int(d.batch_size) * int(d.crop) ** 2
        roles["budget"] = TimeBudget(budget_s, val_every, started=started, followers=[last_cb], max_steps=total,
                                     val_fraction=_validation_fraction(loaders.val_dataset, pixels),
                                     tuned_steps=tuned_steps)
        callbacks.insert(0, roles["budget"])
    if logger is not None:
        from pytorch_lightning.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="step"))
    # Lightning's CSV logger replaces metrics.csv: the rows of the steps before a resume are read now, put back after
    with rows_kept(csv_metrics_path(logger), keep=resume is not None):
        trainer = build_trainer(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(out_dir),
                                max_steps=total, max_time=None,  # the budget plans max_steps (TimeBudget)
                                **STAGE_TRAINER_OPTIONS, use_distributed_sampler=False,
                                log_every_n_steps=min(int(cfg.trainer.log_every_n_steps), val_every))
        check_global_batch(int(d.batch_size), trainer.world_size)
        loaders.sampler.accumulate = int(trainer.accumulate_grad_batches)
        loaders.sampler.position = lambda: trainer.global_step
        # max_steps (not epochs) ends the run: Lightning counts the epoch of a checkpoint written at the
        # end-of-epoch validation once more after a resume, so an epoch limit would stop it early
        trainer.fit(module, loaders.train, loaders.val, ckpt_path=resume)
    return trainer, roles


def _logger_for(logger_cfg: DictConfig | None, out_dir: Path, run_name: str):
    from cemkit.tracking import build_logger

    if logger_cfg is None:
        return None
    cfg = plain(logger_cfg) or {}
    if not cfg.get("_target_"):
        return None
    if "save_dir" in cfg:
        cfg["save_dir"] = str(out_dir)
    if cfg["_target_"].endswith("WandbLogger"):
        cfg["name"] = f"{cfg.get('name') or 'finetune'}-{run_name}"
    return build_logger(cfg)


def _last_every(cfg: DictConfig) -> int:
    every = cfg.val.last_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"val.last_every must be a positive integer (validations between resume points), got {every!r}")
    return every


def _ckpt_path(spec: Any, out_dir: Path) -> str | None:
    if spec in (None, "", "none"):
        return None
    if str(spec) == "last":
        last = out_dir / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("no %s yet: starting from scratch", last)
        return None
    path = Path(str(spec))
    if not path.is_file():
        raise InputError(f"{path}: ckpt_path not found")
    return str(path)


def warn_about_the_cpu(cfg: DictConfig, budget_s: float | None) -> None:
    """Warn when a budgeted CPU run has fewer cores than the presets were tuned for (a bf16 precision on a CPU
    without bf16 units is warned about where the trainer is built: :func:`cemkit.precision.trainer_precision`)."""
    import torch

    from cemkit.hardware import cpu_features

    on_cpu = str(cfg.trainer.accelerator) == "cpu" or not torch.cuda.is_available()
    cores = cpu_features().cores
    if on_cpu and budget_s is not None and cores < 2:
        log.warning("%d CPU core: the presets are tuned for 2; the time budget (%.0f s) still holds, with about "
                    "half the steps, so expect a lower accuracy", cores, budget_s)


def _validation_fraction(val_ds, train_pixels_per_block: int) -> float:
    """A first guess of one validation's time as a fraction of a block's training time: a forward pass
    costs about a third of a training step per pixel (replaced by the measured block after the first
    validation)."""
    pixels = sum(h * w for _, _, _, _, h, w in getattr(val_ds, "items", []))
    return pixels / max(1, train_pixels_per_block) / 3.0


RESUME_KEYS = ("seed", "trainer.max_steps", "val.every", "data.batch_size", "data.crop", "optim")


def _check_resumable(path: str, cfg: DictConfig) -> None:
    """A resumed run must keep the settings that define its steps, patches and schedule."""
    from cemkit.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path, mmap=True)
    if "optimizer_states" not in ckpt:
        raise ConfigError(f"{path}: holds the model weights only (a best.ckpt); a run resumes from its last.ckpt "
                          "(ckpt_path=last)")
    saved = ckpt.get("hyper_parameters", {})
    old = OmegaConf.create(saved.get("config") or {})
    diffs = [f"{k}={OmegaConf.select(old, k)} (now {plain(OmegaConf.select(cfg, k))})" for k in RESUME_KEYS
             if OmegaConf.select(old, k) is not None
             and plain(OmegaConf.select(old, k)) != plain(OmegaConf.select(cfg, k))]
    if diffs:
        raise ConfigError(f"{path}: this run was started with {', '.join(diffs)}; resume with the same settings "
                          "(or drop ckpt_path=last and use overwrite=true to start again)")


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=2, default=str)


def read_result(out_dir: Path | str) -> dict[str, Any] | None:
    """The result of a finished model run in ``out_dir`` (its ``result.json``: ``frames``, ``steps``,
    ``best_iou``, checkpoints, validation history), or ``None`` while the run is not finished."""
    path = Path(out_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
