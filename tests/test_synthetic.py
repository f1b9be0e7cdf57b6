"""Tests of cemkit.data.synthetic: deterministic synthetic SBEM / FIB-SEM with mitochondria labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cemkit.data.synthetic import (
    INJECTED_KINDS,
    STYLES,
    RawFolderInfo,
    Style,
    SyntheticVolume,
    make_volume,
    save_montage,
    write_raw_folder,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cdeep3m_mito"
SHAPE = (6, 160, 160)


@pytest.fixture(scope="module")
def per_style() -> list[SyntheticVolume]:
    """One small volume per built-in style (different seeds)."""
    return [make_volume(SHAPE, seed=10 + i, style=i) for i in range(len(STYLES))]


def test_deterministic_and_seed_dependent():
    a = make_volume((6, 96, 96), seed=3, style=0)
    b = make_volume((6, 96, 96), seed=3, style=0)
    c = make_volume((6, 96, 96), seed=4, style=0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mito, b.mito)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert np.mean(a.image != c.image) > 0.5
    assert not np.array_equal(a.mito, c.mito)


def test_dtypes_shapes_and_arguments():
    sv = make_volume(shape=(5, 64, 80), seed=0, style=0, voxel_size=(40.0, 6.0, 6.0))
    assert isinstance(sv, SyntheticVolume)
    assert sv.image.dtype == np.uint8 and sv.image.shape == (5, 64, 80)
    assert sv.mito.dtype == np.uint8 and sv.mito.shape == (5, 64, 80)
    assert sv.instances.dtype == np.int32 and sv.instances.shape == (5, 64, 80)
    assert set(np.unique(sv.mito)) <= {0, 1}
    assert sv.voxel_size == (40.0, 6.0, 6.0)
    assert isinstance(sv.style, Style) and sv.style is STYLES[0]
    # default voxel size comes from the style; styles by name or dataclass work too
    assert make_volume((2, 32, 32), style=1).voxel_size == STYLES[1].voxel_size
    assert make_volume((2, 32, 32), style="fibsem_inverted").style.inverted
    custom = STYLES[0].with_(name="custom", inverted=True)
    assert make_volume((2, 32, 32), style=custom).style is custom
    with pytest.raises(ValueError):
        make_volume((2, 32, 32), style=len(STYLES))
    with pytest.raises(ValueError):
        make_volume((2, 32, 32), style="no_such_style")
    with pytest.raises(ValueError):
        make_volume((32, 32))
    assert len(STYLES) >= 4 and len({s.name for s in STYLES}) == len(STYLES)


def test_labels_consistent_with_image(per_style):
    for sv in per_style:
        name = sv.style.name
        frac = sv.mito.mean()
        assert 0.03 <= frac <= 0.20, (name, frac)
        np.testing.assert_array_equal(sv.instances > 0, sv.mito == 1)
        ids = np.unique(sv.instances)
        n = int(ids.max())
        assert n >= 2, name
        np.testing.assert_array_equal(ids, np.arange(n + 1))  # ids 1..N, no gaps
        for i, sl in enumerate(ndimage.find_objects(sv.instances), start=1):
            _, n_comp = ndimage.label(sv.instances[sl] == i)  # 6-connectivity in 3D
            assert n_comp == 1, (name, i, n_comp)
        inside = sv.image[sv.mito == 1].mean()
        outside = sv.image[sv.mito == 0].mean()
        if sv.style.inverted:
            assert inside > outside + 15, (name, inside, outside)
        else:
            assert inside < outside - 10, (name, inside, outside)


def test_small_volumes_still_have_mitochondria():
    """Fields smaller than a cell (tiny test volumes) still get consistent mitochondria."""
    for shape, seed in (((3, 64, 64), 2), ((4, 64, 64), 0), ((1, 48, 48), 1)):
        sv = make_volume(shape, seed=seed)
        assert 0 < sv.mito.mean() < 0.5, (shape, sv.mito.mean())
        np.testing.assert_array_equal(sv.instances > 0, sv.mito == 1)
        for i, sl in enumerate(ndimage.find_objects(sv.instances), start=1):
            assert ndimage.label(sv.instances[sl] == i)[1] == 1
        assert sv.image[sv.mito == 1].mean() < sv.image[sv.mito == 0].mean()


def test_mito_pixels_drawn_as_mito_without_noise():
    """Noise-free rendering: every labelled voxel is darker than typical cytoplasm, and the
    label boundary is where the intensity changes (voxels just outside are lighter)."""
    clean = STYLES[0].with_(name="clean", photons=1e9, read_noise=0.0, blur_sigma=0.0, noise_blur=0.0,
                            granularity=0.0, flicker=0.0, illumination=0.0)
    sv = make_volume((6, 160, 160), seed=5, style=clean)
    img = sv.image.astype(np.float32)
    mito = sv.mito.astype(bool)
    ring = ndimage.binary_dilation(mito, structure=np.ones((1, 5, 5), bool)) & ~mito
    cyto_median = np.median(img[~ndimage.binary_dilation(mito, iterations=3)])
    assert np.quantile(img[mito], 0.99) < cyto_median
    assert img[mito].mean() < img[ring].mean() - 20


def test_consecutive_slices_correlate(per_style):
    sv = make_volume((16, 128, 128), seed=2, style=0)
    img = sv.image.astype(np.float64)

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    near = np.mean([corr(img[k], img[k + 1]) for k in range(8)])
    far = np.mean([corr(img[k], img[k + 8]) for k in range(8)])
    assert near > 0.3
    assert near > far + 0.15
    # labels persist over several anisotropic slices: most mitochondria span >= 3 slices
    spans = [sl[0].stop - sl[0].start for sl in ndimage.find_objects(sv.instances)]
    assert np.median(spans) >= 3


def test_styles_differ(per_style):
    def stats(sv):
        img = sv.image.astype(np.float32)
        noise = np.median(np.abs(img - ndimage.uniform_filter(img, size=(1, 3, 3))))
        return img.mean(), img.std(), noise

    s = [stats(sv) for sv in per_style]
    for (i, a), (j, b) in itertools.combinations(enumerate(s), 2):
        d_mean, d_std = abs(a[0] - b[0]), abs(a[1] - b[1])
        d_noise = abs(a[2] - b[2]) / max(a[2], b[2])
        assert d_mean > 5 or d_std > 5 or d_noise > 0.25, (STYLES[i].name, STYLES[j].name, a, b)
    inverted = [sv for sv in per_style if sv.style.inverted]
    assert inverted and all(sv.image.mean() < 110 for sv in inverted)


@pytest.mark.skipif(not REAL.exists(), reason="real CDeep3M sample not present")
def test_default_style_resembles_real_sbem():
    """Style 0 is modelled on the CDeep3M SBEM sample: similar mitochondria fraction, dark
    mitochondria on lighter cytoplasm, similar pixel-scale noise and slice-to-slice correlation."""
    real = np.stack([np.array(Image.open(REAL / "train" / "images" / f"images.{k:03d}.png"))
                     for k in (10, 11)]).astype(np.float32)
    lab = np.array(Image.open(REAL / "train" / "labels" / "mitos_3D.010.png")) > 0
    sv = make_volume((4, 256, 256), seed=1, style=0)
    syn = sv.image.astype(np.float32)

    def noise(a):
        return np.median(np.abs(a - ndimage.uniform_filter(a, size=(1, 3, 3))))

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    assert abs(sv.mito.mean() - lab.mean()) < 0.06
    ratio_real = real[0][lab].mean() / real[0][~lab].mean()
    ratio_syn = syn[sv.mito > 0].mean() / syn[sv.mito == 0].mean()
    assert ratio_syn < 0.75 and abs(ratio_syn - ratio_real) < 0.2, (ratio_syn, ratio_real)
    assert 0.5 < noise(syn) / noise(real) < 2.0
    assert abs(corr(syn[0], syn[1]) - corr(real[0], real[1])) < 0.3


def _dhash(img: np.ndarray) -> imagehash.ImageHash:
    return imagehash.dhash(Image.fromarray(np.ascontiguousarray(img)))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> RawFolderInfo:
    root = tmp_path_factory.mktemp("raw")
    return write_raw_folder(root, n_sources=5, seed=0, size=224, depth=4, n_images=3,
                            fib_shape=(24, 96, 96), corrupt=True)


def test_raw_folder_sources_and_formats(raw):
    from cemkit.io import open_volume

    root = raw.root
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert names == ["lab_a_png", "lab_b_stack.tif", "lab_c_fib.mrc", "lab_d.h5", "lab_e_tem_png",
                     "lab_z_truncated.tif"]
    formats = {s.name: s.format for s in raw.sources}
    assert formats == {"lab_a_png": "png_folder", "lab_b_stack.tif": "tif", "lab_c_fib.mrc": "mrc",
                       "lab_d.h5": "h5", "lab_e_tem_png": "png_folder"}
    for src in raw.sources:
        vol = open_volume(root / src.path, key=src.key)
        assert vol.shape == tuple(src.shape), src.name
        assert vol.dtype == np.dtype(src.dtype)
        if src.format != "png_folder":
            np.testing.assert_allclose(vol.voxel_size, src.voxel_size, rtol=1e-4)
        n_injected = len(raw.injected_in(src.name))
        assert len(src.distinct) + n_injected == src.shape[0], src.name
    fib = raw.source("lab_c_fib.mrc")
    assert fib.dtype == "uint16"
    assert max(fib.voxel_size) / min(fib.voxel_size) < 1.5  # near-isotropic: curation cuts xz / yz
    tif = raw.source("lab_b_stack.tif")
    assert tif.voxel_size[0] / tif.voxel_size[1] >= 4  # anisotropic
    # deterministic
    assert len(raw.injected) >= 15
    assert {i.kind for i in raw.injected} == set(INJECTED_KINDS)


def test_raw_folder_injected_items(raw):
    from cemkit.io import open_volume

    root = raw.root
    vols = {s.name: open_volume(root / s.path, key=s.key)[:] for s in raw.sources}
    for item in raw.injected:
        img = vols[item.source][item.index]
        if item.kind == "exact_duplicate":
            np.testing.assert_array_equal(img, vols[item.source][item.original])
            if item.path.endswith(".png"):
                orig_file = sorted((root / item.source).iterdir())[item.original]
                assert (root / item.path).read_bytes() == orig_file.read_bytes()
        elif item.kind == "near_duplicate":
            orig = vols[item.source][item.original]
            diff = np.abs(img.astype(np.int16) - orig.astype(np.int16))
            assert diff.any(), item
            if item.detail.startswith("shift"):
                dy, dx = (int(t.split("=")[1]) for t in item.detail.split()[1:])
                np.testing.assert_array_equal(img[dy:, dx:], orig[:-dy, :-dx])
            else:
                assert diff.mean() <= 3.5, item
            assert _dhash(img[:224, :224]) - _dhash(orig[:224, :224]) <= 12, item
        elif item.kind == "blank":
            assert img.min() == img.max(), item
        elif item.kind == "low_contrast":
            assert 0 < img.std() < 3, item
        elif item.kind == "artefact":
            assert img.max() == 255 and np.mean(img == 0) > 0.7, item
    # genuine images of a png source come from different seeds: far apart in dHash
    for name in ("lab_a_png", "lab_e_tem_png"):
        src = raw.source(name)
        hashes = [_dhash(vols[name][k][:224, :224]) for k in src.distinct]
        assert min(a - b for a, b in itertools.combinations(hashes, 2)) > 12, name
        for k in src.distinct:
            assert vols[name][k].std() > 10


def test_raw_folder_corrupt_file_fails_to_read(raw):
    from cemkit.errors import InputError
    from cemkit.io import open_volume

    assert raw.corrupt == "lab_z_truncated.tif"
    with pytest.raises(InputError):
        open_volume(raw.root / raw.corrupt)[:]


def test_raw_folder_deterministic(tmp_path, raw):
    info = write_raw_folder(tmp_path, n_sources=1, seed=0, size=224, depth=4, n_images=3)
    assert info.injected == [i for i in raw.injected if i.source == "lab_a_png"]
    for rel in ("lab_a_png/img_0000.png", "lab_a_png/img_0003.png"):
        assert (tmp_path / rel).read_bytes() == (raw.root / rel).read_bytes()


def test_save_montage(tmp_path):
    sv = make_volume((8, 96, 128), seed=1, style=0)
    out = save_montage(tmp_path / "sub" / "montage.png", sv.image, sv.instances, n=3)
    assert out == tmp_path / "sub" / "montage.png"
    assert sorted(p.name for p in out.parent.iterdir()) == ["montage.png"]  # no temp file left
    arr = np.array(Image.open(out))
    gap = 4
    assert arr.shape == (3 * 96 + 2 * gap, 2 * 128 + gap, 3)
    left, right = arr[:96, :128], arr[:96, 128 + gap:]
    # left panel: the grey image itself; right panel: coloured overlay exactly on labelled pixels
    np.testing.assert_array_equal(left[..., 0], sv.image[0])
    coloured = (right.max(axis=2).astype(int) - right.min(axis=2)) > 10
    labelled = sv.instances[0] > 0
    assert labelled.any()
    np.testing.assert_array_equal(coloured & ~labelled, False)
    assert coloured[labelled].mean() > 0.9
    # a 2D image without labels works too
    one = save_montage(tmp_path / "one.png", sv.image[0], None)
    assert np.array(Image.open(one)).shape == (96, 128, 3)
