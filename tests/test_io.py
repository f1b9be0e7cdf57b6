"""cemkit.io: readers of every format, lazy slab reads, uint8 conversion, writers."""

from __future__ import annotations

import logging
import pickle
import tracemalloc
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from cemkit.io import (
    Volume,
    create_zarr,
    estimate_percentiles,
    open_volume,
    rgb_to_gray,
    stretch_to_uint8,
    write_npy,
    write_png_folder,
    write_tif_stack,
    write_volume,
    write_zarr,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VS = (40.0, 5.9, 5.9)


def ramp(shape=(5, 40, 30), dtype=np.uint16) -> np.ndarray:
    """A volume whose every voxel differs: any mix-up of axes or slices shows."""
    return (np.arange(int(np.prod(shape))) % 60000).reshape(shape).astype(dtype)


def data_dir(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not present: {p}")
    return p


class OpenSpy:
    """Counts PIL.Image.open calls (per file name)."""

    def __init__(self, monkeypatch):
        self.names: list[str] = []
        real = Image.open

        def spy(fp, *a, **k):
            self.names.append(Path(fp).name)
            return real(fp, *a, **k)

        monkeypatch.setattr(Image, "open", spy)


# --------------------------------------------------------------------------- real data
def test_cdeep3m_images_folder_is_lazy(monkeypatch):
    folder = data_dir("cdeep3m_mito", "train", "images")
    spy = OpenSpy(monkeypatch)
    vol = open_volume(folder)
    assert vol.shape == (20, 1024, 1024) and vol.dtype == np.uint8 and len(vol) == 20 and vol.ndim == 3
    assert vol.name == "images" and vol.path == folder and vol.voxel_size is None
    spy.names.clear()  # the header pass at open touched every file once
    slab = vol[3:5]
    assert spy.names == ["images.013.png", "images.014.png"]
    assert slab.shape == (2, 1024, 1024) and slab.dtype == np.uint8
    np.testing.assert_array_equal(slab[1], np.asarray(Image.open(folder / "images.014.png")))
    assert vol.as_uint8() is vol


def test_cdeep3m_palette_labels_give_indices():
    vol = open_volume(data_dir("cdeep3m_mito", "train", "labels"))
    assert vol.shape == (20, 1024, 1024) and vol.dtype == np.uint8
    values, counts = np.unique(vol[0], return_counts=True)
    assert values.tolist() == [0, 1]
    assert 0.01 < counts[1] / counts.sum() < 0.3  # ~9 % mitochondria, not a colour conversion


def test_cem500k_tiffs_open_with_their_own_sizes():
    folder = data_dir("cem500k_patches", "unlabeled")
    shapes = {p.name: open_volume(p).shape for p in sorted(folder.glob("*.tiff"))}
    assert len(shapes) == 10
    assert shapes["example5.tiff"] == (1, 224, 138)
    assert shapes["example9.tiff"] == (1, 224, 200)
    assert shapes["example0.tiff"] == (1, 224, 224)
    vol = open_volume(folder / "example5.tiff")
    np.testing.assert_array_equal(vol[0], tifffile.imread(folder / "example5.tiff"))


# --------------------------------------------------------------------------- indexing
INDICES = [
    np.s_[...], np.s_[2], np.s_[-1], np.s_[1:4], np.s_[::2], np.s_[::-1], np.s_[4:0:-2],
    np.s_[:, 3], np.s_[:, :, -2], np.s_[1, 5:9, 3:20:4], np.s_[..., 7], np.s_[2, ...],
    np.s_[3:3], np.s_[:, 10:2], np.s_[1:3, ::-3, ::7], np.s_[np.int64(2), 1], np.s_[-100:100],
]


@pytest.mark.parametrize("index", INDICES, ids=[str(i) for i in range(len(INDICES))])
def test_indexing_matches_numpy(tmp_path, index):
    a = ramp()
    np.save(tmp_path / "a.npy", a)
    write_png_folder(tmp_path / "png", a)
    for vol in (open_volume(tmp_path / "a.npy"), open_volume(tmp_path / "png")):
        out = vol[index]
        assert isinstance(out, np.ndarray) and out.dtype == a.dtype
        np.testing.assert_array_equal(out, a[index])


def test_index_errors(tmp_path):
    np.save(tmp_path / "a.npy", ramp())
    vol = open_volume(tmp_path / "a.npy")
    with pytest.raises(IndexError):
        vol[5]
    with pytest.raises(IndexError):
        vol[0, 0, 0, 0]
    with pytest.raises(IndexError):
        vol[[0, 1]]
    np.testing.assert_array_equal(np.asarray(vol), ramp())
    assert [s.shape for s in vol] == [(40, 30)] * 5


# --------------------------------------------------------------------------- round trips
def test_png_folder_natural_order_hidden_and_case(tmp_path):
    a = ramp((12, 8, 6), np.uint8)
    folder = tmp_path / "stack"
    folder.mkdir()
    for z in range(12):  # slice_2 must come before slice_10
        Image.fromarray(a[z]).save(folder / f"slice_{z}.{'PNG' if z % 2 else 'png'}")
    Image.fromarray(a[0] + 1).save(folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image")
    vol = open_volume(folder)
    assert vol.shape == (12, 8, 6) and vol.name == "stack"
    np.testing.assert_array_equal(vol[...], a)


def test_png_writer_round_trip_and_replace(tmp_path):
    a = ramp((11, 9, 7), np.uint16)
    out = write_png_folder(tmp_path / "out", a)
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "slice_0000.png" and names[-1] == "slice_0010.png" and len(names) == 11
    np.testing.assert_array_equal(open_volume(out)[...], a)
    write_png_folder(tmp_path / "out", a[:3].astype(np.uint8) > 5)  # replaces the folder
    vol = open_volume(tmp_path / "out")
    assert vol.shape == (3, 9, 7) and vol.dtype == np.bool_
    np.testing.assert_array_equal(vol[...], a[:3] > 5)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.int32, np.float64])
def test_tif_stack_round_trip_with_voxel_size(tmp_path, dtype):
    a = ramp(dtype=dtype)
    write_tif_stack(tmp_path / "a.tif", a, voxel_size=VS)
    vol = open_volume(tmp_path / "a.tif")
    assert vol.shape == a.shape and vol.dtype == a.dtype and vol.name == "a"
    np.testing.assert_allclose(vol.voxel_size, VS, rtol=1e-6)
    np.testing.assert_array_equal(vol[1:4, ::3, 2], a[1:4, ::3, 2])
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


def test_imagej_tif_metadata_in_micron(tmp_path):
    a = ramp(dtype=np.uint8)
    tifffile.imwrite(tmp_path / "fiji.tif", a, imagej=True, resolution=(1 / 0.0059, 1 / 0.0059),
                     metadata={"spacing": 0.04, "unit": "micron", "axes": "ZYX"})
    np.testing.assert_allclose(open_volume(tmp_path / "fiji.tif").voxel_size, VS, rtol=1e-5)


def test_ome_tif_voxel_size(tmp_path):
    a = ramp(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.ome.tif", a, metadata={
        "axes": "ZYX", "PhysicalSizeX": 5.9, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 5.9,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.04, "PhysicalSizeZUnit": "µm"})
    vol = open_volume(tmp_path / "x.ome.tif")
    assert vol.name == "x"
    np.testing.assert_allclose(vol.voxel_size, VS, rtol=1e-6)


