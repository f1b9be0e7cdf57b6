"""``cemkit curate``: Hydra entry point (conf/curate.yaml) of the curate stage."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from cemkit.curate.filtering import HeuristicThresholds
from cemkit.curate.pipeline import CurateParams, FilterSettings, curate
from cemkit.errors import ConfigError

logger = logging.getLogger(__name__)


def settings_from_config(cfg: DictConfig) -> tuple[CurateParams, FilterSettings]:
    """Translate the Hydra config into the pipeline's plain settings."""
    if cfg.small_images not in ("pad", "drop"):
        raise ConfigError(f"small_images must be pad or drop, got {cfg.small_images!r}")
    if int(cfg.plane_stride) < 1:
        raise ConfigError(f"plane_stride must be >= 1, got {cfg.plane_stride}")
    if not 2 <= int(cfg.dedup.hash_size) <= 8:
        raise ConfigError(f"dedup.hash_size must be in 2..8, got {cfg.dedup.hash_size}")
    params = CurateParams(
        patch_size=int(cfg.patch_size), small_images=str(cfg.small_images), plane_stride=int(cfg.plane_stride),
        isotropy_tolerance=float(cfg.isotropy_tolerance), max_volume_mb=float(cfg.max_volume_mb),
        hash_size=int(cfg.dedup.hash_size), hamming=int(cfg.dedup.hamming), dedup=bool(cfg.dedup.enabled),
        seed=int(cfg.seed), flat_std=float(cfg.filter.flat_std))
    f = cfg.filter
    settings = FilterSettings(
        method=str(f.method),
        thresholds=HeuristicThresholds(flat_std=float(f.flat_std), max_flat_fraction=float(f.max_flat_fraction),
                                       min_contrast=float(f.min_contrast), max_artefact=float(f.max_artefact)),
        labels=None if f.labels is None else str(f.labels), model=None if f.model is None else str(f.model),
        classifier=OmegaConf.to_container(f.classifier, resolve=True))
    return params, settings


def run(cfg: DictConfig) -> None:
    params, settings = settings_from_config(cfg)
    export = None if cfg.export in (None, "", "none", False) else str(cfg.export)
    meta = curate(cfg.input, cfg.output, params, settings, workers=int(cfg.workers), shard_size=int(cfg.shard_size),
                  export=export, report=bool(cfg.report), keep_work=bool(cfg.keep_work),
                  config=OmegaConf.to_container(cfg, resolve=True), part=cfg.part)
    if "part" in meta:
        done = sum(r["status"] != "failed" for r in meta["results"])
        print(f"cemkit curate part {meta['part']}: {done}/{len(meta['results'])} sources curated into "
              f"{cfg.output}/.work; run without part= to assemble the corpus")
        return
    t = meta["totals"]
    print(f"cemkit curate: {t['patches']} patches from {t['sources_curated']}/{t['sources']} sources -> "
          f"{t['exemplars']} after dedup -> {t['kept']} kept in {cfg.output} "
          f"(mean {meta['mean']:.4f}, std {meta['std']:.4f}; {len(meta['errors'])} unreadable input(s))")
