"""NumPy ``.npy`` files, memory-mapped (``np.load(mmap_mode='r')``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cemkit.errors import InputError
from cemkit.io.volume import ArrayVolume, array_layout, check_dtype


class _NpyOpener:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # truncated file, object dtype, not an npy file
            raise InputError(f"{self.path}: unreadable or truncated npy file ({type(exc).__name__}: {exc})") from exc


def open_npy(path: Path) -> ArrayVolume:
    """Open a 2-D or 3-D ``.npy`` array lazily (memory-mapped)."""
    opener = _NpyOpener(path)
    data = opener()
    check_dtype(data.dtype, path)
    layout = array_layout(data.shape, path)
    return ArrayVolume(data, layout=layout, voxel_size=None, name=path.stem, path=path, opener=opener)
