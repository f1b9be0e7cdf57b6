"""What a prediction path holds, and how its values become a foreground mask.

``cemkit evaluate prediction=PATH`` accepts

- a ``cemkit predict`` output folder: ``probabilities.zarr`` (float in [0, 1], or uint8 scaled
  0-255) is thresholded; without it ``mask.zarr`` is used as a binary mask. With ``num_classes > 2``
  its ``mask.zarr`` (the arg-max class map) is read. ``labels.zarr``
  (instances), when present, provides the predicted instances for object metrics and V_rand/V_info;
- a probability volume: float in [0, 1], or uint8 0-255 (divided by 255);
- a binary mask volume (bool, 0/1 or 0/255);
- an instance label volume (integer ids, 0 = background).

``kind="auto"`` decides from the dtype and, for integer data, from the values of up to 8 evenly
spaced z-slices: uint8 holding only {0, 1} or {0, 255} is a mask, other uint8 data are probabilities
(0-255); wider integers holding only {0, 1} are a mask, otherwise instance labels. Set ``kind``
explicitly when that guess is wrong (e.g. uint8 instance ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cemkit.errors import InputError
from cemkit.io import Volume, open_volume

logger = logging.getLogger(__name__)

KINDS = ("auto", "probabilities", "mask", "labels")
PREDICT_OUTPUTS = ("probabilities.zarr", "mask.zarr", "labels.zarr")
#: tolerance for float probabilities slightly outside [0, 1] (float16 rounding)
_PROB_TOL = 1e-3


@dataclass
class Prediction:
    """A prediction volume and how to read it.

    Attributes
    ----------
    volume : Volume
        Probabilities, mask or instance labels, (z, y, x).
    kind : str
        ``"probabilities"``, ``"mask"`` or ``"labels"``.
    scale : float
        Factor from stored values to probabilities (1/255 for uint8 probabilities, else 1).
    instances : Volume or None
        Predicted instance labels for object metrics (a predict folder's ``labels.zarr``).
    path : Path
        What the user passed.
    """

    volume: Volume
    kind: str
    scale: float
    instances: Volume | None
    path: Path

    @property
    def thresholded(self) -> bool:
        return self.kind == "probabilities"

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Stored values of a slab -> float32 probabilities (checks the [0, 1] range)."""
        return as_probabilities(raw, self.scale, self.volume.path)

    def foreground(self, raw: np.ndarray, threshold: float) -> np.ndarray:
        """Foreground mask of a slab: ``probability > threshold``, or ``value != 0`` for masks/labels."""
        if self.kind == "probabilities":
            return self.probabilities(raw) > threshold
        return raw != 0


def as_probabilities(raw: np.ndarray, scale: float, where) -> np.ndarray:
    """Stored values -> float32 probabilities (``raw * scale``), checking the [0, 1] range.

    Raises
    ------
    InputError
        Naming ``where`` when a value lies outside [0, 1] (beyond float16 rounding).
    """
    p = raw.astype(np.float32) * np.float32(scale)
    if p.size and (float(p.min()) < -_PROB_TOL or float(p.max()) > 1 + _PROB_TOL):
        raise InputError(
            f"{where}: probabilities must lie in [0, 1] (or 0-255 as uint8), found values in "
            f"[{float(p.min()):g}, {float(p.max()):g}]; pass prediction_kind=mask or labels if this is not a "
            "probability map"
        )
    return p


def is_predict_output(path: Path) -> bool:
    """True for a folder written by ``cemkit predict`` (holds probabilities.zarr or mask.zarr)."""
    return path.is_dir() and any((path / name).exists() for name in PREDICT_OUTPUTS[:2])


def sample_values(volume: Volume, max_slices: int = 8, limit: int = 300) -> np.ndarray:
    """Distinct values of up to ``max_slices`` evenly spaced z-slices (stops early past ``limit`` values)."""
    zs = np.unique(np.linspace(0, volume.shape[0] - 1, min(max_slices, volume.shape[0])).round().astype(int))
    values = np.zeros(0, dtype=volume.dtype)
    for z in zs:
        values = np.union1d(values, np.unique(volume[int(z)]))
        if values.size > limit:
            break
    return values


def infer_kind(volume: Volume) -> tuple[str, float]:
    """Guess ``(kind, scale)`` of a prediction volume from its dtype and sampled values."""
    dt = volume.dtype
    if dt == np.bool_:
        return "mask", 1.0
    if dt.kind == "f":
        return "probabilities", 1.0
    values = sample_values(volume)
    binary = set(values.tolist()) <= {0, 1}
    if dt == np.uint8:
        if binary or set(values.tolist()) <= {0, 255}:
            return "mask", 1.0
        logger.warning(
            "%s: uint8 with %d distinct values: read as probabilities scaled 0-255 (set "
            "prediction_kind=labels if these are instance ids)", volume.path, values.size)
        return "probabilities", 1.0 / 255.0
    return ("mask", 1.0) if binary else ("labels", 1.0)


def open_prediction(path: str | Path, key: str | None = None, kind: str = "auto",
                    num_classes: int = 2) -> Prediction:
    """Open a prediction (predict output folder, probability, mask or label volume).

    With ``num_classes > 2`` an integer prediction is a class-index map (kind ``"labels"``).

    Raises
    ------
    InputError
        Missing path, unknown format, unknown ``kind``, or a predict folder without outputs.
    """
    if kind not in KINDS:
        raise InputError(f"prediction_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path).expanduser()
    instances = None
    if is_predict_output(path):
        prob_path, mask_path = path / "probabilities.zarr", path / "mask.zarr"
        if num_classes > 2 and kind == "auto" and mask_path.exists():
            volume = open_volume(mask_path)  # the arg-max class map; probabilities.zarr is (c, z, y, x)
        elif prob_path.exists() and kind in ("auto", "probabilities"):
            volume, kind = open_volume(prob_path), "probabilities"  # float 0-1 or uint8 0-255 by contract
        elif mask_path.exists():
            volume, kind = open_volume(mask_path), "mask"
        else:
            raise InputError(f"{path}: predict folder has no {'probabilities.zarr' if kind != 'mask' else 'mask.zarr'}")
        if (path / "labels.zarr").exists():
            instances = open_volume(path / "labels.zarr")
        logger.info("%s: predict output, using %s%s", path, volume.path.name,
                    " and labels.zarr instances" if instances is not None else "")
    else:
        volume = open_volume(path, key=key)
    if kind == "auto" and num_classes > 2 and volume.dtype.kind in "biu":
        kind, scale = "labels", 1.0
    elif kind == "auto":
        kind, scale = infer_kind(volume)
    elif kind == "probabilities":
        scale = 1.0 / 255.0 if volume.dtype == np.uint8 else 1.0
        if volume.dtype.kind != "f" and volume.dtype != np.uint8:
            raise InputError(f"{volume.path}: probabilities must be float or uint8, got {volume.dtype}")
    else:
        scale = 1.0
    if kind == "labels" and instances is None:
        instances = volume
    logger.info("%s: %s %s, %s", volume.path, kind, volume.shape, volume.dtype)
    return Prediction(volume=volume, kind=kind, scale=scale, instances=instances, path=path)
