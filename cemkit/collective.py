"""Meeting points of the processes of a multi-process (torchrun / DDP) run, so that one failing rank
stops the others with an error that names it instead of leaving them waiting in a collective.

Every function is a no-op in a single process (no :mod:`torch.distributed` process group).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

log = logging.getLogger(__name__)


def _group_up() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_failures(error: BaseException | None) -> list[tuple[int, str]]:
    """Tell every rank which ranks failed: ``[(rank, "ExceptionType: message"), ...]`` (one all-gather).

    Every rank must call it at the same point, with its own exception or ``None``.
    """
    if not _group_up():
        return [] if error is None else [(0, f"{type(error).__name__}: {error}")]
    mine = None if error is None else f"{type(error).__name__}: {error}"
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, mine)
    return [(r, m) for r, m in enumerate(messages) if m is not None]


@contextmanager
def together(what: str) -> Iterator[None]:
    """Run a block on every rank, then meet: when a rank raised in it, every rank raises.

    The rank that failed re-raises its own exception; the others raise
    ``RuntimeError("rank N failed <what>: <its error>")``. The block itself must not contain
    collectives (a rank that fails before one would leave the others waiting in it).
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others are told
        error = exc
    failed = rank_failures(error) if _group_up() else []
    if error is not None:
        if failed:
            log.error("rank %d failed %s: %s: %s", dist.get_rank(), what, type(error).__name__, error)
        raise error
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank} failed {what}: {message}")
