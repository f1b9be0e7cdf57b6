"""Batched difference hash (dHash), bit-exact with ``imagehash.dhash``.

``imagehash.dhash(image, hash_size)`` converts the image to 8-bit grey, resizes it to
``(hash_size + 1, hash_size)`` with PIL's LANCZOS filter and compares horizontally adjacent
pixels. PIL resamples 8-bit images with a separable filter in fixed point (``Resample.c``):

* per output pixel, filter weights are computed in double precision around the pixel centre
  ``(i + 0.5) * scale``, with support ``3 * max(scale, 1)``, and normalised to sum to one;
* the weights are converted to integers with ``PRECISION_BITS = 22`` (round half away from 0);
* a horizontal pass, then a vertical pass, each accumulating ``2**21 + sum(pixel * weight)``
  in integers, shifting right by 22 and clipping to ``[0, 255]`` (so the intermediate image is
  rounded to uint8, exactly as PIL does).

Here both passes are matrix products over a whole batch. The products are done in float64:
every operand is an integer and every partial sum stays far below ``2**53``, so the float
arithmetic is exact and the result equals PIL's integer arithmetic bit for bit, at BLAS speed.

Hash bits are packed big-endian (first pixel comparison = most significant bit), which is the
order ``str(imagehash.ImageHash)`` prints: ``hash_to_hex(h) == str(imagehash.dhash(img))``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 22
_LANCZOS_SUPPORT = 3.0


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


def _clip8(acc: np.ndarray) -> np.ndarray:
    """PIL's ``clip8`` on accumulators that already include the rounding offset ``2**21``."""
    out = np.floor(acc / (1 << PRECISION_BITS))  # exact: power-of-two division of an integer
    np.clip(out, 0, 255, out=out)
    return out


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


def _horizontal(x: np.ndarray, out_w: int) -> np.ndarray:
    """Horizontal pass on ``(N, H, W)`` uint8 -> ``(N, H, out_w)`` float64 of uint8 values."""
    n, h, w = x.shape
    half = float(1 << (PRECISION_BITS - 1))
    split = _split_matrix(w, out_w)
    rows = x.reshape(n * h, w)
    if split is not None:
        mat, base = split
        digits = rows.astype(np.float32) @ mat
        acc = digits[:, :out_w].astype(np.float64) * base + digits[:, out_w:] + half
    else:  # exact float64 product (partial sums stay far below 2**53)
        acc = rows.astype(np.float64) @ resample_matrix(w, out_w) + half
    return _clip8(acc).reshape(n, h, out_w)


def resize_lanczos_u8(images: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize a batch of uint8 grey images exactly like ``PIL.Image.resize((out_w, out_h), LANCZOS)``.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W)`` uint8 array.
    out_w, out_h : int
        Output width and height.

    Returns
    -------
    np.ndarray
        ``(N, out_h, out_w)`` uint8 array.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    n, h, w = images.shape
    half = float(1 << (PRECISION_BITS - 1))
    if w != out_w:
        x = _horizontal(images, out_w)
    else:
        x = images.astype(np.float64)
    if h != out_h:
        # (N, W', H) @ (H, out_h): the vertical pass on the rounded intermediate image
        x = np.matmul(x.transpose(0, 2, 1), resample_matrix(h, out_h)) + half
        x = _clip8(x).transpose(0, 2, 1)
    return x.astype(np.uint8)


def dhash_bits(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Boolean dHash bits of a batch: ``(N, hash_size, hash_size)``, equal to ``imagehash.dhash(..).hash``."""
    small = resize_lanczos_u8(images, hash_size + 1, hash_size)
    return small[:, :, 1:] > small[:, :, :-1]


def dhash_batch(images: np.ndarray, hash_size: int = 8, batch_size: int = 32) -> np.ndarray:
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
    for start in range(0, n, batch_size):
        chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.uint8)
        bits = dhash_bits(chunk, hash_size).reshape(len(chunk), nbits)
        if nbits == 64:
            out[start:start + len(chunk)] = np.packbits(bits, axis=1).view(">u8").ravel()
        else:
            out[start:start + len(chunk)] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def hash_to_hex(value: int | np.integer, hash_size: int = 8) -> str:
    """Hex string of a packed hash, identical to ``str(imagehash.dhash(...))``."""
    width = math.ceil(hash_size * hash_size / 4)
    return f"{int(value):0{width}x}"


def hex_to_hash(text: str) -> np.uint64:
    """Inverse of :func:`hash_to_hex`."""
    return np.uint64(int(text, 16))
