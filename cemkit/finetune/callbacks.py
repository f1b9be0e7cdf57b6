"""Lightning callbacks of ``cemkit finetune``: when the resume point (``last.ckpt``) is written; which rank failed."""

from __future__ import annotations

import logging

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


def resume_point_due(step: int, val_every: int, every: int, max_steps: int) -> bool:
    """Whether the validation at optimizer ``step`` writes ``last.ckpt``.

    Parameters
    ----------
    step : int
        Optimizer steps done (a multiple of ``val_every``).
    val_every : int
        Steps between validations.
    every : int
        Validations between two resume points (1 = after every validation).
    max_steps : int
        Last step of the run: its validation always writes one (the final model and state).

    Examples
    --------
    >>> [s for s in (20, 40, 60, 80, 100) if resume_point_due(s, 20, 2, 100)]
    [40, 80, 100]
    """
    if val_every < 1 or every < 1:
        raise ValueError(f"val_every and every must be >= 1, got {val_every} and {every}")
    return step >= max_steps or (step // val_every) % every == 0


class ResumePointCheckpoint(ModelCheckpoint):
    """``last.ckpt`` (weights, optimizer, schedule, history) after every ``every``-th validation and the last.

    A resume point of a resnet18 model with its AdamW state is about 200 MB; writing it after every
    validation of a short CPU run costs about a second each time. A run interrupted between two
    resume points repeats the steps since the last one and still ends bitwise the same.
    """

    def __init__(self, val_every: int, every: int, max_steps: int, **kwargs):
        super().__init__(**kwargs)
        resume_point_due(max_steps, val_every, every, max_steps)  # checks the settings
        self.val_every, self.every, self.max_steps = int(val_every), int(every), int(max_steps)

    def on_validation_end(self, trainer, pl_module) -> None:
        if resume_point_due(trainer.global_step, self.val_every, self.every, self.max_steps):
            super().on_validation_end(trainer, pl_module)


class RankFailureReport(Callback):
    """Under DDP, name the rank that failed and why, in its log (``rank 1 of 2 failed: ValueError: ...``).

    The launcher then stops the other ranks instead of leaving them waiting in the next gradient
    all-reduce: Lightning's (``trainer.devices=N``) kills every process when one exits with an error,
    torchrun's agent does the same and reports the failed rank.
    """

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size > 1:
            log.error("rank %d of %d failed: %s: %s", trainer.global_rank, trainer.world_size,
                      type(exception).__name__, exception)
