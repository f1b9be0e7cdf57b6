"""Writers: tif stack, png folder, OME-Zarr, npy. All atomic, all stream Volumes slab by slab.

Every writer builds its output under a temporary sibling name (``.NAME.tmp-...``) and renames it
into place with ``os.replace`` only once complete, so an interrupted job never leaves a
half-written file or folder under the final name. :func:`create_zarr` is the exception by design:
it returns an array that the caller fills over time (streaming prediction) and reopens an
existing matching store so an interrupted job can resume.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cemkit.errors import InputError
from cemkit.io.atomic import atomic_path
from cemkit.io.volume import Volume
from cemkit.io.zarr_store import store_name

logger = logging.getLogger(__name__)

#: OME-NGFF version written by :func:`write_zarr` / :func:`create_zarr`
OME_NGFF_VERSION = "0.4"
#: beyond this many bytes a tif is written as BigTIFF
BIGTIFF_BYTES = 2**32 - 2**25
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Create ``path``'s folder, then :func:`~cemkit.io.atomic.atomic_path` (temporary sibling,
    renamed into place on success, deleted on failure; a folder replaces an existing folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        yield tmp


class _Source:
    """Uniform slab access to a numpy array or a Volume (3-D; 2-D arrays become (1, y, x))."""

    def __init__(self, array: Any):
        if isinstance(array, Volume):
            self.data = array
            self.voxel_size = array.voxel_size
        else:
            a = np.asarray(array)
            if a.ndim == 2:
                a = a[None]
            if a.ndim != 3:
                raise InputError(f"cannot write data of shape {a.shape}: expected a 2-D or 3-D array")
            self.data = a
            self.voxel_size = None
        self.shape = tuple(self.data.shape)
        self.dtype = np.dtype(self.data.dtype)

    def slabs(self, step: int, desc: str) -> Iterator[tuple[int, np.ndarray]]:
        starts = range(0, self.shape[0], max(1, step))
        for z0 in tqdm(starts, desc=desc, unit="slab", leave=False, disable=len(starts) < 8):
            yield z0, np.asarray(self.data[z0:z0 + step])


def _voxel(voxel_size: Any, source: _Source) -> tuple[float, float, float] | None:
    vs = voxel_size if voxel_size is not None else source.voxel_size
    if vs is None:
        return None
    vs = tuple(float(v) for v in vs)
    if len(vs) != 3 or not all(v > 0 for v in vs):
        raise InputError(f"voxel_size must be three positive numbers (z, y, x) in nm, got {voxel_size!r}")
    return vs


# ----------------------------------------------------------------------------- tif
def write_tif_stack(path: str | Path, array: Any, voxel_size: Any = None) -> Path:
    """Write a (z, y, x) array or Volume as a multi-page tif, atomically.

    ImageJ-compatible (Fiji shows the voxel size, unit nm) for uint8/uint16/int16/float32 and bool
    (written as uint8 0/1); other dtypes and files over 4 GB are written as plain (Big)TIFF with
    the voxel size in the resolution tags and metadata. Volumes are streamed page by page.

    Parameters
    ----------
    path : str or Path
        Output ``.tif``/``.tiff`` file.
    array : np.ndarray or Volume
        2-D or 3-D data.
    voxel_size : (z, y, x) nm, optional
        Defaults to the Volume's voxel size.

    Returns
    -------
    Path
    """
    import tifffile

    path = Path(path)
    src = _Source(array)
    vs = _voxel(voxel_size, src)
    dtype = np.dtype(np.uint8) if src.dtype == np.bool_ else src.dtype
    nbytes = int(np.prod(src.shape)) * dtype.itemsize
    bigtiff = nbytes > BIGTIFF_BYTES
    imagej = not bigtiff and dtype.type in _IMAGEJ_DTYPES
    kwargs: dict[str, Any] = {}
    if imagej:
        kwargs["metadata"] = {"axes": "ZYX"}
        if vs is not None:
            kwargs["resolution"] = (1.0 / vs[2], 1.0 / vs[1])
            kwargs["metadata"].update(spacing=vs[0], unit="nm")
    else:
        kwargs["metadata"] = {"axes": "ZYX"}
        if vs is not None:
            kwargs["resolution"] = (1.0 / (vs[2] * 1e-7), 1.0 / (vs[1] * 1e-7))
            kwargs["resolutionunit"] = "CENTIMETER"
            kwargs["metadata"].update(spacing=vs[0], unit="nm")

    def pages() -> Iterator[np.ndarray]:
        for _, slab in src.slabs(16, f"write {path.name}"):
            for page in slab:
                yield page.astype(dtype, copy=False)

    with _atomic(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff, imagej=imagej) as tw:
        tw.write(pages(), shape=src.shape, dtype=dtype, photometric="minisblack", **kwargs)
    return path


# ----------------------------------------------------------------------------- png
def write_png_folder(path: str | Path, array: Any, prefix: str = "slice_") -> Path:
    """Write a (z, y, x) array or Volume as one png per z-slice (``slice_0000.png``, ...), atomically.

    uint8 and uint16 are written as 8/16-bit gray, bool as 1-bit png; convert other dtypes with
    ``Volume.as_uint8()`` first. An existing folder at ``path`` is replaced.

    Returns
    -------
    Path
        The folder.
    """
    from PIL import Image

    path = Path(path)
    src = _Source(array)
    if src.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.bool_)):
        raise InputError(f"{path}: png holds uint8, uint16 or bool images, got {src.dtype}; "
                         "convert with vol.as_uint8() first")
    digits = max(4, len(str(src.shape[0] - 1)))
    with _atomic(path) as tmp:
        tmp.mkdir()
        for z0, slab in src.slabs(8, f"write {path.name}"):
            for i, page in enumerate(slab):
                Image.fromarray(np.ascontiguousarray(page)).save(tmp / f"{prefix}{z0 + i:0{digits}d}.png")
    return path


# ----------------------------------------------------------------------------- zarr
def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    lead = tuple(1 for _ in shape[:-3])
    core = shape[-3:] if len(shape) >= 3 else shape
    sizes = (32, 256, 256)[-len(core):]
    return lead + tuple(min(max(1, s), c) for s, c in zip(core, sizes))


def ome_attrs(ndim: int, voxel_size: Any = None, name: str = "image") -> dict:
    """OME-NGFF 0.4 single-scale ``multiscales`` attributes for an array at path ``"0"``.

    Axes are (c,) z, y, x (or y, x for 2-D); with a voxel size the spatial axes carry the unit
    ``nanometer`` and the scale is the voxel size, else the scale is 1 and no unit is given.
    """
    spatial = ["z", "y", "x"] if ndim >= 3 else ["y", "x"]
    names = (["c"] if ndim == 4 else []) + spatial
    if ndim not in (2, 3, 4):
        raise InputError(f"OME-Zarr output must be 2-D, 3-D or 4-D (c, z, y, x), got {ndim}-D")
    axes = []
    for n in names:
        ax: dict[str, Any] = {"name": n, "type": "channel" if n == "c" else "space"}
        if n != "c" and voxel_size is not None:
            ax["unit"] = "nanometer"
        axes.append(ax)
    if voxel_size is None:
        scale = [1.0] * ndim
    else:
        vs = [float(v) for v in voxel_size]
        scale = ([1.0] if ndim == 4 else []) + (vs if ndim >= 3 else vs[1:])
    return {
        "multiscales": [{
            "version": OME_NGFF_VERSION,
            "name": name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }]
    }


def _create_store(path: Path, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...],
                  voxel_size: Any, fill_value: Any, name: str):
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(ome_attrs(len(shape), voxel_size, name=name))
    return group.create_array(
        "0", shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )


def _check_chunks(shape: tuple[int, ...], chunks: Any) -> tuple[int, ...]:
    if chunks is None:
        return _default_chunks(shape)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or not all(c > 0 for c in chunks):
        raise InputError(f"chunks {chunks} do not fit an array of shape {shape}")
    return tuple(min(c, max(1, s)) for c, s in zip(chunks, shape))


def create_zarr(path: str | Path, shape: tuple[int, ...], dtype: Any, chunks: Any = None,
                voxel_size: Any = None, fill_value: Any = 0, overwrite: bool = False):
    """Create (or reopen) an OME-Zarr 0.4 store for streaming writes; returns the writable array.

    The store is a zarr_format 2 group with the array at ``"0"`` (``/``-separated chunk keys), so
    napari and Fiji open it. The empty store is built under a temporary name and renamed into
    place. If ``path`` already holds a store with the same shape, dtype and chunks and
    ``overwrite`` is False, it is reopened in ``r+`` mode (resume an interrupted job).

    Parameters
    ----------
    path : str or Path
        Store directory (``*.zarr``).
    shape : tuple of int
        Array shape: (z, y, x), (y, x) or (c, z, y, x).
    dtype : dtype-like
    chunks : tuple of int, optional
        Chunk shape (default up to 32 x 256 x 256).
    voxel_size : (z, y, x) nm, optional
    fill_value : scalar
        Value of never-written chunks.
    overwrite : bool
        Replace an existing store instead of reopening it.

    Returns
    -------
    zarr.Array
        Writable (``arr[z0:z1] = block``).

    Raises
    ------
    InputError
        ``path`` exists with a different shape/dtype/chunks, or is not a zarr store.
    """
    import zarr

    path = Path(path)
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    chunks = _check_chunks(shape, chunks)
    if path.exists() and not overwrite:
        try:
            arr = zarr.open_array(str(path / "0"), mode="r+")
        except Exception as exc:
            raise InputError(f"{path}: exists and is not a cemkit zarr store ({type(exc).__name__}: {exc}); "
                             "pass overwrite=True to replace it") from exc
        have = (tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks))
        want = (shape, dtype, chunks)
        if have != want:
            raise InputError(
                f"{path}: existing store has shape/dtype/chunks {have[0]}/{have[1]}/{have[2]}, "
                f"requested {want[0]}/{want[1]}/{want[2]}; pass overwrite=True to replace it"
            )
        logger.info("%s: reopened existing store for writing (resume)", path)
        return arr
    with _atomic(path) as tmp:
        _create_store(tmp, shape, dtype, chunks, voxel_size, fill_value, store_name(path))
    return zarr.open_array(str(path / "0"), mode="r+")


def write_zarr(path: str | Path, array: Any, chunks: Any = None, voxel_size: Any = None) -> Path:
    """Write an array or Volume as a chunked OME-Zarr 0.4 store (array at ``"0"``), atomically.

    Volumes are streamed one chunk-row of z-slices at a time. An existing store at ``path`` is
    replaced.

    Returns
    -------
    Path
    """
    path = Path(path)
    src = _Source(array)
    vs = _voxel(voxel_size, src)
    chunks = _check_chunks(src.shape, chunks)
    with _atomic(path) as tmp:
        arr = _create_store(tmp, src.shape, src.dtype, chunks, vs, 0, store_name(path))
        for z0, slab in src.slabs(chunks[0], f"write {path.name}"):
            arr[z0:z0 + slab.shape[0]] = slab
    return path


# ----------------------------------------------------------------------------- npy / dispatch
def write_npy(path: str | Path, array: Any) -> Path:
    """Write an array or Volume as ``.npy`` (streamed through a memmap), atomically."""
    path = Path(path)
    src = _Source(array)
    with _atomic(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=src.shape)
        for z0, slab in src.slabs(16, f"write {path.name}"):
            out[z0:z0 + slab.shape[0]] = slab
        out.flush()
        del out
    return path


def write_volume(path: str | Path, array: Any, **kwargs: Any) -> Path:
    """Write by suffix: ``.tif``/``.tiff`` -> tif stack, ``.zarr`` -> OME-Zarr, ``.npy`` -> npy,
    anything else -> png folder. ``kwargs`` go to that writer."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return write_tif_stack(path, array, **kwargs)
    if suffix == ".zarr":
        return write_zarr(path, array, **kwargs)
    if suffix == ".npy":
        return write_npy(path, array, **kwargs)
    return write_png_folder(path, array, **kwargs)