def test_compressed_tif_reads_through_zarr(tmp_path):
    a = ramp(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", a, compression="zlib")
    vol = open_volume(tmp_path / "c.tif")
    assert vol.voxel_size is None
    np.testing.assert_array_equal(vol[2:4, ::-2], a[2:4, ::-2])
    vol2 = pickle.loads(pickle.dumps(vol))
    np.testing.assert_array_equal(vol2[...], a)


def test_single_2d_images(tmp_path):
    a = ramp((1, 20, 16), np.uint8)[0]
    tifffile.imwrite(tmp_path / "one.tif", a)
    Image.fromarray(a).save(tmp_path / "one.png")
    smooth = np.tile(np.linspace(40, 200, 16).astype(np.uint8), (20, 1))
    Image.fromarray(smooth).save(tmp_path / "one.jpg", quality=100)
    for name in ("one.tif", "one.png"):
        vol = open_volume(tmp_path / name)
        assert vol.shape == (1, 20, 16) and vol.name == "one"
        np.testing.assert_array_equal(vol[0], a)
    jpg = open_volume(tmp_path / "one.jpg")
    assert jpg.shape == (1, 20, 16) and jpg.dtype == np.uint8
    assert np.abs(jpg[0].astype(int) - smooth).max() <= 3  # lossy, but the same picture


def test_jpg_folder(tmp_path):
    smooth = np.tile(np.linspace(40, 200, 16).astype(np.uint8), (20, 1))
    for z in range(3):
        Image.fromarray(smooth).save(tmp_path / f"s{z}.jpeg", quality=100)
    vol = open_volume(tmp_path)
    assert vol.shape == (3, 20, 16)
    assert np.abs(vol[2].astype(int) - smooth).max() <= 3


def test_16bit_and_float_pngs_keep_dtype(tmp_path):
    a = ramp((1, 6, 5), np.uint16)[0] * 7
    Image.fromarray(a).save(tmp_path / "a16.png")
    vol = open_volume(tmp_path / "a16.png")
    assert vol.dtype == np.uint16
    np.testing.assert_array_equal(vol[0], a)
    f = np.linspace(-1, 1, 30, dtype=np.float32).reshape(6, 5)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(open_volume(tmp_path / "f.tif")[0], f)


def test_zarr_v2_ome_round_trip(tmp_path):
    a = ramp()
    write_zarr(tmp_path / "a.zarr", a, chunks=(2, 16, 16), voxel_size=VS)
    vol = open_volume(tmp_path / "a.zarr")
    assert vol.shape == a.shape and vol.dtype == a.dtype and vol.voxel_size == VS and vol.name == "a"
    np.testing.assert_array_equal(vol[...], a)
    arr = zarr.open_array(str(tmp_path / "a.zarr" / "0"), mode="r")
    assert arr.metadata.zarr_format == 2 and arr.chunks == (2, 16, 16)
    attrs = zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["multiscales"][0]
    assert attrs["version"] == "0.4" and [ax["name"] for ax in attrs["axes"]] == ["z", "y", "x"]
    sub = open_volume(tmp_path / "a.zarr" / "0")  # an array inside the store, voxel size from parent
    assert sub.voxel_size == VS and sub.name == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_zarr_v3_array_and_group_key(tmp_path):
    a = ramp()
    z = zarr.create_array(str(tmp_path / "v3.zarr"), shape=a.shape, dtype=a.dtype, chunks=(1, 20, 20),
                          zarr_format=3)
    z[:] = a
    vol = open_volume(tmp_path / "v3.zarr")
    assert vol.voxel_size is None and vol.name == "v3"
    np.testing.assert_array_equal(vol[1:3, 5:25], a[1:3, 5:25])
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    g.create_array("raw", shape=a.shape, dtype=a.dtype, chunks=(2, 20, 20))[:] = a
    g.create_array("labels/mito", shape=a.shape, dtype=np.uint8, chunks=(2, 20, 20))[:] = 1
    vol = open_volume(tmp_path / "g.zarr", key="labels/mito")
    assert vol.dtype == np.uint8 and vol.name == "g" and int(vol[...].sum()) == a.size
    np.testing.assert_array_equal(open_volume(tmp_path / "g.zarr", key="raw")[...], a)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_multiscale_levels(tmp_path, zarr_format):
    a = ramp((4, 32, 32))
    g = zarr.open_group(str(tmp_path / "ms.ome.zarr"), mode="w", zarr_format=zarr_format)
    ms = {
        "version": "0.4" if zarr_format == 2 else "0.5",
        "axes": [{"name": "c", "type": "channel"}] + [
            {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [
            {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.04, 0.0059, 0.0059]}]},
            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.04, 0.0118, 0.0118]}]},
        ],
    }
    g.attrs.update({"multiscales": [ms]} if zarr_format == 2 else {"ome": {"version": "0.5", "multiscales": [ms]}})
    g.create_array("s0", shape=(1,) + a.shape, dtype=a.dtype, chunks=(1, 2, 16, 16))[:] = a[None]
    g.create_array("s1", shape=(1, 4, 16, 16), dtype=a.dtype, chunks=(1, 2, 16, 16))[:] = a[None, :, ::2, ::2]
    vol = open_volume(tmp_path / "ms.ome.zarr")
    assert vol.shape == (4, 32, 32) and vol.name == "ms"
    np.testing.assert_allclose(vol.voxel_size, (40.0, 5.9, 5.9))
    np.testing.assert_array_equal(vol[...], a)
    low = open_volume(tmp_path / "ms.ome.zarr", level=1)
    assert low.shape == (4, 16, 16)
    np.testing.assert_allclose(low.voxel_size, (40.0, 11.8, 11.8))
    np.testing.assert_array_equal(low[2], a[2, ::2, ::2])


