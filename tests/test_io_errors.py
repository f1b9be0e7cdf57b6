"""cemkit.io: every bad input gives an InputError that names the file and the problem."""

from __future__ import annotations

import re

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from cemkit.errors import ConfigError, InputError
from cemkit.io import create_zarr, open_volume, write_png_folder, write_zarr


def raises_naming(path, *words):
    """pytest.raises(InputError) whose message holds ``path`` and every word (case-insensitive)."""
    pattern = re.escape(str(path)) + "".join(f"(?=.*{re.escape(w)})" for w in words)
    return pytest.raises(InputError, match=re.compile(pattern, re.IGNORECASE | re.DOTALL))


def test_missing_path(tmp_path):
    with raises_naming(tmp_path / "nope.tif", "no such file"):
        open_volume(tmp_path / "nope.tif")


def test_empty_folder_and_folder_without_images(tmp_path):
    with raises_naming(tmp_path, "no png/tif/jpg images", "empty"):
        open_volume(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with raises_naming(tmp_path, "no png/tif/jpg images", "readme.txt"):
        open_volume(tmp_path)


def test_mixed_image_sizes(tmp_path):
    Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(tmp_path / "b.png")
    with raises_naming(tmp_path, "different sizes", "a.png is 1024x1024", "b.png is 512x512"):
        open_volume(tmp_path)


def test_mixed_image_types(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "b.png")
    with raises_naming(tmp_path, "different types", "b.png", "uint16"):
        open_volume(tmp_path)


def test_truncated_png_fails_when_its_slice_is_read(tmp_path):
    rng = np.random.default_rng(0)
    for z in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / f"s{z}.png")
    full = (tmp_path / "s1.png").read_bytes()
    (tmp_path / "s1.png").write_bytes(full[: len(full) // 2])
    vol = open_volume(tmp_path)  # the header is intact
    assert vol[0].shape == (64, 64) and vol[2].shape == (64, 64)
    with raises_naming(tmp_path / "s1.png", "truncated"):
        vol[0:2]


def test_corrupt_image_header_fails_at_open(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with raises_naming(tmp_path / "bad.png", "unreadable"):
        open_volume(tmp_path / "bad.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "ok.png")
    with raises_naming(tmp_path / "bad.png", "unreadable"):
        open_volume(tmp_path)


def test_truncated_tif(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[:100])
    with raises_naming(tmp_path / "t.tif"):
        open_volume(tmp_path / "t.tif")[...]
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with raises_naming(tmp_path / "junk.tif", "unreadable"):
        open_volume(tmp_path / "junk.tif")


def test_truncated_npy_mrc_and_corrupt_h5(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 32, 32), np.float32))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[: len(data) // 2])
    with raises_naming(tmp_path / "a.npy", "truncated"):
        open_volume(tmp_path / "a.npy")
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(np.ones((4, 32, 32), np.float32))
    data = (tmp_path / "a.mrc").read_bytes()
    (tmp_path / "a.mrc").write_bytes(data[: len(data) // 2])
    with raises_naming(tmp_path / "a.mrc", "truncated"):
        open_volume(tmp_path / "a.mrc")
    (tmp_path / "a.h5").write_bytes(b"\x89HDF\r\n\x1a\n broken")
    with raises_naming(tmp_path / "a.h5", "unreadable"):
        open_volume(tmp_path / "a.h5")


@pytest.mark.parametrize("dtype", [np.complex64, np.dtype("<U3"), np.dtype("datetime64[s]")])
def test_unsupported_dtype(tmp_path, dtype):
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 3), dtype))
    with raises_naming(tmp_path / "c.npy", "unsupported data type"):
        open_volume(tmp_path / "c.npy")


def test_unsupported_dtype_h5_zarr_mrc(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["img"] = np.zeros((2, 3, 3), np.complex64)
    with raises_naming(tmp_path / "c.h5", "unsupported data type", "complex64"):
        open_volume(tmp_path / "c.h5")
    with mrcfile.new(tmp_path / "c.mrc") as m:
        m.set_data(np.zeros((2, 3, 3), np.complex64))
    with raises_naming(tmp_path / "c.mrc", "unsupported data type"):
        open_volume(tmp_path / "c.mrc")


def test_object_npy(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    with raises_naming(tmp_path / "o.npy"):
        open_volume(tmp_path / "o.npy")


def test_four_d_data(tmp_path):
    a = np.zeros((2, 3, 8, 8), np.uint8)
    np.save(tmp_path / "a.npy", a)
    with raises_naming(tmp_path / "a.npy", "4-D", "(2, 3, 8, 8)"):
        open_volume(tmp_path / "a.npy")
    tifffile.imwrite(tmp_path / "a.tif", a, imagej=True, metadata={"axes": "TZYX"})
    with raises_naming(tmp_path / "a.tif", "4-D", "(2, 3, 8, 8)"):
        open_volume(tmp_path / "a.tif")
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=a.shape, dtype=a.dtype, zarr_format=3)
    z[:] = a
    with raises_naming(tmp_path / "a.zarr", "4-D"):
        open_volume(tmp_path / "a.zarr")
    np.save(tmp_path / "ok.npy", a[:1])  # leading singleton axes are fine
    assert open_volume(tmp_path / "ok.npy").shape == (3, 8, 8)
    np.save(tmp_path / "line.npy", np.zeros(5))
    with raises_naming(tmp_path / "line.npy", "2-D or 3-D"):
        open_volume(tmp_path / "line.npy")


def test_multipage_tif_inside_folder(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with raises_naming(tmp_path / "b.tif", "2D image"):
        open_volume(tmp_path)


def test_h5_key_problems(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["raw"] = np.zeros((2, 4, 4), np.uint8)
        f["seg/mito"] = np.zeros((2, 4, 4), np.uint8)
    with raises_naming(tmp_path / "a.h5", "several datasets", "raw", "seg/mito"):
        open_volume(tmp_path / "a.h5")
    with raises_naming(tmp_path / "a.h5", "no dataset", "labels"):
        open_volume(tmp_path / "a.h5", key="labels")
    with raises_naming(tmp_path / "a.h5", "group"):
        open_volume(tmp_path / "a.h5", key="seg")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["scalar"] = 3
    with raises_naming(tmp_path / "empty.h5", "no image dataset"):
        open_volume(tmp_path / "empty.h5")


def test_zarr_key_and_level_problems(tmp_path):
    write_zarr(tmp_path / "a.zarr", np.zeros((2, 4, 4), np.uint8))
    with raises_naming(tmp_path / "a.zarr", "level=3"):
        open_volume(tmp_path / "a.zarr", level=3)
    with raises_naming(tmp_path / "a.zarr", "no array", "nope"):
        open_volume(tmp_path / "a.zarr", key="nope")
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    g.create_array("x", shape=(2, 4, 4), dtype=np.uint8)
    g.create_array("y", shape=(2, 4, 4), dtype=np.uint8)
    with raises_naming(tmp_path / "g.zarr", "several arrays", "x", "y"):
        open_volume(tmp_path / "g.zarr")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "a.xyz").write_text("?")
    with raises_naming(tmp_path / "a.xyz", "unsupported file type", ".xyz"):
        open_volume(tmp_path / "a.xyz")


def test_writer_errors(tmp_path):
    with raises_naming(tmp_path / "f", "as_uint8"):
        write_png_folder(tmp_path / "f", np.zeros((2, 4, 4), np.float32))
    assert not (tmp_path / "f").exists() and list(tmp_path.iterdir()) == []
    create_zarr(tmp_path / "p.zarr", (2, 8, 8), np.uint8, chunks=(1, 8, 8))
    with raises_naming(tmp_path / "p.zarr", "existing store", "(2, 8, 8)", "(3, 8, 8)"):
        create_zarr(tmp_path / "p.zarr", (3, 8, 8), np.uint8, chunks=(1, 8, 8))
    (tmp_path / "notzarr").mkdir()
    with raises_naming(tmp_path / "notzarr", "not a cemkit zarr store"):
        create_zarr(tmp_path / "notzarr", (3, 8, 8), np.uint8)


def test_bad_percentiles(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(ConfigError, match="percentiles"):
        open_volume(tmp_path / "a.npy").as_uint8(percentiles=(99, 1))


def test_key_for_a_format_without_keys(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4), np.uint8))
    with raises_naming(tmp_path / "a.npy", "key='raw'", "only applies"):
        open_volume(tmp_path / "a.npy", key="raw")
    assert open_volume(tmp_path / "a.npy", key="").shape == (2, 4, 4)
