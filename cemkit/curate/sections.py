"""Cross-sections of a volume: which planes to cut and how to read one.

A 2D image (``shape[0] == 1``) is used as it is. A 3D volume is cut into xy planes (one per
``stride`` z-slices); xz and yz planes are added only when the voxel size is isotropic within
``tolerance`` (CEM500K: ``|s_x - s_z| / s_x <= 0.2``), because on anisotropic data those planes
are stretched and look like nothing the xy planes show. An unknown voxel size counts as
anisotropic (xy only): give ``voxel_size`` in the sources file to enable the other planes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PLANES = ("xy", "xz", "yz")


@dataclass(frozen=True)
class Section:
    """One 2D cross-section: ``plane`` and the index along the axis normal to it."""

    plane: str
    index: int


def is_isotropic(voxel_size: Sequence[float] | None, tolerance: float = 0.2) -> bool:
    """True when all three voxel sides are within ``tolerance`` of the x side.

    ``|s_z - s_x| / s_x <= tolerance`` and ``|s_y - s_x| / s_x <= tolerance`` (CEM500K's test,
    with y checked as well). ``None`` or a non-positive size is not isotropic.
    """
    if voxel_size is None:
        return False
    vz, vy, vx = (float(v) for v in voxel_size)
    if min(vz, vy, vx) <= 0:
        return False
    return abs(vz - vx) / vx <= tolerance + 1e-12 and abs(vy - vx) / vx <= tolerance + 1e-12


def section_planes(shape: Sequence[int], voxel_size: Sequence[float] | None,
                   tolerance: float = 0.2) -> tuple[str, ...]:
    """Planes to cut from a ``(z, y, x)`` volume: ``("xy",)`` or ``("xy", "xz", "yz")``."""
    if shape[0] <= 1:
        return ("xy",)
    return PLANES if is_isotropic(voxel_size, tolerance) else ("xy",)


def plan_sections(shape: Sequence[int], planes: Sequence[str], stride: int = 1) -> list[Section]:
    """Every ``stride``-th section of each plane, the last slice included when it falls on the stride.

    Parameters
    ----------
    shape : sequence of int
        ``(z, y, x)`` volume shape.
    planes : sequence of str
        Subset of ``("xy", "xz", "yz")``.
    stride : int
        Keep sections ``0, stride, 2 * stride, ...`` along each normal axis.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    axis = {"xy": 0, "xz": 1, "yz": 2}
    out = []
    for plane in planes:
        out += [Section(plane, i) for i in range(0, int(shape[axis[plane]]), stride)]
    return out


def section_shape(shape: Sequence[int], plane: str) -> tuple[int, int]:
    """``(height, width)`` of a section: xy -> (y, x), xz -> (z, x), yz -> (z, y)."""
    z, y, x = (int(s) for s in shape)
    return {"xy": (y, x), "xz": (z, x), "yz": (z, y)}[plane]


def read_section(volume, section: Section) -> np.ndarray:
    """Read one section from anything indexable as ``(z, y, x)`` (a lazy Volume or an ndarray)."""
    if section.plane == "xy":
        out = volume[section.index]
    elif section.plane == "xz":
        out = volume[:, section.index, :]
    elif section.plane == "yz":
        out = volume[:, :, section.index]
    else:
        raise ValueError(f"unknown plane {section.plane!r}")
    return np.asarray(out)
