"""Two-process CPU DDP (gloo) pretraining through the real CLI: Shuffle-BN, gathered keys, one checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cemkit.data.synthetic import make_volume
from cemkit.io import write_png_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
def test_two_process_ddp_gathers_keys_into_identical_queues(tmp_path):
    images = tmp_path / "images"
    write_png_folder(images, make_volume(shape=(4, 128, 128), seed=1, style=1).image)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "cemkit.cli.main", "pretrain", "+experiment=tiny_pretrain", "trainer=ddp_cpu",
           f"data.images={images}", "data.tile_size=64", f"output={out}", "trainer.max_steps=3",
           "checkpoint_every_n_steps=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    log_text = proc.stdout + proc.stderr + "".join(p.read_text() for p in out.glob("runs/*/pretrain.log"))
    assert proc.returncode == 0, log_text[-4000:]

    # both processes ran and compared their queues bit for bit at the end (QueueConsistencyCheck)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log_text
    assert "key queue identical on all 2 processes" in log_text

    # one checkpoint file, written by rank 0; the queue holds the keys of BOTH ranks' batches
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    sd = ckpt["state_dict"]
    global_batch, size = 8, 64
    assert int(sd["model.queue_ptr"]) == 3 * global_batch % size == 24
    # columns written during the run (3 steps x 8 gathered keys) are unit keys that differ from the
    # seeded random initial queue; the rest is untouched
    torch.manual_seed(0)  # pl.seed_everything(0) then the module is built: recompute the initial queue
    from cemkit.pretrain.module import MoCoModule

    initial = MoCoModule(arch="resnet10t", dim=32, queue_size=64, mlp_hidden=64, bn_splits=2, batch_size=8,
                         total_steps=3).model.queue
    written = sd["model.queue"][:, :24]
    assert torch.allclose(written.norm(dim=0), torch.ones(24), atol=1e-5)
    assert not torch.isclose(written, initial[:, :24]).all(dim=0).any()
    torch.testing.assert_close(sd["model.queue"][:, 24:], initial[:, 24:], rtol=0, atol=0)
    assert (out / "encoder.pth").is_file()


@pytest.mark.ddp
def test_two_process_continued_pretraining_fills_identical_queues_from_the_loaded_encoder(tmp_path):
    import timm

    images = tmp_path / "images"
    write_png_folder(images, make_volume(shape=(2, 128, 128), seed=2, style=2).image)
    torch.manual_seed(7)
    sd = timm.create_model("resnet10t", in_chans=1, num_classes=0).state_dict()
    init = tmp_path / "encoder.pth"
    torch.save({"format": "cemkit-encoder", "version": 1, "arch": "resnet10t", "in_chans": 1, "norms": [0.5, 0.2],
                "corpus_id": "c", "state_dict": sd}, init)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "cemkit.cli.main", "pretrain", "+experiment=tiny_pretrain", "trainer=ddp_cpu",
           f"data.images={images}", "data.tile_size=64", f"output={out}", "trainer.max_steps=1", "view_pairs=0",
           f"model.init={init}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    log_text = proc.stdout + proc.stderr + "".join(p.read_text() for p in out.glob("runs/*/pretrain.log"))
    assert proc.returncode == 0, log_text[-4000:]
    assert log_text.count("queue filled with 64 keys of the loaded encoder (of 64)") >= 1
    assert "key queue identical on all 2 processes" in log_text
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    queue = ckpt["state_dict"]["model.queue"]
    # 8 fill batches of 8 gathered keys, then one step's 8 keys over columns 0-7: every column is a unit key
    assert int(ckpt["state_dict"]["model.queue_ptr"]) == 8
    assert torch.allclose(queue.norm(dim=0), torch.ones(64), atol=1e-5)
    torch.manual_seed(0)
    from cemkit.pretrain.module import MoCoModule

    initial = MoCoModule(arch="resnet10t", dim=32, queue_size=64, mlp_hidden=64, bn_splits=2, batch_size=8,
                         total_steps=1).model.queue
    assert not torch.isclose(queue, initial).all(dim=0).any()
