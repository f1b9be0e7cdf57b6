"""Which encoder architecture to build when ``model.init`` gives encoder weights.

A checkpoint records its architecture (``cemkit export`` files, cemkit pretrain and segmenter
checkpoints, CEM500K files with a top-level ``arch``), or it is recognised from its keys and
shapes (:func:`cemkit.models.encoders.infer_arch`). When the user did not name an encoder, the
checkpoint's architecture is built (and logged); when they did and it differs, that is a
configuration error naming both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cemkit.errors import ConfigError

log = logging.getLogger(__name__)

# Command-line override keys that name the encoder (a Hydra group choice or the arch value).
_ENCODER_KEYS = ("model/encoder", "model.encoder", "model.encoder.arch")


def encoder_named(overrides: Iterable[str]) -> bool:
    """True when one of the Hydra ``overrides`` names the encoder.

    >>> encoder_named(["model/encoder=resnet50", "output=x"]), encoder_named(["model.init=a.pth"])
    (True, False)
    >>> encoder_named(["++model.encoder.arch=resnet18"])
    True
    """
    for item in overrides:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key in _ENCODER_KEYS or key.startswith("model/encoder@"):
            return True
    return False


def command_line_overrides() -> list[str]:
    """The overrides of the running Hydra command (``[]`` outside one, e.g. a library call)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return []
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def arch_for_weights(configured: str, weights, named: bool) -> str:
    """The architecture to build for ``weights`` (an :class:`~cemkit.models.encoders.EncoderWeights` or ``None``).

    Parameters
    ----------
    configured
        ``model.encoder.arch`` of the config (the default, or what the user named).
    weights
        The weights ``model.init`` gave; ``weights.arch`` is filled in when it is inferred from the keys.
    named
        Whether the user named the encoder (:func:`encoder_named`).

    Returns
    -------
    str
        ``configured`` when the weights match it, say nothing about their architecture, or
        nothing was loaded; else the weights' architecture (logged).

    Raises
    ------
    ConfigError
        The user named an encoder that is not the checkpoint's.
    """
    if weights is None:
        return configured
    source = (weights.meta or {}).get("source", "model.init")
    arch = weights.arch
    if not arch:
        from cemkit.models.encoders import infer_arch

        arch = infer_arch(weights.state_dict)
        if arch is None:
            return configured  # loading reports the key mismatch, if any
        weights.arch = arch
        weights.meta["arch_inferred"] = True
        log.debug("%s: keys and shapes are those of a %s encoder", source, arch)
    if arch == configured:
        return configured
    if named:
        raise ConfigError(f"{source}: model.init holds a {arch} encoder, but the command names {configured} "
                          f"(model.encoder.arch); name {arch} (model/encoder={arch}) or leave the encoder out "
                          "to build the checkpoint's")
    how = "inferred from its keys" if weights.meta.get("arch_inferred") else "recorded in the checkpoint"
    log.info("model.init %s is a %s encoder (%s): building %s instead of the default %s",
             source, arch, how, arch, configured)
    return arch
