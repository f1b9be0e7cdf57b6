"""Experiment tracking and Lightning trainer construction from the ``logger/`` and ``trainer/`` groups.

Loggers: ``csv`` (default, no account), ``tensorboard``, ``wandb`` (``offline=true`` or
``WANDB_MODE=offline|disabled`` needs no login), ``none``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError

log = logging.getLogger(__name__)


def build_logger(logger_cfg: DictConfig | dict | None):
    """Instantiate the Lightning logger described by a ``logger/`` config, or ``None``.

    Parameters
    ----------
    logger_cfg
        A config with ``_target_`` (e.g. ``pytorch_lightning.loggers.CSVLogger``); ``None`` or a
        ``_target_`` of ``None`` disables logging.
    """
    if logger_cfg is None:
        return None
    cfg = OmegaConf.to_container(logger_cfg, resolve=True) if isinstance(logger_cfg, DictConfig) else dict(logger_cfg)
    if not cfg or cfg.get("_target_") is None:
        return None
    target = cfg["_target_"]
    if target.endswith("WandbLogger"):
        if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
            cfg["offline"] = True
        Path(cfg.get("save_dir") or ".").mkdir(parents=True, exist_ok=True)
    from hydra.utils import instantiate

    return instantiate(cfg)


def build_trainer(trainer_cfg: DictConfig | dict, *, logger=None, callbacks: Sequence[Any] = (), default_root_dir=None, **overrides):
    """Create a :class:`pytorch_lightning.Trainer` from a ``trainer/`` config plus overrides.

    ``precision: auto`` becomes the precision that is fast on the device the trainer runs on
    (:func:`cemkit.precision.trainer_precision`, which logs the choice).
    """
    import pytorch_lightning as pl

    from cemkit.precision import trainer_precision

    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else dict(trainer_cfg)
    kwargs.update(overrides)
    if "precision" in kwargs:
        kwargs["precision"] = trainer_precision(kwargs["precision"], kwargs.get("accelerator", "auto"))
    trainer = pl.Trainer(logger=logger if logger is not None else False, callbacks=list(callbacks),
                         default_root_dir=default_root_dir, **kwargs)
    if type(trainer.strategy.launcher).__name__ == "_SubprocessScriptLauncher":
        from cemkit.ddp_relaunch import prepare_ddp_relaunch

        prepare_ddp_relaunch()  # DDP over processes: the other ranks re-run the same `cemkit` command
    return trainer


def refuse_stage_trainer_options(trainer_cfg: DictConfig | dict, fixed: dict[str, Any], stage: str, why: str) -> None:
    """Refuse ``trainer.*`` values that a stage sets itself instead of overriding them in silence.

    Parameters
    ----------
    trainer_cfg
        The composed ``trainer`` node.
    fixed
        ``{option: the value the stage needs}``; an option missing from ``trainer_cfg`` counts as that value.
    stage, why
        Named in the error: the stage and the reason it controls these options.

    Raises
    ------
    ConfigError
        Naming every option with another value and the value the stage needs.
    """
    wrong = [f"trainer.{key}={trainer_cfg[key]!r} ({stage} needs {value!r})"
             for key, value in fixed.items() if key in trainer_cfg and trainer_cfg[key] != value]
    if wrong:
        raise ConfigError(f"{stage} sets these trainer options itself, since {why}: " + "; ".join(wrong)
                          + ". Remove the override.")


def csv_metrics_path(logger) -> Path | None:
    """The ``metrics.csv`` a Lightning ``CSVLogger`` writes, or ``None`` for another logger (or none)."""
    from pytorch_lightning.loggers import CSVLogger

    return Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None


def is_wandb(logger) -> bool:
    return type(logger).__name__ == "WandbLogger"


def log_images(logger, key: str, images: Sequence[np.ndarray], *, fallback_dir: str | Path,
               captions: Sequence[str] | None = None, masks: Sequence[dict[str, np.ndarray]] | None = None,
               class_labels: dict[int, str] | None = None, step: int | None = None) -> Path | None:
    """Log images as W&B images (with masks) when the logger is W&B, else save one PNG grid.

    Parameters
    ----------
    images
        2D uint8 (or float in [0, 1]) arrays.
    masks
        Optional, per image, ``{name: 2D int array}`` (e.g. ``{"ground_truth": y, "prediction": p}``);
        in the PNG fallback each mask is drawn as an extra panel next to its image.

    Returns
    -------
    pathlib.Path or None
        The PNG written in the fallback case.
    """
    if is_wandb(logger):
        kwargs: dict[str, Any] = {}
        if captions is not None:
            kwargs["caption"] = list(captions)
        if masks is not None:
            labels = class_labels or {0: "background", 1: "foreground"}
            kwargs["masks"] = [{k: {"mask_data": np.asarray(v).astype(np.int32), "class_labels": labels}
                                for k, v in m.items()} for m in masks]
        logger.log_image(key=key, images=[np.asarray(i) for i in images], step=step, **kwargs)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cemkit.io.atomic import atomic_path

    cols = 1 + (len(masks[0]) if masks else 0)
    rows = len(images)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for r, img in enumerate(images):
        axes[r, 0].imshow(np.asarray(img), cmap="gray")
        axes[r, 0].set_title(captions[r] if captions else "", fontsize=7)
        if masks:
            for c, (name, m) in enumerate(masks[r].items(), start=1):
                axes[r, c].imshow(np.asarray(m), cmap="viridis", interpolation="nearest")
                axes[r, c].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    out_dir = Path(fallback_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = key.replace("/", "_") + (f"_step{step:06d}" if step is not None else "") + ".png"
    path = out_dir / name
    with atomic_path(path, keep_suffix=True) as tmp:  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
