"""``trainer.precision=auto`` resolves to the precision the device computes natively; an explicit value wins;
the budget planner warns when its plan falls far below the preset's tuned steps."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest

from cemkit import hardware
from cemkit.cli.main import main as cli
from cemkit.finetune.budget import TimeBudget, short_plan_warning
from cemkit.hardware import CpuFeatures
from cemkit.precision import accelerator_device, emulates_bf16, resolve_precision, trainer_precision
from tiny_data import labelled_tif_pair

AVX2_ONLY = CpuFeatures.from_flags("AMD EPYC 7B13", {"avx2", "fma"}, cores=2)
AVX512_NO_BF16 = CpuFeatures.from_flags("Intel Xeon Gold 6148", {"avx2", "avx512f", "avx512_vnni"}, cores=2)
AVX512_BF16 = CpuFeatures.from_flags("AMD EPYC 9554", {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, cores=2)
AMX = CpuFeatures.from_flags("Intel Xeon Platinum 8480+", {"avx2", "avx512f", "amx_bf16", "amx_tile"}, cores=2)


@pytest.mark.parametrize("cpu,expected", [(AVX2_ONLY, "32-true"), (AVX512_NO_BF16, "32-true"),
                                          (AVX512_BF16, "bf16-mixed"), (AMX, "bf16-mixed")])
def test_auto_on_a_cpu_is_bf16_only_with_bf16_units(cpu, expected):
    precision, why = resolve_precision("auto", "cpu", cpu, None)
    assert precision == expected
    assert cpu.model in why and ("has bf16 units" in why) == (expected == "bf16-mixed")


@pytest.mark.parametrize("capability,expected", [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"), ((8, 6), "bf16-mixed"),
                                                 ((7, 5), "16-mixed"), ((7, 0), "16-mixed"), ((6, 1), "32-true")])
def test_auto_on_a_cuda_gpu_follows_its_capability(capability, expected):
    # the CPU does not count on a GPU: a CPU without bf16 units next to an A100 still gives bf16
    precision, why = resolve_precision("auto", "cuda", AVX2_ONLY, capability)
    assert precision == expected
    assert f"CUDA capability {capability[0]}.{capability[1]}" in why


def test_auto_elsewhere_is_float32():
    assert resolve_precision("auto", "mps", AMX, None)[0] == "32-true"
    assert resolve_precision("auto", "cuda", AMX, None)[0] == "32-true"  # capability unknown


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed", "64-true"])
def test_an_explicit_precision_wins(explicit):
    for device, capability in (("cpu", None), ("cuda", (7, 0)), ("cuda", (9, 0))):
        for cpu in (AVX2_ONLY, AMX):
            assert resolve_precision(explicit, device, cpu, capability) == (explicit, "set explicitly")


def test_the_accelerator_decides_the_device():
    assert [accelerator_device(a, cuda_available=True) for a in ("auto", "gpu", "cuda", "cpu", "mps")] == \
        ["cuda", "cuda", "cuda", "cpu", "mps"]
    assert accelerator_device("auto", cuda_available=False) == "cpu"


def test_emulated_bf16_is_bf16_on_a_cpu_without_units():
    assert emulates_bf16("bf16-mixed", "cpu", AVX2_ONLY) and emulates_bf16("bf16-true", "cpu", AVX512_NO_BF16)
    assert not emulates_bf16("bf16-mixed", "cpu", AMX) and not emulates_bf16("bf16-mixed", "cuda", AVX2_ONLY)
    assert not emulates_bf16("32-true", "cpu", AVX2_ONLY)


def _fake_cpu(monkeypatch, cpu: CpuFeatures) -> None:
    monkeypatch.setattr(hardware, "cpu_features", lambda: cpu)


def test_the_log_says_what_auto_chose_and_why(monkeypatch, caplog):
    _fake_cpu(monkeypatch, AVX2_ONLY)
    with caplog.at_level(logging.INFO, logger="cemkit.precision"):
        assert trainer_precision("auto", "cpu") == "32-true"
    assert "trainer.precision=auto -> 32-true on cpu" in caplog.text and "AMD EPYC 7B13" in caplog.text
    assert "no bf16 units" in caplog.text


def test_an_explicit_bf16_on_a_cpu_without_units_is_kept_with_a_warning(monkeypatch, caplog):
    _fake_cpu(monkeypatch, AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="cemkit.precision"):
        assert trainer_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert "without AVX512-BF16/AMX" in caplog.text and "trainer.precision=auto or 32-true" in caplog.text


@pytest.mark.parametrize("cpu,expected", [(AVX2_ONLY, "32-true"), (AMX, "bf16-mixed")])
def test_a_built_trainer_uses_the_resolved_precision(monkeypatch, cpu, expected):
    from cemkit.tracking import build_trainer

    _fake_cpu(monkeypatch, cpu)
    trainer = build_trainer({"accelerator": "cpu", "devices": 1, "precision": "auto", "max_steps": 1},
                            enable_progress_bar=False, enable_model_summary=False)
    assert trainer.precision == expected


# ------------------------------------------------------------------------------------ tiny runs
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return labelled_tif_pair(tmp_path_factory.mktemp("precision"), shape=(4, 64, 64), seed=1)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_finetune_with_precision_auto_runs(pair, tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, AVX2_ONLY)  # the machine of issue 27: float32
    img, lab = pair
    assert cli(["finetune", "+experiment=tiny_finetune", f"data.images={img}", f"data.labels={lab}",
                "trainer.precision=auto", "trainer.max_steps=2", "val.every=2", "data.val_slices=1",
                f"output={tmp_path}"]) == 0
    result = json.loads((tmp_path / "1fm" / "result.json").read_text())
    assert result["steps"] == 2 and result["precision"] == "32-true"


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_pretrain_with_precision_auto_runs(tmp_path, monkeypatch, caplog):
    from cemkit.data.synthetic import make_volume
    from cemkit.io import write_png_folder
    from cemkit.pretrain.command import run
    from tiny_pretrain_config import pretrain_cfg

    _fake_cpu(monkeypatch, AMX)  # bf16 units: bf16-mixed
    images = tmp_path / "images"
    write_png_folder(images, make_volume(shape=(2, 128, 128), seed=0, style=0).image)
    with caplog.at_level(logging.INFO, logger="cemkit.precision"):
        run(pretrain_cfg(tmp_path / "out", images, "trainer.precision=auto", "trainer.max_steps=2"))
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()
    assert "trainer.precision=auto -> bf16-mixed on cpu" in caplog.text


# ------------------------------------------------------------------------------------ the budget's plan check
def test_a_plan_far_below_the_tuned_steps_names_the_cause():
    machine = "CPU: " + AVX2_ONLY.describe()
    text = short_plan_warning(25, 1146, 31.2, "bf16-mixed", machine, emulated_bf16=True)
    assert "plans 25 steps, below a third of the 1146" in text and "31.20 s a step" in text
    assert "bf16-mixed" in text and "AMD EPYC 7B13, 2 cores" in text and "no bf16 units" in text
    assert "trainer.precision=auto" in text
    other = short_plan_warning(300, 1146, 2.6, "32-true", machine, emulated_bf16=False)
    assert "raise trainer.max_time" in other and "32-true" in other
    assert short_plan_warning(382, 1146, 2.0, "32-true", machine, False) is None  # exactly a third is fine
    assert short_plan_warning(381, 1146, 2.0, "32-true", machine, False) is not None
    assert short_plan_warning(5, None, 31.2, "bf16-mixed", machine, True) is None  # no tuned steps: no check


class _FakeTrainer(SimpleNamespace):
    """What ``TimeBudget``'s first plan touches of a Lightning trainer."""

    def __init__(self, precision: str, step: int):
        from pytorch_lightning.accelerators import CPUAccelerator

        super().__init__(global_step=step, precision=precision, accelerator=CPUAccelerator(),
                         strategy=SimpleNamespace(broadcast=lambda value, src: value), lr_scheduler_configs=[],
                         fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=-1)))


