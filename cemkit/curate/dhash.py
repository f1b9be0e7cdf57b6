"""Batched difference hash (dHash), bit-exact with ``imagehash.dhash``.

``imagehash.dhash(image, hash_size)`` converts the image to 8-bit grey, resizes it to
``(hash_size + 1, hash_size)`` with PIL's LANCZOS filter and compares horizontally adjacent
pixels. PIL resamples 8-bit images with a separable filter in fixed point (``Resample.c``, weights
in :mod:`cemkit.curate.lanczos_weights`): two passes (horizontal then vertical, or the other way
round when Pillow finds that cheaper, see :func:`horizontal_first`), each accumulating
``2**21 + sum(pixel * weight)`` in integers, shifting right by 22 and clipping to ``[0, 255]``:
the intermediate image is rounded to uint8.

Here each pass is one matrix product over a whole batch of images, in exact integer arithmetic,
by one of the paths of :mod:`cemkit.curate.dhash_paths` (int8 GEMM where the CPU has VNNI or AMX,
an exact float32 GEMM elsewhere; forced by ``path=`` or ``CEMKIT_DHASH_PATH``). Every path
equals PIL's integer arithmetic bit for bit.

Hash bits are packed big-endian (first pixel comparison = most significant bit), which is the
order ``str(imagehash.ImageHash)`` prints: ``hash_to_hex(h) == str(imagehash.dhash(img))``.
"""

from __future__ import annotations

import math

import numpy as np

from cemkit.curate.dhash_paths import SCRATCH_ELEMENTS, horizontal_pass, resolve_path
from cemkit.curate.lanczos_weights import PRECISION_BITS, resample_matrix

__all__ = ["PRECISION_BITS", "dhash_batch", "dhash_bits", "hash_to_hex", "hex_to_hash", "horizontal_first",
           "resample_matrix", "resize_lanczos_u8", "single_thread_blas"]

_CONTROLLER = None


def single_thread_blas():
    """Context manager limiting BLAS to one thread (the products here are too small to share;
    with several processes, threads only contend). Cheap to enter repeatedly."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def resize_lanczos_u8(images: np.ndarray, out_w: int, out_h: int, buf: np.ndarray | None = None,
                      path: str | None = None) -> np.ndarray:
    """Resize a batch of uint8 grey images exactly like ``PIL.Image.resize((out_w, out_h), LANCZOS)``.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W)`` uint8 array.
    out_w, out_h : int
        Output width and height.
    buf : np.ndarray, optional
        float32 scratch memory (:data:`~cemkit.curate.dhash_paths.SCRATCH_ELEMENTS` + ``max(H, W)``
        elements are always enough), reused between calls.
    path : str, optional
        ``int8``, ``float32``, ``float64`` or ``auto`` (:func:`cemkit.curate.dhash_paths.resolve_path`;
        default: ``$CEMKIT_DHASH_PATH``, else ``auto``). Every path gives the same result.

    Returns
    -------
    np.ndarray
        ``(N, out_h, out_w)`` uint8 array.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    path = resolve_path(path)
    _, h, w = images.shape
    images = np.ascontiguousarray(images)
    if w != out_w and h != out_h and not horizontal_first(h, w, out_h, out_w):
        # vertical pass first: the horizontal pass on the transposed images
        x = horizontal_pass(np.ascontiguousarray(images.transpose(0, 2, 1)), out_h, path, buf)
        return horizontal_pass(np.ascontiguousarray(x.transpose(0, 2, 1)), out_w, path, buf)
    x = horizontal_pass(images, out_w, path, buf) if w != out_w else images
    if h != out_h:
        x = horizontal_pass(np.ascontiguousarray(x.transpose(0, 2, 1)), out_h, path, buf).transpose(0, 2, 1)
    return np.ascontiguousarray(x, dtype=np.uint8)


def horizontal_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Pass order of Pillow's two-pass resize when both axes change.

    Pillow (>= 11) resamples the horizontal axis first unless the vertical pass first is cheaper;
    measured against Pillow 13 on all sizes the tests sweep, the switch is
    ``2 * (in_w - out_w) >= in_h - out_h`` -> horizontal first. The order matters for bit-exactness
    because the intermediate image is rounded to uint8.
    """
    return 2 * (in_w - out_w) >= in_h - out_h


def dhash_bits(images: np.ndarray, hash_size: int = 8, buf: np.ndarray | None = None,
               path: str | None = None) -> np.ndarray:
    """Boolean dHash bits of a batch: ``(N, hash_size, hash_size)``, equal to ``imagehash.dhash(..).hash``."""
    small = resize_lanczos_u8(images, hash_size + 1, hash_size, buf, path)
    return small[:, :, 1:] > small[:, :, :-1]


def dhash_batch(images: np.ndarray, hash_size: int = 8, batch_size: int = 16, path: str | None = None) -> np.ndarray:
    """dHash of every image in a batch, packed into unsigned integers.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W)`` uint8 grey images (all of one shape). Any array-like with ``__getitem__``
        slicing works (a memory map is read ``batch_size`` images at a time).
    hash_size : int
        Hash side (2..8); the hash has ``hash_size**2`` bits, packed into one uint64.
    batch_size : int
        Images processed at once (about ``batch_size * H * W * 6`` bytes of scratch memory, plus 1 MiB).
    path : str, optional
        Exact GEMM path (``int8``, ``float32``, ``float64``, ``auto``); default ``$CEMKIT_DHASH_PATH``,
        else ``auto``: the fastest on this CPU (:mod:`cemkit.curate.dhash_paths`). Same hashes on every path.

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
    path = resolve_path(path)
    with single_thread_blas():
        _hash_batches(images, out, hash_size, batch_size, nbits, weights, path)
    return out


def _hash_batches(images, out, hash_size, batch_size, nbits, weights, path) -> None:
    buf = None
    n = len(out)
    for start in range(0, n, batch_size):
        chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.uint8)
        if buf is None:
            buf = np.empty(SCRATCH_ELEMENTS + max(chunk.shape[1:]), np.float32)
        bits = dhash_bits(chunk, hash_size, buf, path).reshape(len(chunk), nbits)
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
