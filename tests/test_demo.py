"""`cemkit demo` end to end on a tiny configuration: every stage runs, the report is complete, resume skips."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cemkit.cli.main import main
from cemkit.demo.branches import worker_plan
from cemkit.demo.pipeline import INITS, MODELS
from cemkit.demo.report import (
    curation_rows,
    ensemble_verdict,
    finetune_curves,
    metric_value,
    read_metric_log,
)
from cemkit.errors import ConfigError
from cemkit.io import open_volume


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # the two encoder inits side by side in two 1-thread processes (what `jobs: auto` picks on 2 cores)
    assert main(["demo", "+experiment=tiny_demo", f"output={out}", "jobs=2", "threads=1"]) == 0
    return out


def test_demo_runs_every_stage_and_writes_the_report(demo_run):
    out = demo_run
    summary = json.loads((out / "demo.json").read_text())
    commands = [r["command"] for r in summary["runs"]]
    for stage in ("curate", "pretrain", "finetune", "predict", "evaluate"):
        assert any(c.startswith(f"cemkit {stage} ") for c in commands), stage
    assert (out / "corpus" / "metadata.json").exists()
    assert (out / "pretrain" / "encoder.pth").exists()
    for init in INITS:
        assert (out / f"finetune_{init}" / "trunk" / "best.ckpt").exists()  # model.trunk.steps=20
        for frames in ("1fm", "3fm", "5fm"):
            assert (out / f"finetune_{init}" / frames / "best.ckpt").exists()
        # the report draws the members after the trunk: trunk validated at steps 10, 20, members at 10 -> 30
        curves = finetune_curves(out / f"finetune_{init}", "val/iou")
        assert curves["trunk (1fm)"][0].tolist() == [9, 19]
        assert all(curves[m][0].tolist() == [29] for m in ("1fm", "3fm", "5fm"))
        for model in MODELS:
            pred = out / "predict" / f"{init}_{model}"
            assert (pred / "probabilities.zarr").exists() and (pred / "objects.csv").exists()
            iou = metric_value(summary["metrics"][init][model], "iou")
            assert iou is not None and 0.0 <= iou <= 1.0
        # the ensemble is the mean of the members' saved maps (predictions=[...]), not a second model run
        maps = [np.asarray(open_volume(out / "predict" / f"{init}_{m}" / "probabilities.zarr")[...]).astype(np.float32)
                for m in MODELS]
        np.testing.assert_allclose(maps[-1], sum(maps[:-1]) / 3, atol=1e-3)
    # the pretrain loss curve the report plots comes from the run's CSV log
    assert "train/loss" in read_metric_log(out / "pretrain" / "logs" / "metrics.csv")

    report = (out / "report.html").read_text()
    for section in ("Synthetic data", "Curation", "Pretraining", "Finetuning", "Predictions", "Metrics", "Commands"):
        assert section in report
    assert report.count("<tr class=\"ens\">") == len(INITS)  # one ensemble row per encoder init
    # each init's verdict gives the bootstrap interval of ensemble - best member over the test volume's slices
    n_slices = json.loads((out / "evaluate" / "random_ensemble" / "metrics.json").read_text())["shape"][0]
    assert report.count(f"interval over the {n_slices} test slices") == len(INITS)
    assert report.count("data:image/png;base64,") >= 4  # montage, curves, overlays are embedded
    # the curation table has one row per curated source plus the total, with the corpus' own counts
    meta = json.loads((out / "corpus" / "metadata.json").read_text())
    rows = curation_rows(meta)
    assert [r[0] for r in rows] == [*meta["counts"], "total"]
    assert rows[-1][2:5] == [str(meta["totals"][k]) for k in ("patches", "exemplars", "kept")]
    assert all(f"<td>{r[0]}</td>" in report for r in rows[:-1]) and "{" not in report.split("Curation")[1].split("<h2>")[0]


def test_branches_one_after_the_other_give_the_same_result_as_side_by_side(demo_run, tmp_path):
    # same data, pretraining and thread count, in this process instead of two workers: identical metrics
    out = tmp_path / "demo"
    (out / ".done").mkdir(parents=True)
    for step in ("curate", "pretrain"):  # reuse the fixture's curated corpus and encoder
        (out / ".done" / step).write_text("0")
    for name in ("data", "corpus", "pretrain"):
        shutil.copytree(demo_run / name, out / name)
    assert main(["demo", "+experiment=tiny_demo", f"output={out}", "jobs=1", "threads=1"]) == 0
    ours = json.loads((out / "demo.json").read_text())
    theirs = json.loads((demo_run / "demo.json").read_text())
    scores = [{init: {m: (r["metrics"][init][m]["pixel"], r["metrics"][init][m]["objects"]) for m in MODELS}
               for init in INITS} for r in (ours, theirs)]
    assert scores[0] == scores[1]
    # the side-by-side run logged each branch to its own file
    for init in INITS:
        assert "demo step: cemkit finetune" in (demo_run / "logs" / f"{init}.log").read_text()


def test_worker_plan_divides_the_cores_among_the_branches():
    assert worker_plan("auto", "auto", 2, cores=2) == (2, 1)
    assert worker_plan("auto", "auto", 2, cores=16) == (2, 8)
    assert worker_plan("auto", "auto", 2, cores=3) == (2, 1)
    assert worker_plan("auto", "auto", 2, cores=1) == (1, None)  # one core: sequential, torch's default threads
    assert worker_plan(1, "auto", 2, cores=16) == (1, None)
    assert worker_plan(1, 4, 2, cores=16) == (1, 4)
    assert worker_plan(5, "auto", 2, cores=16) == (2, 8)  # never more jobs than branches
    for jobs, threads in ((0, "auto"), ("two", "auto"), (2, 0), (2, "many")):
        with pytest.raises(ConfigError, match="jobs|threads"):
            worker_plan(jobs, threads, 2, cores=4)


def test_curation_rows_of_a_corpus_metadata():
    meta = {"counts": {"lab_b": {"patches": 48, "exemplars": 21, "kept": 21, "dropped": {"duplicate": 27},
                                 "planes": [["xy"]]},
                       "fib": {"patches": 736, "exemplars": 87, "kept": 86,
                               "dropped": {"low_contrast": 1, "duplicate": 649},
                               "planes": [["xy", "xz", "yz"], ["xy"]]}},
            "totals": {"patches": 784, "exemplars": 108, "kept": 107}}
    assert curation_rows(meta) == [["lab_b", "xy", "48", "21", "21", "duplicate 27"],
                                   ["fib", "xy/xz/yz", "736", "87", "86", "duplicate 649, low_contrast 1"],
                                   ["total", "", "784", "108", "107", ""]]
    assert curation_rows({}) == []


def test_rerun_resumes_without_redoing_steps(demo_run, capsys):
    assert main(["demo", "+experiment=tiny_demo", f"output={demo_run}"]) == 0
    summary = json.loads((demo_run / "demo.json").read_text())
    assert summary["runs"] and all(r["skipped"] for r in summary["runs"])
    assert "Report:" in capsys.readouterr().out


def test_ensemble_verdict_names_the_best_member_and_the_one_validation_would_pick():
    test = {"1fm": 0.9243, "3fm": 0.9284, "5fm": 0.9234, "ensemble": 0.9282}
    assert ensemble_verdict("random", test, {"1fm": 0.9416, "3fm": 0.9374, "5fm": 0.9409}) == (
        "random: ensemble IoU 0.9282 is below the best single model (3fm, 0.9284) and +0.0028 from the members' "
        "mean (0.9254); the member with the best "
        "validation IoU, the 1fm (0.9416), scores 0.9243 here")
    test["ensemble"] = 0.9284  # a tie counts as at least as good; without validation scores the pick is left out
    assert ensemble_verdict("pretrained", test, {"1fm": None, "3fm": None, "5fm": None}) == (
        "pretrained: ensemble IoU 0.9284 is at least as good as the best single model (3fm, 0.9284) and +0.0030 "
        "from the members' mean (0.9254)")
    # with per-slice counts: the paired-bootstrap interval of ensemble - best member over the test slices
    # (two slices: the resamples' extremes are exactly 0 and 0.25, see tests/test_metrics_bootstrap.py)
    slices = {"ensemble": {"tp": [1, 3], "fp": [1, 1], "fn": [0, 0]}, "3fm": {"tp": [1, 3], "fp": [3, 1], "fn": [0, 0]}}
    test = {"1fm": 0.5, "3fm": 0.45, "5fm": 0.4, "ensemble": 4 / 6}  # the IoUs of those counts: 4/8 and 4/6
    assert ensemble_verdict("random", test, {}, slices) == (
        "random: ensemble IoU 0.6667 is at least as good as the best single model (1fm, 0.5000) and +0.2167 from "
        "the members' mean (0.4500)")  # the best member's counts are missing: no interval
    slices["1fm"] = slices.pop("3fm")
    assert ensemble_verdict("random", test, {}, slices) == (
        "random: ensemble IoU 0.6667 is at least as good as the best single model (1fm, 0.5000) (difference +0.1667, "
        "95% interval over the 2 test slices [+0.0000, +0.2500]: the test volume cannot tell them apart) and "
        "+0.2167 from the members' mean (0.4500)")
