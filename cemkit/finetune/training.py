"""One finetune run (one frame count) from a composed config: model, data, Lightning fit, checkpoints.

Output of a run in ``out_dir``: ``best.ckpt`` (best ``val/iou``), ``last.ckpt``, ``logs/``
(CSV metrics by default), ``overlays/`` (PNG validation overlays unless the logger is W&B) and
``result.json`` (written last: its presence marks the run as finished; a finished run is skipped
when the command is run again).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError, InputError
from cemkit.finetune.budget import TimeBudget, parse_duration
from cemkit.finetune.data import (
    LabelledVolume,
    PatchBatchSampler,
    PatchDataset,
    RankShardSampler,
    SliceDataset,
    build_augmentation,
    check_global_batch,
    intensity_norms,
    read_labelled_volume,
    split_validation,
)
from cemkit.finetune.initialization import InitSource, resolve_init
from cemkit.finetune.losses import SegmentationLoss
from cemkit.io.atomic import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass
class FinetuneData:
    """Training and validation volumes (shared by the 1/3/5fm runs of one command)."""

    train: list[LabelledVolume]
    val: list[LabelledVolume]
    held_out: bool = True  # False: the validation slices are trained on too (data.val_slices=0)


def load_data(data_cfg: DictConfig, frames: int) -> FinetuneData:
    """Read training (and validation) volumes; hold out the last ``data.val_slices`` labelled
    slices when no separate validation data is given."""
    vol = read_labelled_volume(data_cfg.images, data_cfg.labels, int(data_cfg.num_classes), frames=frames,
                               image_key=data_cfg.image_key, label_key=data_cfg.label_key)
    val_images, val_labels = data_cfg.val_images, data_cfg.val_labels
    if val_images:
        if not val_labels:
            raise ConfigError("data.val_images needs data.val_labels")
        val = read_labelled_volume(val_images, val_labels, int(data_cfg.num_classes),
                                   frames=frames, image_key=data_cfg.image_key,
                                   label_key=data_cfg.label_key)
        train = vol
        held_out = True
    else:
        held_out = int(data_cfg.val_slices) != 0
        train, val = split_validation(vol, int(data_cfg.val_slices))
        if not held_out:
            log.info("data.val_slices=0: training on all %d labelled slices; validation on the last %d of them "
                     "only monitors the fit, and best.ckpt is the final model", len(train.slices), len(val.slices))
    fraction = data_cfg.train_fraction
    if fraction is not None and float(fraction) < 1.0:
        train = subsample_slices(train, float(fraction))
    return FinetuneData([train], [val], held_out)


def subsample_slices(vol: LabelledVolume, fraction: float) -> LabelledVolume:
    """Keep an evenly spaced ``fraction`` of the labelled slices (at least one)."""
    n = len(vol.slices)
    k = max(1, round(n * fraction))
    pick = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [n // 2]
    log.info("using %d of %d labelled training slices (data.train_fraction=%g)", len(pick), n, fraction)
    return vol.subset(vol.slices[pick])


def plain(cfg: Any) -> Any:
    """A resolved plain-python copy of a config node (for checkpoints loaded with weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_model(cfg: DictConfig, frames: int, init: InitSource, encoder_named: bool | None = None):
    """Create the segmenter for ``frames`` from ``cfg.model`` and the resolved ``model.init``.

    Encoder weights of another architecture than ``model.encoder.arch`` build the checkpoint's
    architecture, unless the encoder was named on the command line (``encoder_named``; ``None``:
    read from the running Hydra command), which is an error naming both
    (:func:`cemkit.models.arch_choice.arch_for_weights`).

    Returns ``(model, norms or None, load_report)``.
    """
    from cemkit.models.checkpoint import segmenter_from_checkpoint
    from cemkit.models.arch_choice import arch_for_weights, command_line_overrides
    from cemkit.models.arch_choice import encoder_named as names_encoder
    from cemkit.models.deepem3d import FRAME_INITS, build_segmenter

    num_classes = int(cfg.data.num_classes)
    if init.kind == "segmenter":
        model, meta = segmenter_from_checkpoint(init.checkpoint, str(init.path))
        if model.frames > frames:
            raise ConfigError(f"{init.path}: the checkpoint is a {model.frames}fm model but model.frames={frames} "
                              "(a model can start from one with the same or fewer frames)")
        if model.frames < frames:
            from cemkit.models.deepem3d import inflate_segmenter

            log.info("%dfm model starts from the %dfm model %s (first convolution inflated onto the centre frame)",
                     frames, model.frames, init.path)
            model = inflate_segmenter(model, frames)
        model.train()  # loaded checkpoints come in eval mode; Lightning keeps a module's mode as it finds it
        if model.num_classes != num_classes:
            raise ConfigError(f"{init.path}: the checkpoint has num_classes={model.num_classes} but "
                              f"data.num_classes={num_classes}")
        n = len(model.state_dict())
        return model, meta.get("norms"), {"source": str(init.path), "kind": "segmenter", "loaded": n,
                                          "missing": [], "unexpected": []}
    m = cfg.model
    frame_init = str(m.frame_init)
    if frame_init not in FRAME_INITS:
        raise ConfigError(f"model.frame_init must be one of {', '.join(FRAME_INITS)}, got {frame_init!r}")
    if encoder_named is None:
        encoder_named = names_encoder(command_line_overrides())
    arch = arch_for_weights(str(m.encoder.arch), init.weights, encoder_named)
    model, report = build_segmenter(
        arch, frames, num_classes, weights=init.weights,
        timm_pretrained=bool(m.encoder.timm_pretrained) and init.kind == "none",
        decoder_width=m.decoder_width, dilations=list(m.dilations),
        dilated_max_stride=int(m.dilated_max_stride), final_relu=bool(m.final_relu),
        tap_max_stride=None if m.tap_max_stride is None else int(m.tap_max_stride),
        frame_init=frame_init)
    norms = init.weights.norms if init.kind == "encoder" else None
    if init.kind == "none" and bool(m.encoder.timm_pretrained):
        norms = (0.449, 0.226)  # ImageNet mean/std averaged over RGB
    if report:
        report["kind"] = "encoder"
    return model, norms, report


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


def train_one(cfg: DictConfig, frames: int, data: FinetuneData, out_dir: Path,
              init_spec: Any = None) -> dict[str, Any]:
    """Train one ``frames``-frame model into ``out_dir``; returns the run's result dict.

    ``init_spec`` replaces ``cfg.model.init`` when given (``model.chain_frames`` passes the
    previous model's checkpoint, ``model.trunk`` the trunk's).
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from cemkit.finetune.callbacks import RankFailureReport, ResumePointCheckpoint
    from cemkit.finetune.module import SegmentationModule
    from cemkit.tracking import build_trainer

    started = time.monotonic()
    budget_s = parse_duration(cfg.trainer.max_time)
    _warn_about_the_cpu(cfg, budget_s)
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
    try:
        frozen = model.freeze_encoder(cfg.model.freeze_encoder)
    except ValueError as exc:
        raise ConfigError(f"model.freeze_encoder: {exc}") from exc
    if frozen:
        log.info("frozen encoder modules: %d (BatchNorm kept in eval mode)", len(frozen))

    if cfg.data.norms is not None:
        norms = tuple(float(v) for v in cfg.data.norms)
        norms_source = "data.norms"
    elif init_norms is not None:
        norms, norms_source = tuple(float(v) for v in init_norms), f"model.init ({init.kind})"
    else:
        import numpy as np

        norms = intensity_norms(np.concatenate([v.image[v.slices].ravel() for v in data.train]))
        norms_source = "training images"
    log.info("%dfm: input norms mean %.4f std %.4f (from %s)", frames, norms[0], norms[1], norms_source)

    steps = int(cfg.trainer.max_steps)
    if steps <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0, got {steps}")
    val_every = max(1, min(int(cfg.val.every), steps))
    epochs = math.ceil(steps / val_every)
    total = epochs * val_every
    if total != steps:
        log.info("trainer.max_steps %d rounded up to %d so the run ends with a validation (val.every=%d)",
                 steps, total, val_every)
    d = cfg.data
    train_ds = PatchDataset(data.train, frames, int(d.crop), val_every * int(d.batch_size), norms,
                            background_keep=float(d.background_keep),
                            augment=_augmentation(d),
                            seed=int(cfg.seed), z_flip=bool(d.augment) and bool(d.z_flip),
                            hard_negatives=_fraction(d.hard_negatives, "data.hard_negatives"))
    val_ds = SliceDataset(data.val, frames, norms, tile=cfg.val.tile)
    workers = int(d.num_workers)
    # data.batch_size is the GLOBAL batch (as in pretrain): under DDP each of the W processes takes
    # batch_size / W of it. Patches are a function of (seed, optimizer step): a resumed run, with any
    # number of processes, trains on the same patches; Lightning must not wrap the sampler (it would
    # split each epoch over the ranks: repeated patches and W times as many validations)
    sampler = PatchBatchSampler(int(d.batch_size), val_every)
    train_dl = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    # each validation item on one rank; the counts are summed over the ranks (SegmentationModule)
    val_dl = DataLoader(val_ds, batch_size=int(cfg.val.batch_size), sampler=RankShardSampler(len(val_ds)),
                        num_workers=0)

    l = cfg.loss
    try:
        loss = SegmentationLoss(dict(plain(l.terms)), int(d.num_classes),
                                class_weights=None if l.class_weights is None else list(l.class_weights),
                                auto_balance=bool(l.auto_balance), focal_gamma=float(l.focal_gamma),
                                deep_supervision=float(l.deep_supervision))
    except ValueError as exc:
        raise ConfigError(f"loss: {exc}") from exc
    meta = {"frames": frames, "num_classes": int(d.num_classes), "norms": [float(norms[0]), float(norms[1])],
            "arch": model.arch, "norms_source": norms_source, "init": str(init_value),
            "init_kind": init.kind, "crop": int(d.crop), "class_names": plain(d.class_names)}
    hparams = {"config": plain(cfg), "frames": frames}
    module = SegmentationModule(model, loss, meta, dict(plain(cfg.optim)), total, hparams=hparams,
                                overlays=int(cfg.val.overlays), overlay_dir=out_dir / "overlays")

    # best.ckpt is the model (weights, config, norms: a third of the size); last.ckpt is the resume point.
    # Without held-out slices (data.val_slices=0) no validation can choose: best.ckpt is the latest model.
    ckpt_cb = ModelCheckpoint(dirpath=str(out_dir), filename="best", monitor="val/iou" if data.held_out else None,
                              mode="max", save_top_k=1,
                              save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                              save_on_train_epoch_end=False, save_weights_only=True)
    # last.ckpt after every val.last_every-th validation and the last one (save_last=True on the callback
    # above only writes it when the best model improves in pytorch_lightning 2.6: the final model was lost)
    last_cb = ResumePointCheckpoint(val_every, _last_every(cfg), total, dirpath=str(out_dir), filename="last",
                                    monitor=None, save_top_k=1, auto_insert_metric_name=False,
                                    enable_version_counter=False, save_on_train_epoch_end=False)
    logger = _logger_for(cfg.logger, out_dir, f"{frames}fm")
    csv_path = _csv_metrics_path(logger)
    # Lightning's CSV logger deletes an existing metrics.csv: keep the rows written before a resume
    prior_rows = _read_csv(csv_path) if resume and csv_path is not None else []
    callbacks: list[Any] = [ckpt_cb, last_cb, RankFailureReport()]
    budget = None
    if budget_s is not None:
        budget = TimeBudget(budget_s, val_every, started=started, followers=[last_cb], max_steps=total,
                            val_fraction=_validation_fraction(val_ds, val_every * int(d.batch_size) * int(d.crop) ** 2))
        callbacks.insert(0, budget)
    if logger is not None:
        from pytorch_lightning.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = build_trainer(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(out_dir),
                            max_steps=total, max_time=None,  # the budget plans max_steps (TimeBudget)
                            **STAGE_TRAINER_OPTIONS, use_distributed_sampler=False,
                            log_every_n_steps=min(int(cfg.trainer.log_every_n_steps), val_every))
    check_global_batch(int(d.batch_size), trainer.world_size)
    sampler.accumulate = int(trainer.accumulate_grad_batches)
    sampler.position = lambda: trainer.global_step
    # max_steps (not epochs) ends the run: Lightning counts the epoch of a checkpoint written at the
    # end-of-epoch validation once more after a resume, so an epoch limit would stop it early
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume)
    if prior_rows:
        _prepend_csv_rows(csv_path, prior_rows)

    best = ckpt_cb.best_model_score if data.held_out else None
    result = {"frames": frames, "steps": int(trainer.global_step), "best_iou": None if best is None else float(best),
              "held_out_validation": data.held_out,
              "best_checkpoint": str(out_dir / "best.ckpt"), "last_checkpoint": str(out_dir / "last.ckpt"),
              "history": module.history, "norms": list(norms), "init": meta["init"], "init_kind": init.kind,
              "load_report": report, "frozen_modules": len(frozen), "arch": model.arch}
    if budget is not None:
        result["budget"] = {"seconds": budget.seconds, "step_seconds": budget.step_s, "planned_steps": budget.total,
                            "elapsed": round(budget.elapsed(), 1)}
    if trainer.is_global_zero:  # under DDP every rank has the result; one writes it
        _write_json(out_dir / RESULT_FILE, result)
    return result


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX): without them bf16 autocast is slower
    than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _warn_about_the_cpu(cfg: DictConfig, budget_s: float | None) -> None:
    """Warn when a CPU run's settings were made for another machine (bf16 without bf16 units, fewer cores)."""
    import torch

    on_cpu = str(cfg.trainer.accelerator) == "cpu" or not torch.cuda.is_available()
    if not on_cpu:
        return
    if "bf16" in str(cfg.trainer.precision) and not cpu_has_native_bf16():
        log.warning("trainer.precision=%s on a CPU without AVX512-BF16/AMX: bf16 autocast is emulated and slower "
                    "than float32 here; set trainer.precision=32-true", cfg.trainer.precision)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if budget_s is not None and cores < 2:
        log.warning("%d CPU core: the presets are tuned for 2; the time budget (%.0f s) still holds, with about "
                    "half the steps, so expect a lower accuracy", cores, budget_s)


def _fraction(value: Any, key: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{key} must be a fraction in [0, 1], got {value!r}")
    return v


def _augmentation(d: DictConfig):
    photometric = d.photometric if d.photometric == "strong" else bool(d.photometric)
    try:
        return build_augmentation(bool(d.augment), photometric, bool(d.geometric))
    except ValueError as exc:
        raise ConfigError(f"data.photometric: {exc}") from exc


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


def _csv_metrics_path(logger) -> Path | None:
    from pytorch_lightning.loggers import CSVLogger

    return Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _prepend_csv_rows(path: Path, prior: list[dict[str, str]]) -> None:
    """Put the ``prior`` rows with a step before the first step of ``path``'s rows in front of them."""
    import csv

    new = _read_csv(path)
    first = min((int(float(r["step"])) for r in new if r.get("step")), default=None)
    kept = [r for r in prior if first is None or (r.get("step") and int(float(r["step"])) < first)]
    fields = list(dict.fromkeys([k for r in (*kept, *new) for k in r]))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*kept, *new])


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=2, default=str)


