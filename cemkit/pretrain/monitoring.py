"""Run monitoring beyond scalar metrics: a grid of augmented view pairs logged once at the start."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from cemkit.tracking import log_images

log = logging.getLogger(__name__)


def view_pair_images(dataset, transform, count: int) -> list[np.ndarray]:
    """The first ``count`` samples of the stream as uint8 images ``[view 1 | gap | view 2]``."""
    images = []
    for position in range(min(count, len(dataset))):
        views = transform.denormalise(dataset[position])  # (2, 1, H, W) uint8
        gap = np.full((views.shape[2], 4), 255, np.uint8)
        images.append(np.concatenate([views[0, 0], gap, views[1, 0]], axis=1))
    return images


class ViewPairGrid(pl.Callback):
    """Log ``count`` augmented view pairs when a run starts (not when it resumes).

    W&B image when the logger is W&B, else ``fallback_dir/pretrain_view_pairs.png``.
    """

    def __init__(self, count: int, fallback_dir: str | Path):
        self.count = int(count)
        self.fallback_dir = Path(fallback_dir)
        self.written: Path | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.count <= 0 or trainer.global_step > 0 or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        images = view_pair_images(dm.dataset, dm.transform, self.count)
        captions = [f"sample {i}: view 1 | view 2" for i in range(len(images))]
        self.written = log_images(trainer.logger, "pretrain/view_pairs", images, fallback_dir=self.fallback_dir,
                                  captions=captions)
        if self.written is not None:
            log.info("augmented view pairs: %s", self.written)


class QueueConsistencyCheck(pl.Callback):
    """At the end of training, check that every process holds the same key queue and pointer.

    The keys of all ranks are gathered before they enter the queue, so the queues must agree
    bit for bit; a difference means the processes saw different collectives and the run is wrong.
    Costs one all-gather of two numbers.
    """

    def __init__(self) -> None:
        self.checksum: str | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import hashlib

        import torch

        model = pl_module.model
        digest = hashlib.sha256(model.queue.detach().cpu().contiguous().numpy().tobytes()).digest()
        local = torch.tensor([int.from_bytes(digest[:7], "little"), int(model.queue_ptr.item())],
                             dtype=torch.long, device=pl_module.device)
        gathered = trainer.strategy.all_gather(local)
        if gathered.ndim == 1:
            gathered = gathered[None]
        self.checksum = digest.hex()[:14]
        if not bool(torch.all(gathered == gathered[0:1])):
            raise RuntimeError(f"MoCo key queues differ between processes: {gathered.tolist()}")
        if trainer.world_size > 1:
            log.info("key queue identical on all %d processes (sha256 %s, pointer %d)", trainer.world_size,
                     self.checksum, int(local[1]))
