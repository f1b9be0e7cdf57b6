"""cemkit export: TorchScript and ONNX equal PyTorch within 1e-4 on inputs of other sizes than the
export example; metadata travels with the files; a failed check writes nothing; the CLI picks the
format (encoder for pretrain checkpoints); bioimage.io packages validate with bioimageio.core."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml

from cemkit.cli.main import main as cli_main
from cemkit.export import (
    ExportCheckError,
    export_onnx,
    export_torchscript,
    read_onnx_metadata,
    read_torchscript_metadata,
)
from cemkit.models.checkpoint import load_segmenter, save_segmenter
from cemkit.models.deepem3d import build_segmenter

TILE = 32  # the export example is 32x32; every checked input has another size
NORMS = [0.55, 0.12]


def _segmenter(path, frames=3, num_classes=2, seed=0):
    """A tiny resnet10t segmenter saved in the finetune checkpoint format, reloaded from disk."""
    torch.manual_seed(seed)
    model = build_segmenter("resnet10t", frames=frames, num_classes=num_classes)[0].eval()
    # move BatchNorm statistics away from identity so the check sees a non-trivial network
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    save_segmenter(path, model, {"norms": NORMS, "class_names": None})
    return load_segmenter(path)


@pytest.fixture(scope="module")
def binary3(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "seg3.pth"
    model, meta = _segmenter(path)
    return path, model, meta


def _inputs(frames):
    g = torch.Generator().manual_seed(123)
    # sizes differ from the 32x32 export example; 70x45 needs padding inside the model
    return [torch.randn(2, frames, 64, 96, generator=g), torch.randn(1, frames, 70, 45, generator=g)]


def test_onnx_equals_pytorch_for_multiclass_logits(tmp_path):
    import onnxruntime as ort

    model, meta = _segmenter(tmp_path / "seg.pth", frames=1, num_classes=4, seed=1)
    out = export_onnx(model, meta, tmp_path / "m.onnx", tile=TILE, output="logits")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x in _inputs(1):
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape == (x.shape[0], 4, *x.shape[2:])
        assert np.max(np.abs(got - expected)) <= 1e-4
    info = read_onnx_metadata(out)
    assert info["num_classes"] == 4 and info["output"] == "logits" and info["norms"] == NORMS
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["frames"] == "1" and float(props["norm_mean"]) == NORMS[0]


def test_export_that_does_not_match_pytorch_writes_nothing(binary3, tmp_path, monkeypatch):
    import cemkit.export.torchscript as ts_export

    _, model, meta = binary3
    real = ts_export.reference_output
    monkeypatch.setattr(ts_export, "reference_output",
                        lambda m, x, output: real(m, x, output) + 1e-3)  # a "wrong" exporter
    with pytest.raises(ExportCheckError, match=r"differs from PyTorch by 0\.001"):
        export_torchscript(model, meta, tmp_path / "bad.pt", tile=TILE)
    assert list(tmp_path.iterdir()) == []


def test_cli_torchscript_equals_pytorch_and_carries_metadata(binary3, tmp_path):
    path, model, _ = binary3
    ts = tmp_path / "out" / "model.ts"  # format=auto: a finetuned model + .ts suffix -> TorchScript
    assert cli_main(["export", f"checkpoint={path}", f"output={ts}", f"tile={TILE}"]) == 0
    loaded = torch.jit.load(str(ts), map_location="cpu")
    for x in _inputs(3):
        with torch.no_grad():
            expected = model.predict_proba(x)
            got = loaded(x)
        assert got.shape == expected.shape == (x.shape[0], 1, *x.shape[2:])
        assert torch.max(torch.abs(got - expected)).item() <= 1e-4
    info = read_torchscript_metadata(ts)
    assert info["norms"] == NORMS and info["frames"] == 3 and info["arch"] == "resnet10t"
    assert info["output"] == "probabilities" and info["stride"] == 32
    assert info["source"] == str(path)
    assert any((tmp_path / "out" / "runs").iterdir())  # hydra run files next to the export
    assert sorted(p.name for p in ts.parent.iterdir()) == ["model.ts", "runs"]  # no temp files
    assert cli_main(["export", f"checkpoint={path}", f"output={tmp_path / 'model.h5'}"]) == 2
    assert cli_main(["export", f"checkpoint={path}", f"output={tmp_path / 'e.pth'}",
                     "format=encoder"]) == 2  # a finetuned model is not a pretrain checkpoint


def test_cli_rejects_unknown_suffix_and_encoder_format_for_a_segmenter(binary3, tmp_path, capfd):
    path, _, _ = binary3
    assert cli_main(["export", f"checkpoint={path}", f"output={tmp_path / 'model.h5'}"]) == 2
    out, err = capfd.readouterr()
    assert "cannot tell the export format" in out + err
    assert cli_main(["export", f"checkpoint={path}", f"output={tmp_path / 'e.pth'}",
                     "format=encoder"]) == 2  # a finetuned model is not a pretrain checkpoint
    assert not (tmp_path / "model.h5").exists() and not (tmp_path / "e.pth").exists()


def test_cli_exports_the_encoder_of_a_pretrain_checkpoint(tmp_path):
    from cemkit.models.encoders import create_encoder, read_encoder_weights

    torch.manual_seed(0)
    encoder = create_encoder("resnet10t", in_chans=1)
    moco = {"arch": "resnet10t", "norms": [0.58, 0.1], "epoch": 3,
            "state_dict": {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items()}}
    ckpt = tmp_path / "checkpoint_0003.pth.tar"
    torch.save(moco, ckpt)
    out = tmp_path / "enc.pth"
    assert cli_main(["export", f"checkpoint={ckpt}", f"output={out}", "corpus_id=toy"]) == 0
    blob = torch.load(out, weights_only=True)
    assert blob["format"] == "cemkit-encoder" and blob["corpus_id"] == "toy"
    weights = read_encoder_weights(out)
    assert weights.arch == "resnet10t" and weights.norms == (0.58, 0.1)
    for key, value in encoder.state_dict().items():
        assert torch.equal(weights.state_dict[key], value)


def _bioimageio_works() -> bool:
    try:
        from cemkit.export.bioimageio import _require

        _require()
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _bioimageio_works(), reason="bioimageio.core missing or incompatible")
def test_bioimageio_package_validates(binary3, tmp_path):
    from bioimageio.spec import load_description

    path, model, _ = binary3
    out = tmp_path / "cemkit_mito.zip"
    assert cli_main(["export", f"checkpoint={path}", f"output={out}", f"tile={TILE}",
                     "bioimageio.authors=[Test Author]", "bioimageio.name=cemkit test model"]) == 0
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
    assert {"rdf.yaml", "weights.pt", "weights.onnx", "cover.png", "README.md"} <= names
    pre = rdf["inputs"][0]["preprocessing"]
    kwargs = next(p["kwargs"] for p in pre if p["id"] == "fixed_zero_mean_unit_variance")
    assert kwargs["mean"] == pytest.approx(255 * NORMS[0]) and kwargs["std"] == pytest.approx(
        255 * NORMS[1])
    assert set(rdf["weights"]) == {"torchscript", "onnx"}
    # the test output is the PyTorch model's answer for the normalised test input
    x = torch.from_numpy(((test_in / 255.0 - NORMS[0]) / NORMS[1]).astype(np.float32))
    assert np.max(np.abs(model.predict_proba(x).numpy() - test_out)) <= 1e-5
    descr = load_description(out)
    assert descr.validation_summary.status in ("passed", "valid-format"), \
        descr.validation_summary.format()
    assert json.loads(json.dumps(descr.name)) == "cemkit test model"


def test_bioimageio_without_authors_is_a_config_error(binary3, tmp_path):
    if not _bioimageio_works():
        pytest.skip("bioimageio.core missing or incompatible")
    path, _, _ = binary3
    assert cli_main(["export", f"checkpoint={path}", f"output={tmp_path / 'p.zip'}"]) == 2
    assert not (tmp_path / "p.zip").exists()