def frames_list(value: Any) -> list[int]:
    """``model.frames``: 1, 3, 5 (any odd number) or ``all`` (= 1, 3, 5)."""
    if str(value).lower() == "all":
        return [1, 3, 5]
    try:
        f = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.frames must be 1, 3, 5 or all, got {value!r}") from exc
    if f < 1 or f % 2 == 0:
        raise ConfigError(f"model.frames must be odd (1, 3, 5) or all, got {value!r}")
    return [f]


# Trainer options finetune sets itself: a run is counted in optimizer steps (trainer.max_steps or
# trainer.max_time) and validated every val.every steps. Another value in the config is refused.
STAGE_TRAINER_OPTIONS = {"max_epochs": -1, "check_val_every_n_epoch": 1, "val_check_interval": None,
                         "num_sanity_val_steps": 0}


def check_trainer_options(trainer_cfg: DictConfig) -> None:
    """Refuse a ``trainer.*`` value that finetune must control (see :data:`STAGE_TRAINER_OPTIONS`)."""
    from cemkit.tracking import refuse_stage_trainer_options

    refuse_stage_trainer_options(trainer_cfg, STAGE_TRAINER_OPTIONS, "finetune",
                                 "a run is counted in optimizer steps (trainer.max_steps or trainer.max_time) and "
                                 "validated every val.every steps")


