"""``trainer.precision=auto``: the numeric precision that is fast on the device a run really uses.

bf16 autocast is fast only where the hardware computes bf16 (a CPU with AVX512-BF16 or AMX, a CUDA GPU
of capability 8.0 or later); elsewhere it is emulated, and a CPU step under it was measured 13x slower
than float32 (issue 27). Older CUDA GPUs with tensor cores (V100, T4: capability 7.x) compute float16.

:func:`resolve_precision` is the rule (pure); :func:`trainer_precision` applies it to this machine and
logs the choice and why (every Lightning trainer of cemkit is built through
:func:`cemkit.tracking.build_trainer`, which calls it). An explicit value is kept as given.
"""

from __future__ import annotations

import logging

from cemkit.hardware import CpuFeatures

log = logging.getLogger(__name__)

AUTO = "auto"
BF16_CUDA_CAPABILITY = (8, 0)     # Ampere and later: bf16 tensor cores
FP16_CUDA_CAPABILITY = (7, 0)     # Volta / Turing: float16 tensor cores, no bf16


def accelerator_device(accelerator: str, cuda_available: bool) -> str:
    """The device kind a Lightning ``accelerator`` setting runs on: ``cuda``, ``cpu`` or the name as given.

    Examples
    --------
    >>> accelerator_device("auto", cuda_available=False), accelerator_device("gpu", cuda_available=True)
    ('cpu', 'cuda')
    """
    name = str(accelerator).lower()
    if name == "auto":
        return "cuda" if cuda_available else "cpu"
    if name in ("gpu", "cuda"):
        return "cuda"
    return name


def resolve_precision(requested: str, device: str, cpu: CpuFeatures,
                      capability: tuple[int, int] | None) -> tuple[str, str]:
    """``(precision, why)`` for a ``trainer.precision`` value on a device.

    Parameters
    ----------
    requested
        ``auto`` or any Lightning precision (``32-true``, ``bf16-mixed``, ...), which is returned as given.
    device
        ``cpu``, ``cuda`` or another device kind (:func:`accelerator_device`).
    cpu
        The CPU's features (:func:`cemkit.hardware.cpu_features`).
    capability
        The CUDA GPU's compute capability, ``None`` without one.

    Returns
    -------
    tuple of str
        ``auto`` gives ``bf16-mixed`` on a CPU with bf16 units (AVX512-BF16 or AMX) or a CUDA GPU of
        capability >= 8.0, ``16-mixed`` on a CUDA GPU of capability 7.x, ``32-true`` otherwise.

    Examples
    --------
    >>> fast = CpuFeatures.from_flags("X", {"avx512_bf16"})
    >>> resolve_precision("auto", "cpu", fast, None)[0], resolve_precision("auto", "cuda", fast, (7, 5))[0]
    ('bf16-mixed', '16-mixed')
    """
    requested = str(requested)
    if requested != AUTO:
        return requested, "set explicitly"
    if device == "cuda":
        if capability is None:
            return "32-true", "no CUDA capability known"
        cap = f"CUDA capability {capability[0]}.{capability[1]}"
        if tuple(capability) >= BF16_CUDA_CAPABILITY:
            return "bf16-mixed", f"{cap} computes bf16 natively"
        if tuple(capability) >= FP16_CUDA_CAPABILITY:
            return "16-mixed", f"{cap} has float16 tensor cores but no bf16 units"
        return "32-true", f"{cap} has no tensor cores"
    if device == "cpu":
        if cpu.bf16:
            return "bf16-mixed", f"the CPU ({cpu.model}) has bf16 units (AVX512-BF16 or AMX)"
        return "32-true", (f"the CPU ({cpu.model}) has no bf16 units (AVX512-BF16 or AMX): bf16 autocast "
                           "would be emulated and slower than float32")
    return "32-true", f"no mixed-precision rule for device {device!r}"


def emulates_bf16(precision: str, device: str, cpu: CpuFeatures) -> bool:
    """Whether ``precision`` asks for bf16 on a CPU that has no bf16 units (slower than float32 there).

    Examples
    --------
    >>> emulates_bf16("bf16-mixed", "cpu", CpuFeatures.from_flags("X", {"avx2"}))
    True
    """
    return device == "cpu" and "bf16" in str(precision) and not cpu.bf16


def trainer_precision(requested: str, accelerator: str) -> str:
    """The precision a trainer uses on this machine (``auto`` resolved by :func:`resolve_precision`), logged
    with its reason; an explicit bf16 on a CPU without bf16 units is kept with a warning."""
    import torch

    from cemkit.hardware import cpu_features, cuda_capability

    device = accelerator_device(accelerator, torch.cuda.is_available())
    cpu = cpu_features()
    precision, why = resolve_precision(requested, device, cpu, cuda_capability() if device == "cuda" else None)
    if str(requested) == AUTO:
        log.info("trainer.precision=auto -> %s on %s: %s", precision, device, why)
    if emulates_bf16(precision, device, cpu):
        log.warning("trainer.precision=%s on a CPU without AVX512-BF16/AMX (%s): bf16 autocast is emulated and "
                    "slower than float32 here; set trainer.precision=auto or 32-true", precision, cpu.describe())
    return precision
