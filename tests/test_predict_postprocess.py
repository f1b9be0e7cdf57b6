"""Masks, connected components (slab-wise), watershed splitting and the object table."""

import csv

import numpy as np
import pytest
from scipy import ndimage

from cemkit.predict.postprocess import (
    TABLE_COLUMNS,
    label_components,
    largest_split_window,
    object_table,
    split_objects,
    split_touching,
    threshold_mask,
    write_table_csv,
)


def _spheres(shape, centres, radius):
    zz, yy, xx = np.indices(shape)
    out = np.zeros(shape, np.uint8)
    for c in centres:
        out[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius ** 2] = 1
    return out


def test_threshold_mask():
    p = np.array([[[0.2, 0.5, 0.51]]], np.float32)
    assert threshold_mask(p, 0.5).tolist() == [[0, 0, 1]]
    p3 = np.array([[0.1, 0.7], [0.6, 0.2], [0.3, 0.1]], np.float32)
    assert threshold_mask(p3).tolist() == [1, 0]


@pytest.mark.parametrize("connectivity", [1, 3])
@pytest.mark.parametrize("slab", [1, 3, 64])
def test_slabwise_components_equal_whole_volume(connectivity, slab):
    rng = np.random.default_rng(0)
    mask = (ndimage.gaussian_filter(rng.random((17, 30, 30)), 1.5) > 0.52).astype(np.uint8)
    out = np.zeros(mask.shape, np.uint32)
    n = label_components(mask, out, slab_size=slab, connectivity=connectivity)
    ref, n_ref = ndimage.label(mask, ndimage.generate_binary_structure(3, connectivity))
    assert n == n_ref > 5
    # same partition, numbered in order of first appearance like ndimage.label
    np.testing.assert_array_equal(out, ref)


def test_min_size_removes_small_objects():
    mask = np.zeros((6, 12, 12), np.uint8)
    mask[0:5, 1:4, 1:4] = 1      # 45 voxels, spans slabs
    mask[2, 8, 8] = 1            # 1 voxel
    out = np.zeros(mask.shape, np.uint32)
    assert label_components(mask, out, slab_size=2, min_size=10) == 1
    assert out.max() == 1 and (out > 0).sum() == 45