def run_finetune(cfg: DictConfig) -> dict[int, dict[str, Any]]:
    """Train every model ``model.frames`` asks for into ``output/{k}fm``; returns ``{frames: result}``.

    How the models start: from ``model.init`` (independent, as in CDeep3M); with
    ``model.chain_frames`` from the previous model; with ``model.trunk.steps > 0`` from a shared 1fm
    trunk trained first into ``output/trunk`` (see :func:`member_config`).
    """
    check_trainer_options(cfg.trainer)
    frames = frames_list(cfg.model.frames)
    out = Path(str(cfg.output))
    chain = bool(cfg.model.chain_frames)
    trunk_steps, lr_scale = trunk_settings(cfg)
    if chain and trunk_steps:
        raise ConfigError("model.chain_frames=true and model.trunk.steps > 0 are two ways to start the models: "
                          "choose one")
    budgets = frame_steps(cfg.model.frame_steps)
    data = load_data(cfg.data, max(frames))
    trunk: str | None = None
    if trunk_steps:
        log.info("training the shared 1fm trunk for %d steps into %s", trunk_steps, out / TRUNK_FOLDER)
        train_one(with_max_steps(cfg, trunk_steps), 1, data, out / TRUNK_FOLDER)
        trunk = _start_checkpoint(out / TRUNK_FOLDER, "the 1fm trunk", "model.trunk.steps")
    results: dict[int, dict[str, Any]] = {}
    previous: int | None = None
    for f in frames:
        init_spec = trunk
        if chain and previous is not None:
            init_spec = _start_checkpoint(out / f"{previous}fm", f"the {previous}fm model", "model.chain_frames")
        run_cfg = member_config(cfg, f, lr_scale) if trunk else cfg
        if f in budgets:
            run_cfg = with_max_steps(run_cfg, budgets[f])
        results[f] = train_one(run_cfg, f, data, out / f"{f}fm", init_spec=init_spec)
        previous = f
    return results


