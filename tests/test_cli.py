"""The `cemkit` command line: help, Hydra composition, override errors, packaging of configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cemkit.cli import main as cli_main
from cemkit.cli.commands import COMMANDS, Command

REPO = Path(__file__).resolve().parents[1]
CEMKIT = Path(sys.executable).with_name("cemkit")


def _run(args, cwd, env=None):
    return subprocess.run([str(CEMKIT), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})


def test_help_lists_every_command_with_a_description(tmp_path):
    res = _run(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    for name in ("curate", "pretrain", "finetune", "predict", "evaluate", "export", "zoo", "demo"):
        line = next((ln for ln in res.stdout.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"{name} missing from --help"
        assert len(line.split(maxsplit=1)[1]) > 20  # a real one-line description


def test_cfg_job_prints_resolved_config_from_any_directory(tmp_path):
    res = _run(["curate", "--cfg", "job", "input=raw", "output=corpus"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "input: raw" in res.stdout and "output: corpus" in res.stdout


def test_group_override_selects_encoder(tmp_path):
    res = _run(["pretrain", "--cfg", "job", "model/encoder=resnet18"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "arch: resnet18" in res.stdout


def test_misspelled_key_fails_naming_the_key(tmp_path):
    res = _run(["curate", "input=raw", "outptu=x"], cwd=tmp_path)
    assert res.returncode != 0
    assert "outptu" in res.stderr + res.stdout


def test_unknown_command_is_rejected(capsys):
    assert cli_main.main(["segment"]) == 2
    assert "unknown command 'segment'" in capsys.readouterr().err


def test_unbuilt_stage_says_so_and_exits_nonzero(monkeypatch, capsys):
    fake = Command("future", "cemkit.no_such_stage.command:run", "A stage that does not exist yet.")
    monkeypatch.setitem(cli_main.BY_NAME, "future", fake)
    assert cli_main.main(["future"]) == 3
    assert "not built yet" in capsys.readouterr().err


def test_every_listed_command_is_built():
    for command in COMMANDS:
        assert cli_main._load(command.target) is not None, f"cemkit {command.name} is not implemented"


def test_user_errors_exit_2_without_traceback(tmp_path):
    res = _run(["curate", f"input={tmp_path / 'does_not_exist'}", f"output={tmp_path / 'out'}"], cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "does_not_exist" in res.stderr + res.stdout


def test_wheel_ships_configs_and_cli_finds_them_outside_the_repo(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("cemkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "cemkit/conf/curate.yaml" in names
    assert "cemkit/conf/model/encoder/resnet50.yaml" in names
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    res = subprocess.run([sys.executable, "-c", "import sys; from cemkit.cli.main import main; sys.exit(main())",
                          "curate", "--cfg", "job", "input=x"], cwd=run_dir, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "input: x" in res.stdout


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "none"])
def test_logger_configs_instantiate(tmp_path, logger, monkeypatch):
    from hydra import compose, initialize_config_module

    from cemkit.tracking import build_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        cfg = compose(config_name="pretrain", overrides=[f"logger={logger}", f"output={tmp_path}"])
    built = build_logger(cfg.logger)
    if logger == "none":
        assert built is None
    else:
        assert type(built).__name__.lower().startswith({"csv": "csv", "tensorboard": "tensorboard", "wandb": "wandb"}[logger])


def test_comma_separated_checkpoints_are_a_list_not_a_sweep(tmp_path):
    res = _run(["predict", "--cfg", "job", "checkpoint=a.ckpt,b.ckpt", "input=x"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "- a.ckpt" in res.stdout and "- b.ckpt" in res.stdout