def test_h5_with_key_voxel_size_and_pickle(tmp_path):
    a = ramp()
    with h5py.File(tmp_path / "a.h5", "w") as f:
        d = f.create_dataset("volumes/raw", data=a, chunks=(1, 20, 30))
        d.attrs["element_size_um"] = (0.04, 0.0059, 0.0059)
        f.create_dataset("volumes/labels", data=a > 100).attrs["resolution"] = VS
    vol = open_volume(tmp_path / "a.h5", key="volumes/raw")
    assert vol.shape == a.shape and vol.name == "a"
    np.testing.assert_allclose(vol.voxel_size, VS)
    np.testing.assert_array_equal(vol[1:4, ::-1, 3], a[1:4, ::-1, 3])
    clone = pickle.loads(pickle.dumps(vol))
    np.testing.assert_array_equal(clone[4], a[4])
    lab = open_volume(tmp_path / "a.h5", key="/volumes/labels")
    assert lab.dtype == np.bool_ and lab.voxel_size == VS
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["data"] = a[0]
        f["meta"] = np.arange(3)  # 1-D: not an image candidate
    one = open_volume(tmp_path / "one.h5")
    assert one.shape == (1, 40, 30) and one.voxel_size is None
    np.testing.assert_array_equal(one[0], a[0])


