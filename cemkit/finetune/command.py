"""``cemkit finetune``: train 1fm / 3fm / 5fm DeepEM3D-style segmentation models.

    cemkit finetune data.images=DIR data.labels=DIR model.frames=1|3|5|all model.init=none|PATH|zoo:NAME

See docs/finetune.md. Each model goes to ``output/{k}fm/`` (``best.ckpt``, ``last.ckpt``, logs).
"""

from __future__ import annotations

from omegaconf import DictConfig

from cemkit.finetune.orchestrate import run_finetune, summary_lines


def run(cfg: DictConfig) -> dict:
    """Stage entry point (see :mod:`cemkit.cli.hydra_app`)."""
    results = run_finetune(cfg)
    print("\n".join(summary_lines(results, cfg.output)))
    return results
