"""The data step of a finetune run: labelled volumes, input norms, patch and validation loaders.

:func:`load_data` reads the volumes once per command (shared by the 1/3/5fm models);
:func:`input_norms` picks the intensity normalisation; :func:`build_loaders` makes the
training patches (a function of seed and optimizer step) and the validation tiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
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
    open_input,
    read_labelled_volume,
    split_validation,
)
from cemkit.finetune.empty_slices import apply_empty_slice_policy, resolve_policy
from cemkit.finetune.sources import configured_sources, rescale, source_pixel_sizes
from cemkit.io.pixel_size import pixel_size_of, scale_factor


log = logging.getLogger(__name__)


@dataclass
class FinetuneData:
    """Training and validation volumes (shared by the 1/3/5fm runs of one command)."""

    train: list[LabelledVolume]
    val: list[LabelledVolume]
    held_out: bool = True  # False: the validation slices are trained on too (data.val_slices=0)
    pixel_size_nm: float | None = None  # the yx pixel size the model trains at (recorded in its checkpoint/card)
    weights: list[float] | None = None  # sampling weight of each training volume (None: by labelled pixels)


def load_data(data_cfg: DictConfig, frames: int, model_nm: float | None = None) -> FinetuneData:
    """Read the training sources (``data.sources`` or ``data.images`` / ``data.labels``) at one pixel size;
    hold out the last ``data.val_slices`` labelled slices of each when no separate validation data is given.

    Pixel sizes are checked from headers before any volume is read (:func:`source_pixel_sizes`).
    ``model_nm``: the pixel size of the trained model being adapted (``model.init``); the data is brought
    to it, as predict brings new data to a model (unless ``data.sources`` name their own ``data.voxel_size``).
    """
    num_classes = int(data_cfg.num_classes)
    ignore = check_ignore_value(data_cfg.ignore_value, num_classes)
    sources = configured_sources(data_cfg)
    sizes, pixel_nm = source_pixel_sizes(sources, data_cfg.voxel_size)
    pixel_nm = _adapted_pixel_size(pixel_nm, model_nm, explicit_target=len(sources) > 1
                                   and data_cfg.voxel_size is not None)
    val_images, val_labels, val_slices = data_cfg.val_images, data_cfg.val_labels, int(data_cfg.val_slices)
    if val_images and not val_labels:
        raise ConfigError("data.val_images needs data.val_labels")
    fraction = data_cfg.train_fraction
    train, val = [], []
    for source, nm in zip(sources, sizes):
        vol = read_labelled_volume(source.images, source.labels, num_classes, frames=frames,
                                   image_key=source.image_key, label_key=source.label_key,
                                   label_slices=source.label_slices, ignore_value=ignore, where=source.where)
        factor = scale_factor(nm, pixel_nm)
        if len(sources) > 1:
            log.info("%s: %s at %s nm%s, sampling weight %g", source.where, source.images,
                     "?" if nm is None else f"{nm:g}", "" if factor is None else
                     f", resampled x{factor:.3f} to {pixel_nm:g} nm", source.weight)
        vol = rescale(vol, factor)
        policy = resolve_policy(str(data_cfg.empty_slices), Path(str(source.labels)).is_dir())
        vol = apply_empty_slice_policy(vol, policy)
        if val_images:
            train.append(vol)
        else:
            t, v = split_validation(vol, val_slices)
            train.append(t)
            val.append(v)
    if val_images:
        val = [_validation_volume(data_cfg, val_images, val_labels, num_classes, frames, ignore, pixel_nm)]
    held_out = bool(val_images) or val_slices != 0
    if not held_out:
        log.info("data.val_slices=0: training on all %d labelled slices; validation on the last %d of them "
                 "only monitors the fit, and best.ckpt is the final model", sum(len(t.slices) for t in train),
                 sum(len(v.slices) for v in val))
    if fraction is not None and float(fraction) < 1.0:
        train = [subsample_slices(t, float(fraction)) for t in train]
    weights = [s.weight for s in sources] if len(sources) > 1 else None
    return FinetuneData(train, val, held_out, pixel_nm, weights)


def _adapted_pixel_size(data_nm: float | None, model_nm: float | None, explicit_target: bool) -> float | None:
    """The pixel size a run trains at when it adapts a model trained at ``model_nm``."""
    if model_nm is None or explicit_target:
        return data_nm
    if data_nm is None:
        log.warning("the model being adapted was trained at %g nm but the data has no pixel size: it is not "
                    "resampled (give data.voxel_size=NM), and the adapted model records no pixel size", model_nm)
        return None
    if scale_factor(data_nm, model_nm) is not None:
        log.info("adapting a model trained at %g nm: the data (%g nm) is resampled to it", model_nm, data_nm)
    return model_nm


def _validation_volume(data_cfg: DictConfig, images: Any, labels: Any, num_classes: int, frames: int,
                       ignore: int | None, pixel_nm: float | None) -> LabelledVolume:
    """``data.val_images`` / ``data.val_labels``, brought to the training pixel size when its metadata gives
    another one (without metadata it is taken to be at the training pixel size)."""
    vol = read_labelled_volume(images, labels, num_classes, frames=frames, image_key=data_cfg.image_key,
                               label_key=data_cfg.label_key, ignore_value=ignore, where="data.val")
    nm = pixel_size_of(open_input(images, data_cfg.image_key, "data.val_images"), None, "data.val_images")
    factor = scale_factor(nm, pixel_nm)
    if factor is not None:
        log.info("data.val_images: %s at %g nm, resampled x%.3f to %g nm", images, nm, factor, pixel_nm)
    return rescale(vol, factor)


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
                            hard_negatives=_fraction(d.hard_negatives, "data.hard_negatives"),
                            weights=data.weights)
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
