"""MoCo pretraining end to end on tiny configs: learning, EMA, queue, resume, export."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from cemkit.data.synthetic import make_volume
from cemkit.io import write_png_folder
from cemkit.models.encoders import (
    create_encoder,
    load_encoder_weights,
    read_encoder_weights,
)
from cemkit.pretrain.augment import TwoViewTransform
from cemkit.pretrain.command import run
from cemkit.pretrain.data import PretrainDataModule, TwoViewDataset, open_source
from cemkit.pretrain.export import export_encoder
from cemkit.pretrain.moco import MoCoV2, enqueue, infonce_loss
from cemkit.pretrain.module import MoCoModule
from tiny_pretrain_config import data_settings
from tiny_pretrain_config import pretrain_cfg as _cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory):
    """4 synthetic SBEM slices of 128 px, cut into 16 patches of 64 px."""
    folder = tmp_path_factory.mktemp("synthetic") / "images"
    write_png_folder(folder, make_volume(shape=(4, 128, 128), seed=0, style=0).image)
    return folder


class _Recorder(pl.Callback):
    """Query parameters seen by each step's EMA update, each step's keys and loss."""

    def __init__(self):
        self.query_snapshots, self.keys, self.losses = [], [], []
        self.queue0 = self.k0 = None

    def on_train_start(self, trainer, module):
        self.queue0 = module.model.queue.clone()
        self.k0 = [p.detach().clone() for p in module.model.encoder_k.parameters()]

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.query_snapshots.append([p.detach().clone() for p in module.model.encoder_q.parameters()])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.keys.append(outputs["keys"].clone())
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def styled_images(tmp_path_factory):
    """4 synthetic slices in 4 different dataset styles (distinct instances to discriminate)."""
    folder = tmp_path_factory.mktemp("styled") / "images"
    write_png_folder(folder, np.concatenate([make_volume(shape=(1, 128, 128), seed=i, style=i).image for i in range(4)]))
    return folder


@pytest.fixture(scope="module")
def trained(styled_images):
    """12 MoCo steps (resnet10t, 64 px, batch 8, K = 56, m = 0.9, lr 0.01) with everything recorded."""
    pl.seed_everything(0, verbose=False)
    source = open_source(data_settings(images=str(styled_images), tile_size=64))
    aug = _cfg("/tmp/unused", styled_images, "augment.rotate.p=0", "augment.crop.scale=[0.5,1.0]",
               "augment.jitter.p=0", "augment.blur.p=0", "augment.noise.p=0").augment
    steps = 12
    module = MoCoModule(arch="resnet10t", in_chans=1, dim=32, queue_size=56, momentum=0.9, temperature=0.2,
                        mlp_hidden=64, bn_splits=2, batch_size=8, lr=0.01, schedule="constant", total_steps=steps,
                        norms=[source.mean, source.std])
    dm = PretrainDataModule(source, aug, 64, 8, 0, steps, seed=0)
    recorder = _Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    return {"module": module, "recorder": recorder, "steps": steps}


def test_few_steps_reduce_the_loss_on_synthetic_views(styled_images):
    """Gradient steps on the query encoder lower the InfoNCE loss of the batch they were computed on
    (queue and key encoder held fixed, so the loss is a fixed function of the query weights)."""
    torch.manual_seed(0)
    source = open_source(data_settings(images=str(styled_images), tile_size=64))
    aug = _cfg("/tmp/unused", styled_images).augment
    views = torch.stack([TwoViewDataset(source.patches, TwoViewTransform(aug, 64, source.mean, source.std),
                                        seed=0)[i] for i in range(8)])
    model = MoCoV2(create_encoder("resnet10t", 1), dim=32, queue_size=64, mlp_hidden=64, bn_splits=2)
    optimizer = torch.optim.SGD(model.query_parameters(), lr=0.02, momentum=0.9)
    queue, losses = model.queue.clone(), []
    for _ in range(4):
        logits, _, _ = model(views[:, 0], views[:, 1], update_queue=False)
        loss = infonce_loss(logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert torch.equal(model.queue, queue) and int(model.queue_ptr) == 0
    assert losses[1] < losses[0], losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_key_encoder_is_ema_of_query_encoder(trained):
    rec, m = trained["recorder"], 0.9
    expected = [p.clone() for p in rec.k0]
    for snapshot in rec.query_snapshots:  # the EMA of a step uses the query weights after the previous step
        for e, q in zip(expected, snapshot):
            e.mul_(m).add_(q, alpha=1 - m)
    got = list(trained["module"].model.encoder_k.parameters())
    assert len(got) == len(expected) and len(rec.query_snapshots) == trained["steps"]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-7)
    # and it really moved away from its start and differs from the query encoder
    assert not torch.equal(got[0], rec.k0[0])
    assert not torch.equal(got[0], next(trained["module"].model.encoder_q.parameters()))


def test_queue_and_pointer_after_steps(trained):
    rec, model = trained["recorder"], trained["module"].model
    queue, ptr = rec.queue0.clone(), torch.zeros(1, dtype=torch.long)
    for keys in rec.keys:
        enqueue(queue, ptr, keys)
    assert int(model.queue_ptr) == (trained["steps"] * 8) % 56 == 40
    assert torch.equal(model.queue, queue)
    # by hand: key n (of step n // 8) goes to column n % 56; 96 keys in all
    assert torch.equal(model.queue[:, 0:8], rec.keys[7].T)    # keys 56..63
    assert torch.equal(model.queue[:, 40:48], rec.keys[5].T)  # keys 40..47, not overwritten since
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(56), atol=1e-5)


class _StopAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated interruption")


def test_resume_reproduces_uninterrupted_run(tmp_path, synthetic_images):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    rec_a = _Recorder()
    run(_cfg(straight, synthetic_images), extra_callbacks=[rec_a])
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run(_cfg(resumed, synthetic_images), extra_callbacks=[_StopAt(2)])
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    rec_b = _Recorder()
    run(_cfg(resumed, synthetic_images, "ckpt_path=last"), extra_callbacks=[rec_b])

    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    assert rec_b.losses == rec_a.losses[2:]
    assert set(a["state_dict"]) == set(b["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert int(b["state_dict"]["model.queue_ptr"]) == 32 % 64
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"]
    # exactly one checkpoint file; the encoder was exported next to it
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (straight / "encoder.pth").is_file() and (straight / "images" / "pretrain_view_pairs.png").is_file()


def test_a_resumed_run_keeps_the_metrics_rows_of_the_steps_before_the_resume(tmp_path, synthetic_images):
    import csv

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run(_cfg(out, synthetic_images, "logger=csv", "view_pairs=0"), extra_callbacks=[_StopAt(3)])
    run(_cfg(out, synthetic_images, "logger=csv", "view_pairs=0", "ckpt_path=last",
             "checkpoint_every_n_steps=2"))
    with open(out / "logs" / "metrics.csv", newline="") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh) if row.get("train/loss")]
    # steps 0-2 logged before the interruption (resumed from the step-2 checkpoint), 2-3 after it: each once
    assert steps == [0, 1, 2, 3]


def test_export_writes_a_loadable_encoder(tmp_path, synthetic_images):
    out = tmp_path / "run"
    run(_cfg(out, synthetic_images, "trainer.max_steps=2", "view_pairs=0"))
    path = export_encoder(out / "checkpoints" / "last.ckpt", tmp_path / "enc" / "encoder.pth", corpus_id="c-1")
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "cemkit-encoder" and blob["version"] == 1
    assert (blob["arch"], blob["in_chans"], blob["corpus_id"]) == ("resnet10t", 1, "c-1")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert blob["norms"] == pytest.approx(ckpt["hyper_parameters"]["norms"])
    weights = read_encoder_weights(path)
    model = create_encoder("resnet10t", in_chans=1)
    load_encoder_weights(model, weights)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.encoder_q.{key}"]), key
    # the Lightning checkpoint itself is accepted by the loader too
    direct = read_encoder_weights(out / "checkpoints" / "last.ckpt")
    assert direct.meta["layout"] == "cemkit-pretrain" and direct.arch == "resnet10t"
    assert set(direct.state_dict) == set(model.state_dict())
