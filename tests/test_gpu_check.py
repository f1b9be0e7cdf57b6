"""scripts/gpu_check.sh and scripts/bench_gpu.py: they parse, and their code paths run on the CPU at tiny sizes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_script_parses():
    res = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_bench_gpu_code_paths_run_tiny_on_the_cpu(tmp_path, capsys):
    bench = _bench_gpu()
    assert bench.main(["--cpu-tiny", "moco"]) == 0
    assert bench.main(["--cpu-tiny", "finetune"]) == 0
    out = capsys.readouterr().out
    assert "ratio cemkit MoCo (Shuffle-BN, 8 splits) / supervised:" in out
    assert "1fm:" in out and "5fm:" in out
    assert bench.main(["--cpu-tiny", "data", str(tmp_path / "d")]) == 0
    from cemkit.io import open_volume

    assert open_volume(tmp_path / "d" / "volume.tif").shape == (6, 100, 100)
    labels = np.asarray(open_volume(tmp_path / "d" / "train_labels.tif")[:])
    assert set(np.unique(labels)) <= {0, 255} and labels.any()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_gpu_without_cuda_says_so(capsys):
    bench = _bench_gpu()
    assert bench.main(["moco"]) == bench.NO_CUDA
    assert bench.main(["finetune"]) == bench.NO_CUDA
    assert capsys.readouterr().out.count("no CUDA device") == 2
