"""Length units: convert voxel sizes given in file metadata to nanometres."""

from __future__ import annotations

from cemkit.errors import InputError

_NM_PER_UNIT = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "micrometre": 1e3, "\\u00b5m": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "a": 0.1, "å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "pm": 1e-3, "picometer": 1e-3,
    "inch": 2.54e7, "in": 2.54e7,
}


def nm_per_unit(unit: str) -> float | None:
    """Nanometres in one ``unit`` (case-insensitive), or None for unknown units such as 'pixel'."""
    if unit is None:
        return None
    return _NM_PER_UNIT.get(str(unit).strip().lower())


def to_nm(value: float, unit: str) -> float | None:
    """``value`` in ``unit`` expressed in nanometres; None if the unit is unknown (e.g. 'pixel')."""
    factor = nm_per_unit(unit)
    if factor is None or value is None:
        return None
    return float(value) * factor


def require_nm(value: float, unit: str, path) -> float:
    """Like :func:`to_nm` but raise InputError naming ``path`` for an unknown unit."""
    out = to_nm(value, unit)
    if out is None:
        raise InputError(f"{path}: unknown length unit {unit!r}")
    return out
