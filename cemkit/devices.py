"""Which torch device a stage runs on: one rule for every stage (curate's classifier, predict, ...).

Lightning-trained stages (pretrain, finetune) choose theirs with ``trainer.accelerator`` /
``trainer.devices``; the others call :func:`select_device` with their ``device`` setting.
"""

from __future__ import annotations

import torch

from cemkit.errors import ConfigError


def select_device(spec: str | None = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a ``device=`` setting.

    Parameters
    ----------
    spec
        ``auto`` (or empty): ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda`` / ``gpu``:
        ``cuda:LOCAL_RANK``; ``cpu``, ``cuda:N`` and other torch device strings are taken as given.
    local_rank
        This process's GPU under torchrun (``LOCAL_RANK``); 0 in a single process.

    Raises
    ------
    ConfigError
        A CUDA device on a machine without CUDA, or a string torch does not know as a device.
    """
    spec = str(spec or "auto").lower()
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec in ("cuda", "gpu"):
        spec = f"cuda:{local_rank}"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec}: CUDA is not available on this machine; use device=cpu or auto")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device={spec}: not a torch device ({exc})") from exc