def test_watershed_splits_two_touching_spheres():
    mask = _spheres((24, 40, 56), [(12, 20, 18), (12, 20, 36)], 10)
    cc = np.zeros(mask.shape, np.uint32)
    assert label_components(mask, cc, slab_size=8) == 1          # touching: one component
    labels = split_touching(mask, h=2.0)
    assert labels.max() == 2
    assert labels[12, 20, 18] != labels[12, 20, 36]
    assert ((labels > 0) == (mask > 0)).all()
    sizes = np.bincount(labels.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 0.02 * sizes.sum()


def _same_partition(a, b):
    """True when the non-zero voxels of ``a`` and ``b`` coincide and their labels map one-to-one."""
    fa, fb = a.ravel(), b.ravel()
    if not ((fa > 0) == (fb > 0)).all():
        return False
    pairs = np.unique(np.stack([fa, fb], 1)[fa > 0], axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


@pytest.mark.parametrize("connectivity", [1, 3])
def test_split_objects_one_box_at_a_time_equals_the_whole_volume_watershed(connectivity):
    # three pairs of touching spheres and one lone sphere, all far apart: components 1..4, 7 objects
    mask = _spheres((20, 40, 150), [(10, 20, 12), (10, 20, 26)], 7)
    mask |= _spheres((20, 40, 150), [(10, 20, 50), (10, 20, 64), (10, 20, 100)], 7)
    mask |= _spheres((20, 40, 150), [(10, 14, 128), (10, 27, 128)], 7)
    labels = np.zeros(mask.shape, np.uint32)
    n = label_components(mask, labels, slab_size=6, connectivity=connectivity)
    assert n == 4
    components = labels.copy()
    m = split_objects(labels, object_table(labels, count=n), h=2.0, connectivity=connectivity, slab_size=6)
    whole = split_touching(mask, h=2.0, connectivity=connectivity)
    assert m == int(whole.max()) == 7 and labels.max() == 7
    assert _same_partition(labels, whole)
    # numbered component by component: the pieces of component 1 first, then those of component 2, ...
    pieces = [sorted(np.unique(labels[components == c]).tolist()) for c in range(1, 5)]
    assert sorted(len(p) for p in pieces) == [1, 2, 2, 2] and [i for p in pieces for i in p] == list(range(1, 8))
    assert labels[10, 20, 12] != labels[10, 20, 26] and labels[10, 14, 128] != labels[10, 27, 128]


def test_largest_split_window_is_the_biggest_bounding_box_with_its_margin_clipped_to_the_volume():
    labels = np.zeros((10, 20, 30), np.uint32)
    labels[0:4, 5:10, 5:8] = 1      # box 4 x 5 x 3 at the z = 0 face: window 5 x 7 x 5 = 175
    labels[3:6, 2:9, 10:16] = 2     # box 3 x 7 x 6 inside: window 5 x 9 x 8 = 360
    labels[8:10, 0:20, 28:30] = 3   # box 2 x 20 x 2 on three faces: window 3 x 20 x 3 = 180
    assert largest_split_window(object_table(labels), labels.shape) == (2, 360)
    labels[labels == 2] = 0
    assert largest_split_window(object_table(labels), labels.shape) == (3, 180)
    assert largest_split_window(object_table(np.zeros_like(labels)), labels.shape) == (0, 0)


def test_split_objects_works_on_zarr_and_drops_small_pieces(tmp_path):
    from cemkit.io import create_zarr

    mask = _spheres((20, 40, 60), [(10, 20, 18), (10, 20, 33)], 8)
    mask[2, 2, 2] = 1                                      # a 1-voxel object
    labels = create_zarr(tmp_path / "labels.zarr", mask.shape, "uint32", (5, 40, 60))
    n = label_components(mask, labels, slab_size=5)
    assert n == 2
    m = split_objects(labels, object_table(labels, count=n), h=2.0, min_size=10, slab_size=5)
    out = np.asarray(labels[:])
    assert m == 2 and sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert out[2, 2, 2] == 0 and out[10, 20, 18] != out[10, 20, 33]


def test_split_objects_matches_the_whole_volume_watershed_on_random_blobs():
    # touching blobs of many shapes: the same objects, and all but a few boundary voxels (watershed ties,
    # distances near diagonally touching neighbours) in the same one
    rng = np.random.default_rng(1)
    mask = (ndimage.gaussian_filter(rng.random((24, 64, 64)), 2.5) > 0.51).astype(np.uint8)
    labels = np.zeros(mask.shape, np.uint32)
    n = label_components(mask, labels, slab_size=8, connectivity=3)
    m = split_objects(labels, object_table(labels, count=n), (2, 1, 1), h=1.0, connectivity=3, min_size=5)
    whole = split_touching(mask, (2, 1, 1), h=1.0, connectivity=3, min_size=5)
    assert m == int(whole.max()) > 2 * n
    fg = labels.ravel() > 0
    assert (fg == (whole.ravel() > 0)).all()
    overlap = np.zeros((m + 1, m + 1), np.int64)
    np.add.at(overlap, (labels.ravel()[fg], whole.ravel()[fg]), 1)
    assert overlap.max(axis=1).sum() >= 0.99 * fg.sum()


def test_object_table_columns_and_values(tmp_path):
    labels = np.zeros((10, 20, 20), np.uint32)
    labels[1:4, 2:6, 3:5] = 1
    labels[5:10, 10:20, 0:1] = 2
    prob = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    t = object_table(labels, slab_size=3, probabilities=prob)
    assert tuple(t) == TABLE_COLUMNS
    assert t["id"].tolist() == [1, 2] and t["voxels"].tolist() == [24, 50]
    np.testing.assert_allclose(t["centroid_z"], [2.0, 7.0])
    np.testing.assert_allclose(t["centroid_y"], [3.5, 14.5])
    np.testing.assert_allclose(t["centroid_x"], [3.5, 0.0])
    assert [t["bbox_z0"][0], t["bbox_y0"][0], t["bbox_x0"][0], t["bbox_z1"][0], t["bbox_y1"][0],
            t["bbox_x1"][0]] == [1, 2, 3, 4, 6, 5]
    assert [t["bbox_z1"][1], t["bbox_y1"][1], t["bbox_x1"][1]] == [10, 20, 1]
    np.testing.assert_allclose(t["mean_probability"], [0.8, 0.8], atol=1e-6)
    path = write_table_csv(tmp_path / "objects.csv", t, voxel_size=(40.0, 6.0, 6.0))
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["voxels"] == "50" and float(rows[1]["volume_nm3"]) == 50 * 40 * 36
    assert list(rows[0])[:len(TABLE_COLUMNS)] == list(TABLE_COLUMNS)


def test_band_planes_bounds_the_voxels_of_a_post_processing_band():
    from cemkit.predict.postprocess import band_planes

    assert band_planes((100, 1024, 1024), 8) == 16            # at least 16 planes where they fit in 2**26 voxels
    assert band_planes((100, 1024, 1024), 32) == 32           # the slab size when larger
    assert band_planes((100, 4096, 4096), 8) == 4             # 4 x 4096^2 = 2**26 voxels
    assert band_planes((3, 16384, 16384), 8) == 1             # never fewer than one plane
    assert band_planes((100, 64, 64), 8, max_voxels=10 * 64 * 64) == 10
