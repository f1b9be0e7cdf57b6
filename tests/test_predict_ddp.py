"""Two torchrun processes (gloo, CPU) split the slabs and write one set of outputs."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from cemkit.cli.main import main
from cemkit.io import open_volume, write_zarr


def _model_and_volume(tmp_path):
    from cemkit.models.checkpoint import save_segmenter
    from cemkit.models.deepem3d import build_segmenter

    torch.manual_seed(0)
    model, _ = build_segmenter("resnet10t", 3, num_classes=2, decoder_width=8)
    ckpt = save_segmenter(tmp_path / "3fm" / "best.ckpt", model,
                          {"frames": 3, "num_classes": 2, "norms": [0.5, 0.2], "arch": "resnet10t"})
    rng = np.random.default_rng(0)
    write_zarr(tmp_path / "vol.zarr", rng.integers(0, 256, (7, 64, 64), dtype=np.uint8))
    return [f"checkpoint={ckpt}", f"input={tmp_path / 'vol.zarr'}", "tile_size=64", "slab_size=2",
            "device=cpu", "progress=false", "overlays=1", "prob_dtype=float32"]


def _torchrun_predict(output, args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={port}", "-m", "cemkit.cli.main", "predict",
                          f"output={output}", *args], env=env, capture_output=True, text=True, check=False,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.ddp
def test_a_resume_with_rank_1_ahead_of_rank_0_equals_an_uninterrupted_run(tmp_path):
    """Rank 0 had finished no slab, rank 1 all of its own: the resumed run keeps rank 1's slabs and
    computes rank 0's (a per-rank fresh/resume decision made rank 0 wipe the arrays under rank 1).
    Then the same on one process: a resume may change the number of processes."""
    import json

    import zarr

    args = _model_and_volume(tmp_path)
    assert main(["predict", f"output={tmp_path / 'single'}", *args]) == 0
    out = tmp_path / "ddp"
    _torchrun_predict(out, args)
    # the interruption: rank 0's slabs (0 and 2 of z 0-1, 2-3, 4-5, 6: z 0-1 and 4-5) never written
    rank0 = out / ".progress.rank0.json"
    state = json.loads(rank0.read_text())
    rank0.write_text(json.dumps({**state, "done": []}))
    for name in ("probabilities", "mask"):
        arr = zarr.open_group(str(out / f"{name}.zarr"), mode="r+")["0"]  # OME-Zarr: the full-resolution level
        arr[0:2] = 0
        arr[4:6] = 0
    _torchrun_predict(out, args)
    for name in ("probabilities", "mask"):
        a = np.asarray(open_volume(tmp_path / "single" / f"{name}.zarr")[...])
        b = np.asarray(open_volume(out / f"{name}.zarr")[...])
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)

    # a resume on ANOTHER number of processes: rank 1's slabs (z 2-3, 6) lost, rank 0's kept, resumed on
    # one process, which reads both ranks' records and computes only the missing slabs
    # (a rank records the units every rank had finished when it started, so both records are rewritten)
    for r, done in ((0, ["xy:0", "xy:2"]), (1, [])):
        record = out / f".progress.rank{r}.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "done": done}))
    for name in ("probabilities", "mask"):
        arr = zarr.open_group(str(out / f"{name}.zarr"), mode="r+")["0"]
        arr[2:4] = 0
        arr[6:7] = 0
    assert main(["predict", f"output={out}", *args]) == 0
    assert json.loads((out / "predict.json").read_text())["resumed"] is True  # not started afresh
    assert sorted(json.loads((out / ".progress.json").read_text())["done"]) == [f"xy:{i}" for i in range(4)]
    for name in ("probabilities", "mask"):
        a = np.asarray(open_volume(tmp_path / "single" / f"{name}.zarr")[...])
        b = np.asarray(open_volume(out / f"{name}.zarr")[...])
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{name} after the resume on one process")


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_two_ranks_equal_single_process(tmp_path):
    args = _model_and_volume(tmp_path)
    assert main(["predict", f"output={tmp_path / 'single'}", *args]) == 0
    _torchrun_predict(tmp_path / "ddp", args)
    assert (tmp_path / "ddp" / ".progress.rank0.json").is_file()
    assert (tmp_path / "ddp" / ".progress.rank1.json").is_file()
    for name in ("probabilities", "mask", "labels"):
        a = np.asarray(open_volume(tmp_path / "single" / f"{name}.zarr")[...])
        b = np.asarray(open_volume(tmp_path / "ddp" / f"{name}.zarr")[...])
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert (tmp_path / "ddp" / "objects.csv").is_file()
