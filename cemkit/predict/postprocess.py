"""From probabilities to masks, instance labels and an object table.

- :func:`threshold_mask`: binary mask (1 channel) or arg-max classes (C channels) of a probability block.
- :func:`label_components`: 3-D connected components of a mask stored on disk, computed slab by slab
  (scipy ``ndimage.label`` per slab, then the labels that touch across slab faces are merged with a
  graph connected-components pass). Memory: one slab plus a few integers per provisional object.
- :func:`split_touching`: watershed splitting of touching objects (distance transform, h-maxima
  markers, ``skimage.segmentation.watershed``) on a mask in memory: about 30 bytes per voxel
  (:func:`watershed_bytes`).
- :func:`split_objects`: :func:`split_touching` applied to each connected component of a labelling
  on disk, one bounding box at a time, so its memory is that of the largest object, not the volume.
- :func:`object_table`: id, voxels, centroid, bounding box (and mean probability) of every object,
  accumulated slab by slab, written as CSV.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cemkit.io.atomic import atomic_path
from cemkit.predict.streaming import slab_ranges

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("id", "voxels", "centroid_z", "centroid_y", "centroid_x",
                 "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1", "mean_probability")


def threshold_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 mask of a ``(C, ...)`` probability block: ``prob[0] > threshold`` for one channel,
    the arg-max class index for several."""
    if prob.shape[0] == 1:
        return (prob[0] > threshold).astype(np.uint8)
    return prob.argmax(axis=0).astype(np.uint8)


def _face_offsets(structure: np.ndarray) -> list[tuple[int, int]]:
    """In-plane offsets (dy, dx) connecting a voxel to the next z plane under ``structure``."""
    return [(dy - 1, dx - 1) for dy in range(3) for dx in range(3) if structure[2, dy, dx]]


