"""Checkpointing of pretraining runs: ``last.ckpt`` every N steps and at the end of the run."""

from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends between two periodic saves.

    Lightning's own ``on_train_end`` only saves when no ``last.ckpt`` was written during the run, so a
    run of 1000 steps saved every 300 would otherwise end with the checkpoint of step 900.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step
        else:
            super().on_train_end(trainer, pl_module)
