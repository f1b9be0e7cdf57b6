"""The data step of a finetune run: labelled volumes, input norms, patch and validation loaders.

:func:`load_data` reads the volumes once per command (shared by the 1/3/5fm models);
:func:`input_norms` picks the intensity normalisation; :func:`build_loaders` makes the
training patches (a function of seed and optimizer step) and the validation tiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cemkit.errors import ConfigError
from cemkit.finetune.data import (
    LabelledVolume,
    PatchBatchSampler,
    PatchDataset,
    RankShardSampler,
    SliceDataset,
    build_augmentation,
    check_ignore_value,
    intensity_norms,
    read_labelled_volume,
    split_validation,
)


log = logging.getLogger(__name__)


@dataclass
class FinetuneData:
    """Training and validation volumes (shared by the 1/3/5fm runs of one command)."""

    train: list[LabelledVolume]
    val: list[LabelledVolume]
    held_out: bool = True  # False: the validation slices are trained on too (data.val_slices=0)
    pixel_size_nm: float | None = None  # the yx pixel size the model trains at (recorded in its checkpoint/card)


def load_data(data_cfg: DictConfig, frames: int) -> FinetuneData:
    """Read training (and validation) volumes; hold out the last ``data.val_slices`` labelled
    slices when no separate validation data is given."""
    num_classes = int(data_cfg.num_classes)
    ignore = check_ignore_value(data_cfg.ignore_value, num_classes)
    vol = read_labelled_volume(data_cfg.images, data_cfg.labels, num_classes, frames=frames,
                               image_key=data_cfg.image_key, label_key=data_cfg.label_key,
                               label_slices=label_slices(data_cfg.label_slices, "data.label_slices"),
                               ignore_value=ignore)
    val_images, val_labels = data_cfg.val_images, data_cfg.val_labels
    if val_images:
        if not val_labels:
            raise ConfigError("data.val_images needs data.val_labels")
        val = read_labelled_volume(val_images, val_labels, num_classes,
                                   frames=frames, image_key=data_cfg.image_key,
                                   label_key=data_cfg.label_key, ignore_value=ignore, where="data.val")
        train = vol
        held_out = True
    else:
        held_out = int(data_cfg.val_slices) != 0
        train, val = split_validation(vol, int(data_cfg.val_slices))
        if not held_out:
            log.info("data.val_slices=0: training on all %d labelled slices; validation on the last %d of them "
                     "only monitors the fit, and best.ckpt is the final model", len(train.slices), len(val.slices))
    fraction = data_cfg.train_fraction
    if fraction is not None and float(fraction) < 1.0:
        train = subsample_slices(train, float(fraction))
    return FinetuneData([train], [val], held_out)


def label_slices(value: Any, key: str) -> list[int] | None:
    """``data.label_slices`` as a list of ints (None: labels for every slice, or paired by file name)."""
    if value is None:
        return None
    try:
        return [int(z) for z in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be null or a list of image slice numbers, e.g. [0, 5, 9], got {value!r}") \
            from None


def subsample_slices(vol: LabelledVolume, fraction: float) -> LabelledVolume:
    """Keep an evenly spaced ``fraction`` of the labelled slices (at least one)."""
    n = len(vol.slices)
    k = max(1, round(n * fraction))
    pick = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [n // 2]
    log.info("using %d of %d labelled training slices (data.train_fraction=%g)", len(pick), n, fraction)
    return vol.subset(vol.slices[pick])


def input_norms(data_norms: Any, init_norms: Any, init_kind: str, data: FinetuneData) -> tuple[tuple[float, float], str]:
    """``((mean, std), where from)``: ``data.norms`` when set, else the norms that came with ``model.init``,
    else measured on the training images."""
    if data_norms is not None:
        return (float(data_norms[0]), float(data_norms[1])), "data.norms"
    if init_norms is not None:
        return (float(init_norms[0]), float(init_norms[1])), f"model.init ({init_kind})"
    return intensity_norms(np.concatenate([v.image[v.slices].ravel() for v in data.train])), "training images"


@dataclass
class Loaders:
    """The training patches and validation tiles of one run."""

    train: DataLoader
    val: DataLoader
    sampler: PatchBatchSampler  # the trainer sets its position and gradient accumulation
    val_dataset: SliceDataset


def build_loaders(cfg: DictConfig, frames: int, data: FinetuneData, norms: tuple[float, float],
                  val_every: int) -> Loaders:
    """Loaders of one run: ``val_every`` steps of ``data.batch_size`` patches per epoch, then a validation.

    ``data.batch_size`` is the GLOBAL batch (as in pretrain): under DDP each of the W processes takes
    ``batch_size / W`` of it. Patches are a function of (seed, optimizer step): a resumed run, with any
    number of processes, trains on the same patches; Lightning must not wrap the sampler (it would split
    each epoch over the ranks: repeated patches and W times as many validations). Each validation tile
    is on one rank; the counts are summed over the ranks (:class:`~cemkit.finetune.module.SegmentationModule`).
    """
    d = cfg.data
    train_ds = PatchDataset(data.train, frames, int(d.crop), val_every * int(d.batch_size), norms,
                            background_keep=float(d.background_keep),
                            augment=_augmentation(d),
                            seed=int(cfg.seed), z_flip=bool(d.augment) and bool(d.z_flip),
                            hard_negatives=_fraction(d.hard_negatives, "data.hard_negatives"))
    val_ds = SliceDataset(data.val, frames, norms, tile=cfg.val.tile)
    workers = int(d.num_workers)
    sampler = PatchBatchSampler(int(d.batch_size), val_every)
    train_dl = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    val_dl = DataLoader(val_ds, batch_size=int(cfg.val.batch_size), sampler=RankShardSampler(len(val_ds)),
                        num_workers=0)
    return Loaders(train_dl, val_dl, sampler, val_ds)


def _fraction(value: Any, key: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{key} must be a fraction in [0, 1], got {value!r}")
    return v


def _augmentation(d: DictConfig):
    photometric = d.photometric if d.photometric == "strong" else bool(d.photometric)
    try:
        return build_augmentation(bool(d.augment), photometric, bool(d.geometric))
    except ValueError as exc:
        raise ConfigError(f"data.photometric: {exc}") from exc
