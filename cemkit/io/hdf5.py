"""HDF5 files (``.h5``, ``.hdf5``, ``.hdf``) via h5py.

``key`` names the dataset; without a key the file must hold exactly one dataset with 2 or more
dimensions. The file handle is opened lazily and reopened after pickling or in a forked
process. Voxel size (nm, zyx) comes from dataset attributes: ``resolution`` or ``voxel_size``
(nm) or ``element_size_um`` (micrometres, as written by Fiji/ilastik).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cemkit.errors import InputError
from cemkit.io.volume import ArrayVolume, array_layout, check_dtype

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


def _open_file(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise InputError(f"{path}: unreadable or corrupt HDF5 file ({type(exc).__name__}: {exc})") from exc


def list_datasets(f: h5py.File) -> list[str]:
    """Paths of every dataset with at least 2 dimensions, in file order."""
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            names.append(name)

    f.visititems(visit)
    return names


def h5_voxel_size(dset: h5py.Dataset, ndim: int) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) in nm from dataset attributes, or None."""
    for attr, factor in (("resolution", 1.0), ("voxel_size", 1.0), ("element_size_um", 1e3)):
        if attr in dset.attrs:
            v = np.asarray(dset.attrs[attr], dtype=np.float64).ravel() * factor
            if v.size == 3 and np.all(v > 0):
                return tuple(float(x) for x in v)
            if v.size == 2 and np.all(v > 0) and ndim == 2:
                return (float(v[0]), float(v[0]), float(v[1])) if v[0] == v[1] else None
    return None


class _H5Opener:
    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def __call__(self) -> h5py.Dataset:
        f = _open_file(self.path)
        try:
            return f[self.key]
        except KeyError:
            f.close()
            raise InputError(f"{self.path}: no dataset {self.key!r} in the file") from None


def open_h5(path: Path, key: str | None = None) -> ArrayVolume:
    """Open one dataset of an HDF5 file lazily.

    Raises
    ------
    InputError
        Unreadable file, missing key, no or several candidate datasets without a key.
    """
    if key is None:
        with _open_file(path) as f:
            names = list_datasets(f)
        if not names:
            raise InputError(f"{path}: HDF5 file holds no image dataset (2-D or 3-D)")
        if len(names) > 1:
            raise InputError(
                f"{path}: HDF5 file holds several datasets, pass key= one of: " + ", ".join(names)
            )
        key = names[0]
    opener = _H5Opener(path, key.strip("/") or key)
    dset = opener()
    if not isinstance(dset, h5py.Dataset):
        raise InputError(f"{path}: {key!r} is a group, not a dataset (datasets: "
                         + ", ".join(list_datasets(dset)) + ")")
    check_dtype(dset.dtype, f"{path}:{key}")
    layout = array_layout(dset.shape, f"{path}:{key}")
    voxel_size = h5_voxel_size(dset, len(dset.shape))
    return ArrayVolume(dset, layout=layout, voxel_size=voxel_size, name=path.stem, path=path, opener=opener)
