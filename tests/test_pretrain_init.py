"""Continued pretraining (model.init) and pretraining on raw folders, files and volumes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import torch

from cemkit.data.synthetic import make_volume
from cemkit.errors import ConfigError, InputError
from cemkit.io import write_png_folder, write_tif_stack
from cemkit.pretrain.command import build_module, run
from cemkit.pretrain.data import open_source
from tiny_pretrain_config import data_settings, pretrain_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw") / "images"
    write_png_folder(folder, make_volume(shape=(2, 128, 128), seed=0, style=0).image)
    return folder


def _cfg(output, images, *overrides):
    return pretrain_cfg(output, images, "view_pairs=0", *overrides)


def _encoder_sd(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(arch, in_chans=1, num_classes=0)
    for m in model.modules():  # non-trivial BN buffers, so that buffers are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.state_dict()


def _export(path, arch, sd):
    torch.save({"format": "cemkit-encoder", "version": 1, "arch": arch, "in_chans": 1, "norms": [0.5, 0.2],
                "corpus_id": "c", "state_dict": sd}, path)
    return path


def _cem500k(path, sd):
    """CEM500K / cellemnet layout without ``arch``: query and (different) key encoder, MLP head, queue."""
    state = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    state.update({f"module.encoder_k.{k}": torch.randn_like(v.float()).to(v.dtype) for k, v in sd.items()})
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.0.bias": torch.zeros(512),
                  "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "state_dict": state}, path)
    return path


def _assert_both_encoders_equal(module, sd):
    q, k = module.model.encoder_q.state_dict(), module.model.encoder_k.state_dict()
    assert set(q) == set(sd) == set(k)
    for key, value in sd.items():
        assert torch.equal(q[key], value), key
        assert torch.equal(k[key], value), key
    for p_q, p_k in zip(module.model.head_q.parameters(), module.model.head_k.parameters()):
        assert torch.equal(p_q, p_k)


@pytest.mark.parametrize("layout", ["export", "cem500k"])
def test_model_init_loads_the_encoder_into_query_and_key_encoders(tmp_path, images, layout):
    sd = _encoder_sd("resnet10t", seed=3)
    path = (_export(tmp_path / "encoder.pth", "resnet10t", sd) if layout == "export"
            else _cem500k(tmp_path / "moco.pth.tar", sd))
    cfg = _cfg(tmp_path / "out", images, f"model.init={path}")
    source = open_source(cfg.data)
    module = build_module(cfg, source, steps=2)
    _assert_both_encoders_equal(module, sd)
    assert module.hparams.init == str(path)
    # a resumed run does not load it again (the checkpoint restores both encoders and the queue)
    fresh = build_module(cfg, source, steps=2, load_init=False)
    assert not torch.equal(fresh.model.encoder_q.state_dict()["conv1.0.weight"], sd["conv1.0.weight"])


def test_fill_queue_writes_the_key_encoders_keys(tmp_path, images):
    import copy

    sd = _encoder_sd("resnet10t", seed=6)
    cfg = _cfg(tmp_path / "out", images, f"model.init={_export(tmp_path / 'encoder.pth', 'resnet10t', sd)}")
    module = build_module(cfg, open_source(cfg.data), steps=2)
    reference = copy.deepcopy(module.model)
    torch.manual_seed(1)
    batches = [torch.randn(8, 2, 1, 64, 64) for _ in range(9)]  # 72 keys into a queue of 64: the last 64 stay
    assert module.fill_queue(batches) == 64
    keys = torch.cat([reference.embed_key(b[:, 1]) for b in batches])
    torch.testing.assert_close(module.model.queue, keys[8:].T.roll(8, dims=1))  # keys 64-71 overwrote 0-7
    assert int(module.model.queue_ptr) == 8


def test_model_init_of_another_arch_builds_it_unless_one_is_named(tmp_path, images):
    sd = _encoder_sd("resnet18", seed=4)
    path = _export(tmp_path / "encoder.pth", "resnet18", sd)
    cfg = _cfg(tmp_path / "out", images, f"model.init={path}")  # the preset's encoder is resnet10t
    source = open_source(cfg.data)
    module = build_module(cfg, source, steps=2, encoder_named=False)
    assert module.hparams.arch == "resnet18"
    _assert_both_encoders_equal(module, sd)
    with pytest.raises(ConfigError, match="holds a resnet18 encoder, but the command names resnet10t"):
        build_module(cfg, source, steps=2, encoder_named=True)
    with pytest.raises(InputError, match="not found"):
        build_module(_cfg(tmp_path / "out", images, f"model.init={tmp_path / 'missing.pth'}"), source, steps=2)


def test_continued_pretraining_runs_and_reports_what_it_loaded(tmp_path, images, capsys):
    from cemkit.cli.main import main as cli

    sd = _encoder_sd("resnet10t", seed=5)
    path = _export(tmp_path / "encoder.pth", "resnet10t", sd)
    out = tmp_path / "out"
    assert cli(["pretrain", "+experiment=tiny_pretrain", "trainer=cpu", f"output={out}", f"data.images={images}",
                "data.tile_size=64", "logger=none", "view_pairs=0", "trainer.max_steps=2",
                f"model.init={path}"]) == 0
    text = capsys.readouterr()
    text = text.out + text.err
    assert f"model.init {path} (layout cemkit-encoder, resnet10t): {len(sd)} tensors loaded into the query and key " \
           "encoders, 0 missing, 0 unexpected; the queue is filled with this encoder's keys before the first step" in text
    assert "queue filled with 64 keys of the loaded encoder (of 64)" in text
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["init"] == str(path)
    assert (out / "encoder.pth").is_file()


def test_images_accept_a_list_of_folders_files_and_volumes(tmp_path, images):
    from cemkit.io import write_zarr

    stack = write_tif_stack(tmp_path / "volume.tif", make_volume(shape=(3, 128, 96), seed=1).image)
    zarr = tmp_path / "more.zarr"
    write_zarr(zarr, make_volume(shape=(2, 64, 64), seed=2).image)
    source = open_source(data_settings(images=[str(images), str(stack), str(zarr)], tile_size=64))
    # 2 png slices of 128 px -> 4 tiles each; 3 slices of 128 x 96 -> 2 x 1 tiles each; 2 whole 64 px slices
    assert len(source) == 2 * 4 + 3 * 2 + 2
    assert "4 files, 7 images, 16 patches" in source.description
    assert source.patches[8].shape == (64, 64) and source.patches[8].dtype == np.uint8
    np.testing.assert_array_equal(source.patches[8], make_volume(shape=(3, 128, 96), seed=1).image[0, :64, :64])
    one = open_source(data_settings(images=str(images), tile_size=64))
    assert len(one) == 8 and one.source_id != source.source_id
    with pytest.raises(InputError, match="missing.tif: image folder, file or volume not found"):
        open_source(data_settings(images=[str(images), str(tmp_path / "missing.tif")], tile_size=64))


def test_pretrain_from_a_raw_folder_and_a_tif_stack(tmp_path, images):
    from cemkit.cli.main import main as cli

    stack = write_tif_stack(tmp_path / "volume.tif", make_volume(shape=(3, 128, 128), seed=1).image)
    out = tmp_path / "out"
    assert cli(["pretrain", "+experiment=tiny_pretrain", "trainer=cpu", f"output={out}", f"data.images={images},{stack}",
                "data.tile_size=64", "logger=none", "view_pairs=0", "trainer.max_steps=2"]) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    cfg = (out / "config.yaml").read_text()
    assert str(stack) in cfg and str(images) in cfg
    assert (out / "encoder.pth").is_file()
