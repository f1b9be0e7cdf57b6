"""What this machine computes natively: the CPU's model and matrix units, the CUDA GPU's capability.

One source for every choice that depends on the processor: ``trainer.precision=auto``, the dHash
path of curate, the decoder form, and the line each benchmark prints about the machine it ran on.
A preset tuned on one CPU can run 13x slower on another (bf16 autocast is emulated without
AVX512-BF16 or AMX), so these choices are made on the machine at hand, never fixed in a preset.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and the instruction sets that decide which fast path is exact and fast.

    Attributes
    ----------
    model : str
        Model name as the OS reports it (``/proc/cpuinfo`` ``model name``), e.g. ``AMD EPYC 9554``.
    cores : int
        Cores this process may use (its affinity mask).
    avx2, avx512 : bool
        256-bit and 512-bit SIMD (``avx512f``).
    bf16 : bool
        Native bf16 matrix instructions (AVX512-BF16 or AMX-BF16): without them bf16 autocast is emulated
        and slower than float32.
    vnni : bool
        int8 dot products (AVX512-VNNI or AVX-VNNI): without them int8 GEMM (``torch._int_mm``) is slow.
    amx : bool
        Intel AMX tiles (AMX-BF16 / AMX-INT8).
    """

    model: str
    cores: int
    avx2: bool = False
    avx512: bool = False
    bf16: bool = False
    vnni: bool = False
    amx: bool = False

    @classmethod
    def from_flags(cls, model: str, flags: set[str] | frozenset[str], cores: int = 1) -> CpuFeatures:
        """Features from a ``/proc/cpuinfo`` flag set (lower-case names as Linux prints them)."""
        return cls(model=model, cores=cores, avx2="avx2" in flags, avx512="avx512f" in flags,
                   bf16=bool({"avx512_bf16", "amx_bf16"} & flags),
                   vnni=bool({"avx512_vnni", "avx512vnni", "avx_vnni"} & flags),
                   amx=bool({"amx_bf16", "amx_int8", "amx_tile"} & flags))

    def describe(self) -> str:
        """One line for logs and benchmark output, e.g.
        ``AMD EPYC 7B13, 2 cores: AVX2, no AVX-512, no bf16 units, no VNNI, no AMX``."""
        def has(flag: bool, name: str) -> str:
            return name if flag else f"no {name}"
        parts = [has(self.avx2, "AVX2"), has(self.avx512, "AVX-512"), has(self.bf16, "bf16 units"),
                 has(self.vnni, "VNNI"), has(self.amx, "AMX")]
        return f"{self.model}, {self.cores} cores: " + ", ".join(parts)


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` of the first processor in ``/proc/cpuinfo`` text.

    Examples
    --------
    >>> parse_cpuinfo("model name\\t: AMD EPYC\\nflags\\t\\t: fpu avx2 avx512f\\n")
    ('AMD EPYC', frozenset({'avx2', 'avx512f', 'fpu'}))
    """
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


#: ``CEMKIT_CPU_FLAGS=avx2`` (comma-separated /proc/cpuinfo flags): cemkit's choices (precision, dHash path)
#: are made as for a CPU with only these flags. With :data:`AVX2_ONLY_ENV`, which caps the kernels of numpy,
#: torch, MKL and oneDNN at AVX2, a run is timed as on an AVX2-only CPU (``scripts/as_avx2_cpu.py``).
FLAGS_ENV = "CEMKIT_CPU_FLAGS"
AVX2_ONLY_ENV = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                 "ONEDNN_MAX_CPU_ISA": "AVX2", FLAGS_ENV: "avx2"}


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (read once). Off Linux, the flags are unknown and all False.

    ``$CEMKIT_CPU_FLAGS`` replaces the flags (an emulated CPU; the model name says so).
    """
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = "", frozenset()
    emulated = os.environ.get(FLAGS_ENV)
    if emulated is not None:
        flags = frozenset(f.strip().lower() for f in emulated.split(",") if f.strip())
        model = f"{model or 'CPU'} as if with only [{', '.join(sorted(flags))}] (${FLAGS_ENV})"
    return CpuFeatures.from_flags(model or platform.processor() or platform.machine() or "unknown CPU", flags,
                                  _usable_cores())


def cuda_capability(index: int = 0) -> tuple[int, int] | None:
    """The compute capability of CUDA device ``index`` (``(8, 0)`` for an A100), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(index))  # type: ignore[return-value]


def describe_machine() -> str:
    """One line naming the CPU (and the GPU, if any) for benchmark output and docs/results.md."""
    import torch

    line = "CPU: " + cpu_features().describe()
    if torch.cuda.is_available():
        cap = cuda_capability()
        line += f"; GPU: {torch.cuda.get_device_name(0)} (capability {cap[0]}.{cap[1]})"
    return line
