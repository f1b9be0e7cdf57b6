"""`cemkit study`: slice specs and splits, bad input before training, and one tiny study end to end
(rows, failing init, folds, report with an embedded plot, resume of a deleted run)."""

from __future__ import annotations

import base64
import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from cemkit.cli.main import main as cli
from cemkit.errors import ConfigError
from cemkit.study import pipeline
from cemkit.study.data import StudyVolume
from cemkit.study.report import curve_stats
from cemkit.study.runs import RunSpec, finetune_config, init_slug, split_init
from cemkit.study.slices import (
    evenly_spaced,
    fold_splits,
    format_slices,
    labelled_counts,
    parse_slices,
    seed_list,
    training_range,
)
from tiny_data import labelled_tif_pair


# ------------------------------------------------------------------------------------ slices (pure)
def test_slice_specs_parse_to_sorted_indices():
    assert parse_slices("14-19", "k", 20) == [14, 15, 16, 17, 18, 19]
    assert parse_slices("0-3,8", "k", 10) == [0, 1, 2, 3, 8]
    assert parse_slices(["0-1", 5, "3"], "k", 10) == [0, 1, 3, 5]
    assert parse_slices(4, "k", 10) == [4]
    assert format_slices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(ConfigError, match=r"study.test_slices: slices 20-21 are outside the volume \(z 0-19"):
        parse_slices("18-21", "study.test_slices", 20)
    with pytest.raises(ConfigError, match="k: the range '5-3' is empty"):
        parse_slices("5-3", "k", 10)
    with pytest.raises(ConfigError, match="'a' is not a slice index"):
        parse_slices("a", "k", 10)


def test_the_cdeep3m_recipe_split_is_expressible():
    """scripts/real_em_recipe.py: files 010-021 train, 024-029 test (z 0-11 and 14-19), two slices of gap."""
    test = parse_slices("14-19", "study.test_slices", 20)
    assert training_range("0-11", test, 2, 20) == list(range(12))
    assert training_range(None, test, 2, 20) == list(range(12))  # the default: everything > gap away
    assert training_range(None, [0, 1], 1, 5) == [3, 4]


def test_evenly_spaced_slices_and_folds_are_exact():
    assert evenly_spaced(range(12), 1) == [6]
    assert evenly_spaced(range(12), 2) == [0, 11]
    assert evenly_spaced(range(12), 4) == [0, 4, 7, 11]
    assert evenly_spaced([3, 5, 9], 3) == [3, 5, 9]
    assert fold_splits(range(6), 3, 0) == [([2, 3, 4, 5], [0, 1]), ([0, 1, 4, 5], [2, 3]), ([0, 1, 2, 3], [4, 5])]
    assert fold_splits(range(6), 2, 1) == [([4, 5], [0, 1, 2]), ([0, 1], [3, 4, 5])]
    assert seed_list(3, 42) == [42, 43, 44]
    assert seed_list([0, 7], 42) == [0, 7]
    assert labelled_counts([8, 1, 2, 2]) == [1, 2, 8]


def test_curve_stats_pool_seeds_per_init_and_count():
    rows = [{"init": "none", "labelled_slices": 2, "iou": v, "status": "ok"} for v in (0.2, 0.4, 0.6)]
    rows += [{"init": "none", "labelled_slices": 1, "iou": 0.1, "status": "ok"},
             {"init": "bad", "labelled_slices": 1, "iou": None, "status": "failed"}]
    stats = curve_stats(rows)
    assert list(stats) == ["none"]
    assert stats["none"][0] == (1, 0.1, 0.1, 0.1, 1)
    n, mean, lo, hi, k = stats["none"][1]
    assert (n, lo, hi, k) == (2, 0.2, 0.6, 3) and mean == pytest.approx(0.4)


# ------------------------------------------------------------------------------------ config and bad input
def _compose(*overrides: str):
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        return compose(config_name="study", overrides=["+experiment=tiny_study", *overrides])


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, Path]:
    return labelled_tif_pair(tmp_path_factory.mktemp("study_data"), shape=(10, 64, 64), seed=0, style=0)