def test_the_time_budget_warns_about_a_short_first_plan(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "describe_machine", lambda: "CPU: " + AVX2_ONLY.describe())
    _fake_cpu(monkeypatch, AVX2_ONLY)
    module = SimpleNamespace(total_steps=0)
    for tuned, warned in ((1146, True), (60, False)):
        budget = TimeBudget(840.0, 100, started=time.monotonic(), max_steps=100000, tuned_steps=tuned)
        budget._step_times = [40.0] + [31.2] * 5  # the emulated-bf16 CPU: 31.2 s a step
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cemkit.finetune.budget"):
            budget._first_plan(_FakeTrainer("bf16-mixed", 6), module)
        assert 6 < budget.total < 40 and module.total_steps == budget.total
        assert ("31.20 s a step at precision bf16-mixed on CPU: AMD EPYC 7B13" in caplog.text) == warned
        assert ("set trainer.precision=auto (float32 here)" in caplog.text) == warned


def test_cemkit_cpu_flags_emulates_a_cpu_without_bf16_units(monkeypatch):
    """``CEMKIT_CPU_FLAGS`` (set by scripts/as_avx2_cpu.py) makes cemkit choose as on that CPU."""
    monkeypatch.setenv(hardware.FLAGS_ENV, "avx2,fma")
    hardware.cpu_features.cache_clear()
    try:
        cpu = hardware.cpu_features()
        assert (cpu.avx2, cpu.avx512, cpu.bf16, cpu.vnni, cpu.amx) == (True, False, False, False, False)
        assert "as if with only [avx2, fma] ($CEMKIT_CPU_FLAGS)" in cpu.model
        assert resolve_precision("auto", "cpu", cpu, None)[0] == "32-true"
    finally:
        monkeypatch.delenv(hardware.FLAGS_ENV)
        hardware.cpu_features.cache_clear()
