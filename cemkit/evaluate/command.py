"""``cemkit evaluate prediction=PATH labels=PATH``: score a prediction, print a table, save JSON."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError
from cemkit.evaluate.evaluation import Settings, evaluate
from cemkit.evaluate.report import format_table, write_json
from cemkit.io.predictions import open_prediction
from cemkit.io import open_volume

logger = logging.getLogger(__name__)


def settings_from_config(cfg: DictConfig) -> Settings:
    """The evaluation options of ``conf/evaluate.yaml`` as :class:`Settings`."""
    sweep = cfg.sweep
    if sweep is not None:
        sweep = OmegaConf.to_object(sweep) if OmegaConf.is_config(sweep) else sweep
        if isinstance(sweep, (int, float)):
            sweep = [sweep]
        if not isinstance(sweep, (list, tuple)):
            raise ConfigError(f"sweep must be null or a list of thresholds, e.g. [0.3,0.5,0.7], got {sweep!r}")
        sweep = [float(t) for t in sweep]
    settings = Settings(
        threshold=float(cfg.threshold),
        sweep=sweep,
        num_classes=int(cfg.num_classes),
        instance_metrics=bool(cfg.instance_metrics),
        iou_threshold=float(cfg.iou_threshold),
        border_thinning=bool(cfg.border_thinning),
        connectivity=int(cfg.connectivity),
        per_image=bool(cfg.per_image),
        ignore_value=_ignore_value(cfg.ignore_value),
    )
    settings.check()
    return settings


def _ignore_value(value) -> int | None:
    if value is None:
        return None
    try:
        return int(value) if float(value) == int(value) else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"ignore_value must be null or a label value (a whole number), got {value!r}") from None


def run(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.prediction`` against ``cfg.labels``; write ``${output}/metrics.json``.

    Returns the metrics dict (also printed as a table).
    """
    settings = settings_from_config(cfg)
    prediction = open_prediction(cfg.prediction, key=cfg.prediction_key, kind=str(cfg.prediction_kind),
                                 num_classes=settings.num_classes)
    labels = open_volume(cfg.labels, key=cfg.label_key)
    result = evaluate(prediction, labels, settings)
    out = write_json(Path(cfg.output) / "metrics.json", result)
    logger.info("wrote %s", out)
    print(format_table(result))  # the command's final summary
    print(f"\nmetrics saved to {out}")
    return result