def test_every_run_is_planned_once_with_its_own_folder(tmp_path):
    cfg = _compose("data.images=i", "data.labels=l", "study.test_slices=8-9", "study.gap=1",
                   "study.inits=[none,zoo:x]", "study.labelled=[1,2,4]", "study.seeds=[0,7]", "study.folds=2")
    vol = StudyVolume(np.zeros((10, 8, 8), np.uint8), np.zeros((10, 8, 8), np.uint8), "i", "l")
    plan = pipeline.plan_study(cfg, vol)
    pipeline.add_runs(plan, vol, tmp_path)
    assert plan.train == list(range(7)) and plan.labelled == {1: [3], 2: [0, 6], 4: [0, 2, 4, 6]}
    assert len(plan.runs) == 2 * 3 * 2 and len({r.folder for r in plan.runs}) == 12
    assert len(plan.fold_runs) == 2 * 2 * 2
    assert np.load(plan.runs[0].test_data[0]).shape == (2, 8, 8)


@pytest.mark.parametrize("overrides, message", [
    (["study.test_slices=8-9", "study.gap=1", "study.labelled=[1,8]"],
     r"study.labelled asks for 8 labelled slices, but the training range \(study.train_slices=0-6\) has only 7"),
    (["study.test_slices=6-9", "study.train_slices=0-7"],
     r"study.test_slices overlaps study.train_slices: slices 6-7 are in both"),
    (["study.test_slices=8-9", "study.train_slices=0-6", "study.gap=2"],
     r"study.train_slices 6 are within study.gap=2 slices of study.test_slices=8-9"),
    (["study.test_slices=8-12"], r"study.test_slices: slices 10-12 are outside the volume"),
    (["study.test_slices=8-9", "model.frames=3"], r"model.frames must be 1"),
])
def test_bad_study_fails_before_training(volume, tmp_path, overrides, message):
    out = tmp_path / "out"
    cfg = _compose(f"data.images={volume[0]}", f"data.labels={volume[1]}", f"output={out}", *overrides)
    with pytest.raises(ConfigError, match=message):
        pipeline.run_study(cfg)
    assert not (out / "labelled").exists()


