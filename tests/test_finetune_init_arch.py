"""model.init with encoder weights of another architecture than the configured encoder."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import torch

from cemkit.cli.main import main as cli
from cemkit.errors import ConfigError
from cemkit.models.arch_choice import arch_for_weights, encoder_named
from cemkit.models.encoders import EncoderWeights, infer_arch, read_encoder_weights
from tiny_data import labelled_tif_pair


def _encoder_sd(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(arch, in_chans=1, num_classes=0).state_dict()


def _export(path, arch: str, sd, with_arch: bool = True):
    """A ``cemkit export`` encoder file, or (``with_arch=False``) a CEM500K-style MoCo checkpoint without ``arch``."""
    if with_arch:
        blob = {"format": "cemkit-encoder", "version": 1, "arch": arch, "in_chans": 1, "norms": [0.5, 0.2],
                "corpus_id": "test", "state_dict": sd}
    else:
        blob = {"epoch": 3, "state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}}
    torch.save(blob, path)
    return path


@pytest.mark.parametrize("arch", ["resnet10t", "resnet18", "resnet50"])
def test_infer_arch_recognises_the_encoder_from_keys_and_shapes(arch):
    sd = _encoder_sd(arch)
    assert infer_arch(sd) == arch
    # a 5-channel first convolution is still the same architecture
    first = "conv1.0.weight" if arch == "resnet10t" else "conv1.weight"
    sd[first] = sd[first].repeat(1, 5, 1, 1)
    assert infer_arch(sd) == arch


def test_infer_arch_gives_none_for_unknown_layouts():
    sd = _encoder_sd("resnet18")
    sd["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)  # a width no candidate has
    assert infer_arch(sd) is None
    assert infer_arch({"x.weight": torch.zeros(3)}) is None


def test_encoder_named_reads_hydra_overrides():
    assert encoder_named(["model/encoder=resnet50"])
    assert encoder_named(["model.encoder.arch=resnet50", "output=o"])
    assert encoder_named(["+model.encoder.arch=resnet50"])
    assert not encoder_named(["model.init=x.pth", "model.encoder.timm_pretrained=true", "+experiment=tiny_finetune"])


def test_arch_for_weights_builds_the_checkpoints_arch_unless_another_is_named(caplog):
    w = EncoderWeights(_encoder_sd("resnet10t"), arch="resnet10t", meta={"source": "enc.pth"})
    assert arch_for_weights("resnet18", None, named=True) == "resnet18"
    assert arch_for_weights("resnet10t", w, named=True) == "resnet10t"
    with caplog.at_level(logging.INFO, logger="cemkit.models.arch_choice"):
        assert arch_for_weights("resnet18", w, named=False) == "resnet10t"
    assert "building resnet10t instead of the default resnet18" in caplog.text
    with pytest.raises(ConfigError, match=r"enc.pth: model.init holds a resnet10t encoder, but the command names resnet18"):
        arch_for_weights("resnet18", w, named=True)
    # no recorded arch: inferred from the keys and written into the weights
    w = EncoderWeights(_encoder_sd("resnet10t"), arch=None, meta={"source": "cem.pth.tar"})
    assert arch_for_weights("resnet18", w, named=False) == "resnet10t"
    assert w.arch == "resnet10t" and w.meta["arch_inferred"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return labelled_tif_pair(tmp_path_factory.mktemp("pair"), shape=(4, 64, 64), seed=0)


def _finetune(pair, init, out, *extra):
    img, lab = pair
    # the default config (model/encoder resnet18), made small; the encoder is not named
    return cli(["finetune", "trainer=cpu", "logger=csv", f"data.images={img}", f"data.labels={lab}",
                f"model.init={init}", "data.crop=64", "data.batch_size=2", "data.val_slices=1",
                "model.freeze_encoder=all", "model.decoder_width=1", "model.dilated_max_stride=4",
                "trainer.max_steps=1", "val.every=1", "val.overlays=0", "trainer.enable_progress_bar=false",
                f"output={out}", *extra])


@pytest.mark.parametrize("with_arch", [True, False], ids=["export", "cem500k-style"])
def test_finetune_builds_the_init_checkpoints_arch_when_none_is_named(tmp_path, pair, with_arch):
    from cemkit.models.checkpoint import load_segmenter

    sd = _encoder_sd("resnet10t", seed=1)
    init = _export(tmp_path / "enc.pth", "resnet10t", sd, with_arch=with_arch)
    assert (read_encoder_weights(init).arch == "resnet10t") is with_arch
    out = tmp_path / "ft"
    assert _finetune(pair, init, out) == 0
    result = json.loads((out / "1fm" / "result.json").read_text())
    assert result["arch"] == "resnet10t"
    assert result["load_report"]["loaded"] == len(sd) and result["load_report"]["missing"] == []
    model, _ = load_segmenter(out / "1fm" / "best.ckpt")
    assert model.arch == "resnet10t"
    for k, v in sd.items():  # the frozen encoder is the file's
        assert torch.equal(model.encoder.state_dict()[k], v), k


def test_finetune_with_a_named_encoder_that_does_not_match_fails_naming_both(tmp_path, pair, capsys):
    init = _export(tmp_path / "enc.pth", "resnet10t", _encoder_sd("resnet10t"))
    out = tmp_path / "ft"
    assert _finetune(pair, init, out, "model/encoder=resnet18") == 2
    captured = capsys.readouterr()
    errors = [line for line in (captured.out + captured.err).splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "holds a resnet10t encoder, but the command names resnet18" in errors[0], errors
    assert len(errors[0]) < 500  # no key listing
    assert not (out / "1fm" / "best.ckpt").exists()
