"""Orthoplane prediction: run the 2-D/2.5-D models on xy, xz and yz planes and average in float.

:class:`AxisView` presents a (z, y, x) source with its axes permuted, so that the slab engine can
walk it along y (xz planes) or x (yz planes) unchanged; each view's probabilities go to a float32
store in view order and :func:`average_views` reads them back slab by slab in (z, y, x) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: axis order of each view of a (z, y, x) volume: view axis 0 is the axis the planes are stacked along
VIEWS = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}


class AxisView:
    """Lazy view of a (z, y, x) source with axes permuted by ``order`` (only ``view[a:b]`` reads)."""

    def __init__(self, source, order: Sequence[int]):
        self.source = source
        self.order = tuple(order)
        self.shape = tuple(int(source.shape[a]) for a in self.order)
        self.dtype = source.dtype

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("AxisView supports view[a:b] only")
        index = [slice(None)] * 3
        index[self.order[0]] = key
        return np.transpose(np.asarray(self.source[tuple(index)]), self.order)


def view_block(store, order: Sequence[int], z0: int, z1: int, channels: bool) -> np.ndarray:
    """Read planes ``z0:z1`` (original z) of a view's store (view order, optional leading channel
    axis) and return them as ``(C, z1 - z0, Y, X)``."""
    order = tuple(order)
    index = [slice(None)] * 3
    index[order.index(0)] = slice(z0, z1)
    if channels:
        block = np.asarray(store[(slice(None), *index)])
        back = np.argsort(order)
        return np.transpose(block, (0, *(1 + back)))
    block = np.asarray(store[tuple(index)])
    return np.transpose(block, np.argsort(order))[None]


def average_views(stores: dict[str, object], z0: int, z1: int, channels: bool) -> np.ndarray:
    """Mean over the views in ``stores`` (name -> store) of planes ``z0:z1`` as ``(C, S, Y, X)`` float32."""
    total = None
    for name, store in stores.items():
        block = view_block(store, VIEWS[name], z0, z1, channels).astype(np.float32)
        total = block if total is None else total + block
    return total / np.float32(len(stores))