@pytest.fixture
def keep_logging():
    """Hydra points the root logger's handlers at the captured stdout: put the previous ones back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_reports_a_bad_study_and_exits_2(volume, tmp_path, capsys, keep_logging):
    code = cli(["study", "+experiment=tiny_study", f"data.images={volume[0]}", f"data.labels={volume[1]}",
                f"output={tmp_path / 'out'}", "study.test_slices=4-5", "study.train_slices=0-4"])
    assert code == 2
    captured = capsys.readouterr()
    assert "study.test_slices overlaps study.train_slices" in captured.out + captured.err


def test_each_run_gets_the_finetune_config_with_its_data_init_seed_and_overrides(tmp_path):
    cfg = _compose("data.images=i", "data.labels=l", "study.test_slices=8-9", "trainer.max_steps=7",
                   "study.finetune={data.crop: 32}")
    spec = RunSpec("zoo:cem500k_mocov2_resnet50@resnet50", 3, [0], [8], tmp_path / "run",
                   (tmp_path / "a.npy", tmp_path / "b.npy"), (tmp_path / "c.npy", tmp_path / "d.npy"))
    run = finetune_config(cfg, spec)
    assert "study" not in run and "study" in cfg
    assert (run.model.init, run.model.encoder.arch) == ("zoo:cem500k_mocov2_resnet50", "resnet50")
    assert (run.seed, run.data.crop, run.trainer.max_steps) == (3, 32, 7)
    assert (run.data.images, run.output) == (str(tmp_path / "a.npy"), str(tmp_path / "run" / "finetune"))
    assert split_init("outputs/a@b/encoder.pth") == ("outputs/a@b/encoder.pth", None)
    assert split_init("none") == ("none", None)


# ------------------------------------------------------------------------------------ a tiny study end to end
TINY = ["trainer.max_steps=2", "val.every=2", "data.batch_size=2", "study.seeds=1"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_study_rows_failing_init_folds_report_and_resume(volume, tmp_path, monkeypatch, caplog):
    out = tmp_path / "study"
    bad = tmp_path / "not_an_encoder.pth"
    bad.write_text("not a checkpoint")
    args = [f"data.images={volume[0]}", f"data.labels={volume[1]}", f"output={out}", "study.test_slices=8-9",
            "study.gap=1", f"study.inits=[none,{bad}]", "study.labelled=[1,2]", "study.folds=2", *TINY]
    cfg = _compose(*args)
    calls: list[Path] = []
    real = pipeline.execute

    def counting(base, spec, settings, keep="best"):
        calls.append(spec.folder)
        return real(base, spec, settings, keep)

    monkeypatch.setattr(pipeline, "execute", counting)
    result = pipeline.run_study(cfg)

    rows = _rows(out / "study.csv")
    assert {"init", "labelled_slices", "seed", "iou", "precision", "recall", "steps", "seconds",
            "train_slices", "test_slices", "status", "error"} <= set(rows[0])
    assert len(rows) == 2 * 2  # 2 inits x 2 counts x 1 seed
    ok = [r for r in rows if r["init"] == "none"]
    assert [r["status"] for r in ok] == ["ok", "ok"]
    assert [r["train_slices"] for r in ok] == ["3", "0 6"]  # evenly spaced over 0-6, never 7 (gap) or 8-9 (test)
    assert all(r["test_slices"] == "8 9" and 0.0 <= float(r["iou"]) <= 1.0 and r["steps"] == "2" for r in ok)
    # the init that does not load is named, failed, and the rest of the study ran
    failed = [r for r in rows if r["init"] == str(bad)]
    assert len(failed) == 2 and all(r["status"] == "failed" and str(bad) in r["error"] for r in failed)
    assert str(bad) in result["failed_inits"]
    assert len(calls) == 1 + 2 + 2  # the bad init is tried once; 2 labelled runs and 2 fold runs of `none`

    folds = _rows(out / "folds.csv")
    ok_folds = [r for r in folds if r["status"] == "ok"]
    assert [r["fold"] for r in ok_folds] == ["0", "1"]
    held = sorted(int(z) for r in ok_folds for z in r["test_slices"].split())
    assert held == list(range(7))  # the folds' held-out blocks cover the training range once

    report = (out / "report.html").read_text()
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")
    assert "Cross-validation" in report and str(bad) in report

    # resume: finished runs are skipped; a run whose row is deleted runs again, alone
    redo = out / "labelled" / "none" / "n2_seed42"
    first = json.loads((redo / "row.json").read_text())
    (redo / "row.json").unlink()
    kept = (out / "labelled" / "none" / "n1_seed42" / "row.json").stat().st_mtime_ns
    model = (redo / "finetune" / "1fm" / "best.ckpt").stat().st_mtime_ns
    calls.clear()
    pipeline.run_study(cfg)
    assert calls == [out / "labelled" / init_slug(str(bad)) / "n1_seed42", redo]  # the bad init is retried
    assert (out / "labelled" / "none" / "n1_seed42" / "row.json").stat().st_mtime_ns == kept
    again = json.loads((redo / "row.json").read_text())
    assert (redo / "finetune" / "1fm" / "best.ckpt").stat().st_mtime_ns == model  # the finished model is kept
    assert again["iou"] == pytest.approx(first["iou"], abs=1e-6) and again["status"] == "ok"  # re-predicted, re-scored
    assert len(_rows(out / "study.csv")) == 4
    assert "other settings" not in caplog.text

    # the same output with another budget: nothing is retrained, and the finished runs are reported as made
    # with other settings
    calls.clear()
    pipeline.run_study(_compose(*[a for a in args if not a.startswith("trainer.max_steps")], "trainer.max_steps=3"))
    assert [c for c in calls if "none" in c.parts] == []
    assert "finished runs were made with other settings" in caplog.text


def test_a_trained_model_is_an_init_and_adapts_better_than_random_init(volume, tmp_path):
    """study.inits takes a finetune output folder (domain adaptation): its runs start from the trained model,
    keep its architecture, and with the same 2 steps on 1 slice score above random init."""
    source = tmp_path / "source"
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        src = compose(config_name="finetune", overrides=[
            "+experiment=tiny_finetune", f"data.images={volume[0]}", f"data.labels={volume[1]}",
            f"output={source}", "data.val_slices=0", "trainer.max_steps=40", "val.every=40", "logger=none"])
    from cemkit.finetune.orchestrate import run_finetune

    run_finetune(src)
    out = tmp_path / "study"
    cfg = _compose(f"data.images={volume[0]}", f"data.labels={volume[1]}", f"output={out}",
                   "study.test_slices=8-9", "study.gap=1", f"study.inits=[none,{source}]", "study.labelled=[1]",
                   "model.encoder.arch=resnet18", *TINY)
    pipeline.run_study(cfg)
    rows = {r["init"]: r for r in _rows(out / "study.csv")}
    assert rows["none"]["status"] == rows[str(source)]["status"] == "ok"
    assert rows[str(source)]["init_kind"] == "segmenter" and rows["none"]["init_kind"] == "none"
    assert rows[str(source)]["arch"] == "resnet10t"  # the trained model's encoder, not model.encoder.arch
    assert rows["none"]["arch"] == "resnet18"
    assert float(rows[str(source)]["iou"]) > float(rows["none"]["iou"]) + 0.1