def test_mrc_voxel_size_and_signed_int8(tmp_path):
    a = np.array([-128, -1, 0, 127], dtype=np.int8).reshape(1, 2, 2).repeat(3, axis=0)
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(a)
        m.voxel_size = (59.0, 59.0, 400.0)  # Angstrom, x y z
    vol = open_volume(tmp_path / "t.mrc")
    assert vol.dtype == np.int8 and vol.shape == (3, 2, 2)
    np.testing.assert_allclose(vol.voxel_size, (40.0, 5.9, 5.9))
    u = vol.as_uint8(percentiles=(0, 100))
    # the full int8 range maps onto 0..255 (a naive cast would clip the negative half to 0)
    np.testing.assert_array_equal(u[0], [[0, 127], [128, 255]])
    with mrcfile.new(tmp_path / "nosize.mrc") as m:
        m.set_data(ramp((2, 4, 4), np.float32))
    assert open_volume(tmp_path / "nosize.mrc").voxel_size is None


def test_npy_read_does_not_materialise(tmp_path):
    a = ramp((32, 256, 256), np.float32)  # 8 MiB
    np.save(tmp_path / "big.npy", a)
    vol = open_volume(tmp_path / "big.npy")
    tracemalloc.start()
    slab = vol[5]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.5 * slab.nbytes < a.nbytes / 16
    np.testing.assert_array_equal(slab, a[5])
    slab[:] = 0  # a writable copy, the file is untouched
    assert vol[5].max() > 0


def test_zarr_read_touches_only_needed_chunks(tmp_path):
    a = ramp((6, 32, 32))
    write_zarr(tmp_path / "z.zarr", a, chunks=(2, 32, 32))
    for chunk in (tmp_path / "z.zarr" / "0" / "2").rglob("*"):  # z-chunk 2 (slices 4, 5)
        if chunk.is_file():
            chunk.write_bytes(b"garbage, not a blosc chunk")
    vol = open_volume(tmp_path / "z.zarr")
    np.testing.assert_array_equal(vol[0:4], a[0:4])  # never decodes the broken chunk
    from cemkit.errors import InputError

    with pytest.raises(InputError, match="z.zarr"):
        vol[3:6]


# --------------------------------------------------------------------------- intensity
def test_stretch_to_uint8_exact():
    np.testing.assert_array_equal(stretch_to_uint8(np.array([0, 50, 100, 200]), 0, 100), [0, 128, 255, 255])
    np.testing.assert_array_equal(stretch_to_uint8(np.array([-5.0, np.nan, 2.5]), -5, 5), [0, 0, 191])
    np.testing.assert_array_equal(stretch_to_uint8(np.full((2, 2), 7.0), 7, 7), np.zeros((2, 2)))
    np.testing.assert_array_equal(stretch_to_uint8(np.array([True, False]), 0, 1), [255, 0])


def test_as_uint8_uint16_default_percentiles(tmp_path):
    a = np.arange(1000, dtype=np.uint16).reshape(4, 10, 25)
    np.save(tmp_path / "a.npy", a)
    u = open_volume(tmp_path / "a.npy").as_uint8()
    assert (u.low, u.high) == pytest.approx((4.995, 994.005))  # np.percentile of 0..999
    assert u.dtype == np.uint8 and u.shape == a.shape
    flat = u[...].ravel()
    np.testing.assert_array_equal(flat[[0, 4, 5, 500, 994, 995, 999]], [0, 0, 0, 128, 255, 255, 255])
    clone = pickle.loads(pickle.dumps(u))
    assert (clone.low, clone.high) == (u.low, u.high)


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.int16, np.uint32])
def test_as_uint8_full_range(tmp_path, dtype):
    a = np.array([[-1000, 0], [1000, 3000]]).astype(dtype) if np.dtype(dtype).kind != "u" else \
        np.array([[0, 1000], [2000, 4000]]).astype(dtype)
    np.save(tmp_path / "a.npy", a[None])
    u = open_volume(tmp_path / "a.npy").as_uint8(percentiles=(0, 100))
    np.testing.assert_array_equal(u[0], [[0, 64], [128, 255]])


