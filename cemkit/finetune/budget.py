"""A wall-clock budget for one finetune run (``trainer.max_time``) that shapes the learning-rate schedule.

Lightning's own ``max_time`` stops a run wherever the clock runs out: in the middle of a one-cycle
warm-up, before the last validation. ``cemkit finetune`` instead turns the budget into a number of
optimizer steps: it times the first steps, plans as many steps as fit with a validation every
``val.every`` steps and one at the last step (each with its checkpoint writes), and sets the
schedule's length to them, so that the learning rate anneals to its end when the time ends. After
every validation the plan is redone with the measured times of the last block (the first steps are
slower; a loaded machine slows down).

The plan is part of the resume point: an interrupted budgeted run continues its schedule and counts
the time it had already spent.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pytorch_lightning.callbacks import Callback

from cemkit.errors import ConfigError

log = logging.getLogger(__name__)

PROBE_STEPS = 6      # optimizer steps timed before the first plan (the first one is not counted)
END_RESERVE_S = 5.0  # kept free for the final checkpoint and result files
SHORT_PLAN = 1 / 3   # a plan below this fraction of the preset's tuned steps (budget.tuned_steps) is warned about


def parse_duration(value: Any) -> float | None:
    """``trainer.max_time`` in seconds.

    Parameters
    ----------
    value
        ``None``; Lightning's ``"DD:HH:MM:SS"``; ``"HH:MM:SS"`` / ``"MM:SS"``; a number of
        seconds; a mapping like ``{minutes: 15}`` (keys of :class:`datetime.timedelta`); a
        :class:`datetime.timedelta`.

    Returns
    -------
    float or None
        Seconds (``None`` for no budget).

    Raises
    ------
    ConfigError
        Unreadable or not positive.

    Examples
    --------
    >>> parse_duration("00:00:15:00"), parse_duration({"minutes": 2}), parse_duration("1:30")
    (900.0, 120.0, 90.0)
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif hasattr(value, "items"):
            seconds = timedelta(**{str(k): float(v) for k, v in dict(value).items()}).total_seconds()
        else:
            parts = [float(p) for p in str(value).split(":")]
            if not 1 <= len(parts) <= 4:
                raise ValueError(value)
            seconds = sum(p * f for p, f in zip(reversed(parts), (1, 60, 3600, 86400)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trainer.max_time must be DD:HH:MM:SS, seconds or a mapping like {{minutes: 15}}, "
                          f"got {value!r}") from exc
    if not seconds > 0:
        raise ConfigError(f"trainer.max_time must be positive, got {value!r}")
    return seconds


def validations_between(step: int, end: int, val_every: int) -> int:
    """Validations a run makes after ``step`` up to ``end``: one every ``val_every`` steps and one at ``end``.

    Examples
    --------
    >>> validations_between(0, 250, 100), validations_between(100, 300, 100), validations_between(100, 100, 100)
    (3, 2, 0)
    """
    if end <= step:
        return 0
    return end // val_every - step // val_every + (1 if end % val_every else 0)


def planned_steps(step: int, remaining_s: float, step_s: float, val_s: float, val_every: int) -> int:
    """The last step of a run that has ``remaining_s`` seconds left after ``step`` steps.

    Parameters
    ----------
    step
        Optimizer steps done.
    remaining_s
        Seconds left in the budget.
    step_s, val_s
        Seconds of one optimizer step and of one validation (with its checkpoint writes).
    val_every
        Steps between validations; the run also validates at its last step.

    Returns
    -------
    int
        The largest ``end >= step`` with ``(end - step) * step_s + validations * val_s <= remaining_s``
        (:func:`validations_between`); ``step`` when not even one step and a validation fit.

    Examples
    --------
    >>> planned_steps(0, remaining_s=100.0, step_s=1.0, val_s=5.0, val_every=50)
    90
    >>> planned_steps(100, remaining_s=5.0, step_s=1.0, val_s=5.0, val_every=50)
    100
    """
    if val_every < 1 or not step_s > 0 or val_s < 0:
        raise ValueError(f"need val_every >= 1, step_s > 0 and val_s >= 0, got {val_every}, {step_s}, {val_s}")
    end = step + max(0, math.floor(remaining_s / step_s))
    while end > step and (end - step) * step_s + validations_between(step, end, val_every) * val_s > remaining_s:
        end -= 1
    return end


def short_plan_warning(planned: int, tuned_steps: int | None, step_s: float, precision: str, machine: str,
                       emulated_bf16: bool) -> str | None:
    """The warning for a plan of ``planned`` steps far below the ``tuned_steps`` its preset was tuned at
    (below :data:`SHORT_PLAN` of them), naming the cause and what to do; ``None`` for a plan that is not.

    Parameters
    ----------
    planned, tuned_steps
        The planned steps and the preset's ``budget.tuned_steps`` (``None``: no check).
    step_s
        Measured seconds per optimizer step.
    precision
        The precision the trainer runs at.
    machine
        The machine line (:func:`cemkit.hardware.describe_machine`: the CPU, its cores and units).
    emulated_bf16
        Whether ``precision`` is bf16 on a CPU without bf16 units (:func:`cemkit.precision.emulates_bf16`).

    Examples
    --------
    >>> short_plan_warning(400, 1146, 0.7, "bf16-mixed", "CPU: X, 2 cores", False) is None
    True
    """
    if tuned_steps is None or planned >= SHORT_PLAN * tuned_steps:
        return None
    if emulated_bf16:
        todo = ("bf16 autocast is emulated on this CPU: set trainer.precision=auto (float32 here) or 32-true "
                "(12x faster steps on such a CPU in issue 27)")
    else:
        todo = ("raise trainer.max_time, run on more cores or a GPU (+experiment=gpu), or expect a lower accuracy "
                "than the preset's")
    return (f"time budget plans {planned} steps, below a third of the {tuned_steps} this preset was tuned at "
            f"(budget.tuned_steps): {step_s:.2f} s a step at precision {precision} on {machine}. {todo}")


def retarget_schedule(scheduler: Any, total: int) -> None:
    """Give a running ``OneCycleLR`` or :class:`PolyLambda` schedule a new length ``total`` (in steps)."""
    import torch

    total = max(2, int(total))
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        # the phase ends as OneCycleLR.__init__ sets them (two-phase, the default three_phase=False)
        phases = scheduler._schedule_phases
        if len(phases) != 2:
            raise ValueError("a time budget supports the two-phase OneCycleLR only")
        pct = (float(phases[0]["end_step"]) + 1) / scheduler.total_steps
        scheduler.total_steps = total
        phases[0]["end_step"] = float(pct * total) - 1
        phases[1]["end_step"] = total - 1
    elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for fn in scheduler.lr_lambdas:
            if isinstance(fn, PolyLambda):
                fn.total_steps = total


class PolyLambda:
    """``step -> (1 - step / total_steps) ** power`` (CDeep3M's ``poly`` policy, power 0.8 there);
    ``total_steps`` can be changed while the schedule runs (see :func:`retarget_schedule`)."""

    def __init__(self, total_steps: int, power: float = 0.9):
        self.total_steps, self.power = int(total_steps), float(power)

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / max(1, self.total_steps)) ** self.power


