"""Ensembles of saved predictions: combine the probability maps that earlier runs wrote.

``cemkit predict predictions=[A,B,C] input=IMAGE output=OUT`` combines finished ``cemkit predict``
output folders (or probability volumes from elsewhere, e.g. CDeep3M's) with ``ensemble=mean |
weighted | vote`` and post-processes the result like any prediction, without running a model
again. It is CDeep3M's ``EnsemblePredictions`` step: predict 1fm, 3fm and 5fm once, keep and score
each map, then merge them. Binary (foreground probability) maps only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cemkit.errors import InputError
from cemkit.evaluate.sources import Prediction, infer_kind, open_prediction
from cemkit.predict.ensemble import RunningEnsemble


def open_saved_predictions(paths: Sequence[str | Path], shape: Sequence[int]) -> list[Prediction]:
    """Open each saved probability map and check it covers a ``shape`` (z, y, x) volume.

    Raises
    ------
    InputError
        Naming the path: missing, not probabilities, or another shape than ``shape``.
    """
    if len(paths) < 1:
        raise InputError("predictions needs at least one saved prediction")
    saved = []
    for path in paths:
        pred = open_prediction(path, kind="probabilities")
        if pred.volume.dtype.kind != "f" and infer_kind(pred.volume)[0] != "probabilities":
            raise InputError(f"{path}: holds a binary mask ({pred.volume.dtype}), not probabilities; an ensemble of "
                             "saved predictions averages probability maps (a predict folder's probabilities.zarr)")
        if tuple(pred.volume.shape) != tuple(shape):
            raise InputError(f"{path}: probabilities of shape {tuple(pred.volume.shape)}, but the input volume has "
                             f"shape {tuple(shape)}")
        saved.append(pred)
    return saved


def saved_record(pred: Prediction) -> dict:
    """What ``predict.json`` says about one member: its path and, for a predict folder, its models."""
    probs = Path(pred.volume.path)
    rec: dict = {"prediction": str(pred.path.resolve()), "probabilities": str(probs),
                 "mtime": int(probs.stat().st_mtime)}  # part of the resume signature: a rewritten map restarts
    meta = pred.path / "predict.json"
    if meta.is_file():
        member = json.loads(meta.read_text())
        rec["models"] = member.get("models", [])
        rec["tta"] = member.get("settings", {}).get("tta")
        rec["mtime"] = max(rec["mtime"], int(meta.stat().st_mtime))  # a member run rewrites its predict.json
    return rec


class SavedMapCombiner:
    """Gives ``(S, 1, H, W)`` float32 combined probabilities for planes ``z0:z1`` of saved maps.

    The slab interface of :class:`~cemkit.predict.streaming.SlabPredictor`, so the runner streams,
    resumes and post-processes a combination of saved maps exactly like a prediction.
    """

    def __init__(self, saved: Sequence[Prediction], ensemble: str = "mean", weights: Sequence[float] | None = None,
                 threshold: float = 0.5):
        self.saved, self.ensemble, self.weights, self.threshold = list(saved), ensemble, weights, threshold

    def predict_slab(self, source, z0: int, z1: int) -> np.ndarray:
        ens = RunningEnsemble(len(self.saved), self.ensemble, self.weights, self.threshold, class_axis=1)
        for pred in self.saved:
            ens.add(pred.probabilities(np.asarray(pred.volume[z0:z1]))[:, None])
        return ens.result()
