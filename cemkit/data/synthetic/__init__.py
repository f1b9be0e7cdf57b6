"""Deterministic synthetic SBEM / FIB-SEM data: volumes with mitochondria labels, raw-data
folders for curation tests, and PNG montages.

>>> from cemkit.data.synthetic import make_volume
>>> sv = make_volume(shape=(16, 256, 256), seed=0, style=0)
>>> sv.image.dtype, sv.mito.dtype, sv.instances.dtype
(dtype('uint8'), dtype('uint8'), dtype('int32'))
"""

from .montage import montage_array, save_montage
from .raw_folder import (
    INJECTED_KINDS,
    InjectedItem,
    RawFolderInfo,
    SourceInfo,
    write_raw_folder,
)
from .styles import STYLES, Style, resolve_style
from .volume import SyntheticVolume, make_volume

__all__ = [
    "INJECTED_KINDS",
    "STYLES",
    "InjectedItem",
    "RawFolderInfo",
    "SourceInfo",
    "Style",
    "SyntheticVolume",
    "make_volume",
    "montage_array",
    "resolve_style",
    "save_montage",
    "write_raw_folder",
]
