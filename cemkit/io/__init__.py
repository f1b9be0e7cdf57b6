"""Volume I/O: open any EM input as a lazy z-y-x array, convert intensities, write outputs.

>>> from cemkit.io import open_volume
>>> vol = open_volume("stack.tif")          # doctest: +SKIP
>>> vol.shape, vol.voxel_size, vol[0:2].shape  # doctest: +SKIP

See docs/data_formats.md for the formats and conversion rules.
"""

from cemkit.io.intensity import (
    Uint8View,
    estimate_percentiles,
    rgb_to_gray,
    stretch_to_uint8,
)
from cemkit.io.open import open_volume
from cemkit.io.volume import ArrayVolume, Volume
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
