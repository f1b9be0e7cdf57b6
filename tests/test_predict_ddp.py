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


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_two_ranks_equal_single_process(tmp_path):
    from cemkit.finetune.checkpoint import save_segmenter
    from cemkit.models.deepem3d import build_segmenter

    torch.manual_seed(0)
    model, _ = build_segmenter("resnet10t", 3, num_classes=2, decoder_width=8)
    ckpt = save_segmenter(tmp_path / "3fm" / "best.ckpt", model,
                          {"frames": 3, "num_classes": 2, "norms": [0.5, 0.2], "arch": "resnet10t"})
    rng = np.random.default_rng(0)
    write_zarr(tmp_path / "vol.zarr", rng.integers(0, 256, (7, 64, 64), dtype=np.uint8))
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'vol.zarr'}", "tile_size=64", "slab_size=2",
            "device=cpu", "progress=false", "overlays=1", "prob_dtype=float32"]
    assert main(["predict", f"output={tmp_path / 'single'}", *args]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={port}", "-m", "cemkit.cli.main", "predict",
                          f"output={tmp_path / 'ddp'}", *args], env=env, capture_output=True, text=True, check=False,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ddp" / ".progress.rank0.json").is_file()
    assert (tmp_path / "ddp" / ".progress.rank1.json").is_file()
    for name in ("probabilities", "mask", "labels"):
        a = np.asarray(open_volume(tmp_path / "single" / f"{name}.zarr")[...])
        b = np.asarray(open_volume(tmp_path / "ddp" / f"{name}.zarr")[...])
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert (tmp_path / "ddp" / "objects.csv").is_file()
