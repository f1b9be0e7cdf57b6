"""napari layer data as cemkit inputs: lazy volumes, painted slices, training labels (no Qt here).

A napari Image layer holds a numpy, dask or zarr array; :class:`LayerVolume` reads it block by block
as a :class:`cemkit.io.Volume`, so predict streams a lazily loaded layer slab by slab and never loads
it whole. A Labels layer painted on a few slices becomes adapt's training labels: 0 background, 1
mitochondria (any painted label), and the "not sure" label (:data:`IGNORE_VALUE`), which no loss term
and no metric counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cemkit.errors import InputError
from cemkit.io.volume import Volume

#: the value written for "not sure" pixels in adapt's training labels (finetune's ``data.ignore_value``)
IGNORE_VALUE = 2


class LayerVolume(Volume):
    """A (z, y, x) :class:`~cemkit.io.Volume` over a layer's array (numpy, dask, zarr; 2-D or 3-D).

    Only the blocks asked for are read (and, for dask, computed).
    """

    def __init__(self, data: Any, name: str):
        self._data = data
        self._flat = len(data.shape) == 2
        shape = (1, *data.shape) if self._flat else tuple(data.shape)
        super().__init__(shape, data.dtype, None, name, f"napari-layer:{name}")

    def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        if self._flat:
            return np.asarray(self._data[ys, xs])[None][zs]
        return np.asarray(self._data[zs, ys, xs])


def layer_array(layer) -> Any:
    """A layer's array: its data, or the full-resolution level of a multiscale layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_volume(data: Any, name: str, rgb: bool = False) -> LayerVolume:
    """The Image layer ``name`` as a volume, checked.

    Raises
    ------
    InputError
        An RGB(A) layer, or one that is not 2-D or 3-D (time series, channels); the message names the layer.
    """
    shape = tuple(int(s) for s in data.shape)
    if rgb:
        raise InputError(f"layer {name!r} is an RGB image {shape}: cemkit segments grey-scale EM; convert it "
                         "to one channel first (Layers > Convert > Split RGB, or load it as greyscale)")
    core = shape
    while len(core) > 3 and core[0] == 1:
        core = core[1:]
    if len(core) not in (2, 3):
        raise InputError(f"layer {name!r} has shape {shape}: predict and adapt take a 2-D image or a 3-D "
                         "(z, y, x) volume")
    if core != shape:
        data = data.reshape(core)
    return LayerVolume(data, name)


def labels_on_grid(labels: Any, image_shape: Sequence[int], image: str, name: str) -> Any:
    """A Labels layer's array as (z, y, x) (a 2-D one gets a z axis), checked to cover the image voxel for voxel.

    Raises
    ------
    InputError
        Another shape than the image's (a 2-D layer counts as one slice); the message names both layers.
    """
    shape = tuple(labels.shape) if labels.ndim == 3 else (1, *labels.shape)
    if tuple(image_shape) != shape:
        raise InputError(f"labels layer {name!r} has shape {shape} but image layer {image!r} has "
                         f"{tuple(image_shape)}: paint the labels on a layer of the image's shape")
    return labels if labels.ndim == 3 else np.asarray(labels)[None]


def painted_slices(labels: Any, chosen: Sequence[int] | None = None) -> list[int]:
    """The z of every labelled slice of a (z, y, x) labels array.

    Parameters
    ----------
    labels : array-like
        The Labels layer's data (3-D; read one slice at a time).
    chosen : sequence of int, optional
        Slices the user marked as labelled; without them a slice with any non-zero label counts.

    Raises
    ------
    InputError
        A chosen slice outside the volume, or no painted slice at all.

    Examples
    --------
    >>> lab = np.zeros((4, 3, 3), np.uint8); lab[1, 0, 0] = 1; lab[3, 2, 2] = 5
    >>> painted_slices(lab)
    [1, 3]
    >>> painted_slices(lab, [0, 1])
    [0, 1]
    """
    depth = int(labels.shape[0])
    if chosen:
        zs = sorted({int(z) for z in chosen})
        bad = [z for z in zs if not 0 <= z < depth]
        if bad:
            raise InputError(f"labelled slices {bad} are outside the volume (slices 0..{depth - 1})")
        return zs
    zs = [z for z in range(depth) if np.any(np.asarray(labels[z]))]
    if not zs:
        raise InputError("the labels layer has no painted slice: paint mitochondria (any label) on one or two "
                         "slices, or correct a predicted slice, then adapt")
    return zs


def parse_slices(text: str) -> list[int]:
    """The slice list typed in a widget: ``"3, 7"`` or ``"3-5 9"``; empty = none chosen.

    >>> parse_slices("3-5, 9")
    [3, 4, 5, 9]
    >>> parse_slices("  ")
    []
    """
    out: list[int] = []
    for part in text.replace(",", " ").split():
        lo, dash, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
            raise InputError(f"labelled slices {text!r}: write numbers and ranges such as '3, 7' or '3-5'") from None
    return sorted(set(out))


def training_labels(painted: np.ndarray, not_sure: int | None = None) -> np.ndarray:
    """A painted label slice as adapt's training labels: uint8 0 (background), 1 (any other label),
    :data:`IGNORE_VALUE` (pixels painted with ``not_sure``).

    >>> training_labels(np.array([[0, 4, 9]]), not_sure=9)
    array([[0, 1, 2]], dtype=uint8)
    """
    painted = np.asarray(painted)
    out = (painted != 0).astype(np.uint8)
    if not_sure:
        out[painted == not_sure] = IGNORE_VALUE
    return out


def label_blocks(slices: Sequence[int], depth: int, context: int) -> list[tuple[int, int]]:
    """Contiguous image blocks ``[z0, z1)`` that hold every labelled slice with ``context`` slices each
    side (a k-frame model reads ``(k - 1) / 2`` each side); blocks that touch are merged.

    >>> label_blocks([2, 3, 9], depth=12, context=1)
    [(1, 5), (8, 11)]
    >>> label_blocks([0, 11], depth=12, context=0)
    [(0, 1), (11, 12)]
    """
    blocks: list[list[int]] = []
    for z in sorted(slices):
        z0, z1 = max(0, z - context), min(depth, z + context + 1)
        if blocks and z0 <= blocks[-1][1]:
            blocks[-1][1] = max(blocks[-1][1], z1)
        else:
            blocks.append([z0, z1])
    return [(a, b) for a, b in blocks]
