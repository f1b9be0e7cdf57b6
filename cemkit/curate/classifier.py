"""Trainable informative / uninformative patch classifier.

CEM500K labelled 14 k patches and fine-tuned an ImageNet ResNet34 (AUROC 0.962 on 2 k held-out
patches). Here a small timm CNN (default ``resnet10t``, 1 input channel, random init) is trained
on downsampled patches (default 64 px) from a CSV of labels, with flips / 90 degree rotations as
augmentation, and a held-out AUROC is reported. The saved file holds only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``.

Labels CSV: a header with ``patch_id`` and ``label`` columns; labels ``informative`` / ``good`` /
``1`` / ``true`` / ``yes`` and ``uninformative`` / ``bad`` / ``0`` / ``false`` / ``no`` (any case);
``none`` / empty rows are skipped. Patch ids are the ``patch_id`` column of ``manifest.csv``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cemkit.errors import InputError
from cemkit.io.atomic import atomic_path

logger = logging.getLogger(__name__)

POSITIVE = {"informative", "good", "1", "true", "yes", "keep"}
NEGATIVE = {"uninformative", "bad", "0", "false", "no", "drop"}
SKIP = {"", "none", "skip", "unknown"}
FORMAT = "cemkit-patch-classifier"


def read_labels(path: str | Path) -> dict[str, int]:
    """Read ``patch_id,label`` rows: 1 = informative, 0 = uninformative.

    Raises
    ------
    InputError
        Missing file or columns, unknown label values, or no usable rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels CSV not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"patch_id", "label"} <= set(reader.fieldnames):
            raise InputError(f"{path}: needs a header with 'patch_id' and 'label' columns, got {reader.fieldnames}")
        labels: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            value = (row["label"] or "").strip().lower()
            if value in SKIP:
                continue
            if value in POSITIVE:
                labels[row["patch_id"].strip()] = 1
            elif value in NEGATIVE:
                labels[row["patch_id"].strip()] = 0
            else:
                raise InputError(f"{path}:{line}: unknown label {row['label']!r} "
                                 f"(use informative/uninformative or good/bad)")
    if not labels:
        raise InputError(f"{path}: no labelled rows")
    return labels


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is missing."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class ClassifierConfig:
    """Training settings (``filter.classifier`` in conf/curate.yaml)."""

    arch: str = "resnet10t"
    input_size: int = 64
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    val_fraction: float = 0.15
    threshold: float = 0.5
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    threads: int = 0  # CPU threads for torch (0: torch's default)


class _Threads:
    """Temporarily set torch's CPU thread count (0 = leave as is)."""

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        if self.n > 0:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


def _prepare(images: np.ndarray, input_size: int):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)[:, None]  # a copy: inputs may be read-only maps
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="area")
    return x


def _build(arch: str):
    import timm

    return timm.create_model(arch, in_chans=1, num_classes=1, pretrained=False)


