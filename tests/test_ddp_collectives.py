"""torch.distributed pieces with 2 CPU processes (gloo), in one spawned session:

* Shuffle-BN (:mod:`cemkit.pretrain.moco`): every sample gets back the key computed for it inside the
  shuffled sub-batch it was sent to, and a wrong unshuffle is caught;
* :func:`cemkit.collective.together`: a rank that fails stops the other with an error naming it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.ddp

WORLD, LOCAL, SEED = 2, 4, 7


class _TinyEncoder(nn.Sequential):
    """Conv - BN - pool: a key depends on the statistics of the sub-batch it is computed in."""

    num_features = 4

    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def _model():
    from cemkit.pretrain.moco import MoCoV2

    torch.manual_seed(0)
    model = MoCoV2(_TinyEncoder(), dim=8, queue_size=16, mlp_hidden=8, bn_splits=1).train()
    model.shuffle_generator = lambda: torch.Generator().manual_seed(SEED)  # rank 0 draws the permutation from it
    return model


def _batch() -> torch.Tensor:
    """The global batch: ``WORLD * LOCAL`` samples, rank r holds rows ``r * LOCAL .. (r + 1) * LOCAL - 1``."""
    return torch.randn(WORLD * LOCAL, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _reference(model) -> torch.Tensor:
    """Keys of the whole batch worked out by hand: sub-batch j is the samples ``perm[j * LOCAL:(j+1) * LOCAL]``,
    its keys are computed together (BN over that sub-batch), and sample ``perm[i]`` gets row i of them."""
    import torch.nn.functional as F

    x = _batch()
    perm = torch.randperm(WORLD * LOCAL, generator=torch.Generator().manual_seed(SEED))
    ref = torch.empty(WORLD * LOCAL, 8)
    with torch.no_grad():
        for j in range(WORLD):
            rows = perm[j * LOCAL:(j + 1) * LOCAL]
            ref[rows] = F.normalize(model.head_k(model.encoder_k(x[rows])).float(), dim=1)
    return ref


def _wrong_unshuffle(x, idx_unshuffle):
    """The unshuffle with a rolled index: every sample gets its neighbour's key."""
    from cemkit.pretrain.moco import concat_all_gather, world_size

    x_all = concat_all_gather(x)
    return x_all[idx_unshuffle.roll(1).view(world_size(), -1)[torch.distributed.get_rank()]]


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from cemkit.collective import together
    from cemkit.pretrain import moco

    os.environ.update(OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        mine = _batch()[rank * LOCAL:(rank + 1) * LOCAL]
        right = model.embed_key(mine)
        moco.batch_unshuffle_ddp = _wrong_unshuffle
        wrong = model.embed_key(mine)
        Path(out, f"keys{rank}.json").write_text(json.dumps({"right": right.tolist(), "wrong": wrong.tolist()}))

        errors = []
        for failing in (None, 1):  # a block where no rank fails, then one where rank 1 does
            try:
                with together("reading its input"):
                    if rank == failing:
                        raise ValueError(f"bad input on rank {rank}")
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                errors.append(f"{type(exc).__name__}: {exc}")
        Path(out, f"together{rank}.json").write_text(json.dumps(errors))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gloo")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    return out


def test_a_failing_rank_stops_the_other_with_an_error_naming_it(two_ranks):
    rank0, rank1 = (json.loads((two_ranks / f"together{r}.json").read_text()) for r in range(WORLD))
    assert rank0 == [None, "RuntimeError: rank 1 failed reading its input: ValueError: bad input on rank 1"]
    assert rank1 == [None, "ValueError: bad input on rank 1"]  # the failing rank raises its own error


def test_each_sample_gets_the_key_of_its_shuffled_sub_batch(two_ranks):
    tmp_path = two_ranks

    model = _model()
    ref = _reference(model)
    with torch.no_grad():  # BN statistics matter: the keys of a rank's own, unshuffled samples differ
        plain = torch.cat([moco_key(model, _batch()[r * LOCAL:(r + 1) * LOCAL]) for r in range(WORLD)])
    assert not torch.allclose(plain, ref, atol=1e-3)
    for r in range(WORLD):
        keys = json.loads((tmp_path / f"keys{r}.json").read_text())
        expected = ref[r * LOCAL:(r + 1) * LOCAL]
        torch.testing.assert_close(torch.tensor(keys["right"]), expected, rtol=1e-5, atol=1e-6)
        # the check sees a wrong permutation: with the rolled unshuffle no row is its sample's key
        wrong = torch.tensor(keys["wrong"])
        assert not torch.isclose(wrong, expected, atol=1e-4).all(dim=1).any()


def moco_key(model, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.normalize(model.head_k(model.encoder_k(x)).float(), dim=1)
