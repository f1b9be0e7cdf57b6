"""Stacks of 2D image files: a folder of png/tif/jpg slices, or one 2D png/jpg image.

Only headers are read at open (PIL ``Image.open`` and ``tifffile.TiffFile`` parse headers
lazily); reading ``vol[z0:z1]`` decodes exactly the files z0..z1-1.

PIL image modes map to dtypes as follows: ``1`` -> bool, ``L`` -> uint8, ``P``/``PA`` -> uint8
palette *indices* (label images: never converted to colour), ``I;16*`` -> uint16, ``I`` -> int32,
``F`` -> float32, ``LA`` -> uint8 (alpha dropped), RGB/RGBA/CMYK/YCbCr -> uint8 luminance with a
warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from natsort import natsorted
from PIL import Image

from cemkit.errors import InputError
from cemkit.io.intensity import rgb_to_gray
from cemkit.io.volume import Volume

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")

# PIL mode -> (dtype, is_colour)
_PIL_MODES = {
    "1": (np.bool_, False),
    "L": (np.uint8, False),
    "P": (np.uint8, False),
    "PA": (np.uint8, False),
    "LA": (np.uint8, False),
    "La": (np.uint8, False),
    "I;16": (np.uint16, False),
    "I;16L": (np.uint16, False),
    "I;16B": (np.uint16, False),
    "I;16N": (np.uint16, False),
    "I": (np.int32, False),
    "F": (np.float32, False),
    "RGB": (np.uint8, True),
    "RGBA": (np.uint8, True),
    "RGBX": (np.uint8, True),
    "RGBa": (np.uint8, True),
    "CMYK": (np.uint8, True),
    "YCbCr": (np.uint8, True),
}


class ImageHeader:
    """What the header of one 2D image file says: (y, x) size, dtype, colour or not."""

    __slots__ = ("colour", "dtype", "path", "size")

    def __init__(self, path: Path, size: tuple[int, int], dtype: np.dtype, colour: bool):
        self.path, self.size, self.dtype, self.colour = path, size, np.dtype(dtype), colour


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def read_header(path: Path) -> ImageHeader:
    """Parse the header of a 2D image file (no pixel data is decoded).

    Raises
    ------
    InputError
        Unreadable header, unsupported image mode, or a tif holding more than one 2D image.
    """
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes, dtype = series.shape, series.axes, series.dtype
            if len(shape) == 3 and axes.endswith("S"):
                return ImageHeader(path, tuple(shape[:2]), dtype, shape[2] >= 3)
            if len(shape) != 2:
                raise InputError(
                    f"{path}: expected a 2D image in an image folder, found data of shape "
                    f"{tuple(shape)} (axes {axes}); open multi-page tif files on their own"
                )
            return ImageHeader(path, tuple(shape), dtype, False)
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except InputError:
        raise
    except Exception as exc:  # PIL / tifffile raise many types for broken files
        raise InputError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc
    if mode not in _PIL_MODES:
        raise InputError(f"{path}: unsupported image mode {mode!r}")
    dtype, colour = _PIL_MODES[mode]
    return ImageHeader(path, (h, w), dtype, colour)


def read_image(path: Path) -> np.ndarray:
    """Decode one 2D image file to a 2D array (palette indices kept, colour -> luminance).

    Raises
    ------
    InputError
        Truncated or corrupt file.
    """
    try:
        if _is_tiff(path):
            import tifffile

            a = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode in ("CMYK", "YCbCr", "RGBX", "RGBa"):
                    im = im.convert("RGB")
                a = np.asarray(im)
                if mode in ("PA", "LA", "La"):
                    a = a[..., 0]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: unreadable, corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    if a.ndim == 3:
        a = rgb_to_gray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


class ImageStackVolume(Volume):
    """A z-stack where slice ``z`` is the 2D image file ``files[z]``."""

    def __init__(self, files: list[Path], headers: list[ImageHeader], name: str, path: Path):
        self.files = list(files)
        first = headers[0]
        super().__init__((len(files),) + first.size, first.dtype, None, name, path)

    def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        out = np.empty((len(range(zs.start, zs.stop, zs.step)),) + (
            len(range(ys.start, ys.stop, ys.step)), len(range(xs.start, xs.stop, xs.step))), self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop, zs.step)):
            f = self.files[z]
            a = read_image(f)
            if a.shape != self.shape[1:]:
                raise InputError(
                    f"{f}: image is {a.shape[1]}x{a.shape[0]} but the stack is "
                    f"{self.shape[2]}x{self.shape[1]} (file changed since open?)"
                )
            out[i] = a[ys, xs]
        return out


def list_image_files(folder: Path) -> list[Path]:
    """Image files of a folder (png/tif/tiff/jpg/jpeg, any case), hidden files skipped, natural order."""
    files = [
        p for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    return natsorted(files, key=lambda p: p.name)


def _warn_colour(headers: list[ImageHeader], where: Path) -> None:
    colour = [h.path for h in headers if h.colour]
    if colour:
        logger.warning("%s: colour (RGB) images converted to gray by luminance (%d file(s), e.g. %s)",
                       where, len(colour), colour[0].name)


def open_image_folder(folder: Path) -> ImageStackVolume:
    """Open a folder of 2D images as a (z, y, x) volume, one file per z-slice.

    Raises
    ------
    InputError
        No image files, images of different sizes or types, or an unreadable header.
    """
    files = list_image_files(folder)
    if not files:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        extra = f" (it holds {len(others)} other entries, e.g. {others[0]})" if others else " (it is empty)"
        raise InputError(f"{folder}: folder holds no png/tif/jpg images{extra}")
    headers = [read_header(f) for f in files]
    ref = headers[0]
    for h in headers[1:]:
        if h.size != ref.size:
            raise InputError(
                f"{folder}: folder holds images of different sizes: {ref.path.name} is "
                f"{ref.size[1]}x{ref.size[0]} but {h.path.name} is {h.size[1]}x{h.size[0]}"
            )
        if h.dtype != ref.dtype:
            raise InputError(
                f"{folder}: folder holds images of different types: {ref.path.name} is "
                f"{ref.dtype} but {h.path.name} is {h.dtype}"
            )
    _warn_colour(headers, folder)
    return ImageStackVolume(files, headers, name=folder.name, path=folder)


def open_image_file(path: Path) -> ImageStackVolume:
    """Open one 2D png/jpg (or single-image tif) as a (1, y, x) volume."""
    header = read_header(path)
    _warn_colour([header], path)
    return ImageStackVolume([path], [header], name=path.stem, path=path)