def _agreed(trainer, total: int) -> int:
    """Rank 0's plan on every rank: under DDP each rank times its own steps, and ranks that planned
    different last steps would leave one waiting for the others' gradients."""
    return int(trainer.strategy.broadcast(int(total), src=0))


class TimeBudget(Callback):
    """Plan a run's steps from ``seconds`` of wall time; see the module docstring.

    The plan (:func:`planned_steps`) is made after the first ``PROBE_STEPS`` steps and redone at the
    end of every validation from the measured time of a step (over the last block) and of a
    validation with its checkpoint writes. The run's last step gets a validation of its own (a
    stop requested by the callback makes Lightning validate), so the plan needs no whole blocks.

    Parameters
    ----------
    seconds
        The budget of this run, counted from ``started``.
    val_every
        Steps between validations.
    started
        ``time.monotonic()`` when the run began (model building and data preparation count).
    val_fraction
        Estimated time of one validation, as a fraction of ``val_every`` training steps, until the
        first validation is measured.
    followers
        Objects with a ``max_steps`` attribute kept equal to the plan (the resume-point callback).
    max_steps
        Upper bound of the plan (``trainer.max_steps``): the run ends at whichever comes first.
    tuned_steps
        The steps the preset was tuned at (``budget.tuned_steps``): a first plan far below it is warned
        about (:func:`short_plan_warning`).
    """

    def __init__(self, seconds: float, val_every: int, started: float | None = None, val_fraction: float = 0.05,
                 followers: Sequence[Any] = (), max_steps: int | None = None, tuned_steps: int | None = None):
        self.seconds, self.val_every = float(seconds), int(val_every)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.tuned_steps = None if tuned_steps is None else int(tuned_steps)
        self.started = time.monotonic() if started is None else float(started)
        self.val_fraction, self.followers = float(val_fraction), list(followers)
        self.spent_before = 0.0            # seconds spent by the interrupted run this one resumes
        self.total: int | None = None      # the planned last step
        self.step_s: float | None = None   # seconds per optimizer step (probe, then the last block)
        self.val_s: float | None = None    # seconds per validation, checkpoint writes included
        self._step_times: list[float] = []
        self._batch_start: float | None = None
        self._block: tuple[float, int] | None = None  # (time, step) where the current training block began
        self._val_start: float | None = None
        self._val_end: float | None = None
        self._write_s = 0.0                # checkpoint writes after a validation (measured)

    # ------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed() - END_RESERVE_S

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "total": self.total, "step_s": self.step_s, "val_s": self.val_s,
                "spent": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.step_s, self.val_s = state.get("total"), state.get("step_s"), state.get("val_s")
        self.spent_before = float(state.get("spent", 0.0))
        self.started = time.monotonic()

    def _apply(self, trainer, pl_module, total: int) -> None:
        self.total = int(total) if self.max_steps is None else min(int(total), self.max_steps)
        trainer.fit_loop.epoch_loop.max_steps = self.total
        pl_module.total_steps = self.total
        for follower in self.followers:
            follower.max_steps = self.total
        for config in trainer.lr_scheduler_configs:
            retarget_schedule(config.scheduler, self.total)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        if self.total is not None:  # resumed: keep the plan of the interrupted run
            self._apply(trainer, pl_module, self.total)
        self._block = (time.monotonic(), trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.monotonic()
        if self._val_end is not None:  # the first batch after a validation: its checkpoint writes are done
            self._write_s = now - self._val_end
            self._val_end = None
            self._block = (now, trainer.global_step)
        self._batch_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step_s is None and self._batch_start is not None:
            self._step_times.append(time.monotonic() - self._batch_start)
            if len(self._step_times) >= PROBE_STEPS:
                self._first_plan(trainer, pl_module)
        if self.total is not None and trainer.global_step >= self.total:
            trainer.should_stop = True  # Lightning validates once more before it stops

    def _first_plan(self, trainer, pl_module) -> None:
        self.step_s = statistics.median(self._step_times[1:])
        val_s = self.step_s * self.val_every * self.val_fraction
        step, remaining = trainer.global_step, self.remaining()
        total = planned_steps(step, remaining, self.step_s, val_s, self.val_every)
        total = _agreed(trainer, total)
        if total <= step:
            raise ConfigError(
                f"trainer.max_time={self.seconds:g} s is too short: a step takes {self.step_s:.2f} s and a validation "
                f"about {val_s:.0f} s (val.every={self.val_every}), and {max(0.0, remaining):.0f} s are left after "
                f"{step} steps; raise trainer.max_time")
        log.info("time budget %.0f s: %.2f s a step -> %d steps", self.seconds, self.step_s, total)
        self._check_plan(trainer, total)
        self._apply(trainer, pl_module, total)

    def _check_plan(self, trainer, total: int) -> None:
        from pytorch_lightning.accelerators import CPUAccelerator

        from cemkit.hardware import cpu_features, describe_machine
        from cemkit.precision import emulates_bf16

        planned = total if self.max_steps is None else min(total, self.max_steps)
        precision = str(trainer.precision)
        device = "cpu" if isinstance(trainer.accelerator, CPUAccelerator) else "other"
        warning = short_plan_warning(planned, self.tuned_steps, self.step_s, precision, describe_machine(),
                                     emulates_bf16(precision, device, cpu_features()))
        if warning is not None:
            log.warning(warning)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._block is None:
            return
        now = time.monotonic()
        t0, s0 = self._block
        if trainer.global_step > s0:
            self.step_s = (now - t0) / (trainer.global_step - s0)
        self._val_start = now

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._val_start is None or self.step_s is None:
            return
        now = time.monotonic()
        self.val_s = now - self._val_start + self._write_s
        self._val_start, self._val_end = None, now
        step = trainer.global_step
        if self.total is not None and step >= self.total:
            return  # the run's last validation: it ends here as planned
        total = planned_steps(step, self.remaining(), self.step_s, self.val_s, self.val_every)
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        total = _agreed(trainer, total)
        if total != self.total:
            log.info("time budget: %.0f s left, %.2f s a step, %.1f s a validation -> ending at step %d instead of %s",
                     self.remaining(), self.step_s, self.val_s, total, self.total)
            self._apply(trainer, pl_module, total)
