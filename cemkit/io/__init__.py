"""Volume I/O: open any EM input as a lazy z-y-x array, convert intensities, write outputs.

>>> from cemkit.io import open_volume
>>> vol = open_volume("stack.tif")          # doctest: +SKIP
>>> vol.shape, vol.voxel_size, vol[0:2].shape  # doctest: +SKIP

See docs/data_formats.md for the formats and conversion rules. :mod:`cemkit.io.atomic` holds the
atomic-write helpers (temporary sibling renamed into place) that every cemkit output goes through;
:mod:`cemkit.io.corpus` the curated corpus (written by curate, read by pretrain);
:mod:`cemkit.io.predictions` what a prediction path holds (read by evaluate and predict).
"""

from cemkit.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from cemkit.io.intensity import (
    estimate_percentiles,
    rgb_to_gray,
    stretch_to_uint8,
)
from cemkit.io.open import open_volume
from cemkit.io.volume import ArrayVolume, Uint8View, Volume
from cemkit.io.writers import (
    create_zarr,
    write_npy,
    write_png_folder,
    write_tif_stack,
    write_volume,
    write_zarr,
)

__all__ = [
    "ArrayVolume",
    "Uint8View",
    "Volume",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "create_zarr",
    "estimate_percentiles",
    "open_volume",
    "rgb_to_gray",
    "stretch_to_uint8",
    "write_npy",
    "write_png_folder",
    "write_tif_stack",
    "write_volume",
    "write_zarr",
]