def test_as_uint8_bool_constant_and_uint8(tmp_path):
    np.save(tmp_path / "b.npy", np.eye(3, dtype=bool)[None])
    np.testing.assert_array_equal(open_volume(tmp_path / "b.npy").as_uint8()[0], np.eye(3) * 255)
    np.save(tmp_path / "c.npy", np.full((2, 3, 3), 1234.5, np.float32))
    assert open_volume(tmp_path / "c.npy").as_uint8()[...].max() == 0
    np.save(tmp_path / "u.npy", ramp(dtype=np.uint8))
    vol = open_volume(tmp_path / "u.npy")
    assert vol.as_uint8() is vol


def test_percentiles_estimated_from_a_sample(tmp_path, monkeypatch):
    a = ramp((40, 20, 20), np.uint16)
    np.save(tmp_path / "a.npy", a)
    vol = open_volume(tmp_path / "a.npy")
    reads = []
    real = type(vol)._read
    monkeypatch.setattr(type(vol), "_read", lambda self, *s: reads.append(s) or real(self, *s))
    low, high = estimate_percentiles(vol, (0, 100), max_slices=16)
    assert len(reads) == 16 and all(r[0].stop - r[0].start == 1 for r in reads)
    assert reads[0][0].start == 0 and reads[-1][0].start == 39
    assert (low, high) == (0.0, float(a[39].max()))


# --------------------------------------------------------------------------- colour / palette
def test_rgb_png_becomes_gray_with_warning(tmp_path, caplog):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    rgb[1, :, :] = 255  # a white row
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with caplog.at_level(logging.WARNING):
        vol = open_volume(tmp_path / "rgb.png")
    assert "rgb.png" in caplog.text and "gray" in caplog.text
    assert vol.dtype == np.uint8 and vol.shape == (1, 4, 5)
    expected = np.full((4, 5), 54, np.uint8)  # round(0.2125 * 255)
    expected[1] = 255
    np.testing.assert_array_equal(vol[0], expected)
    np.testing.assert_array_equal(rgb_to_gray(rgb), expected)


def test_rgba_folder_and_rgb_tif_stack(tmp_path, caplog):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 1] = 100
    for z in range(2):
        Image.fromarray(np.dstack([rgb, np.full((3, 4), 7, np.uint8)])).save(tmp_path / f"c{z}.png")
    with caplog.at_level(logging.WARNING):
        vol = open_volume(tmp_path)
    assert str(tmp_path) in caplog.text
    np.testing.assert_array_equal(vol[...], np.full((2, 3, 4), 72, np.uint8))  # round(0.7154 * 100)
    stack = np.zeros((3, 6, 5, 3), np.uint16)
    stack[..., 2] = 1000
    tifffile.imwrite(tmp_path / "rgb_stack.tif", stack, photometric="rgb")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tv = open_volume(tmp_path / "rgb_stack.tif")
    assert "rgb_stack.tif" in caplog.text
    assert tv.shape == (3, 6, 5) and tv.dtype == np.uint16
    np.testing.assert_array_equal(tv[1], np.full((6, 5), 72, np.uint16))  # round(0.0721 * 1000)


