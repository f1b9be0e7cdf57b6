"""Zarr stores (zarr_format 2 and 3) and OME-Zarr (NGFF 0.4 / 0.5) via zarr-python 3.

Accepted paths:

* an array (``store.zarr`` holding an array, or ``store.zarr/0``, ``store.zarr/raw/s0``);
* a group with ``key`` naming the array path inside it;
* an OME-Zarr multiscales group: the dataset of ``level`` (default 0, full resolution), with the
  voxel size from its ``coordinateTransformations`` ``scale`` (axes z, y, x, in their units);
* a group holding exactly one array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from cemkit.errors import InputError
from cemkit.io.units import to_nm
from cemkit.io.volume import ArrayVolume, array_layout, check_dtype

ZARR_MARKERS = (".zarray", ".zgroup", ".zattrs", "zarr.json")


def is_zarr_dir(path: Path) -> bool:
    """True for a directory that is a zarr array or group (v2 or v3), or named ``*.zarr``."""
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any((path / m).exists() for m in ZARR_MARKERS))


def store_name(path: Path) -> str:
    """Stem of the zarr store a path lies in (``/a/cells.ome.zarr/0`` -> ``cells``)."""
    for p in (path, *path.parents):
        if p.suffix.lower() == ".zarr":
            name = p.name[: -len(".zarr")]
            return name[: -len(".ome")] if name.lower().endswith(".ome") else name
    return path.stem


def multiscales(attrs: dict) -> list | None:
    """The OME-NGFF ``multiscales`` list of a group's attributes (0.4 or 0.5 layout), or None."""
    if "multiscales" in attrs:
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return None


def _scale_of(transforms: Any) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t:
            return [float(v) for v in t["scale"]]
    return None


def ome_voxel_size(ms: dict, dataset_path: str) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size in nm of one dataset of an OME-NGFF multiscale, or None.

    Units are taken from the ``axes`` (``micrometer`` -> x1000, ...); axes without a unit or a
    dataset without a scale give None.
    """
    axes = ms.get("axes")
    ds = next((d for d in ms.get("datasets", []) if str(d.get("path")) == dataset_path), None)
    if not axes or ds is None:
        return None
    scale = _scale_of(ds.get("coordinateTransformations"))
    if scale is None or len(scale) != len(axes):
        return None
    outer = _scale_of(ms.get("coordinateTransformations"))
    if outer is not None and len(outer) == len(scale):
        scale = [a * b for a, b in zip(scale, outer)]
    sizes: dict[str, float | None] = {}
    for ax, s in zip(axes, scale):
        name = ax if isinstance(ax, str) else ax.get("name")
        unit = None if isinstance(ax, str) else ax.get("unit")
        sizes[str(name).lower()] = to_nm(s, unit) if unit else None
    zyx = (sizes.get("z"), sizes.get("y"), sizes.get("x"))
    if any(v is None or not v > 0 for v in zyx):
        return None
    return zyx


def _open(path: Path) -> Any:
    try:
        return zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(f"{path}: unreadable zarr store ({type(exc).__name__}: {exc})") from exc


def _arrays(group: zarr.Group) -> list[str]:
    return [name for name, node in group.members(max_depth=None)
            if isinstance(node, zarr.Array) and node.ndim >= 2]


class _ZarrOpener:
    def __init__(self, path: Path, key: str | None):
        self.path, self.key = path, key

    def __call__(self) -> zarr.Array:
        node = _open(self.path)
        if self.key is not None:
            try:
                node = node[self.key]
            except (KeyError, TypeError) as exc:
                raise InputError(f"{self.path}: no array {self.key!r} in the zarr store") from exc
        if not isinstance(node, zarr.Array):
            raise InputError(f"{self.path}: {self.key or '/'} is a zarr group, not an array")
        return node


def _parent_multiscale_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """Voxel size for ``store.zarr/<level>`` opened directly: look up the parent's multiscales."""
    parent = path.parent
    if not is_zarr_dir(parent):
        return None
    try:
        group = zarr.open_group(str(parent), mode="r")
    except Exception:  # noqa: BLE001 -- zarr 2 and 3 raise different errors for a parent that is no group
        return None
    ms = multiscales(dict(group.attrs))
    if not ms:
        return None
    return ome_voxel_size(ms[0], path.name)


def _locate(path: Path, key: str | None = None, level: int = 0) -> tuple[str | None, Any]:
    """Which array of the zarr store at ``path`` to open: ``(key, voxel size)``; key None for a bare array.

    A group's array is ``key``, else the OME-Zarr multiscale ``level``, else its only array.
    """
    node = _open(path)
    if isinstance(node, zarr.Array):
        if key is not None:
            raise InputError(f"{path}: is a zarr array; key={key!r} only applies to groups")
        return None, _parent_multiscale_voxel_size(path)
    ms = multiscales(dict(node.attrs))
    if key is None and ms:
        datasets = ms[0].get("datasets", [])
        if not 0 <= level < len(datasets):
            raise InputError(f"{path}: OME-Zarr has {len(datasets)} resolution levels, level={level} requested")
        key = str(datasets[level]["path"])
    elif key is None:
        names = _arrays(node)
        if not names:
            raise InputError(f"{path}: zarr group holds no image array (2-D or 3-D)")
        if len(names) > 1:
            raise InputError(f"{path}: zarr group holds several arrays, pass key= one of: " + ", ".join(names))
        key = names[0]
    return key, ome_voxel_size(ms[0], key) if ms else None


def open_zarr(path: Path, key: str | None = None, level: int = 0) -> ArrayVolume:
    """Open a zarr array, a group member, or an OME-Zarr multiscale level lazily.

    Raises
    ------
    InputError
        Unreadable store, missing key/level, several arrays without a key, 4-D data.
    """
    key, voxel_size = _locate(path, key, level)
    opener = _ZarrOpener(path, key)
    array = opener()
    where = f"{path}/{key}" if key else str(path)
    check_dtype(array.dtype, where)
    layout = array_layout(array.shape, where)
    return ArrayVolume(array, layout=layout, voxel_size=voxel_size, name=store_name(path), path=path, opener=opener)


def open_zarr_array(path: Path) -> zarr.Array:
    """The array of a zarr store as it is, of any number of dimensions (read-only).

    For data that are not one (z, y, x) volume, e.g. the (c, z, y, x) class probabilities of a
    multi-class ``cemkit predict``: the array :func:`open_zarr` would pick (a bare array, level 0 of
    an OME-Zarr group, or a group's only array), without its (z, y, x) checks.

    Raises
    ------
    InputError
        Unreadable store, or a group without one array to pick.
    """
    return _ZarrOpener(path, _locate(path)[0])()