class PatchClassifier:
    """A trained classifier: ``predict(images) -> P(informative)``."""

    def __init__(self, model, arch: str, input_size: int, mean: float, std: float, metrics: dict | None = None,
                 threads: int = 0):
        self.model, self.arch, self.input_size = model, arch, int(input_size)
        self.mean, self.std = float(mean), float(std)
        self.metrics = dict(metrics or {})
        self.threads = threads

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probability that each ``(N, H, W)`` uint8 patch is informative."""
        import torch

        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad(), _Threads(self.threads):
            for s in range(0, len(images), batch_size):
                x = (_prepare(np.asarray(images[s:s + batch_size]), self.input_size) - self.mean) / self.std
                out.append(torch.sigmoid(self.model(x.to(device))[:, 0]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def save(self, path: str | Path) -> None:
        import torch

        blob = {"format": FORMAT, "version": 1, "arch": self.arch, "input_size": self.input_size,
                "norms": [self.mean, self.std],
                "metrics": {k: float(v) for k, v in self.metrics.items() if v is not None},
                "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()}}
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)

    @classmethod
    def load(cls, path: str | Path) -> PatchClassifier:
        import torch

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: classifier file not found")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise InputError(f"{path}: not a cemkit patch classifier")
        model = _build(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
        return cls(model, ckpt["arch"], ckpt["input_size"], *ckpt["norms"], metrics=ckpt.get("metrics"))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded held-out split keeping the class proportions (at least one of each class held out
    when the class has two or more members). Returns ``(val, train)`` sorted index arrays."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    if val_fraction > 0:
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            k = round(val_fraction * len(idx))
            if len(idx) >= 2:
                k = min(max(k, 1), len(idx) - 1)
            val.extend(idx[:k].tolist())
    val = np.sort(np.asarray(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return val, train


def _recompute_batchnorm(model, x, batch_size: int) -> None:
    """Replace BatchNorm running statistics by exact averages over the training images.

    With few optimisation steps the exponential running averages are far from the data's
    statistics, and eval-mode predictions collapse to one class; a cumulative pass fixes that.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            if len(x[s:s + batch_size]) > 1:
                model(x[s:s + batch_size])
    for m in bns:
        m.momentum = 0.1
    model.eval()


def train_classifier(images: np.ndarray, labels: np.ndarray, cfg: ClassifierConfig | None = None,
                     seed: int = 0) -> PatchClassifier:
    """Train a small CNN on labelled patches; report the held-out AUROC in ``.metrics``.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W)`` uint8 patches.
    labels : np.ndarray
        ``(N,)`` 1 = informative, 0 = uninformative.
    cfg : ClassifierConfig
    seed : int
        Seeds the split, initialisation and batch order.
    """

    cfg = cfg or ClassifierConfig()
    with _Threads(cfg.threads):
        return _train(images, labels, cfg, seed)


def _train(images: np.ndarray, labels: np.ndarray, cfg: ClassifierConfig, seed: int) -> PatchClassifier:
    import torch

    from cemkit.devices import select_device

    labels = np.asarray(labels, dtype=np.float32)
    n = len(labels)
    if n < 4 or labels.min() == labels.max():
        raise InputError(f"classifier training needs both classes and >= 4 labelled patches, got {n} "
                         f"({int(labels.sum())} informative)")
    val, train = stratified_split(labels, cfg.val_fraction, seed)
    torch.manual_seed(seed)
    x_all = _prepare(images, cfg.input_size)
    mean = float(x_all[train].mean())
    std = float(x_all[train].std()) or 1.0
    device = select_device(cfg.device)
    x_all = ((x_all - mean) / std).to(device)
    y_all = torch.from_numpy(labels).to(device)
    model = _build(cfg.arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n_pos = float(labels[train].sum())
    pos_weight = torch.tensor((len(train) - n_pos) / max(n_pos, 1.0), device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            if len(b) < 2:  # BatchNorm needs two samples
                continue
            x = x_all[b]
            k = int(torch.randint(0, 4, (1,), generator=gen))
            x = torch.rot90(x, k, dims=(2, 3))
            if torch.rand(1, generator=gen) < 0.5:
                x = torch.flip(x, dims=(3,))
            loss = loss_fn(model(x)[:, 0], y_all[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        logger.info("classifier epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, total / max(len(train), 1))
    _recompute_batchnorm(model, x_all[torch.from_numpy(train)], cfg.batch_size)
    clf = PatchClassifier(model, cfg.arch, cfg.input_size, mean, std, threads=cfg.threads)
    metrics = {"n_train": len(train), "n_val": len(val)}
    if len(val):
        p = clf.predict(images[val])
        score = auroc(p, labels[val])
        metrics["val_auroc"] = None if np.isnan(score) else score
        metrics["val_accuracy"] = float(((p >= cfg.threshold) == (labels[val] > 0.5)).mean())
    clf.metrics = metrics
    logger.info("classifier: %s", metrics)
    return clf