def test_palette_png_keeps_indices(tmp_path):
    idx = np.array([[0, 1, 1], [2, 0, 1]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "labels.png")
    vol = open_volume(tmp_path / "labels.png")
    assert vol.dtype == np.uint8
    np.testing.assert_array_equal(vol[0], idx)


# --------------------------------------------------------------------------- writers
class SlabSpy(Volume):
    """A volume recording every block asked of it (proves writers stream)."""

    def __init__(self, a: np.ndarray, voxel_size=None):
        super().__init__(a.shape, a.dtype, voxel_size, "spy", Path("spy"))
        self.a, self.reads = a, []

    def _read(self, zs, ys, xs):
        self.reads.append((zs.start, zs.stop))
        return self.a[zs, ys, xs]


def test_writers_stream_volumes(tmp_path):
    a = ramp((40, 16, 16))
    src = SlabSpy(a, voxel_size=VS)
    write_zarr(tmp_path / "s.zarr", src, chunks=(8, 16, 16))
    assert max(b - a_ for a_, b in src.reads) == 8 and len(src.reads) == 5
    vol = open_volume(tmp_path / "s.zarr")
    assert vol.voxel_size == VS
    np.testing.assert_array_equal(vol[...], a)
    src.reads.clear()
    write_tif_stack(tmp_path / "s.tif", src)
    assert max(b - a_ for a_, b in src.reads) <= 16
    tv = open_volume(tmp_path / "s.tif")
    np.testing.assert_allclose(tv.voxel_size, VS, rtol=1e-6)
    np.testing.assert_array_equal(tv[...], a)
    src.reads.clear()
    write_volume(tmp_path / "s.npy", src)
    assert len(src.reads) == 3
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), a)
    write_volume(tmp_path / "pngs", SlabSpy(a.astype(np.uint8)))
    assert len(list((tmp_path / "pngs").iterdir())) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs", "s.npy", "s.tif", "s.zarr"]


def test_write_npy_and_2d_input(tmp_path):
    a = ramp((1, 7, 9))[0]
    write_npy(tmp_path / "x.npy", a)
    assert open_volume(tmp_path / "x.npy").shape == (1, 7, 9)
    write_zarr(tmp_path / "x.zarr", a)
    np.testing.assert_array_equal(open_volume(tmp_path / "x.zarr")[0], a)


def test_create_zarr_streaming_and_resume(tmp_path):
    path = tmp_path / "pred.zarr"
    arr = create_zarr(path, (6, 20, 20), np.float32, chunks=(2, 20, 20), voxel_size=VS)
    arr[0:2] = 0.5
    again = create_zarr(path, (6, 20, 20), np.float32, chunks=(2, 20, 20), voxel_size=VS)
    assert float(again[1, 3, 3]) == 0.5 and float(again[4, 0, 0]) == 0.0  # resumed, not wiped
    again[2:6] = 1.0
    vol = open_volume(path)
    assert vol.voxel_size == VS and vol.dtype == np.float32
    assert float(vol[...].sum()) == 0.5 * 800 + 1600
    fresh = create_zarr(path, (6, 20, 20), np.float32, chunks=(2, 20, 20), overwrite=True)
    assert float(fresh[...].sum()) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr"]


def _read_slab(args):
    vol, z = args
    return vol[z].sum(dtype=np.int64), vol.as_uint8(percentiles=(0, 100))[z].max()


def test_volumes_work_in_spawned_workers(tmp_path):
    import multiprocessing

    a = ramp((4, 20, 20))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["raw"] = a
    tifffile.imwrite(tmp_path / "c.tif", a, compression="zlib", photometric="minisblack")
    vols = [open_volume(tmp_path / "a.h5"), open_volume(tmp_path / "c.tif")]
    vols[0][0]  # the parent holds open handles: workers must reopen their own
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        results = pool.map(_read_slab, [(v, 3) for v in vols])
    assert results == [(a[3].sum(dtype=np.int64), 255)] * 2


def test_bigtiff_keeps_voxel_size(tmp_path, monkeypatch):
    from cemkit.io import writers

    monkeypatch.setattr(writers, "BIGTIFF_BYTES", 100)  # pretend the stack is over 4 GB
    a = ramp(dtype=np.uint8)
    write_tif_stack(tmp_path / "big.tif", a, voxel_size=VS)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff and not tif.is_imagej
    with open_volume(tmp_path / "big.tif") as vol:
        np.testing.assert_allclose(vol.voxel_size, VS, rtol=1e-6)
        np.testing.assert_array_equal(vol[...], a)


def test_mrc_imod_unsigned_bytes(tmp_path):
    a = np.array([[0, 100], [200, 255]], np.uint8)[None]
    with mrcfile.new(tmp_path / "imod.mrc") as m:
        m.set_data(a.view(np.int8))
        extra = bytearray(m.header.extra2.tobytes())
        extra[40:48] = np.array([1146047817, 0], m.header.nx.dtype).tobytes()  # IMOD stamp, unsigned
        m.header.extra2 = np.frombuffer(bytes(extra), m.header.extra2.dtype)[0]
    vol = open_volume(tmp_path / "imod.mrc")
    assert vol.dtype == np.uint8
    np.testing.assert_array_equal(vol[...], a)
