"""The lazy z-y-x :class:`Volume` base class and its numpy-style indexing.

Every reader in :mod:`cemkit.io` returns a :class:`Volume`. Subclasses only implement
:meth:`Volume._read`, which receives one normalised slice per axis (non-negative start,
start <= stop, positive step, already clipped to the shape) and returns the 3-D block.
The base class turns numpy basic indexing (ints, slices with any step, ``Ellipsis``) into
those slices, flips negative steps, drops integer-indexed axes and handles empty selections
without touching the file.

Volumes are picklable so they can be handed to multiprocessing workers: attributes listed
in ``_transient`` (open file handles) are dropped when pickling and reopened on first use.
"""

from __future__ import annotations

import logging
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

from cemkit.errors import InputError
from cemkit.io.intensity import check_percentiles, estimate_percentiles, rgb_to_gray, stretch_to_uint8

logger = logging.getLogger(__name__)

#: numpy dtype kinds a volume may hold: bool, signed int, unsigned int, float.
SUPPORTED_KINDS = "biuf"


def check_dtype(dtype: Any, path: Path | str) -> np.dtype:
    """Return ``np.dtype(dtype)`` or raise :class:`InputError` if it is not bool/int/uint/float.

    Parameters
    ----------
    dtype : dtype-like
        The stored data type.
    path : Path or str
        Named in the error message.
    """
    dt = np.dtype(dtype)
    if dt.kind not in SUPPORTED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise InputError(
            f"{path}: unsupported data type {dt} (supported: bool, integer and float images)"
        )
    return dt


def _normalize_axis(index: Any, size: int, axis: str) -> tuple[slice, bool, bool]:
    """Turn one index into ``(slice with step > 0, flip, squeeze)``."""
    if isinstance(index, slice):
        rng = range(*index.indices(size))
        if len(rng) == 0:
            return slice(0, 0, 1), False, False
        if rng.step > 0:
            return slice(rng.start, rng[-1] + 1, rng.step), False, False
        return slice(rng[-1], rng[0] + 1, -rng.step), True, False
    try:
        i = operator.index(index)
    except TypeError:
        raise IndexError(
            f"volume indexing supports ints, slices and Ellipsis only, got {type(index).__name__} "
            f"for axis {axis}"
        ) from None
    if i < -size or i >= size:
        raise IndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
    if i < 0:
        i += size
    return slice(i, i + 1, 1), False, True


def normalize_index(key: Any, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[bool, ...], tuple[bool, ...]]:
    """Normalise a numpy basic index over a (z, y, x) shape.

    Parameters
    ----------
    key : int, slice, Ellipsis or tuple of those
        The index as given to ``volume[key]``.
    shape : tuple of 3 ints
        The volume shape.

    Returns
    -------
    slices : tuple of 3 slices
        Non-negative starts, positive steps, clipped to ``shape``.
    flips : tuple of 3 bools
        Axes whose result must be reversed (negative steps).
    squeeze : tuple of 3 bools
        Axes indexed by an integer (dropped from the result).
    """
    if not isinstance(key, tuple):
        key = (key,)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis == 1:
        pos = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = 3 - (len(key) - 1)
        if fill < 0:
            raise IndexError(f"too many indices for a 3-D volume: {len(key) - 1}")
        key = key[:pos] + (slice(None),) * fill + key[pos + 1:]
    if len(key) > 3:
        raise IndexError(f"too many indices for a 3-D volume: {len(key)}")
    key = key + (slice(None),) * (3 - len(key))
    parts = [_normalize_axis(k, n, ax) for k, n, ax in zip(key, shape, "zyx")]
    slices = tuple(p[0] for p in parts)
    flips = tuple(p[1] for p in parts)
    squeeze = tuple(p[2] for p in parts)
    return slices, flips, squeeze


