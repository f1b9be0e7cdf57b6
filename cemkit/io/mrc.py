"""MRC / CCP4 files (``.mrc``, ``.rec``, ``.st``, ``.ali``, ``.map``) via ``mrcfile.mmap``.

The voxel size comes from the header (Angstrom, converted to nm; a zero size means unknown).
Mode 0 is signed int8 (MRC2014): convert it with :meth:`Volume.as_uint8`, which stretches the
real range instead of clipping the negative half. Files that IMOD stamped as holding unsigned bytes
(``imodStamp`` set, ``imodFlags`` bit 0 clear) are read as uint8.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np

from cemkit.errors import InputError
from cemkit.io.volume import ArrayVolume, array_layout, check_dtype

MRC_SUFFIXES = (".mrc", ".rec", ".st", ".ali", ".map", ".mrcs", ".ccp4")


class _MrcOpener:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> np.ndarray:
        try:
            mrc = mrcfile.mmap(self.path, mode="r", permissive=False)
            data = mrc.data
        except Exception as exc:
            raise InputError(f"{self.path}: unreadable, corrupt or truncated mrc file ({type(exc).__name__}: {exc})") from exc
        if data is None:
            raise InputError(f"{self.path}: mrc file holds no data")
        if data.dtype == np.int8 and imod_unsigned_bytes(mrc.header):
            data = data.view(np.uint8)
        return data


#: IMOD writes this stamp at byte 152 of the header; bit 0 of the flags at byte 156 = signed bytes
IMOD_STAMP = 1146047817


def imod_unsigned_bytes(header) -> bool:
    """True if an IMOD-written mode-0 file stores *unsigned* bytes (stamp set, signed flag clear).

    MRC2014 defines mode 0 as signed int8, but IMOD marks its files with ``imodStamp`` and sets bit 0
    of ``imodFlags`` only when the bytes are signed; older IMOD files hold unsigned bytes.
    """
    raw = header.extra2.tobytes()  # header bytes 112..195
    stamp, flags = np.frombuffer(raw[40:48], dtype=header.nx.dtype)
    return int(stamp) == IMOD_STAMP and not int(flags) & 1


def mrc_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size in nm from the header of an mrc file, or None if it is zero."""
    with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
        vs = mrc.voxel_size
        x, y, z = float(vs.x), float(vs.y), float(vs.z)
    if not (x > 0 and y > 0):
        return None
    if not z > 0:
        z = x if x == y else 0.0
    if not z > 0:
        return None
    return (z / 10.0, y / 10.0, x / 10.0)


def open_mrc(path: Path) -> ArrayVolume:
    """Open an mrc file lazily (memory-mapped)."""
    opener = _MrcOpener(path)
    data = opener()
    check_dtype(data.dtype, path)
    layout = array_layout(data.shape, path)
    try:
        voxel_size = mrc_voxel_size(path)
    except (OSError, ValueError):  # an unreadable header only costs the voxel size; the data opened above
        voxel_size = None
    return ArrayVolume(data, layout=layout, voxel_size=voxel_size, name=path.stem, path=path, opener=opener)
