"""Batched difference hash (dHash), bit-exact with ``imagehash.dhash``.

``imagehash.dhash(image, hash_size)`` converts the image to 8-bit grey, resizes it to
``(hash_size + 1, hash_size)`` with PIL's LANCZOS filter and compares horizontally adjacent
pixels. PIL resamples 8-bit images with a separable filter in fixed point (``Resample.c``):

* per output pixel, filter weights are computed in double precision around the pixel centre
  ``(i + 0.5) * scale``, with support ``3 * max(scale, 1)``, and normalised to sum to one;
* the weights are converted to integers with ``PRECISION_BITS = 22`` (round half away from 0);
* two passes (horizontal then vertical, or the other way round when Pillow finds that cheaper,
  see :func:`horizontal_first`), each accumulating ``2**21 + sum(pixel * weight)`` in integers,
  shifting right by 22 and clipping to ``[0, 255]``: the intermediate image is rounded to uint8.

Here each pass is one matrix product over a whole batch of images, in exact integer arithmetic:
an int8 x int8 -> int32 GEMM (``torch._int_mm``) with the pixels offset to ``p - 128`` and the
weights split into base-128 digits, or, where that is unavailable, a float32 BLAS product with
the weights split into two digits so that every partial sum stays an integer below ``2**24``.
Either way the result equals PIL's integer arithmetic bit for bit.

Hash bits are packed big-endian (first pixel comparison = most significant bit), which is the
order ``str(imagehash.ImageHash)`` prints: ``hash_to_hex(h) == str(imagehash.dhash(img))``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 22
_LANCZOS_SUPPORT = 3.0
_CONTROLLER = None


def single_thread_blas():
    """Context manager limiting BLAS to one thread (the products here are too small to share;
    with several processes, threads only contend). Cheap to enter repeatedly."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _sinc(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    nz = x != 0.0
    px = x[nz] * math.pi
    out[nz] = np.sin(px) / px
    return out


def _lanczos(x: np.ndarray) -> np.ndarray:
    """PIL's ``lanczos_filter``: ``sinc(x) * sinc(x / 3)`` on ``[-3, 3)``, else 0."""
    inside = (x >= -3.0) & (x < 3.0)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = _sinc(xi) * _sinc(xi / 3.0)
    return out


@lru_cache(maxsize=64)
def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Fixed-point LANCZOS weights of PIL's resize along one axis.

    Parameters
    ----------
    in_size, out_size : int
        Input and output lengths of the axis.

    Returns
    -------
    np.ndarray
        ``(in_size, out_size)`` float64 matrix holding the integer weights
        (``round(w * 2**22)``, half away from zero) that PIL uses for 8-bit images.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    mat = np.zeros((in_size, out_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C cast truncates toward zero
        xmax = min(int(center + support + 0.5), in_size)
        xs = np.arange(xmin, xmax, dtype=np.float64)
        w = _lanczos((xs - center + 0.5) * ss)
        # PIL sums the weights sequentially in C; reproduce that order for the normalisation.
        ww = 0.0
        for v in w.tolist():
            ww += v
        if ww != 0.0:
            w = w / ww
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)),
                         np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        mat[xmin:xmax, xx] = fixed
    mat.setflags(write=False)
    return mat


_F32_EXACT = float(1 << 24)