TRUNK_FOLDER = "trunk"


def trunk_settings(cfg: DictConfig) -> tuple[int, float]:
    """``(model.trunk.steps, model.trunk.lr_scale)``, checked (steps 0 = no trunk)."""
    t = cfg.model.trunk
    steps, scale = int(t.steps or 0), float(t.lr_scale)
    if steps < 0:
        raise ConfigError(f"model.trunk.steps must be >= 0, got {steps}")
    if not scale > 0:
        raise ConfigError(f"model.trunk.lr_scale must be > 0, got {scale}")
    return steps, scale


def frame_steps(spec: Any) -> dict[int, int]:
    """``model.frame_steps`` as ``{frames: steps}``: per-model step budgets that replace
    ``trainer.max_steps``, e.g. ``{1fm: 40, 3fm: 60, 5fm: 80}`` (keys ``1fm`` or ``1``); ``null`` = none."""
    if spec in (None, "", "none"):
        return {}
    if not isinstance(spec, (dict, DictConfig)):
        raise ConfigError(f"model.frame_steps must be a mapping like {{1fm:40,3fm:60,5fm:80}}, got {spec!r}")
    budgets: dict[int, int] = {}
    for key, value in dict(spec).items():
        name = str(key).lower().removesuffix("fm")
        try:
            frames, steps = int(name), int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.frame_steps: {key}={value!r} is not <k>fm=<steps>") from exc
        if frames < 1 or frames % 2 == 0 or steps <= 0:
            raise ConfigError(f"model.frame_steps: {key}={value!r}: frames must be odd and steps > 0")
        budgets[frames] = steps
    return budgets


