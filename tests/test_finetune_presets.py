"""The finetune presets compose and hold the settings docs/results.md chose."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from cemkit.finetune.budget import parse_duration


def _finetune(*overrides: str):
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        return compose(config_name="finetune", overrides=["data.images=i", "data.labels=l", *overrides])


def test_cpu_15min_preset_plans_to_end_inside_15_minutes():
    cfg = _finetune("+experiment=cpu_15min")
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "auto"  # bf16 only where the CPU has units
    assert cfg.budget.tuned_steps == 1146
    assert parse_duration(cfg.trainer.max_time) <= 14 * 60  # + start-up and reading the data
    assert cfg.model.tap_max_stride == 16 and cfg.data.num_workers == 0
    assert cfg.data.hard_negatives == 0.5 and cfg.data.val_slices == 0  # chosen in docs/results.md
    assert cfg.trainer.max_steps >= 10000  # the time, not the step count, ends the run


def test_gpu_preset_uses_the_gpu_trainer():
    cfg = _finetune("+experiment=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "auto"  # 16-mixed on a V100 / T4
    assert cfg.trainer.max_time is None and cfg.model.frames == "all"
    assert cfg.budget.tuned_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("preset", ["cpu_15min", "gpu", "tiny_finetune"])
def test_every_preset_key_exists_in_the_finetune_config(preset):
    base = _finetune()
    cfg = _finetune(f"+experiment={preset}")
    assert set(cfg.keys()) == set(base.keys())
    for group in ("data", "model", "trainer", "val", "optim", "loss"):
        assert set(cfg[group].keys()) == set(base[group].keys()), group


def test_the_cpu_preset_on_one_core_warns_about_time(monkeypatch, caplog):
    import logging

    import cemkit.finetune.fit as fit
    from cemkit import hardware

    cfg = _finetune("+experiment=cpu_15min")
    monkeypatch.setattr(hardware, "cpu_features", lambda: hardware.CpuFeatures.from_flags("Slow CPU", {"avx2"}, 1))
    with caplog.at_level(logging.WARNING, logger="cemkit.finetune.fit"):
        fit.warn_about_the_cpu(cfg, parse_duration(cfg.trainer.max_time))
    assert "1 CPU core: the presets are tuned for 2" in caplog.text and "840 s" in caplog.text
