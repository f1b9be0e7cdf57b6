"""Each stage's settings are defined once, in its YAML: every key of ``cemkit <stage> --cfg job`` (no
overrides) is read by the stage, and the stage reads no key that the YAML does not define.

The composed config is a real ``DictConfig`` whose reads are recorded (attribute, item and ``get``
access, and ``OmegaConf.to_container`` of a config node, which hands the whole node on); the stage's
own ``run`` goes through its config-reading code with the expensive work stubbed out. A run that
converts the *whole* config to a container (to store it with the results) does not count as a read.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, ListConfig, OmegaConf

from cemkit.errors import ConfigError


# ------------------------------------------------------------------------------------ recording
def _leaves(node: DictConfig, prefix: str) -> set[str]:
    """Full keys of the leaves under ``node`` (lists and empty mappings are leaves)."""
    out = set()
    for key in node.keys():
        child = node._get_node(key)
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(child, DictConfig) and not child._is_none() and len(child) > 0:
            out |= _leaves(child, full)
        else:
            out.add(full)
    return out


def defined_keys(cfg: DictConfig) -> set[str]:
    return _leaves(cfg, "")


@contextlib.contextmanager
def recording(cfg: DictConfig, monkeypatch):
    """Record the full keys read from ``cfg`` (and from copies of it) while the block runs.

    Other configs (e.g. the one Hydra's ``instantiate`` builds from a plain dict) are not the stage's.
    """
    reads: set[str] = set()
    roots = {id(cfg)}
    get_attr, get_item, get = DictConfig.__getattr__, DictConfig.__getitem__, DictConfig.get
    deepcopy, to_container = DictConfig.__deepcopy__, OmegaConf.to_container

    def ours(node) -> bool:
        return id(node._get_root()) in roots

    def note(node, key):
        if isinstance(key, str) and not key.startswith("__") and ours(node):
            reads.add(node._get_full_key(key))

    def _deepcopy(self, memo):
        copied = deepcopy(self, memo)
        if ours(self) and self._get_parent() is None:
            roots.add(id(copied))
        return copied

    def _getattr(self, key):
        note(self, key)
        return get_attr(self, key)

    def _getitem(self, key):
        note(self, key)
        return get_item(self, key)

    def _get(self, key, default_value=None):
        note(self, key)
        return get(self, key, default_value)

    def _to_container(cfg, *args, **kwargs):
        if not (isinstance(cfg, (DictConfig, ListConfig)) and ours(cfg)):
            pass
        elif isinstance(cfg, DictConfig) and cfg._get_parent() is not None:  # a node, not the whole config
            prefix = cfg._get_full_key(None)
            reads.update(_leaves(cfg, prefix) or {prefix})
        elif isinstance(cfg, ListConfig) and cfg._get_parent() is not None:
            reads.add(cfg._get_full_key(None))
        return to_container(cfg, *args, **kwargs)

    monkeypatch.setattr(DictConfig, "__getattr__", _getattr)
    monkeypatch.setattr(DictConfig, "__getitem__", _getitem)
    monkeypatch.setattr(DictConfig, "get", _get)
    monkeypatch.setattr(DictConfig, "__deepcopy__", _deepcopy)
    monkeypatch.setattr(OmegaConf, "to_container", staticmethod(_to_container))
    yield reads


def _compose(name: str, overrides=()) -> DictConfig:
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def check_stage(name: str, runs: list[list[str]], run_stage, monkeypatch) -> None:
    """Compose ``name`` once per override list (values for ``???`` keys, other branches), run the
    stage's config reading on each, and compare the union of reads with the keys of the plain config."""
    defined = defined_keys(_compose(name))
    read: set[str] = set()
    for overrides in runs:
        cfg = _compose(name, overrides)
        assert defined_keys(cfg) == defined, "the overrides may set values, not add keys"
        with recording(cfg, monkeypatch) as reads:
            run_stage(cfg)
        monkeypatch.undo()
        read |= reads
    unread = sorted(k for k in defined if k not in read)
    # reading a node on the way to its keys (``cfg.data`` in ``cfg.data.crop``) is not a key of its own
    undefined = sorted(k for k in read if k not in defined and not any(d.startswith(k + ".") for d in defined))
    assert not unread, f"{name}: keys defined in the YAML but never read: {unread}"
    assert not undefined, f"{name}: keys read but not defined in the YAML: {undefined}"


# ------------------------------------------------------------------------------------ stages
def test_predict_reads_every_key(tmp_path, monkeypatch):
    import cemkit.predict.runner as runner
    from cemkit.predict import command

    seen = {}

    def fake_run_prediction(input_path, output, checkpoint, *, settings, input_key, predictions):
        seen["settings"] = settings
        return {}

    def run_stage(cfg):
        monkeypatch.setattr(runner, "run_prediction", fake_run_prediction)
        command.run(cfg)

    check_stage("predict", [["input=in.tif", "checkpoint=m.ckpt"]], run_stage, monkeypatch)
    assert seen["settings"] == runner.PredictSettings.defaults()  # the YAML's values, nothing else


def test_evaluate_reads_every_key(monkeypatch):
    from cemkit.evaluate import command

    def run_stage(cfg):
        for name in ("open_prediction", "open_volume", "evaluate"):
            monkeypatch.setattr(command, name, lambda *a, **k: None)
        monkeypatch.setattr(command, "write_json", lambda path, result: path)
        monkeypatch.setattr(command, "format_table", lambda result: "")
        command.run(cfg)

    check_stage("evaluate", [["prediction=p", "labels=l", "sweep=[0.3,0.5]"]], run_stage, monkeypatch)


def test_curate_reads_every_key(monkeypatch):
    from cemkit.curate import command

    def fake_curate(*args, **kwargs):
        return {"totals": {"patches": 0, "sources_curated": 0, "sources": 0, "exemplars": 0, "kept": 0},
                "mean": 0.0, "std": 0.0, "errors": []}

    def run_stage(cfg):
        monkeypatch.setattr(command, "curate", fake_curate)
        command.run(cfg)

    check_stage("curate", [["input=raw"]], run_stage, monkeypatch)


def test_export_reads_every_key(tmp_path, monkeypatch):
    import cemkit.export.bioimageio as bioimageio
    import cemkit.export.onnx as onnx
    import cemkit.models.checkpoint as checkpoint
    import cemkit.pretrain.export as pretrain_export
    import cemkit.zoo as zoo
    from cemkit.export import command

    def run_stage(cfg):
        monkeypatch.setattr(zoo, "resolve", lambda spec: Path(spec))
        monkeypatch.setattr(command, "_segmenter_path", lambda p: None if cfg.format == "encoder" else p)
        monkeypatch.setattr(checkpoint, "load_segmenter", lambda p: (None, {}))
        for module, name in ((pretrain_export, "export_encoder"), (onnx, "export_onnx"),
                             (bioimageio, "export_bioimageio")):
            monkeypatch.setattr(module, name, lambda *a, **k: "out")
        command.run(cfg)

    out = f"output={tmp_path / 'm.onnx'}"
    check_stage("export", [["checkpoint=c.ckpt", out, "format=encoder"], ["checkpoint=c.ckpt", out, "format=onnx"],
                           ["checkpoint=c.ckpt", out, "format=bioimageio"]], run_stage, monkeypatch)


def test_finetune_reads_every_key(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    from cemkit.finetune import command
    from cemkit.io import write_tif_stack

    rng = np.random.default_rng(0)
    write_tif_stack(tmp_path / "img.tif", rng.integers(0, 255, (6, 64, 64), dtype=np.uint8))
    write_tif_stack(tmp_path / "lab.tif", (rng.random((6, 64, 64)) > 0.8).astype(np.uint8))

    def run_stage(cfg):
        monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: None)  # everything up to training
        command.run(cfg)

    check_stage("finetune", [[f"data.images={tmp_path / 'img.tif'}", f"data.labels={tmp_path / 'lab.tif'}",
                              f"output={tmp_path / 'out'}", "model/encoder=resnet10t"]], run_stage, monkeypatch)


def test_pretrain_reads_every_key(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    from cemkit.io import write_png_folder
    from cemkit.pretrain import command

    write_png_folder(tmp_path / "imgs", np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8))

    def run_stage(cfg):
        monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: None)  # everything up to training
        command.run(cfg)

    given = [f"data.images={tmp_path / 'imgs'}", f"output={tmp_path / 'out'}", "model/encoder=resnet10t",
             "trainer=cpu", "data.batch_size=2", "data.num_workers=0", "moco.queue_size=4", "moco.bn_splits=2"]
    check_stage("pretrain", [given, [*given, "epochs=2"]], run_stage, monkeypatch)