def array_layout(shape: tuple[int, ...], path: Path | str) -> str:
    """ArrayVolume layout of a stored array: 2-D -> "yx", 3-D -> "zyx", extra leading size-1 axes
    are dropped ("1zyx"); anything else is an InputError naming ``path`` and the shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise InputError(f"{path}: expected 2-D or 3-D image data, got shape {shape}")
    n_lead = len(shape) - 3
    if n_lead > 0 and any(s != 1 for s in shape[:n_lead]):
        raise InputError(
            f"{path}: {len(shape)}-D data of shape {shape} is not supported; "
            "expected one 3-D (z, y, x) volume"
        )
    if len(shape) == 2:
        return "yx"
    return "1" * n_lead + "zyx"


def slice_len(s: slice) -> int:
    """Number of elements selected by a normalised slice."""
    return len(range(s.start, s.stop, s.step))


class Volume:
    """A lazy z-y-x image volume.

    Attributes
    ----------
    shape : tuple of 3 ints
        (z, y, x); a 2D image is (1, y, x).
    dtype : numpy.dtype
        Data type as stored (after RGB -> gray).
    voxel_size : tuple of 3 floats or None
        (z, y, x) voxel size in nanometres, or None when the file does not say.
    name : str
        Source name (stem of the file or folder).
    path : pathlib.Path
        Where the data lives.

    Notes
    -----
    ``vol[idx]`` accepts numpy basic indexing over (z, y, x) and returns an ``np.ndarray``
    reading only what is asked; ``np.asarray(vol)`` reads everything.
    """

    #: attribute names dropped when pickling (open handles); subclasses reopen them lazily.
    _transient: tuple[str, ...] = ()

    def __init__(self, shape: tuple[int, ...], dtype: Any, voxel_size: Any, name: str, path: Path | str):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise InputError(f"{self.path}: expected 3-D (z, y, x) data, got shape {self.shape}")
        self.dtype = check_dtype(dtype, self.path)
        self.voxel_size = None if voxel_size is None else tuple(float(v) for v in voxel_size)
        self.name = name

    # -- reading ---------------------------------------------------------------------------
    def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:  # pragma: no cover - abstract
        """Return the block ``[zs, ys, xs]`` as a 3-D array (slices are normalised)."""
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        slices, flips, squeeze = normalize_index(key, self.shape)
        out_shape = tuple(slice_len(s) for s in slices)
        if 0 in out_shape:
            out = np.empty(out_shape, dtype=self.dtype)
        else:
            out = np.asarray(self._read(*slices))
            if out.shape != out_shape:  # a reader bug or a file that changed under us
                raise InputError(
                    f"{self.path}: read a block of shape {out.shape}, expected {out_shape} "
                    "(file changed or truncated?)"
                )
        if any(flips):
            out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        if any(squeeze):
            out = out[tuple(0 if s else slice(None) for s in squeeze)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        if dtype is not None:
            out = out.astype(dtype, copy=False)
        return out

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        for z in range(self.shape[0]):
            yield self[z]

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    # -- conversion ------------------------------------------------------------------------
    def as_uint8(self, percentiles: tuple[float, float] = (0.5, 99.5), max_slices: int = 16) -> Volume:
        """A lazy view converting every read to uint8.

        uint8 data is returned unchanged (``self``); bool maps to 0/255; every other dtype is
        stretched linearly between the ``percentiles`` of the data, estimated once from up to
        ``max_slices`` evenly spaced z-slices (see :func:`cemkit.io.intensity.estimate_percentiles`).
        """
        if self.dtype == np.uint8:
            return self
        return Uint8View(self, percentiles=percentiles, max_slices=max_slices)

    # -- resources ------------------------------------------------------------------------
    def close(self) -> None:
        """Release open file handles now (they are reopened if the volume is read again)."""
        for attr in self._transient:
            handle = getattr(self, attr, None)
            setattr(self, attr, None)
            close = getattr(getattr(handle, "file", None), "close", None)  # h5py dataset -> file
            if close is not None and callable(close):
                close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pickling --------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for attr in self._transient:
            state[attr] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        vs = "None" if self.voxel_size is None else "(" + ", ".join(f"{v:g}" for v in self.voxel_size) + ")"
        return (
            f"{type(self).__name__}(name={self.name!r}, shape={self.shape}, dtype={self.dtype}, "
            f"voxel_size={vs}, path='{self.path}')"
        )


class ArrayVolume(Volume):
    """A volume backed by an array-like supporting numpy basic slicing.

    Used for numpy memmaps (npy, mrc, uncompressed tif), zarr arrays and h5py datasets.

    Parameters
    ----------
    data : array-like or None
        The stored array; ``None`` when ``opener`` reopens it lazily (after unpickling).
    opener : callable or None
        ``opener() -> array-like``, called when ``data`` is missing (must be picklable).
        When given, ``data`` is transient (not pickled).
    layout : str
        Axes of the stored array: any number of leading ``"1"`` (singleton axes, indexed at 0),
        then ``"zyx"`` or ``"yx"``, optionally followed by ``"s"`` (RGB(A) samples, converted
        to gray per read).
    """

    def __init__(self, data: Any, *, layout: str, voxel_size: Any, name: str, path: Path | str,
                 opener: Any = None, dtype: Any = None, shape: tuple[int, ...] | None = None):
        self._data = data
        self._opener = opener
        self._pid = os.getpid()
        if opener is not None:
            self._transient = ("_data",)
        self._layout = layout
        stored_shape = tuple(shape if shape is not None else data.shape)
        core = layout.lstrip("1")
        n_lead = len(layout) - len(core)
        dims = dict(zip(core, stored_shape[n_lead:]))
        zyx = (dims.get("z", 1), dims["y"], dims["x"])
        stored = np.dtype(dtype if dtype is not None else data.dtype)
        self._swap = not stored.isnative
        super().__init__(zyx, stored.newbyteorder("=") if self._swap else stored, voxel_size, name, path)

    @property
    def data(self) -> Any:
        if self._opener is not None and (self._data is None or self._pid != os.getpid()):
            # reopen after unpickling, and in forked children (h5py handles must not be shared)
            self._data = self._opener()
            self._pid = os.getpid()
        return self._data

    def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        core = self._layout.lstrip("1")
        index: tuple = (0,) * (len(self._layout) - len(core))
        if "z" in core:
            index += (zs,)
        index += (ys, xs)
        if core.endswith("s"):
            index += (slice(None),)
        try:
            block = np.asarray(self.data[index])
        except InputError:
            raise
        except Exception as exc:  # h5py/zarr/codec errors on corrupt or truncated data
            raise InputError(f"{self.path}: cannot read data ({type(exc).__name__}: {exc})") from exc
        if self._swap:
            block = block.astype(self.dtype)
        elif isinstance(self.data, np.ndarray):
            block = block.copy()  # memmap view -> an owned, writable array of just this block
        if "z" not in core:
            block = block[None]
        if core.endswith("s"):
            block = rgb_to_gray(block)
        return block


class Uint8View(Volume):
    """Lazy uint8 view of another volume (see :meth:`Volume.as_uint8`).

    The stretch limits are computed once, when the view is created, and travel with it when
    pickled, so every worker converts identically.

    Attributes
    ----------
    source : Volume
        The wrapped volume.
    low, high : float
        Intensities mapped to 0 and 255 (``None`` for bool sources, mapped to 0/255).
    """

    def __init__(self, source: Volume, percentiles: tuple[float, float] = (0.5, 99.5),
                 max_slices: int = 16, low: float | None = None, high: float | None = None):
        super().__init__(source.shape, np.uint8, source.voxel_size, source.name, source.path)
        self.source = source
        self.percentiles = check_percentiles(percentiles)
        if source.dtype == np.bool_:
            self.low, self.high = None, None
        elif low is not None and high is not None:
            self.low, self.high = float(low), float(high)
        else:
            self.low, self.high = estimate_percentiles(source, self.percentiles, max_slices)
            logger.debug("%s: %s -> uint8 stretch %g..%g (percentiles %s)", source.path,
                         source.dtype, self.low, self.high, self.percentiles)

    def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        block = self.source._read(zs, ys, xs)
        if self.low is None:
            return np.asarray(block, dtype=bool).astype(np.uint8) * np.uint8(255)
        return stretch_to_uint8(block, self.low, self.high)

    def as_uint8(self, percentiles: tuple[float, float] = (0.5, 99.5), max_slices: int = 16) -> Volume:
        return self
