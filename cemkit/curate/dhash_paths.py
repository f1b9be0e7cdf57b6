"""The exact ways to compute one pass of PIL's fixed-point resize, and which one this CPU runs fastest.

One pass multiplies ``(rows, W)`` uint8 pixels by PIL's integer weights (``(W, out)``, up to
``2**22``, :func:`~cemkit.curate.lanczos_weights.resample_matrix`) and needs the sums exactly,
because the result is ``(2**21 + sum) >> 22``. Three exact paths, bit for bit the same result:

``int8``
    int8 x int8 -> int32 GEMM (``torch._int_mm``): pixels as ``p - 128``, weights as balanced
    base-128 digits. Fast only where torch hands it to oneDNN's VNNI/AMX kernels; elsewhere torch
    runs a plain loop (about 2 ms per 224 px patch, 40-60x slower than ``float32``).
``float32``
    float32 BLAS GEMM (numpy's OpenBLAS) with the weights split into two digits so that every
    partial sum is an integer below ``2**24`` (exact in any summation order). Fast on any x86-64.
``float64``
    float64 GEMM on the whole weights (sums stay far below ``2**53``). The fallback when no split
    fits (never for the dHash sizes), and a reference.

:func:`resolve_path` picks one: the ``path`` argument, else the ``CEMKIT_DHASH_PATH`` environment
variable, else ``auto``, which is :func:`choose_path` of :func:`cemkit.hardware.cpu_features`
(checked once by timing, :func:`int8_gemm_is_fast`, since torch decides where its int8 GEMM is fast).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import numpy as np

from cemkit.curate.lanczos_weights import PRECISION_BITS, resample_matrix
from cemkit.errors import ConfigError
from cemkit.hardware import CpuFeatures, cpu_features

logger = logging.getLogger(__name__)

PATHS = ("int8", "float32", "float64")
ENV_VAR = "CEMKIT_DHASH_PATH"
_F32_EXACT = float(1 << 24)
_UNIT = 2.0 ** -PRECISION_BITS  # scaling by a power of two is exact in floating point
SCRATCH_ELEMENTS = 1 << 18  # float32 pixels converted and multiplied at once (1 MiB: stays in L2 cache)


def choose_path(features: CpuFeatures, int8_available: bool = True) -> str:
    """The fastest exact path on a CPU: ``int8`` with VNNI or AMX (and ``torch._int_mm``), else ``float32``.

    Examples
    --------
    >>> choose_path(CpuFeatures.from_flags("x", {"avx2", "avx512_vnni"}))
    'int8'
    >>> choose_path(CpuFeatures.from_flags("x", {"avx2"}))
    'float32'
    """
    return "int8" if (features.vnni or features.amx) and int8_available else "float32"


@functools.lru_cache(maxsize=1)
def int8_gemm_available() -> bool:
    """Whether this torch has a working CPU ``torch._int_mm``."""
    try:
        import torch

        a = torch.ones((17, 8), dtype=torch.int8)
        return int(torch._int_mm(a, a.T.contiguous())[0, 0]) == 8
    except (ImportError, AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def auto_path() -> str:
    """:func:`choose_path` for this machine, int8 checked by :func:`int8_gemm_is_fast` (once per process, logged)."""
    features = cpu_features()
    path = choose_path(features)  # torch is imported only where int8 is a candidate
    if path == "int8" and not (int8_gemm_available() and int8_gemm_is_fast()):
        logger.info("dHash path float32: torch's int8 GEMM is missing or slow here although the CPU has "
                    "VNNI/AMX (%s)", features.describe())
        return "float32"
    logger.info("dHash path %s (%s)", path, features.describe())
    return path


def int8_gemm_is_fast(slower_by: float = 3.0) -> bool:
    """Whether torch's int8 GEMM runs its vector kernels here: a once-per-process check of the CPU flags.

    torch hands ``_int_mm`` to oneDNN only on some CPUs and runs a plain loop elsewhere (40-60x
    slower than the float32 path), and which CPUs is torch's choice. So the int8 pass is timed
    once on four 224 px images against the float32 pass (best of 3 each, one thread) and counts
    as fast unless it is ``slower_by`` times slower. Either path gives the same hashes; only the
    speed depends on this.
    """
    from threadpoolctl import threadpool_limits

    x = np.random.default_rng(0).integers(0, 256, (4, 224, 224), dtype=np.uint8)
    buf = np.empty(SCRATCH_ELEMENTS, np.float32)

    def best(run) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return min(times)

    with threadpool_limits(limits=1, user_api="blas"):
        horizontal_int8(x, 9)  # first call: digit matrices, torch kernels
        horizontal_float32(x, 9, buf)
        return best(lambda: horizontal_int8(x, 9)) < slower_by * best(lambda: horizontal_float32(x, 9, buf))


def resolve_path(path: str | None = None) -> str:
    """The path to run: ``path`` if given, else ``$CEMKIT_DHASH_PATH``, else ``auto`` (:func:`auto_path`).

    Raises
    ------
    ConfigError
        For a name other than ``auto``, ``int8``, ``float32`` or ``float64``.
    """
    where = "path argument"
    if path is None:
        path, where = os.environ.get(ENV_VAR, "") or "auto", ENV_VAR
    if path == "auto":
        return auto_path()
    if path not in PATHS:
        raise ConfigError(f"{where}: unknown dHash path {path!r}; use auto, {', '.join(PATHS)}")
    return path


@functools.lru_cache(maxsize=64)
def float32_digits(in_size: int, out_size: int) -> tuple[np.ndarray, int] | None:
    """Fixed-point weights split into two balanced digits for an exact float32 product.

    ``w = hi * base + lo`` with ``lo`` in ``[-base/2, base/2)``. A float32 product of uint8 pixels
    with one digit column is exact when ``255 * sum(|digit|)`` over the column is below ``2**24``
    (every partial sum is then an integer float32 represents exactly, in any summation order).

    Returns
    -------
    tuple or None
        ``(matrix (in_size, 2 * out_size) float32 = [lo | hi], base)``, or None when no base
        satisfies the bound.
    """
    w = resample_matrix(in_size, out_size).astype(np.int64)
    for shift in range(6, 16):
        base = 1 << shift
        lo = ((w + base // 2) % base) - base // 2
        hi = (w - lo) // base
        if (255 * np.abs(lo).sum(0).max() < _F32_EXACT
                and 255 * np.abs(hi).sum(0).max() < _F32_EXACT):
            mat = np.ascontiguousarray(np.concatenate([lo, hi], axis=1).astype(np.float32))
            mat.setflags(write=False)
            return mat, base
    return None


@functools.lru_cache(maxsize=64)
def digit_weights(base: int, n_digits: int, out_size: int, n_cols: int) -> np.ndarray:
    """``(n_cols, out_size)`` float64 matrix that sums digit products into scaled pixel sums.

    Column block ``j`` (``out_size`` columns, ``j = 0`` least significant) of a digit product gets
    the weight ``base**j * 2**-22``; rows past ``n_digits * out_size`` (padding) are zero. Every
    entry is a power of two, so the float64 product with integer digit sums below ``2**31`` is
    the exact ``sum / 2**22``.

    Examples
    --------
    >>> digit_weights(128, 2, 1, 3) * 2 ** 22
    array([[  1.],
           [128.],
           [  0.]])
    """
    mat = np.zeros((n_cols, out_size), np.float64)
    for j in range(n_digits):
        mat[j * out_size:(j + 1) * out_size] = np.eye(out_size) * (float(base) ** j * _UNIT)
    mat.setflags(write=False)
    return mat


@functools.lru_cache(maxsize=64)
def int8_digits(in_size: int, out_size: int):
    """Fixed-point weights as balanced base-128 int8 digits for an exact int8 x int8 -> int32 GEMM.

    ``w = sum_j d_j * 128**j`` with every ``d_j`` in ``[-64, 63]`` (the top one in ``[-128, 127]``).

    Returns
    -------
    tuple
        ``(digits (in_pad, n_digits * out_size padded to a multiple of 8) int8 tensor, n_digits,
        column sums of w (int64))``; ``in_pad`` is ``in_size`` rounded up to a multiple of 8
        (the extra rows are zero).
    """
    import torch

    w = resample_matrix(in_size, out_size).astype(np.int64)
    digits = []
    r = w.copy()
    while True:
        d = ((r + 64) % 128) - 64
        digits.append(d)
        r = (r - d) // 128
        if not r.any():
            break
    cols = len(digits) * out_size
    in_pad = -(-in_size // 8) * 8
    mat = np.zeros((in_pad, -(-cols // 8) * 8), np.int8)
    mat[:in_size, :cols] = np.concatenate(digits, axis=1)
    return torch.from_numpy(mat), len(digits), w.sum(axis=0)


def _to_u8(scaled: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """PIL's ``clip((2**21 + sum) >> 22, 0, 255)`` from ``scaled = (2**21 + sum) / 2**22`` (float64, exact).

    Clipping to ``[0, 255]`` first makes the truncating cast to uint8 a floor. ``scaled`` is
    modified in place.
    """
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8).reshape(shape)


def horizontal_int8(x: np.ndarray, out_w: int) -> np.ndarray:
    """Horizontal pass with ``torch._int_mm``: pixels as ``p - 128``, ``128 * sum(w)`` added back."""
    import torch

    n, h, w = x.shape
    mat, nd, colsum = int8_digits(w, out_w)
    rows = (x.reshape(n * h, w) ^ np.uint8(0x80)).view(np.int8)
    if rows.shape[0] <= 16:  # _int_mm needs more than 16 rows
        rows = np.concatenate([rows, np.zeros((17 - rows.shape[0], w), np.int8)])
    if mat.shape[0] != w:
        rows = np.pad(rows, ((0, 0), (0, mat.shape[0] - w)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sums = torch._int_mm(torch.from_numpy(np.ascontiguousarray(rows)), mat).numpy()[: n * h]
    finally:
        torch.set_num_threads(threads)
    scaled = sums.astype(np.float64) @ digit_weights(128, nd, out_w, sums.shape[1])
    scaled += (128 * colsum + (1 << (PRECISION_BITS - 1))) * _UNIT
    return _to_u8(scaled, (n, h, out_w))


def horizontal_float32(x: np.ndarray, out_w: int, buf: np.ndarray | None = None) -> np.ndarray:
    """Horizontal pass as one float32 GEMM on two weight digits (:func:`float32_digits`).

    Falls back to :func:`horizontal_float64` when no split is exact. Rows are converted to
    float32 and multiplied :data:`SCRATCH_ELEMENTS` pixels at a time, in ``buf`` (optional float32
    scratch; allocated when smaller than ``min(N * H, SCRATCH_ELEMENTS // W) * W``).
    """
    n, h, w = x.shape
    split = float32_digits(w, out_w)
    if split is None:
        return horizontal_float64(x, out_w)
    mat, base = split
    rows = x.reshape(n * h, w)
    step = min(len(rows), max(1, SCRATCH_ELEMENTS // w))
    if buf is None or buf.size < step * w:
        buf = np.empty(step * w, np.float32)
    digits = np.empty((len(rows), mat.shape[1]), np.float32)
    for r0 in range(0, len(rows), step):
        r1 = min(len(rows), r0 + step)
        xf = buf[: (r1 - r0) * w].reshape(r1 - r0, w)
        np.copyto(xf, rows[r0:r1])
        np.matmul(xf, mat, out=digits[r0:r1])  # exact integers (see float32_digits)
    scaled = digits.astype(np.float64) @ digit_weights(base, 2, out_w, 2 * out_w)
    scaled += 0.5
    return _to_u8(scaled, (n, h, out_w))


def horizontal_float64(x: np.ndarray, out_w: int) -> np.ndarray:
    """Horizontal pass as one float64 GEMM on the whole weights (partial sums far below ``2**53``)."""
    n, h, w = x.shape
    scaled = x.reshape(n * h, w).astype(np.float64) @ (resample_matrix(w, out_w) * _UNIT)
    scaled += 0.5
    return _to_u8(scaled, (n, h, out_w))


def horizontal_pass(x: np.ndarray, out_w: int, path: str, buf: np.ndarray | None = None) -> np.ndarray:
    """PIL's horizontal LANCZOS pass on ``(N, H, W)`` uint8 -> ``(N, H, out_w)`` uint8, by ``path``."""
    if path == "int8":
        return horizontal_int8(x, out_w)
    if path == "float32":
        return horizontal_float32(x, out_w, buf)
    if path == "float64":
        return horizontal_float64(x, out_w)
    raise ValueError(f"unknown dHash path {path!r}; use one of {PATHS}")