@lru_cache(maxsize=64)
def _split_matrix(in_size: int, out_size: int) -> tuple[np.ndarray, float] | None:
    """Fixed-point weights split into two balanced digits for an exact float32 product.

    ``w = hi * base + lo`` with ``lo`` in ``[-base/2, base/2)``. A float32 product of uint8 pixels
    with one digit column is exact when ``255 * sum(|digit|)`` over the column is below ``2**24``
    (every partial sum is then an integer float32 represents exactly, in any summation order).
    Returns ``(matrix (in_size, 2 * out_size) float32, base)``, or None when no base satisfies
    the bound (then the float64 path is used).
    """
    w = resample_matrix(in_size, out_size).astype(np.int64)
    for shift in range(6, 16):
        base = 1 << shift
        lo = ((w + base // 2) % base) - base // 2
        hi = (w - lo) // base
        if (255 * np.abs(lo).sum(0).max() < _F32_EXACT
                and 255 * np.abs(hi).sum(0).max() < _F32_EXACT):
            mat = np.ascontiguousarray(np.concatenate([hi, lo], axis=1).astype(np.float32))
            return mat, float(base)
    return None


@lru_cache(maxsize=64)
def _int8_digits(in_size: int, out_size: int):
    """Fixed-point weights as balanced base-128 int8 digits for an exact int8 x int8 -> int32 GEMM.

    ``w = sum_j d_j * 128**j`` with every ``d_j`` in ``[-64, 63]`` (the top one in ``[-128, 127]``).
    Returns ``(digits (in_pad, n_digits * out_size padded to a multiple of 8) int8 tensor,
    n_digits, column sums of w (int64))``; ``in_pad`` is ``in_size`` rounded up to a multiple of 8
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


_INT_MM_OK: bool | None = None


def _horizontal_int8(x: np.ndarray, out_w: int) -> np.ndarray | None:
    """Horizontal pass with ``torch._int_mm`` (int8 GEMM, exact int32 sums); None if unavailable.

    Pixels become int8 as ``p - 128`` (``p ^ 0x80`` reinterpreted); ``128 * sum(w)`` is added back.
    """
    global _INT_MM_OK
    if _INT_MM_OK is False:
        return None
    try:
        import torch

        n, h, w = x.shape
        mat, nd, colsum = _int8_digits(w, out_w)
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
        _INT_MM_OK = True
    except (ImportError, AttributeError, RuntimeError):
        _INT_MM_OK = False
        return None
    acc = np.zeros((n * h, out_w), np.int64)
    for j in reversed(range(nd)):
        acc = acc * 128 + sums[:, j * out_w:(j + 1) * out_w]
    acc += 128 * colsum + (1 << (PRECISION_BITS - 1))
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8).reshape(n, h, out_w)


def _horizontal(x: np.ndarray, out_w: int, buf: np.ndarray | None = None) -> np.ndarray:
    """Horizontal pass on ``(N, H, W)`` uint8 -> ``(N, H, out_w)`` uint8 (PIL's rounded intermediate).

    ``buf`` is an optional float32 scratch array of at least ``N * H * W`` elements.
    """
    fast = _horizontal_int8(x, out_w)
    if fast is not None:
        return fast
    n, h, w = x.shape
    split = _split_matrix(w, out_w)
    rows = x.reshape(n * h, w)
    if split is not None:
        mat, base = split
        if buf is None or buf.size < rows.size:
            buf = np.empty(rows.size, np.float32)
        xf = buf[: rows.size].reshape(rows.shape)
        np.copyto(xf, rows)
        digits = (xf @ mat).astype(np.int32)  # exact integers (see _split_matrix)
        acc = digits[:, :out_w] * np.int32(base) + digits[:, out_w:] + np.int32(1 << (PRECISION_BITS - 1))
        out = np.right_shift(acc, PRECISION_BITS)  # arithmetic shift == floor division
    else:  # exact float64 product (partial sums stay far below 2**53)
        acc = rows.astype(np.float64) @ resample_matrix(w, out_w) + float(1 << (PRECISION_BITS - 1))
        out = np.floor(acc / (1 << PRECISION_BITS))
    return np.clip(out, 0, 255).astype(np.uint8).reshape(n, h, out_w)


def resize_lanczos_u8(images: np.ndarray, out_w: int, out_h: int, buf: np.ndarray | None = None) -> np.ndarray:
    """Resize a batch of uint8 grey images exactly like ``PIL.Image.resize((out_w, out_h), LANCZOS)``.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W)`` uint8 array.
    out_w, out_h : int
        Output width and height.
    buf : np.ndarray, optional
        float32 scratch memory of at least ``N * H * W`` elements, reused between calls.

    Returns
    -------
    np.ndarray
        ``(N, out_h, out_w)`` uint8 array.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    _, h, w = images.shape
    if w != out_w and h != out_h and not horizontal_first(h, w, out_h, out_w):
        # vertical pass first: the horizontal pass on the transposed images
        x = _horizontal(np.ascontiguousarray(images.transpose(0, 2, 1)), out_h, buf)
        return _horizontal(np.ascontiguousarray(x.transpose(0, 2, 1)), out_w, buf)
    x = _horizontal(images, out_w, buf) if w != out_w else images
    if h != out_h:
        x = _horizontal(np.ascontiguousarray(x.transpose(0, 2, 1)), out_h, buf).transpose(0, 2, 1)
    return np.ascontiguousarray(x, dtype=np.uint8)


def horizontal_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Pass order of Pillow's two-pass resize when both axes change.

    Pillow (>= 11) resamples the horizontal axis first unless the vertical pass first is cheaper;
    measured against Pillow 13 on all sizes the tests sweep, the switch is
    ``2 * (in_w - out_w) >= in_h - out_h`` -> horizontal first. The order matters for bit-exactness
    because the intermediate image is rounded to uint8.
    """
    return 2 * (in_w - out_w) >= in_h - out_h


def dhash_bits(images: np.ndarray, hash_size: int = 8, buf: np.ndarray | None = None) -> np.ndarray:
    """Boolean dHash bits of a batch: ``(N, hash_size, hash_size)``, equal to ``imagehash.dhash(..).hash``."""
    small = resize_lanczos_u8(images, hash_size + 1, hash_size, buf)
    return small[:, :, 1:] > small[:, :, :-1]


def dhash_batch(images: np.ndarray, hash_size: int = 8, batch_size: int = 16) -> np.ndarray:
    """dHash of every image in a batch, packed into unsigned integers.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W)`` uint8 grey images (all of one shape). Any array-like with ``__getitem__``
        slicing works (a memory map is read ``batch_size`` images at a time).
    hash_size : int
        Hash side (2..8); the hash has ``hash_size**2`` bits, packed into one uint64.
    batch_size : int
        Images processed at once (about ``batch_size * H * W * 12`` bytes of scratch memory).

    Returns
    -------
    np.ndarray
        ``(N,)`` uint64. Bit order: the first comparison (row 0, column 0) is the most
        significant of the ``hash_size**2`` bits, as in ``str(imagehash.ImageHash)``.
    """
    if not 2 <= hash_size <= 8:
        raise ValueError(f"hash_size must be in 2..8 (at most 64 bits), got {hash_size}")
    n = len(images)
    nbits = hash_size * hash_size
    weights = np.left_shift(np.uint64(1), np.arange(nbits - 1, -1, -1, dtype=np.uint64))
    out = np.empty(n, dtype=np.uint64)
    with single_thread_blas():
        _hash_batches(images, out, hash_size, batch_size, nbits, weights)
    return out


def _hash_batches(images, out, hash_size, batch_size, nbits, weights) -> None:
    buf = None
    n = len(out)
    for start in range(0, n, batch_size):
        chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.uint8)
        if buf is None:
            buf = np.empty(chunk.size, np.float32)
        bits = dhash_bits(chunk, hash_size, buf).reshape(len(chunk), nbits)
        if nbits == 64:
            out[start:start + len(chunk)] = np.packbits(bits, axis=1).view(">u8").ravel()
        else:
            out[start:start + len(chunk)] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def hash_to_hex(value: int | np.integer, hash_size: int = 8) -> str:
    """Hex string of a packed hash, identical to ``str(imagehash.dhash(...))``."""
    width = math.ceil(hash_size * hash_size / 4)
    return f"{int(value):0{width}x}"


def hex_to_hash(text: str) -> np.uint64:
    """Inverse of :func:`hash_to_hex`."""
    return np.uint64(int(text, 16))
