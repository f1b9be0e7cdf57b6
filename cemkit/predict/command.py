"""`cemkit predict`: the Hydra entry point (config: conf/predict.yaml)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError

logger = logging.getLogger(__name__)


def settings_from_cfg(cfg: DictConfig):
    """:class:`~cemkit.predict.runner.PredictSettings` from the composed config."""
    from cemkit.predict.runner import PredictSettings

    settings = PredictSettings.from_config(
        {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
         for key, value in ((f, cfg[f]) for f in PredictSettings.__dataclass_fields__ if f in cfg)})
    if settings.weights is not None and not isinstance(settings.weights, list):
        raise ConfigError(f"weights must be a list such as weights=[1,1,2], got {settings.weights!r}")
    return settings


def run(cfg: DictConfig) -> None:
    from cemkit.predict.runner import run_prediction

    settings = settings_from_cfg(cfg)
    checkpoint, predictions = (OmegaConf.to_container(v) if OmegaConf.is_list(v) else v
                               for v in (cfg.checkpoint, cfg.predictions))
    record = run_prediction(cfg.input, cfg.output, checkpoint, settings=settings, input_key=cfg.input_key,
                            predictions=predictions)
    if record.get("outputs"):
        t = record["timings"]
        what = (f"{len(record['predictions'])} saved prediction(s)" if record.get("predictions")
                else f"{len(record['models'])} model(s)")
        print(f"cemkit predict: {what}, {record['objects']} objects, {t['total_s']:.1f} s -> {cfg.output}")
        for name, path in record["outputs"].items():
            print(f"  {name:<13} {path}")
