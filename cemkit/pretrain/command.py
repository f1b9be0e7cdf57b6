"""``cemkit pretrain``: MoCo v2 pretraining from a corpus or an image folder (Hydra command)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError, InputError
from cemkit.io.atomic import atomic_write_text
from cemkit.io.csv_rows import rows_kept

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


def resolve_ckpt_path(value: str | None, output: Path) -> str | None:
    """``null`` -> fresh run; ``last`` -> ``output/checkpoints/last.ckpt`` (must exist); ``auto`` -> the
    newest of that file and a SLURM requeue checkpoint (``output/hpc_ckpt_*.ckpt``) when one exists, else a
    fresh run; anything else is a checkpoint path."""
    if value in (None, "", "null"):
        return None
    last = output / CHECKPOINT_DIR / LAST
    if value == "auto":
        found = [p for p in [last, *output.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    path = last if value == "last" else Path(str(value)).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: checkpoint to resume from not found")
    return str(path)


def total_steps(cfg: DictConfig, num_patches: int) -> int:
    """Run length in optimiser steps: ``epochs * (patches // batch)`` when ``epochs`` is set (and then
    ``trainer.max_steps`` is not used, which is logged), else ``trainer.max_steps``."""
    epochs, max_steps = cfg.epochs, cfg.trainer.max_steps
    if epochs:
        per_epoch = num_patches // int(cfg.data.batch_size)
        if per_epoch < 1:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the data ({num_patches} patches)")
        steps = int(epochs) * per_epoch
        log.info("epochs=%d sets the run length: %d steps of %d patches (trainer.max_steps=%s is not used)",
                 int(epochs), steps, int(cfg.data.batch_size), max_steps)
        return steps
    steps = int(max_steps or -1)
    if steps <= 0:
        raise ConfigError("set trainer.max_steps (> 0) or epochs: pretraining length is counted in optimiser steps")
    return steps


def queue_overlap_warning(queue_size: int, num_patches: int, batch_size: int) -> str | None:
    """Why a queue of ``queue_size`` keys is too long for ``num_patches`` patches, or ``None``.

    The queue holds the keys of the last ``queue_size / batch_size`` steps. Once it spans more than one
    pass over the data (``queue_size > num_patches - batch_size``), it holds keys of the very patches
    being queried: a positive's own patch is then also among the negatives, which the InfoNCE loss can
    only answer by pulling all embeddings together (on the CDeep3M sample's 410 patches, K = 2048 collapsed
    to an embedding spread below 0.07 and a loss at chance; K = 256 kept the spread at 0.18-0.31 and the loss
    below chance: docs/results.md).
    """
    room = int(num_patches) - int(batch_size)
    if int(queue_size) <= room:
        return None
    return (f"moco.queue_size={queue_size} keys span more than one pass over the {num_patches} patches: the queue "
            f"holds keys of the queries' own patches as negatives, and MoCo tends to collapse. Use "
            f"moco.queue_size <= {max(room, 0)} (patches - batch), or more data (smaller data.tile_size, more images)")


# Trainer options pretrain sets itself: the run is counted in optimiser steps (trainer.max_steps or epochs)
# and the learning-rate schedule ends with it; Shuffle-BN needs per-process BatchNorm. Another value is refused.
STAGE_TRAINER_OPTIONS = {"max_epochs": -1, "max_time": None, "sync_batchnorm": False}


def check_trainer_options(trainer_cfg: DictConfig) -> None:
    """Refuse a ``trainer.*`` value that pretrain must control (see :data:`STAGE_TRAINER_OPTIONS`)."""
    from cemkit.tracking import refuse_stage_trainer_options

    refuse_stage_trainer_options(trainer_cfg, STAGE_TRAINER_OPTIONS, "pretrain",
                                 "a run is counted in optimiser steps (trainer.max_steps or epochs) and the learning-"
                                 "rate schedule ends with it (trainer.max_time would stop it mid-schedule), and "
                                 "Shuffle-BN needs per-process BatchNorm")


def _ddp_buffer_kwargs() -> dict:
    """No per-step buffer broadcast (newer torch: ``forward_sync_buffers``; older: ``broadcast_buffers``)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _strategy(trainer_cfg: DictConfig):
    """``ddp`` without per-step buffer broadcast: the queue is kept identical by the key all-gather,
    and BN statistics stay per process (as in the official MoCo); no unused-parameter search."""
    strategy = trainer_cfg.strategy
    if strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        from pytorch_lightning.strategies import DDPStrategy

        start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}[strategy]
        return DDPStrategy(start_method=start, find_unused_parameters=False, **_ddp_buffer_kwargs())
    return strategy


