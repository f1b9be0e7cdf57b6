"""TIFF files (single 2D image or multi-page stack) via tifffile.

Reading is lazy: an uncompressed, contiguous file is memory-mapped (``tifffile.memmap``);
anything else (compressed, tiled, ...) is read through tifffile's zarr store (``aszarr``),
which decodes only the pages/tiles a slice touches.

Voxel size comes from ImageJ metadata (``spacing`` for z, X/YResolution with the ``unit``),
from OME-XML (``PhysicalSizeX/Y/Z`` with their units), or from resolution tags in inch/cm.
"""

from __future__ import annotations

import logging
import math
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import tifffile

from cemkit.errors import InputError
from cemkit.io.units import to_nm
from cemkit.io.volume import ArrayVolume, check_dtype

logger = logging.getLogger(__name__)


def _resolution_size(page: tifffile.TiffPage, tag: str) -> float | None:
    """Pixel size in 'resolution units' from a X/YResolution tag (pixels per unit)."""
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
    if not num or not den:
        return None
    return den / num


def _imagej_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    page = tif.pages.first
    if unit is None:
        return None
    sx = _resolution_size(page, "XResolution")
    sy = _resolution_size(page, "YResolution")
    sz = meta.get("spacing", None)
    xyz = [to_nm(v, unit) if v is not None else None for v in (sx, sy, sz)]
    if xyz[0] is None or xyz[1] is None:
        return None
    if xyz[2] is None:
        xyz[2] = xyz[0] if xyz[0] == xyz[1] else None
    if xyz[2] is None:
        return None
    return (xyz[2], xyz[1], xyz[0])


def _ome_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    out = []
    for ax in ("Z", "Y", "X"):
        v = pixels.get(f"PhysicalSize{ax}")
        if v is None:
            out.append(None)
            continue
        out.append(to_nm(float(v), pixels.get(f"PhysicalSize{ax}Unit", "µm")))
    if out[1] is None or out[2] is None:
        return None
    if out[0] is None:
        out[0] = out[2] if out[1] == out[2] else None
        if out[0] is None:
            return None
    return tuple(out)


def _tag_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """Voxel size from resolution tags in inch/centimetre (written by cemkit for big files)."""
    page = tif.pages.first
    unit_tag = page.tags.get("ResolutionUnit")
    if unit_tag is None:
        return None
    unit = {2: "inch", 3: "cm"}.get(int(unit_tag.value))
    if unit is None:
        return None
    sx = _resolution_size(page, "XResolution")
    sy = _resolution_size(page, "YResolution")
    if sx is None or sy is None:
        return None
    x, y = to_nm(sx, unit), to_nm(sy, unit)
    z = None
    meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    if isinstance(meta, dict) and "spacing" in meta:
        z = to_nm(float(meta["spacing"]), meta.get("unit", unit))
    if z is None:
        return None
    return (z, y, x)


def tiff_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size in nm from ImageJ, OME or resolution-tag metadata, or None."""
    for fn in (_imagej_voxel_size, _ome_voxel_size, _tag_voxel_size):
        try:
            vs = fn(tif)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            vs = None
        if vs is not None and all(math.isfinite(v) and v > 0 for v in vs):
            return vs
    return None


def _layout(shape: tuple[int, ...], axes: str, path: Path) -> str:
    """Map a (squeezed) tifffile series shape/axes to an ArrayVolume layout."""
    samples = axes.endswith("S") and shape[-1] in (3, 4)
    core = shape[:-1] if samples else shape
    if len(core) == 2:
        layout = "yx"
    elif len(core) == 3:
        layout = "zyx"
    else:
        raise InputError(
            f"{path}: 4-D data of shape {tuple(shape)} (axes {axes}) is not supported; "
            "save one 3-D (z, y, x) volume per file"
        )
    if axes.endswith("S") and not samples:
        raise InputError(f"{path}: data of shape {tuple(shape)} (axes {axes}) has {shape[-1]} samples "
                         "per pixel; only gray, RGB and RGBA are supported")
    return layout + ("s" if samples else "")


class _TiffOpener:
    """Picklable lazy opener: memmap when possible, else a zarr array over tifffile's store."""

    def __init__(self, path: Path, mode: str, shape: tuple[int, ...]):
        self.path, self.mode, self.shape = path, mode, shape

    def __call__(self) -> Any:
        try:
            if self.mode == "memmap":
                return tifffile.memmap(self.path, mode="r").reshape(self.shape)
            import zarr

            store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
            array = zarr.open_array(store, mode="r")
            weakref.finalize(array, store.close)  # the store holds the open tif file
            return array
        except Exception as exc:
            raise InputError(f"{self.path}: cannot open tif data ({type(exc).__name__}: {exc})") from exc


def open_tiff(path: Path) -> ArrayVolume:
    """Open a 2D or multi-page 3D tif as a lazy volume.

    Raises
    ------
    InputError
        Unreadable/corrupt file, 4-D data, unsupported dtype.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path}: unreadable tif: the file holds no image data")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
            voxel_size = tiff_voxel_size(tif)
            contiguous = series.dataoffset is not None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: unreadable or corrupt tif ({type(exc).__name__}: {exc})") from exc
    check_dtype(dtype, path)
    layout = _layout(shape, axes, path)
    if layout.endswith("s"):
        logger.warning("%s: colour (RGB) tif converted to gray by luminance", path)
    if contiguous and path.stat().st_size >= series.dataoffset + series.size * dtype.itemsize:
        opener = _TiffOpener(path, "memmap", shape)
    else:
        opener = _TiffOpener(path, "zarr", shape)
    try:
        data = opener()
    except InputError:
        if opener.mode != "memmap":
            raise
        opener = _TiffOpener(path, "zarr", shape)
        data = opener()
    if tuple(data.shape) != shape:
        raise InputError(f"{path}: tif data has shape {tuple(data.shape)}, header says {shape}")
    name = path.name.split(".")[0] if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else path.stem
    return ArrayVolume(data, layout=layout, voxel_size=voxel_size, name=name, path=path,
                       opener=opener, dtype=dtype, shape=shape)
