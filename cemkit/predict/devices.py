"""Multi-process (torchrun) layout of a prediction; the device itself comes from :func:`cemkit.devices.select_device`.

Several GPUs: launch with ``torchrun --nproc_per_node=N -m cemkit.cli.main predict ...``. Each rank
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from torchrun) takes slabs ``i % WORLD_SIZE == RANK``, runs
them on ``cuda:LOCAL_RANK`` and writes its own, disjoint z-chunks of the same zarr arrays (chunk
depth = slab size, so no two ranks touch one chunk). Rank 0 creates the arrays first and does the
post-processing after every rank is done; the ranks meet with :func:`cemkit.collective.together`, so
that one failing rank stops the others.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank layout from the torchrun environment (single process when it is not set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank, world, local)


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (nccl on CUDA, else gloo)."""
    if info.world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        logger.info("rank %d of %d on %s", info.rank, info.world, device)
    return True


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """``True`` on every rank when ``flag`` is true on at least one (``flag`` itself in a single process).

    One collective decision, so that no rank acts on a view of the run that the others do not share.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown_distributed() -> None:
    """Leave the process group (after the last barrier)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