def read_init(spec: Any):
    """``model.init`` of pretrain: ``None`` for none, else the :class:`~cemkit.models.encoders.EncoderWeights` it names.

    Accepts what :func:`cemkit.models.encoders.read_encoder_weights` reads (a ``cemkit export`` encoder,
    a ``cemkit pretrain`` checkpoint, a CEM500K / cellemnet MoCo checkpoint, SwAV, timm / torchvision
    state dicts) and ``zoo:NAME`` for an encoder of the model zoo.
    """
    from cemkit.models.encoders import read_encoder_weights
    from cemkit.models.references import is_reference, resolve_reference

    text = "none" if spec is None else str(spec).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    if is_reference(text):
        path = resolve_reference(text)
    else:
        path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: model.init encoder weights not found")
    return read_encoder_weights(path)


def build_module(cfg: DictConfig, source, steps: int, *, load_init: bool = True, encoder_named: bool | None = None):
    """The :class:`~cemkit.pretrain.module.MoCoModule` of ``cfg``, continued from ``model.init`` when set.

    With ``model.init``, the encoder architecture is the weights' own unless the command names one
    (:func:`cemkit.models.arch_choice.arch_for_weights`), and, when ``load_init`` (a fresh run, not a
    resume), the weights are loaded into the query encoder and copied into the key encoder; the
    queue is filled from it by :meth:`~cemkit.pretrain.module.MoCoModule.fill_queue` at the start of
    the run (``moco.init_queue``; else by the keys of the first ``queue_size / batch_size`` steps).
    """
    from cemkit.models.arch_choice import arch_for_weights, command_line_overrides
    from cemkit.models.arch_choice import encoder_named as names_encoder
    from cemkit.pretrain.module import MoCoModule

    init_spec = cfg.model.init
    weights = read_init(init_spec)
    if encoder_named is None:
        encoder_named = names_encoder(command_line_overrides())
    arch = arch_for_weights(str(cfg.model.encoder.arch), weights, encoder_named)
    opt, moco = cfg.optimizer, cfg.moco
    module = MoCoModule(
        arch=arch, in_chans=int(cfg.model.in_chans),
        timm_pretrained=bool(cfg.model.encoder.timm_pretrained) and weights is None,
        dim=int(moco.dim), queue_size=int(moco.queue_size), momentum=float(moco.momentum),
        temperature=float(moco.temperature), mlp_hidden=moco.mlp_hidden, bn_splits=int(moco.bn_splits),
        shuffle_bn=bool(moco.shuffle_bn), batch_size=int(cfg.data.batch_size), lr=opt.lr, base_lr=float(opt.base_lr),
        sgd_momentum=float(opt.momentum), weight_decay=float(opt.weight_decay), nesterov=bool(opt.nesterov),
        schedule=str(opt.schedule), milestones=list(opt.milestones), gamma=float(opt.gamma),
        warmup_steps=int(opt.warmup_steps), total_steps=steps, norms=[source.mean, source.std],
        corpus_id=source.source_id, channels_last=bool(cfg.channels_last), seed=int(cfg.seed),
        collapse_ratio=float(moco.collapse_ratio), init=None if weights is None else str(init_spec))
    if weights is not None and load_init:
        report = module.load_encoder(weights)
        queue = ("is filled with this encoder's keys before the first step" if moco.init_queue
                 else f"fills with this encoder's keys over the first "
                      f"{-(-int(moco.queue_size) // int(cfg.data.batch_size))} steps")
        log.info("model.init %s (layout %s, %s): %d tensors loaded into the query and key encoders, %d missing, "
                 "%d unexpected; the queue %s", report["source"], report["layout"], arch, report["loaded"],
                 len(report["missing"]), len(report["unexpected"]), queue)
    elif weights is not None:
        log.info("model.init %s: not loaded, the run resumes from its checkpoint", init_spec)
    return module


