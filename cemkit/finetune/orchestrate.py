"""The orchestration of ``cemkit finetune``: which models to train (1/3/5fm), from what start (``model.init``,
the previous model with ``model.chain_frames``, or a shared 1fm trunk with ``model.trunk``), and with
which step budget; each model is one :func:`cemkit.finetune.fit.train_one`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cemkit.errors import ConfigError, InputError
from cemkit.finetune.fit import STAGE_TRAINER_OPTIONS, train_one
from cemkit.finetune.initialization import init_pixel_size
from cemkit.finetune.inputs import load_data

log = logging.getLogger(__name__)


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


def check_trainer_options(trainer_cfg: DictConfig) -> None:
    """Refuse a ``trainer.*`` value that finetune must control (see :data:`STAGE_TRAINER_OPTIONS`)."""
    from cemkit.tracking import refuse_stage_trainer_options

    refuse_stage_trainer_options(trainer_cfg, STAGE_TRAINER_OPTIONS, "finetune",
                                 "a run is counted in optimizer steps (trainer.max_steps or trainer.max_time) and "
                                 "validated every val.every steps")


def run_finetune(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[int, dict[str, Any]]:
    """Train every model ``model.frames`` asks for into ``output/{k}fm``; returns ``{frames: result}``.

    ``callbacks``: extra Lightning callbacks for every model's trainer (a GUI's progress and Cancel).

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
    data = load_data(cfg.data, max(frames), model_nm=init_pixel_size(cfg.model.init, min(frames)))
    trunk: str | None = None
    if trunk_steps:
        log.info("training the shared 1fm trunk for %d steps into %s", trunk_steps, out / TRUNK_FOLDER)
        train_one(with_max_steps(cfg, trunk_steps), 1, data, out / TRUNK_FOLDER, callbacks=callbacks)
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
        results[f] = train_one(run_cfg, f, data, out / f"{f}fm", init_spec=init_spec, callbacks=callbacks)
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
