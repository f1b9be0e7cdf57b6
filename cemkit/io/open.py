"""``open_volume``: detect the format of a path and hand it to the right reader."""

from __future__ import annotations

import logging
from pathlib import Path

from cemkit.errors import InputError
from cemkit.io.volume import Volume

logger = logging.getLogger(__name__)

SUPPORTED = "folder of png/tif/jpg images, .png/.jpg, .tif/.tiff, .mrc/.rec/.st, .h5/.hdf5, .zarr, .npy"


# stays one piece: a flat dispatch over the formats, one branch per suffix, reads best in one place
def open_volume(path: str | Path | Volume, key: str | None = None, level: int = 0) -> Volume:
    """Open any EM input as a lazy (z, y, x) :class:`Volume`; only metadata is read.

    Parameters
    ----------
    path : str, Path or Volume
        A folder of 2D images (png/tif/jpg, natural sort order), a 2D image, a multi-page tif,
        an mrc, an h5 file, a zarr / OME-Zarr store (or an array inside one, ``x.zarr/0``),
        or an npy file. A Volume is returned unchanged.
    key : str, optional
        Dataset path inside an h5 file or zarr group.
    level : int
        Resolution level of an OME-Zarr multiscale (0 = full resolution).

    Raises
    ------
    InputError
        Missing path, unknown format, or a file the reader rejects (the message names the file).

    Examples
    --------
    >>> vol = open_volume("../shared/data/cdeep3m_mito/train/images")  # doctest: +SKIP
    >>> vol.shape, vol.dtype                                           # doctest: +SKIP
    ((20, 1024, 1024), dtype('uint8'))
    """
    if isinstance(path, Volume):
        return path
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    key = key or None
    suffix = path.suffix.lower()
    if path.is_dir():
        from cemkit.io.zarr_store import is_zarr_dir, open_zarr

        if is_zarr_dir(path):
            return open_zarr(path, key=key, level=level)
        _no_key(path, key)
        if suffix in (".h5", ".hdf5", ".n5"):
            raise InputError(f"{path}: is a folder, expected a file ({suffix})")
        from cemkit.io.image_folder import open_image_folder

        return open_image_folder(path)
    from cemkit.io.hdf5 import H5_SUFFIXES

    if suffix in H5_SUFFIXES:
        from cemkit.io.hdf5 import open_h5

        return open_h5(path, key=key)
    _no_key(path, key)
    if suffix in (".tif", ".tiff"):
        from cemkit.io.tiff import open_tiff

        return open_tiff(path)
    if suffix in (".png", ".jpg", ".jpeg"):
        from cemkit.io.image_folder import open_image_file

        return open_image_file(path)
    from cemkit.io.mrc import MRC_SUFFIXES

    if suffix in MRC_SUFFIXES:
        from cemkit.io.mrc import open_mrc

        return open_mrc(path)
    if suffix == ".npy":
        from cemkit.io.npy import open_npy

        return open_npy(path)
    raise InputError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; supported: {SUPPORTED}")


def _no_key(path: Path, key: str | None) -> None:
    if key is not None:
        raise InputError(f"{path}: key={key!r} only applies to h5 files and zarr groups")
