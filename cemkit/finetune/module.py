"""Thin LightningModule around a :class:`~cemkit.models.deepem3d.DeepEM3DSegmenter`.

Logs ``train/loss`` (+ each loss term) every step and ``val/loss``, ``val/iou`` (binary: foreground
IoU; multi-class: mean IoU over the foreground classes), ``val/dice``, ``val/precision``,
``val/recall`` after each validation, with pooled counts from :mod:`cemkit.metrics`. Validation
overlays (image, label, prediction) go to W&B or PNG files via :func:`cemkit.tracking.log_images`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from cemkit.finetune.budget import PolyLambda
from cemkit.models.checkpoint import segmenter_entry
from cemkit.finetune.losses import IGNORE_INDEX, SegmentationLoss

log = logging.getLogger(__name__)


def labelled_counts(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """int64 ``(tp, fp, fn, tn)`` of a binary prediction over the pixels whose target is labelled
    (not :data:`~cemkit.finetune.losses.IGNORE_INDEX`); foreground is a non-zero target.

    Examples
    --------
    >>> labelled_counts(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 255])).tolist()
    [1, 1, 1, 1]
    """
    from cemkit.metrics import binary_counts

    labelled = target != IGNORE_INDEX
    if not labelled.all():
        pred, target = pred[labelled], target[labelled]
    return np.asarray(binary_counts(pred, target > 0), dtype=np.int64)


class SegmentationModule(pl.LightningModule):
    """Training / validation of a segmenter.

    Parameters
    ----------
    model
        The segmenter (frozen parts already frozen).
    loss
        A :class:`SegmentationLoss`.
    meta
        Plain dict stored in every checkpoint (``frames``, ``num_classes``, ``norms``, ``arch``, ...).
    optim
        Plain dict: ``encoder_lr``, ``decoder_lr``, ``weight_decay``, ``schedule`` (onecycle | poly |
        constant), ``poly_power``, ``pct_start``.
    total_steps
        Optimizer steps of this run (the schedule's length).
    hparams
        Plain dict of the run's settings, saved as ``hyper_parameters``.
    overlays
        Number of validation items drawn as overlays per validation (0 = none).
    overlay_dir
        Where PNG overlays go when the logger is not W&B.
    """

    def __init__(self, model, loss: SegmentationLoss, meta: dict[str, Any], optim: dict[str, Any], total_steps: int,
                 hparams: dict[str, Any] | None = None, overlays: int = 2, overlay_dir: str | Path | None = None):
        super().__init__()
        self.model, self.loss_fn, self.meta, self.optim_cfg = model, loss, dict(meta), dict(optim)
        self.total_steps = int(total_steps)
        self.overlays, self.overlay_dir = int(overlays), overlay_dir
        self.save_hyperparameters(hparams or {}, logger=False)
        self.history: list[dict[str, float]] = []
        self._reset_val()

    # -------------------------------------------------------------------------------- steps
    def on_fit_start(self) -> None:
        # NHWC: oneDNN's convolutions (and bf16 autocast's) run 1.2-1.5x faster on CPU; see docs/results.md
        self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.contiguous(memory_format=torch.channels_last)
        logits, taps = self.model.forward_with_taps(x)
        # the loss in float32 under bf16 autocast
        taps = [t.float() for t in taps] if self.loss_fn.deep_supervision > 0 else None
        loss, parts = self.loss_fn(logits.float(), y, taps)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        for k, v in parts.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def _reset_val(self) -> None:
        self._val_loss, self._val_n = 0.0, 0
        self._counts = np.zeros(4, dtype=np.int64)  # tp, fp, fn, tn
        c = self.model.num_classes
        self._confusion = None if self.model.out_channels == 1 else np.zeros((c, c), dtype=np.int64)
        self._overlay_items: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_validation_epoch_start(self) -> None:
        self._reset_val()

    def validation_step(self, batch, batch_idx):
        """Add a batch of ``(x, y, index, counted)`` items (:class:`~cemkit.finetune.data.SliceDataset`) to the
        counts; only the ``counted`` box of each item is counted, padding items (empty box) not at all, and
        unlabelled pixels (:data:`~cemkit.finetune.losses.IGNORE_INDEX`) nowhere."""
        from cemkit.metrics import confusion_matrix

        x, y, _, counted = batch
        logits = self.model(x.contiguous(memory_format=torch.channels_last)).float()
        boxes = counted.cpu().numpy()
        real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not real.any():
            return
        keep = torch.from_numpy(real).to(logits.device)
        loss, _ = self.loss_fn(logits, y) if real.all() else self.loss_fn(logits[keep], y[keep])
        self._val_loss += float(loss) * int(real.sum())
        self._val_n += int(real.sum())
        target = y.cpu().numpy()
        pred = (logits[:, 0] > 0).cpu().numpy() if self.model.out_channels == 1 else logits.argmax(1).cpu().numpy()
        for i in np.flatnonzero(real):
            y0, x0, y1, x1 = (int(v) for v in boxes[i])
            p, t = pred[i, y0:y1, x0:x1], target[i, y0:y1, x0:x1]
            if self.model.out_channels == 1:
                self._counts += labelled_counts(p, t)
            else:
                self._confusion += confusion_matrix(p, t, self.model.num_classes, ignore_index=IGNORE_INDEX)
        if len(self._overlay_items) < self.overlays:
            centre = x.shape[1] // 2
            for i in np.flatnonzero(real)[: self.overlays - len(self._overlay_items)]:
                img = x[i, centre].float().cpu().numpy()
                img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
                # unlabelled pixels drawn as one more class (C), not as 255, which would flatten the colour scale
                shown = np.where(target[i] == IGNORE_INDEX, self.model.num_classes, target[i])
                self._overlay_items.append(((img * 255).astype(np.uint8), shown, pred[i].astype(np.int64)))

    def _pool_over_ranks(self) -> None:
        """Sum the loss, item count and pixel counts of every rank (each item is validated by one rank), so
        that every rank computes the metrics of the whole validation set; a no-op in a single process."""
        if self.trainer.world_size <= 1:
            return
        parts = [np.array([self._val_loss, self._val_n], dtype=np.float64),
                 self._counts.astype(np.float64) if self._confusion is None else self._confusion.ravel().astype(np.float64)]
        local = torch.from_numpy(np.concatenate(parts)).to(self.device)
        total = self.trainer.strategy.reduce(local, reduce_op="sum").cpu().numpy()  # exact below 2**53 pixels
        self._val_loss, self._val_n = float(total[0]), int(round(total[1]))
        counts = np.rint(total[2:]).astype(np.int64)
        if self._confusion is None:
            self._counts = counts
        else:
            self._confusion = counts.reshape(self._confusion.shape)

    def validation_metrics(self) -> dict[str, float]:
        """Metrics of the validation run that just finished."""
        from cemkit.metrics import binary_metrics_from_counts, iou_per_class

        out: dict[str, float] = {"loss": self._val_loss / max(1, self._val_n)}
        if self.model.out_channels == 1:
            m = binary_metrics_from_counts(self._counts)
            out.update({k: float(m[k]) for k in ("iou", "dice", "precision", "recall", "accuracy")})
        elif self._confusion is not None:
            ious = iou_per_class(self._confusion)[1:]
            ious = ious[~np.isnan(ious)]
            out["iou"] = float(ious.mean()) if ious.size else float("nan")
            out["accuracy"] = float(np.trace(self._confusion) / max(1, self._confusion.sum()))
        return out

    def on_validation_epoch_end(self) -> None:
        self._pool_over_ranks()
        if self._val_n == 0:
            return
        metrics = self.validation_metrics()
        for k, v in metrics.items():
            # pooled: the same value on every rank (sync_dist averages equal values, and keeps Lightning quiet)
            self.log(f"val/{k}", v, prog_bar=k == "iou", sync_dist=True)
        if not self.trainer.sanity_checking:
            self.history.append({"step": int(self.global_step), **metrics})
            if self.trainer.is_global_zero:
                log.info("step %d: val/iou %.4f val/loss %.4f", self.global_step, metrics.get("iou", math.nan),
                         metrics["loss"])
                self._log_overlays()

    def _log_overlays(self) -> None:
        if not self._overlay_items or self.overlay_dir is None:
            return
        from cemkit.tracking import log_images

        try:
            log_images(self.logger, "val/overlay", [i for i, _, _ in self._overlay_items],
                       fallback_dir=self.overlay_dir,
                       masks=[{"ground_truth": y, "prediction": p} for _, y, p in self._overlay_items],
                       step=int(self.global_step))
        except Exception as exc:  # noqa: BLE001 - overlays are a convenience, never fail training
            log.warning("could not log validation overlays: %s", exc)

    # -------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        c = self.optim_cfg
        enc, dec = self.model.parameter_groups()
        groups = []
        if enc and float(c["encoder_lr"]) > 0:
            groups.append({"params": enc, "lr": float(c["encoder_lr"]), "name": "encoder"})
        elif enc:
            for p in enc:
                p.requires_grad_(False)
        groups.append({"params": dec, "lr": float(c["decoder_lr"]), "name": "decoder"})
        # the fused kernel does AdamW's update in one pass: 12 instead of 41-52 ms per step for resnet18 on one CPU core
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        opt = torch.optim.AdamW(groups, weight_decay=float(c["weight_decay"]), fused=fused)
        schedule = str(c["schedule"]).lower()
        if schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[g["lr"] for g in groups], total_steps=max(2, self.total_steps),
                pct_start=float(c["pct_start"]))
        elif schedule == "poly":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, PolyLambda(self.total_steps, float(c["poly_power"])))
        elif schedule == "constant":
            return opt
        else:
            raise ValueError(f"unknown schedule {schedule!r} (onecycle, poly, constant)")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cemkit"] = segmenter_entry(self.model, self.meta)
        checkpoint["cemkit_history"] = [dict(h) for h in self.history]  # plain floats: weights_only-safe

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed run keeps the validation history of the steps before the interruption
        self.history = [dict(h) for h in checkpoint.get("cemkit_history", [])]
