"""The MoCo v2 LightningModule: optimiser, schedule, logging around :class:`cemkit.pretrain.moco.MoCoV2`."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from cemkit.errors import ConfigError
from cemkit.models.encoders import create_encoder
from cemkit.pretrain.data import mix_seed
from cemkit.pretrain.moco import (
    MoCoV2,
    contrastive_accuracy,
    embedding_std,
    infonce_loss,
    set_bn_splits,
)

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step", "constant")


@dataclass
class LRSchedule:
    """Learning-rate factor per optimiser step: linear warm-up, then cosine, step or constant.

    Parameters
    ----------
    total_steps
        Steps of the whole run.
    schedule
        ``cosine`` (to 0 at ``total_steps``), ``step`` (x ``gamma`` at each milestone) or ``constant``.
    milestones
        Fractions of ``total_steps`` (CEM500K: 120 and 160 of 200 epochs = 0.6, 0.8).
    gamma
        Step decay factor.
    warmup_steps
        Linear warm-up from ``1 / warmup_steps`` to 1 over this many steps.

    Kept as a plain dataclass: ``LambdaLR.state_dict`` stores its fields, so checkpoints stay
    loadable with ``weights_only=True``.
    """

    total_steps: int
    schedule: str = "step"
    milestones: list = field(default_factory=lambda: [0.6, 0.8])
    gamma: float = 0.1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optimizer.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self.milestones = [float(m) for m in self.milestones]
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ConfigError(f"optimizer.milestones are fractions of the run in (0, 1), got {self.milestones}")

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.schedule == "step":
            passed = sum(step >= m * self.total_steps for m in self.milestones)
            return self.gamma ** passed
        return 1.0


def scaled_lr(base_lr_per_256: float, batch_size: int) -> float:
    """Linear scaling rule: ``base * batch / 256`` (MoCo: 0.03 x 128 / 256 = 0.015 for CEM500K)."""
    return float(base_lr_per_256) * int(batch_size) / 256.0


class MoCoModule(pl.LightningModule):
    """MoCo v2 pretraining of a timm encoder.

    All arguments are plain values (they are stored as hyper-parameters in every checkpoint and
    read back by :func:`cemkit.pretrain.export.export_encoder`).

    Parameters
    ----------
    arch, in_chans, timm_pretrained
        Query encoder: ``timm.create_model(arch, in_chans=in_chans, num_classes=0)``.
    dim, queue_size, momentum, temperature, mlp_hidden, bn_splits, shuffle_bn
        See :class:`cemkit.pretrain.moco.MoCoV2`.
    batch_size
        Global batch (all ranks); sets the learning rate when ``lr`` is ``None``.
    lr
        Learning rate; ``None``: ``base_lr * batch_size / 256``.
    base_lr, sgd_momentum, weight_decay, nesterov
        SGD settings (MoCo: 0.03 per 256 images, 0.9, 1e-4).
    schedule, milestones, gamma, warmup_steps, total_steps
        See :class:`LRSchedule`.
    norms
        ``[mean, std]`` used for normalisation (stored for export).
    corpus_id
        Identifier of the training data (stored for export).
    channels_last
        Run the encoders in channels-last memory format (faster convolutions with AMP on GPU).
    seed
        Seed of the per-step Shuffle-BN permutations.
    collapse_ratio
        Warn when ``embedding_std * sqrt(dim)`` (1 for well spread embeddings) falls below this.
    init
        Where the encoder started (``model.init``), recorded only: :meth:`load_encoder` loads it.
    """

    def __init__(self, arch: str = "resnet50", in_chans: int = 1, timm_pretrained: bool = False, dim: int = 128,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 mlp_hidden: int | None = None, bn_splits: int = 8, shuffle_bn: bool = True, batch_size: int = 128,
                 lr: float | None = None, base_lr: float = 0.03, sgd_momentum: float = 0.9,
                 weight_decay: float = 1e-4, nesterov: bool = False, schedule: str = "step",
                 milestones: Sequence[float] = (0.6, 0.8), gamma: float = 0.1, warmup_steps: int = 0,
                 total_steps: int = 1000, norms: Sequence[float] | None = None, corpus_id: str | None = None,
                 channels_last: bool = False, seed: int = 0, collapse_ratio: float = 0.1, init: str | None = None):
        super().__init__()
        if norms is not None:
            norms = [float(v) for v in norms]
        milestones = [float(m) for m in milestones]
        self.save_hyperparameters()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if bn_splits > 1 and batch_size % bn_splits:
            raise ConfigError(f"moco.bn_splits={bn_splits} must divide the batch size {batch_size}")
        self.schedule = LRSchedule(int(total_steps), schedule, list(milestones), float(gamma), int(warmup_steps))
        encoder = create_encoder(arch, in_chans=in_chans, pretrained=timm_pretrained)
        self.model = MoCoV2(encoder, dim=dim, queue_size=queue_size, momentum=momentum, temperature=temperature,
                            mlp_hidden=mlp_hidden, bn_splits=bn_splits, shuffle_bn=shuffle_bn)
        self.model.shuffle_generator = self._shuffle_generator
        self.lr = float(lr) if lr is not None else scaled_lr(base_lr, batch_size)
        self._collapse_warned = False

    # state-dict keys: "model.encoder_q.*" is the encoder to export

    def load_encoder(self, weights) -> dict[str, Any]:
        """Continue from encoder weights: load them into the query encoder and copy it into the key encoder.

        Parameters
        ----------
        weights
            :class:`~cemkit.models.encoders.EncoderWeights` (or anything
            :func:`~cemkit.models.encoders.read_encoder_weights` reads); every encoder key must match.

        Returns
        -------
        dict
            ``source``, ``layout``, ``arch``, ``loaded`` (tensor count), ``missing`` and ``unexpected`` keys.
        """
        from cemkit.models.encoders import EncoderWeights, load_encoder_weights, read_encoder_weights

        if not isinstance(weights, EncoderWeights):
            weights = read_encoder_weights(weights)
        encoder_q, encoder_k = self.model.encoder_q, self.model.encoder_k
        own, given = set(encoder_q.state_dict()), set(weights.state_dict)
        result = load_encoder_weights(encoder_q, weights, strict=True)
        with torch.no_grad():
            encoder_k.load_state_dict(encoder_q.state_dict())
            for p_k, p_q in zip(self.model.head_k.parameters(), self.model.head_q.parameters()):
                p_k.copy_(p_q)
        return {"source": str(weights.meta.get("source", "")), "layout": weights.meta.get("layout"),
                "arch": weights.arch, "loaded": len(own & given), "missing": list(result.missing_keys),
                "unexpected": list(result.unexpected_keys)}

    @torch.no_grad()
    def fill_queue(self, batches) -> int:
        """Replace the queue by keys of the key encoder: the second view of each two-view batch ``(B, 2, 1, H, W)``.

        Keys are computed as in a training step (Shuffle-BN, all ranks gathered) and written from
        column 0 on; the pointer is left after the newest key, so training replaces the oldest first. Used by continued pretraining (``model.init``) so
        that the queue starts from the loaded encoder. Returns the number of keys written.
        """
        from cemkit.pretrain.moco import concat_all_gather, enqueue

        queue, ptr = self.model.queue, self.model.queue_ptr
        ptr.zero_()
        written = 0
        context = (self.trainer.precision_plugin.forward_context() if self._trainer is not None
                   else contextlib.nullcontext())
        with context:
            for batch in batches:
                im_k = batch[:, 1].to(self.device, non_blocking=True)
                if self.hparams.channels_last:
                    im_k = im_k.contiguous(memory_format=torch.channels_last)
                keys = concat_all_gather(self.model.embed_key(im_k))
                enqueue(queue, ptr, keys)
                written += keys.shape[0]
        return min(written, queue.shape[1])

    def on_train_start(self) -> None:
        """Fill the queue from the loaded encoder (``queue_fill`` set by the command) at the start of a fresh run,
        then apply this run's schedule."""
        batches = getattr(self, "queue_fill", None)
        if batches is not None and self.global_step == 0:
            n = self.fill_queue(batches() if callable(batches) else batches)
            log.info("queue filled with %d keys of the loaded encoder (of %d)", n, self.model.queue.shape[1])
        self.queue_fill = None
        self._apply_run_schedule()

    def _shuffle_generator(self) -> torch.Generator:
        """The Shuffle-BN permutation of a step depends only on (seed, step): resumed runs repeat it."""
        return torch.Generator().manual_seed(mix_seed(self.hparams.seed, 3, self.global_step))

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1 and self.hparams.bn_splits > 1:
            # real Shuffle-BN across processes: each rank's BN already sees its own sub-batch
            set_bn_splits(self.model, 1)
            self.model.bn_splits = 1
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _apply_run_schedule(self) -> None:
        """Apply this run's schedule after a resume (``LambdaLR`` restores the schedule of the checkpoint).

        With an unchanged config this is a no-op; a run extended with a larger ``trainer.max_steps``
        follows the new run length from here on.
        """
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        hp = self.hparams
        fresh = LRSchedule(int(hp.total_steps), hp.schedule, list(hp.milestones), float(hp.gamma), int(hp.warmup_steps))
        current = scheduler.lr_lambdas[0]
        if current != fresh:
            log.info("learning-rate schedule follows this run's length: %s", fresh)
            self.schedule = fresh
            scheduler.lr_lambdas = [fresh]
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * fresh(scheduler.last_epoch)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.model.query_parameters(), lr=self.lr, momentum=self.hparams.sgd_momentum,
                                    weight_decay=self.hparams.weight_decay, nesterov=self.hparams.nesterov)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, Any]:
        im_q, im_k = batch[:, 0], batch[:, 1]
        if self.hparams.channels_last:
            im_q = im_q.contiguous(memory_format=torch.channels_last)
            im_k = im_k.contiguous(memory_format=torch.channels_last)
        logits, q, k = self.model(im_q, im_k)
        loss = infonce_loss(logits)
        with torch.no_grad():
            acc = contrastive_accuracy(logits)
            spread = embedding_std(q)
            ratio = spread * math.sqrt(q.shape[1])
        bs = im_q.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc_top1", acc, prog_bar=True, batch_size=bs)
        self.log("train/embedding_std", spread, batch_size=bs)
        self.log("train/embedding_std_ratio", ratio, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"] if self._trainer is not None else self.lr,
                 batch_size=bs)
        self._check_collapse(float(ratio))
        return {"loss": loss, "keys": k.detach()}

    def _check_collapse(self, ratio: float) -> None:
        if self._collapse_warned or self.global_step < max(10, self.hparams.warmup_steps):
            return
        if ratio < self.hparams.collapse_ratio:
            self._collapse_warned = True
            log.warning("embedding collapse suspected at step %d: per-dimension std x sqrt(dim) = %.3f (< %.2f; "
                        "1 means well spread); lower the learning rate or check the augmentations",
                        self.global_step, ratio, self.hparams.collapse_ratio)
