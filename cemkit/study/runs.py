"""One study run: ``cemkit finetune`` on some slices, ``cemkit predict`` on held-out slices, the pooled IoU.

A run lives in its own folder::

    RUN/finetune/1fm/   the finetune output (best.ckpt; last.ckpt while it trains)
    RUN/predict/        the prediction of the test slices (mask.zarr, predict.json)
    RUN/row.json        the result row, written last and atomically: its presence marks the run as done

The stages are called through their public entry points (:func:`cemkit.finetune.orchestrate.run_finetune`,
:func:`cemkit.predict.run_prediction`); scoring is :func:`cemkit.metrics.binary_metrics` (pixels
pooled over all test slices).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError
from cemkit.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

ROW_FILE = "row.json"
KEEP = ("best", "all", "none")


@dataclass
class RunSpec:
    """What one run trains on and is scored on."""

    init: str
    seed: int
    train: list[int]
    test: list[int]
    folder: Path
    train_data: tuple[Path, Path]
    test_data: tuple[Path, Path]
    fields: dict[str, Any] = field(default_factory=dict)  # labelled_slices or fold: the row's key columns


def init_slug(init: str) -> str:
    """A folder name for an init spec: readable and unique (``none``; ``zoo_cem500k_mocov2-1a2b3c``)."""
    text = str(init).strip()
    if text.lower() in ("none", "null", "", "random"):
        return "none"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text.rstrip("/")).strip("._")[-40:] or "init"
    return f"{stem}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def split_init(init: str) -> tuple[str, str | None]:
    """``"SPEC@ARCH"`` -> ``(SPEC, ARCH)``, an init with its own encoder architecture; ``SPEC`` -> ``(SPEC, None)``.

    ``split_init("zoo:cem500k_mocov2_resnet50@resnet50") == ("zoo:cem500k_mocov2_resnet50", "resnet50")``
    """
    spec, sep, arch = str(init).rpartition("@")
    if sep and spec and arch and "/" not in arch:
        return spec, arch
    return str(init), None


def read_row(folder: Path) -> dict | None:
    """The finished run's row, or ``None`` while the run is not done."""
    path = folder / ROW_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable: the run is redone", path)
        return None


def plain_dict(node: Any, key: str) -> dict:
    """A config mapping (or ``None``) as a plain dict."""
    if node is None:
        return {}
    if not OmegaConf.is_dict(node) and not isinstance(node, dict):
        raise ConfigError(f"{key} must be a mapping like {{trainer.max_time: 300}}, got {node!r}")
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


def finetune_config(base: DictConfig, spec: RunSpec) -> DictConfig:
    """The finetune config of one run: the composed config less ``study``, with ``study.finetune``
    applied, then this run's data, init, seed and output."""
    cfg = copy.deepcopy(base)
    OmegaConf.set_struct(cfg, False)
    study = cfg.pop("study")
    for key, value in plain_dict(study.finetune, "study.finetune").items():
        OmegaConf.update(cfg, str(key), value, merge=True, force_add=True)
    cfg.data.images, cfg.data.labels = str(spec.train_data[0]), str(spec.train_data[1])
    cfg.data.val_images = cfg.data.val_labels = None
    cfg.data.train_fraction = None
    cfg.model.init, arch = split_init(spec.init)
    if arch:
        cfg.model.encoder.arch = arch
    cfg.seed = int(spec.seed)
    cfg.output = str(spec.folder / "finetune")
    check_finetune_config(cfg)
    return cfg


def settings_hash(cfg: DictConfig, settings) -> str:
    """A short hash of a run's finetune config and predict settings (a finished run made with other
    settings is reported when the study is run again)."""
    from dataclasses import asdict

    data = {"finetune": OmegaConf.to_container(cfg, resolve=True),
            "predict": {k: v for k, v in asdict(settings).items() if k not in ("progress", "resume", "device")}}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_finetune_config(cfg: DictConfig) -> None:
    """What a study needs of the finetune settings (raised before any training)."""
    if str(cfg.model.frames) != "1":
        raise ConfigError(f"a study trains on isolated slices: model.frames must be 1, got {cfg.model.frames}")
    if int(cfg.data.num_classes) != 2:
        raise ConfigError(f"a study scores binary segmentation: data.num_classes must be 2, got {cfg.data.num_classes}")


def predict_settings(study: DictConfig):
    """:class:`cemkit.predict.PredictSettings` from ``study.predict``."""
    from dataclasses import fields as dc_fields

    from cemkit.predict import PredictSettings

    given = plain_dict(study.predict, "study.predict")
    known = {f.name for f in dc_fields(PredictSettings)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"study.predict: unknown keys {unknown} (the keys of conf/predict.yaml)")
    s = PredictSettings.defaults(**given)
    s.check(1)
    return s


def execute(base: DictConfig, spec: RunSpec, settings, keep: str = "best") -> dict:
    """Finetune, predict and score one run; write and return its row (``status: ok``).

    Exceptions propagate (the caller records a failed row).
    """
    import numpy as np

    from cemkit.finetune.orchestrate import run_finetune
    from cemkit.io import open_volume
    from cemkit.metrics import binary_metrics
    from cemkit.predict import run_prediction

    cfg = finetune_config(base, spec)
    t0 = time.monotonic()
    result = run_finetune(cfg)[1]
    t1 = time.monotonic()
    pred_dir = spec.folder / "predict"
    s = copy.copy(settings)
    run_prediction(str(spec.test_data[0]), pred_dir, checkpoint=str(spec.folder / "finetune"), settings=s)
    mask = np.asarray(open_volume(pred_dir / "mask.zarr")[:])
    truth = np.load(spec.test_data[1])
    m = binary_metrics(mask > 0, truth > 0)
    t2 = time.monotonic()
    row = {"init": spec.init, **spec.fields, "seed": spec.seed, "status": "ok",
           "iou": m["iou"], "precision": m["precision"], "recall": m["recall"], "dice": m["dice"],
           "steps": result.get("steps"), "seconds": round(t1 - t0, 1), "predict_seconds": round(t2 - t1, 1),
           "train_slices": " ".join(map(str, spec.train)), "test_slices": " ".join(map(str, spec.test)),
           "init_kind": result.get("init_kind"), "arch": result.get("arch"), "error": "",
           "settings": settings_hash(cfg, settings)}
    atomic_write_json(spec.folder / ROW_FILE, row, indent=2)
    tidy(spec.folder, keep)
    return row


def tidy(folder: Path, keep: str) -> None:
    """Delete what a finished run no longer needs: ``keep=best`` drops the resume point and the
    probability map, ``none`` also the model, ``all`` keeps everything."""
    if keep == "all":
        return
    for path in (folder / "finetune" / "1fm" / "last.ckpt", folder / "predict" / "probabilities.zarr"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    if keep == "none":
        ckpt = folder / "finetune" / "1fm" / "best.ckpt"
        if ckpt.exists():
            ckpt.unlink()


def failed_row(spec: RunSpec, error: str) -> dict:
    """The row of a run that did not finish (not written to disk: a later study retries it)."""
    return {"init": spec.init, **spec.fields, "seed": spec.seed, "status": "failed",
            "iou": None, "precision": None, "recall": None, "dice": None, "steps": None, "seconds": None,
            "predict_seconds": None, "train_slices": " ".join(map(str, spec.train)),
            "test_slices": " ".join(map(str, spec.test)), "init_kind": None, "arch": None, "error": error}