def test_demo_reads_every_key(tmp_path, monkeypatch):
    import cemkit.data.synthetic as synthetic
    import cemkit.io as cio
    from cemkit.demo import pipeline
    from cemkit.demo.stages import StageRun

    volume = SimpleNamespace(image=None, mito=None, voxel_size=None)

    def run_stage(cfg):
        monkeypatch.setattr(synthetic, "write_raw_folder", lambda *a, **k: None)
        monkeypatch.setattr(synthetic, "make_volume", lambda *a, **k: volume)
        monkeypatch.setattr(synthetic, "save_montage", lambda *a, **k: None)
        monkeypatch.setattr(cio, "write_tif_stack", lambda *a, **k: None)
        monkeypatch.setattr(pipeline, "run_stage", lambda name, overrides: StageRun(name, overrides))
        monkeypatch.setattr(pipeline, "run_branches", lambda run, specs, jobs, threads: [([], {}) for _ in specs])
        pipeline.run_demo(cfg)

    check_stage("demo", [[f"output={tmp_path / 'demo'}"]], run_stage, monkeypatch)


def test_study_reads_every_key(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    import cemkit.predict as predict
    from cemkit.io import write_tif_stack
    from cemkit.study import pipeline

    rng = np.random.default_rng(0)
    write_tif_stack(tmp_path / "img.tif", rng.integers(0, 255, (6, 64, 64), dtype=np.uint8))
    write_tif_stack(tmp_path / "lab.tif", (rng.random((6, 64, 64)) > 0.8).astype(np.uint8))

    def no_prediction(*args, **kwargs):
        raise RuntimeError("not predicted in this test")

    def run_stage(cfg):
        monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: None)  # every key up to training is read
        monkeypatch.setattr(predict, "run_prediction", no_prediction)  # the run fails: its row says so
        result = pipeline.run_study(cfg)
        assert [row["status"] for row in result["rows"]] == ["failed"]

    given = [f"data.images={tmp_path / 'img.tif'}", f"data.labels={tmp_path / 'lab.tif'}", "model/encoder=resnet10t",
             f"output={tmp_path / 'study'}", "study.test_slices=4-5", "study.gap=1", "study.labelled=[1]",
             "study.seeds=1"]
    check_stage("study", [given], run_stage, monkeypatch)


# ------------------------------------------------------------------------------------ trainer options
@pytest.mark.parametrize("override", ["trainer.max_epochs=5", "trainer.max_time=00:00:10:00",
                                      "+trainer.sync_batchnorm=true"])
def test_pretrain_refuses_trainer_options_it_controls(tmp_path, override):
    from cemkit.pretrain.command import run

    cfg = _compose("pretrain", ["data.images=i", f"output={tmp_path / 'out'}", override])
    key = override.split("=")[0].lstrip("+")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything was read or written



@pytest.mark.parametrize("override", ["trainer.max_epochs=5", "trainer.check_val_every_n_epoch=2",
                                      "trainer.val_check_interval=0.5", "trainer.num_sanity_val_steps=2"])
def test_finetune_refuses_trainer_options_it_controls(tmp_path, override):
    from cemkit.finetune.orchestrate import run_finetune

    cfg = _compose("finetune", ["data.images=i", "data.labels=l", f"output={tmp_path}", override])
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_finetune(cfg)
    assert not any(tmp_path.iterdir())  # refused before anything was read or written