def run(cfg: DictConfig, *, extra_callbacks: Sequence[Any] = ()) -> None:
    """Train MoCo v2 as configured by ``conf/pretrain.yaml`` and export the encoder.

    Parameters
    ----------
    cfg
        The composed ``pretrain`` config.
    extra_callbacks
        More Lightning callbacks (library use and tests).
    """
    import pytorch_lightning as pl

    from cemkit.pretrain.data import PretrainDataModule, open_source
    from cemkit.tracking import build_logger, csv_metrics_path

    check_trainer_options(cfg.trainer)
    output = Path(cfg.output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output)
    export = bool(cfg.export_encoder)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    source = open_source(cfg.data)
    steps = total_steps(cfg, len(source))
    overlap = queue_overlap_warning(int(cfg.moco.queue_size), len(source), int(cfg.data.batch_size))
    if overlap:
        log.warning(overlap)
    log.info("pretraining %s on %s; mean %.4f std %.4f; %d steps of %d images", cfg.model.encoder.arch,
             source.description, source.mean, source.std, steps, cfg.data.batch_size)
    module = build_module(cfg, source, steps, load_init=ckpt_path is None)
    fill_queue = bool(cfg.moco.init_queue)
    datamodule = PretrainDataModule(source, cfg.augment, int(cfg.data.image_size), int(cfg.data.batch_size),
                                    int(cfg.data.num_workers), steps, seed=int(cfg.seed))
    if module.hparams.init and ckpt_path is None and fill_queue:
        # built when training starts (the data module knows its rank then)
        module.queue_fill = functools.partial(datamodule.queue_fill_dataloader, int(cfg.moco.queue_size))

    logger = build_logger(cfg.logger)
    # Lightning's CSV logger replaces metrics.csv: the rows of the steps before a resume are read now, put back after
    with rows_kept(csv_metrics_path(logger), keep=ckpt_path is not None):
        trainer = build_pretrain_trainer(cfg, output, steps, logger, extra_callbacks)
        if ckpt_path:
            log.info("resuming from %s", ckpt_path)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        finish(output, trainer.global_step, export)


def build_pretrain_trainer(cfg: DictConfig, output: Path, steps: int, logger=None,
                           extra_callbacks: Sequence[Any] = ()):
    """The Lightning trainer of a run of ``steps`` steps: ``logger`` (given the resolved config as
    hyperparameters), the last-checkpoint, view-pair and queue callbacks, DDP without buffer broadcast;
    writes ``output/config.yaml`` (rank 0)."""
    from cemkit.pretrain.checkpoints import LastCheckpoint
    from cemkit.pretrain.monitoring import QueueConsistencyCheck, ViewPairGrid
    from cemkit.tracking import build_trainer

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if logger is not None:
        logger.log_hyperparams(resolved)
    checkpoint = LastCheckpoint(dirpath=output / CHECKPOINT_DIR, filename="step{step:08d}", save_last=True,
                                save_top_k=0, every_n_train_steps=int(cfg.checkpoint_every_n_steps),
                                auto_insert_metric_name=False)
    callbacks = [checkpoint, ViewPairGrid(int(cfg.view_pairs), output / "images"), QueueConsistencyCheck(),
                 *extra_callbacks]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(max_steps=steps)  # = trainer.max_steps, or the steps of `epochs` (logged by total_steps)
    trainer_cfg["strategy"] = _strategy(cfg.trainer)
    trainer = build_trainer(trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(output),
                            use_distributed_sampler=False)
    if trainer.is_global_zero:
        atomic_write_text(output / "config.yaml", OmegaConf.to_yaml(resolved))
    return trainer


def finish(output: Path, steps: int, export: bool) -> None:
    """Log the end of a run and, with ``export``, write ``output/encoder.pth`` from its last checkpoint."""
    from cemkit.pretrain.export import export_encoder

    last = output / CHECKPOINT_DIR / LAST
    if not last.is_file():
        return
    msg = f"pretraining done: {steps} steps; checkpoint {last}"
    if export:
        msg += f"; encoder {export_encoder(last, output / 'encoder.pth')}"
    log.info(msg)
