"""The packaged Hydra configs (``conf/`` at the top of the repository, installed as ``cemkit.conf``).

Each stage's primary config ``<stage>.yaml`` is the one place its settings and their defaults are
written; :func:`stage_defaults` reads one for Python callers that run a stage without Hydra.
"""

from __future__ import annotations

from importlib.resources import files

from omegaconf import DictConfig, OmegaConf


def stage_defaults(name: str) -> DictConfig:
    """The keys of ``conf/<name>.yaml`` itself (its config groups are not composed), read-only.

    >>> stage_defaults("predict").tile_size
    512
    """
    cfg = OmegaConf.create(files(__name__).joinpath(f"{name}.yaml").read_text())
    cfg.pop("defaults", None)
    OmegaConf.set_readonly(cfg, True)
    return cfg