def with_max_steps(cfg: DictConfig, steps: int) -> DictConfig:
    """A copy of ``cfg`` with ``trainer.max_steps = steps``."""
    c = copy.deepcopy(cfg)
    c.trainer.max_steps = int(steps)
    return c


def member_config(cfg: DictConfig, frames: int, lr_scale: float) -> DictConfig:
    """The config of the ``frames``-frame model that starts from the trunk.

    Each model gets its own seed (``seed + frames``: its own patches and augmentations) and the
    learning rates ``optim.*_lr x lr_scale`` (``model.trunk.lr_scale``), so that the 1fm, 3fm and
    5fm models leave the trunk in different directions but stay near it, aiming at members of about equal
    quality whose errors differ, which an ensemble's mean needs to beat its best member. (Chained models
    are each better than the last and share its errors, so their mean lands between them; independent
    3fm/5fm models learn more slowly than the 1fm from a random start.) On short budgets the members
    can still differ by more than averaging gains: measurements in docs/results.md, "Ensembles on CPU budgets".
    """
    m = copy.deepcopy(cfg)
    m.seed = int(cfg.seed) + int(frames)
    m.optim.encoder_lr = float(cfg.optim.encoder_lr) * lr_scale
    m.optim.decoder_lr = float(cfg.optim.decoder_lr) * lr_scale
    return m


