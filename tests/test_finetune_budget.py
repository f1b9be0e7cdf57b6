"""`trainer.max_time`: a wall-clock budget that plans the step count and ends the schedule with it."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from cemkit.cli.main import main as cli
from cemkit.errors import ConfigError
from cemkit.finetune.budget import (
    PolyLambda,
    parse_duration,
    planned_steps,
    retarget_schedule,
    validations_between,
)
from tiny_data import labelled_tif_pair


def test_durations_in_lightning_and_plain_forms():
    assert parse_duration("00:00:15:00") == 900.0
    assert parse_duration("01:30") == 90.0
    assert parse_duration(45) == 45.0
    assert parse_duration({"minutes": 2, "seconds": 3}) == 123.0
    assert parse_duration(timedelta(hours=1)) == 3600.0
    assert parse_duration(None) is None
    for bad in ("soon", "1:2:3:4:5", 0, -5, {"fortnights": 1}):
        with pytest.raises(ConfigError, match="trainer.max_time"):
            parse_duration(bad)


def test_validations_are_counted_with_one_at_the_end():
    assert validations_between(0, 250, 100) == 3  # 100, 200 and the last step
    assert validations_between(100, 300, 100) == 2
    assert validations_between(100, 100, 100) == 0


def test_planned_steps_fill_the_time_with_steps_and_validations():
    # 90 steps + validations at 50 and 90 = 100 s; a 91st step would need 101 s
    assert planned_steps(0, remaining_s=100.0, step_s=1.0, val_s=5.0, val_every=50) == 90
    # 200 steps + validations at 150, 200, 250, 300 = 240 s; one more step brings a 5th validation
    assert planned_steps(100, remaining_s=250.0, step_s=1.0, val_s=10.0, val_every=50) == 300
    assert planned_steps(100, remaining_s=5.0, step_s=1.0, val_s=5.0, val_every=50) == 100
    assert planned_steps(7, remaining_s=-3.0, step_s=1.0, val_s=0.0, val_every=50) == 7
    with pytest.raises(ValueError):
        planned_steps(0, 10.0, 0.0, 1.0, 5)


def _opt():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_a_retargeted_one_cycle_continues_as_one_made_for_the_new_length():
    # planned after 6 steps of a provisional 1000: the rest follows OneCycleLR(total=200) exactly
    opt_a = _opt()
    a = torch.optim.lr_scheduler.OneCycleLR(opt_a, max_lr=1.0, total_steps=1000, pct_start=0.3)
    head = _lrs(opt_a, a, 6)
    retarget_schedule(a, 200)
    tail = _lrs(opt_a, a, 194)
    opt_b = _opt()
    b = torch.optim.lr_scheduler.OneCycleLR(opt_b, max_lr=1.0, total_steps=200, pct_start=0.3)
    fresh = _lrs(opt_b, b, 200)
    # the rate already set for step 6 was computed with the old length; from step 7 on the new one rules
    assert np.allclose(tail[1:], fresh[7:], rtol=1e-12)
    # during the probe the warm-up is still near its start (max_lr / 25) whatever the length
    assert max(abs(x - y) for x, y in zip(head, fresh[:6])) < 0.03
    assert tail[-1] == pytest.approx(1.0 / 25 / 1e4, rel=1e-6)  # annealed to the end


def test_a_retargeted_poly_schedule_reaches_zero_at_the_new_length():
    opt = _opt()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, PolyLambda(1000, 1.0))
    _lrs(opt, sched, 10)
    retarget_schedule(sched, 20)
    assert _lrs(opt, sched, 10)[-1] == pytest.approx(1 / 20)
    assert opt.param_groups[0]["lr"] == 0.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return labelled_tif_pair(tmp_path_factory.mktemp("budget"), shape=(6, 96, 96), seed=3)


def test_a_time_budget_ends_the_schedule_when_the_time_ends(pair, tmp_path):
    img, lab = pair
    out = tmp_path / "run"
    budget = 25.0
    assert cli(["finetune", "+experiment=tiny_finetune", f"data.images={img}", f"data.labels={lab}",
                f"trainer.max_time={budget}", "trainer.max_steps=100000", "val.every=10",
                "trainer.log_every_n_steps=1", f"output={out}"]) == 0
    result = json.loads((out / "1fm" / "result.json").read_text())
    plan = result["budget"]
    assert plan["seconds"] == budget
    assert result["steps"] == plan["planned_steps"] >= 20
    assert plan["elapsed"] <= budget + 3.0  # measured from the start of the model's run to its end
    assert [h["step"] for h in result["history"]][-1] == result["steps"]  # ends with a validation
    with open(out / "1fm" / "logs" / "metrics.csv") as fh:
        lrs = [float(r["lr-AdamW/encoder"]) for r in csv.DictReader(fh) if r.get("lr-AdamW/encoder")]
    # one cycle: up to optim.encoder_lr (3e-3) and annealed to ~0 at the planned end, not cut mid-way
    assert max(lrs) == pytest.approx(3e-3, rel=0.05)
    assert lrs[-1] < 3e-3 * 0.02


def test_a_budget_too_small_for_one_validation_block_is_refused(pair, tmp_path, capsys):
    img, lab = pair
    out = tmp_path / "r"
    assert cli(["finetune", "+experiment=tiny_finetune", f"data.images={img}", f"data.labels={lab}",
                "trainer.max_time=3", "trainer.max_steps=100000", f"output={out}"]) == 2
    assert "trainer.max_time=3 s is too short" in "".join(capsys.readouterr())
    assert not (out / "1fm" / "result.json").exists()