def _touching_pairs(prev: np.ndarray, cur: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    h, w = prev.shape
    pairs = []
    for dy, dx in offsets:
        a = prev[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        b = cur[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.append(np.stack([a[both], b[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def label_components(mask, labels_out, slab_size: int = 32, connectivity: int = 1,
                     min_size: int = 0, foreground: Any = None) -> int:
    """3-D connected components of a (Z, Y, X) mask, slab by slab, written to ``labels_out``.

    Parameters
    ----------
    mask : array-like
        ``(Z, Y, X)`` indexable on axis 0 (zarr, numpy, Volume). Non-zero is foreground (or
        ``mask == foreground`` when given).
    labels_out : array-like
        Writable ``(Z, Y, X)`` integer array (uint32) receiving the labels.
    slab_size : int
        Planes per slab.
    connectivity : {1, 2, 3}
        Neighbourhood (1: faces, 6-connected; 3: 26-connected), as in ``ndimage.generate_binary_structure``.
    min_size : int
        Objects with fewer voxels are removed (set to 0).

    Returns
    -------
    int
        Number of objects; labels are ``1..n`` in order of first appearance in a z-y-x scan.
    """
    structure = ndimage.generate_binary_structure(3, connectivity)
    offsets = _face_offsets(structure)
    depth = int(mask.shape[0])
    offset = 0
    counts = [np.zeros(1, np.int64)]
    pairs = []
    prev_last = None
    for z0, z1 in slab_ranges(depth, slab_size):
        block = np.asarray(mask[z0:z1])
        fg = block > 0 if foreground is None else block == foreground
        del block
        # provisional labels in int32 while they fit (half the memory of int64 on a large band)
        dtype = np.int32 if offset + fg.size // 2 + 1 < np.iinfo(np.int32).max else np.int64
        lab, n = ndimage.label(fg, structure=structure, output=dtype)
        del fg
        counts.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        np.add(lab, offset, out=lab, where=lab > 0)
        if prev_last is not None:
            pairs.append(_touching_pairs(prev_last, lab[0], offsets))
        prev_last = lab[-1].copy()
        labels_out[z0:z1] = lab.astype(labels_out.dtype, copy=False)
        offset += n
    size = np.concatenate(counts)  # size[k] = voxels of provisional label k (k = 0 unused)
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(offset + 1, offset + 1))
    _, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp, weights=size, minlength=comp.max() + 1)
    # keep components by size, numbered in order of their first (lowest) provisional label
    first = np.full(comp.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, comp[1:], np.arange(1, offset + 1))
    keep = (comp_size >= max(1, min_size)) & (first < np.iinfo(np.int64).max)
    order = np.argsort(first[keep], kind="stable")
    final = np.zeros(comp.max() + 1, np.int64)
    final[np.flatnonzero(keep)[order]] = np.arange(1, keep.sum() + 1)
    lut = final[comp].astype(labels_out.dtype)
    lut[0] = 0
    for z0, z1 in slab_ranges(depth, slab_size):
        labels_out[z0:z1] = lut[np.asarray(labels_out[z0:z1])]  # unsigned provisional labels index lut directly
    return int(keep.sum())


def band_planes(shape: tuple[int, ...], slab_size: int, max_voxels: int = 2**26) -> int:
    """Planes per band of the post-processing passes: ``slab_size``, at least 16 (fewer band seams to merge),
    at most ``max_voxels`` voxels a band, and at least one plane. Memory is set by the band, not the volume.

    >>> band_planes((100, 1024, 1024), 8), band_planes((100, 4096, 4096), 8), band_planes((100, 16384, 16384), 8)
    (16, 4, 1)
    """
    plane = int(shape[-2]) * int(shape[-1])
    return max(1, min(max(int(slab_size), 16), max_voxels // plane))


def watershed_bytes(shape: tuple[int, ...]) -> int:
    """Approximate peak memory of :func:`split_touching` on a mask of ``shape``."""
    return int(np.prod(shape)) * 30


def split_touching(mask: np.ndarray, voxel_size: Any = None, h: float = 2.0, connectivity: int = 1,
                   min_size: int = 0) -> np.ndarray:
    """Instance labels with touching objects split by a distance-transform watershed (in memory).

    Parameters
    ----------
    mask : np.ndarray
        ``(Z, Y, X)`` binary mask.
    voxel_size : (z, y, x), optional
        Anisotropy for the distance transform (scaled so the finest axis is 1 voxel).
    h : float
        Minimum height (in voxels of the finest axis) of a distance maximum to seed its own object
        (``skimage.morphology.h_maxima``); larger values split less.
    connectivity : int
        Neighbourhood of the components that bound each watershed.
    min_size : int
        Objects with fewer voxels are removed.

    Returns
    -------
    np.ndarray
        uint32 labels ``1..n``.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    fg = np.asarray(mask) > 0
    sampling = None
    if voxel_size is not None:
        vs = np.asarray(voxel_size, dtype=np.float64)
        sampling = vs / vs.min()
    dist = ndimage.distance_transform_edt(fg, sampling=sampling).astype(np.float32)
    structure = ndimage.generate_binary_structure(3, connectivity)
    markers, _ = ndimage.label(h_maxima(dist, h), structure=np.ones((3, 3, 3), bool))
    components, _ = ndimage.label(fg, structure=structure)
    # every component gets at least one seed (thin objects may have no h-maximum)
    seeded = np.unique(components[markers > 0])
    unseeded = np.setdiff1d(np.arange(1, components.max() + 1), seeded)
    if unseeded.size:
        extra = np.where(np.isin(components, unseeded), components + markers.max(), 0)
        markers = np.where(markers > 0, markers, extra)
    labels = watershed(-dist, markers, mask=fg, connectivity=connectivity)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.uint32)


def split_objects(labels, table: dict[str, np.ndarray], voxel_size: Any = None, h: float = 2.0,
                  connectivity: int = 1, min_size: int = 0, slab_size: int = 32) -> int:
    """Split the touching objects of a component labelling in place, each object in its own bounding box.

    Each object of ``labels`` (the connected components written by :func:`label_components`) is cut
    out with a 1-voxel margin, split by :func:`split_touching` on its own mask and written back. An
    object's distance transform sees only its own voxels and the background around it, so this is
    the whole-volume watershed done per component (identical wherever components do not touch
    diagonally and the flooding has no ties), with memory for one object instead of the volume.
    Objects are visited in order of their first plane, and the planes they span are read and written
    in bands of about ``slab_size`` planes (an object deeper than that gets a band of its own), so a
    chunked array on disk is read and written about once.

    Parameters
    ----------
    labels : array-like
        Writable ``(Z, Y, X)`` integer labels ``1..n`` (zarr or numpy), changed in place.
    table : dict
        :func:`object_table` of ``labels`` (``id`` and the ``bbox_*`` columns are used).
    voxel_size, h, connectivity, min_size
        As in :func:`split_touching`; pieces smaller than ``min_size`` voxels are removed.
    slab_size : int
        Planes per band (and per slab of the final renumbering pass).

    Returns
    -------
    int
        Number of objects afterwards, labelled ``1..m``: the pieces of the object that starts first
        (for :func:`label_components` output: object 1) come first, in :func:`split_touching`'s order.
    """
    ids = np.asarray(table["id"], np.int64)
    n_old = int(ids.max(initial=0))
    if n_old >= np.iinfo(np.uint32).max // 2:
        raise ValueError(f"{n_old} objects are too many to split in a uint32 labelling")
    shape = tuple(int(d) for d in labels.shape)
    lo, hi = _split_windows(table, shape)
    next_id = n_old  # pieces are numbered above every original id until the renumbering pass
    for members, bz0, bz1 in _object_bands(lo[:, 0], hi[:, 0], slab_size):
        band = np.asarray(labels[bz0:bz1])
        for k in members:
            window = (slice(int(lo[k, 0]) - bz0, int(hi[k, 0]) - bz0),
                      *(slice(int(lo[k, a]), int(hi[k, a])) for a in (1, 2)))
            crop = band[window]  # a view: the pieces are written into the band
            next_id = _split_one(crop, ids[k], next_id, voxel_size, h, connectivity, min_size)
        labels[bz0:bz1] = band
    _shift_down(labels, n_old, shape[0], slab_size)
    return next_id - n_old


def _object_bands(z_lo: np.ndarray, z_hi: np.ndarray, slab_size: int):
    """Group the objects, in order of their first plane, into bands of about ``slab_size`` planes.

    Yields ``(objects, z0, z1)``: the object indices of one band and the ``[z0, z1)`` planes they
    span. A band grows while its depth stays within ``slab_size`` (or within the depth of its
    first object, when that one is deeper).
    """
    order = np.argsort(z_lo, kind="stable")
    i = 0
    while i < len(order):
        first, end = z_lo[order[i]], z_hi[order[i]]
        j = i + 1
        while j < len(order) and max(end, z_hi[order[j]]) - first <= max(slab_size, end - first):
            end = max(end, z_hi[order[j]])
            j += 1
        yield order[i:j], int(first), int(end)
        i = j


def _split_one(crop: np.ndarray, obj_id: int, next_id: int, voxel_size: Any, h: float, connectivity: int,
               min_size: int) -> int:
    """Split object ``obj_id`` of ``crop`` in place into pieces ``next_id + 1, ...`` (too small ones -> 0).

    Returns the new ``next_id`` (the highest piece id used).
    """
    obj = crop == obj_id
    pieces = split_touching(obj, voxel_size, h=h, connectivity=connectivity, min_size=min_size)[obj]
    crop[obj] = np.where(pieces > 0, pieces.astype(np.int64) + next_id, 0).astype(crop.dtype)
    return next_id + int(pieces.max(initial=0))


def _shift_down(labels, n_old: int, depth: int, slab_size: int) -> None:
    """Renumber in place, slab by slab: ids above ``n_old`` become ``id - n_old``, the rest 0."""
    for z0, z1 in slab_ranges(depth, slab_size):
        lab = np.asarray(labels[z0:z1])
        labels[z0:z1] = np.where(lab > n_old, lab - n_old, 0).astype(lab.dtype)


def _split_windows(table: dict[str, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per object, the ``[lo, hi)`` corners (``(n, 3)`` z, y, x) of its bounding box plus a 1-voxel margin,
    clipped to ``shape``: the windows :func:`split_objects` works in."""
    lo = np.stack([np.asarray(table[f"bbox_{a}0"], np.int64) - 1 for a in "zyx"], axis=1)
    hi = np.stack([np.asarray(table[f"bbox_{a}1"], np.int64) + 1 for a in "zyx"], axis=1)
    return np.maximum(lo, 0), np.minimum(hi, np.asarray(shape, np.int64))


def largest_split_window(table: dict[str, np.ndarray], shape: tuple[int, ...]) -> tuple[int, int]:
    """``(object id, voxels)`` of the largest window :func:`split_objects` will hold in memory
    (``(0, 0)`` without objects); :func:`watershed_bytes` of it estimates the split's peak memory."""
    if not len(table["id"]):
        return 0, 0
    lo, hi = _split_windows(table, shape)
    voxels = np.prod(hi - lo, axis=1)
    k = int(np.argmax(voxels))
    return int(table["id"][k]), int(voxels[k])


def object_table(labels, slab_size: int = 32, probabilities=None, prob_scale: float = 1.0,
                 count: int | None = None) -> dict[str, np.ndarray]:
    """Per-object statistics of a ``(Z, Y, X)`` label array, accumulated slab by slab.

    Parameters
    ----------
    labels : array-like
        Integer labels, 0 = background, objects ``1..n``.
    probabilities : array-like, optional
        ``(Z, Y, X)`` foreground probabilities (any dtype; multiplied by ``prob_scale``) for the
        ``mean_probability`` column.
    count : int, optional
        Number of objects ``n`` (found by scanning when not given).

    Returns
    -------
    dict of column -> np.ndarray
        Columns :data:`TABLE_COLUMNS`; centroids in voxels, bounding boxes half-open ``[z0, z1)``.
    """
    depth = int(labels.shape[0])
    if count is None:
        count = max((int(np.asarray(labels[z0:z1]).max(initial=0)) for z0, z1 in slab_ranges(depth, slab_size)),
                    default=0)
    sums = _ObjectSums.empty(count + 1)
    for z0, z1 in slab_ranges(depth, slab_size):
        lab = np.asarray(labels[z0:z1])
        nz = np.nonzero(lab)
        if not nz[0].size:
            continue
        p = None
        if probabilities is not None:
            p = np.asarray(probabilities[z0:z1])[nz].astype(np.float64) * prob_scale
        sums.add(lab[nz].astype(np.int64), [nz[0] + z0, nz[1], nz[2]], p)
    return sums.table(with_probability=probabilities is not None)


@dataclass
class _ObjectSums:
    """Running per-object sums of :func:`object_table` (index = object id, 0 unused)."""

    voxels: np.ndarray
    sums: np.ndarray
    prob_sum: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _ObjectSums:
        """Zero sums for ids ``0..n-1``."""
        return cls(voxels=np.zeros(n, np.int64), sums=np.zeros((3, n), np.float64), prob_sum=np.zeros(n, np.float64),
                   lo=np.full((3, n), np.iinfo(np.int64).max), hi=np.full((3, n), -1, np.int64))

    def add(self, ids: np.ndarray, coords: list[np.ndarray], prob: np.ndarray | None) -> None:
        """Add foreground voxels: their ids, (z, y, x) coordinates and probabilities (or None)."""
        n = len(self.voxels)
        self.voxels += np.bincount(ids, minlength=n)
        for a in range(3):
            self.sums[a] += np.bincount(ids, weights=coords[a], minlength=n)
        if prob is not None:
            self.prob_sum += np.bincount(ids, weights=prob, minlength=n)
        self._extend_boxes(ids, coords)

    def _extend_boxes(self, ids: np.ndarray, coords: list[np.ndarray]) -> None:
        """Grow the bounding boxes (inclusive ``lo``, ``hi``) to the voxels given."""
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        uid = sorted_ids[starts]
        for a in range(3):
            c = coords[a][order]
            self.lo[a, uid] = np.minimum(self.lo[a, uid], np.minimum.reduceat(c, starts))
            self.hi[a, uid] = np.maximum(self.hi[a, uid], np.maximum.reduceat(c, starts))

    def table(self, with_probability: bool) -> dict[str, np.ndarray]:
        """The :data:`TABLE_COLUMNS` of the objects present (``mean_probability`` NaN without probabilities)."""
        present = np.flatnonzero(self.voxels[1:] > 0) + 1
        v = self.voxels[present]
        table = {"id": present, "voxels": v}
        for a, name in enumerate("zyx"):
            table[f"centroid_{name}"] = self.sums[a, present] / v
        for a, name in enumerate("zyx"):
            table[f"bbox_{name}0"] = self.lo[a, present]
        for a, name in enumerate("zyx"):
            table[f"bbox_{name}1"] = self.hi[a, present] + 1
        table["mean_probability"] = self.prob_sum[present] / v if with_probability else np.full(len(v), np.nan)
        return {k: table[k] for k in TABLE_COLUMNS}


def write_table_csv(path: str | Path, table: dict[str, np.ndarray], voxel_size: Any = None) -> Path:
    """Write an :func:`object_table` as CSV (atomically); with a voxel size, add ``volume_nm3`` and
    centroids in nm."""
    path = Path(path)
    columns = list(table)
    rows = len(table["id"])
    extra = {}
    if voxel_size is not None:
        vz, vy, vx = (float(v) for v in voxel_size)
        extra = {"volume_nm3": table["voxels"] * vz * vy * vx,
                 "centroid_z_nm": table["centroid_z"] * vz, "centroid_y_nm": table["centroid_y"] * vy,
                 "centroid_x_nm": table["centroid_x"] * vx}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns + list(extra))
        for i in range(rows):
            row = [_fmt(table[c][i]) for c in columns] + [_fmt(extra[c][i]) for c in extra]
            writer.writerow(row)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, (np.floating, float)):
        return "" if np.isnan(value) else f"{float(value):.4f}"
    return str(int(value))