def _start_checkpoint(folder: Path, what: str, setting: str) -> str:
    """The finished model in ``folder`` (``best.ckpt``, else ``last.ckpt``) that the next model starts from."""
    from cemkit.models.checkpoint import checkpoint_in

    found = checkpoint_in(folder)
    if found is None:
        raise InputError(f"{folder}: {setting} needs {what}'s best.ckpt or last.ckpt, found neither")
    return str(found)


def read_result(out_dir: Path | str) -> dict[str, Any] | None:
    """The result of a finished model run in ``out_dir`` (its ``result.json``: ``frames``, ``steps``,
    ``best_iou``, checkpoints, validation history), or ``None`` while the run is not finished."""
    path = Path(out_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def summary_lines(results: dict[int, dict[str, Any]], out: Path | str) -> Sequence[str]:
    lines = [f"cemkit finetune -> {out}"]
    for f, r in results.items():
        best = r.get("best_iou")
        if best is not None:
            lines.append(f"  {f}fm: best val IoU {best:.4f} after {r.get('steps')} steps -> {r.get('best_checkpoint')}")
        elif r.get("held_out_validation") is False and r.get("history"):
            fit = r["history"][-1].get("iou", float("nan"))
            lines.append(f"  {f}fm: {r.get('steps')} steps, IoU {fit:.4f} on trained slices (nothing held out) "
                         f"-> {r.get('best_checkpoint')}")
        else:
            lines.append(f"  {f}fm: {r.get('steps')} steps (no validation) -> {r.get('last_checkpoint')}")
    return lines
