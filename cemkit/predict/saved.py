"""Ensembles of saved predictions: combine the probability maps that earlier runs wrote.

``cemkit predict predictions=[A,B,C] input=IMAGE output=OUT`` combines finished ``cemkit predict``
output folders (or probability volumes from elsewhere, e.g. CDeep3M's) with ``ensemble=mean |
weighted | vote`` and post-processes the result like any prediction, without running a model
again. It is CDeep3M's ``EnsemblePredictions`` step: predict 1fm, 3fm and 5fm once, keep and score
each map, then merge them. The maps are binary (``(z, y, x)`` foreground probability) or multi-class
(``(c, z, y, x)`` class probabilities, as a multi-class ``cemkit predict`` writes them), all of one kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cemkit.errors import InputError
from cemkit.io.predictions import as_probabilities, infer_kind, is_predict_output, open_prediction
from cemkit.predict.ensemble import RunningEnsemble


@dataclass
class SavedMap:
    """One saved probability map.

    Attributes
    ----------
    path : Path
        What the user passed (a predict folder or a volume).
    probabilities : Path
        The store read.
    array
        ``(z, y, x)`` volume (binary) or ``(c, z, y, x)`` zarr array (multi-class), stored values.
    scale : float
        Factor from stored values to probabilities (1/255 for uint8).
    channels : int
        1 for a foreground probability, ``c`` for class probabilities.
    """

    path: Path
    probabilities: Path
    array: Any
    scale: float
    channels: int

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Probabilities of planes ``z0:z1`` as ``(S, channels, H, W)`` float32 (range-checked)."""
        if self.channels == 1:
            raw = np.asarray(self.array[z0:z1])[:, None]
        else:
            raw = np.asarray(self.array[:, z0:z1]).transpose(1, 0, 2, 3)
        return as_probabilities(raw, self.scale, self.probabilities)


def _class_maps(path: Path) -> SavedMap | None:
    """A ``(c, z, y, x)`` zarr map at ``path`` (or in the predict folder ``path``), else None."""
    from cemkit.io.zarr_store import is_zarr_dir, open_zarr_array

    store = path / "probabilities.zarr" if is_predict_output(path) else path
    if not is_zarr_dir(store):
        return None
    array = open_zarr_array(store)
    if array.ndim != 4:
        return None
    if array.dtype.kind != "f" and array.dtype != np.uint8:
        raise InputError(f"{store}: class probabilities must be float or uint8 (0-255), got {array.dtype}")
    return SavedMap(path, store, array, 1.0 / 255.0 if array.dtype == np.uint8 else 1.0, int(array.shape[0]))


def _kind(member: SavedMap) -> str:
    return "a foreground probability" if member.channels == 1 else f"{member.channels} class probabilities"


def open_saved_predictions(paths: Sequence[str | Path], shape: Sequence[int]) -> list[SavedMap]:
    """Open each saved probability map and check it covers a ``shape`` (z, y, x) volume.

    Raises
    ------
    InputError
        Naming the path: missing, not probabilities, another shape than ``shape``, or binary and
        multi-class maps (or maps of different class counts) mixed.
    """
    if len(paths) < 1:
        raise InputError("predictions needs at least one saved prediction")
    saved: list[SavedMap] = []
    for path in paths:
        path = Path(path).expanduser()
        member = _class_maps(path) if path.exists() else None
        if member is None:
            pred = open_prediction(path, kind="probabilities")
            if pred.volume.dtype.kind != "f" and infer_kind(pred.volume)[0] != "probabilities":
                raise InputError(f"{path}: holds a binary mask ({pred.volume.dtype}), not probabilities; an ensemble "
                                 "of saved predictions averages probability maps (a predict folder's "
                                 "probabilities.zarr)")
            member = SavedMap(pred.path, Path(pred.volume.path), pred.volume, pred.scale, 1)
        if tuple(member.array.shape[-3:]) != tuple(shape):
            raise InputError(f"{path}: probabilities of shape {tuple(member.array.shape)}, but the input volume has "
                             f"shape {tuple(shape)}")
        if saved and member.channels != saved[0].channels:
            raise InputError(f"{path}: holds {_kind(member)}, but {saved[0].path} holds {_kind(saved[0])}; an "
                             "ensemble combines maps of one kind")
        saved.append(member)
    return saved


def saved_record(member: SavedMap) -> dict:
    """What ``predict.json`` says about one member: its path and, for a predict folder, its models."""
    probs = member.probabilities
    rec: dict = {"prediction": str(member.path.resolve()), "probabilities": str(probs),
                 "mtime": int(probs.stat().st_mtime)}  # part of the resume signature: a rewritten map restarts
    meta = member.path / "predict.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        rec["models"] = info.get("models", [])
        rec["tta"] = info.get("settings", {}).get("tta")
        rec["mtime"] = max(rec["mtime"], int(meta.stat().st_mtime))  # a member run rewrites its predict.json
    return rec


class SavedMapCombiner:
    """Gives ``(S, channels, H, W)`` float32 combined probabilities for planes ``z0:z1`` of saved maps.

    The slab interface of :class:`~cemkit.predict.streaming.SlabPredictor`, so the runner streams,
    resumes and post-processes a combination of saved maps exactly like a prediction.
    """

    def __init__(self, saved: Sequence[SavedMap], ensemble: str = "mean", weights: Sequence[float] | None = None,
                 threshold: float = 0.5):
        self.saved, self.ensemble, self.weights, self.threshold = list(saved), ensemble, weights, threshold

    def predict_slab(self, source, z0: int, z1: int) -> np.ndarray:
        ens = RunningEnsemble(len(self.saved), self.ensemble, self.weights, self.threshold, class_axis=1)
        for member in self.saved:
            ens.add(member.slab(z0, z1))
        return ens.result()
