"""Pretraining data: a curated corpus, or folders of images and volumes, read as grey uint8 patches.

Data order is a pure function of ``(seed, global step)``: :class:`StepBatchSampler` hands rank ``r``
the positions ``step * B + r * b ... + b - 1`` (``B`` the global batch, ``b = B / world``) and
:class:`TwoViewDataset` maps a position to a patch (a fresh seeded permutation of the patches per
pass) and to the augmentation seed. A run resumed at step ``s`` therefore sees exactly the batches
the uninterrupted run saw, whatever the number of workers, and every rank gets a batch of equal size
(needed for Shuffle-BN and the key all-gather).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cemkit.errors import ConfigError, InputError
from cemkit.pretrain.augment import TwoViewTransform

log = logging.getLogger(__name__)

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant for seed mixing


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (SplitMix64-style), independent of Python's hash salt."""
    x = 0
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * _MIX & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


# --------------------------------------------------------------------------------------------
# patch sources


@dataclass
class PatchSource:
    """Random access to grey uint8 patches plus what they are normalised with."""

    patches: Any  # len() and [i] -> (H, W) uint8
    mean: float
    std: float
    source_id: str
    description: str

    def __len__(self) -> int:
        return len(self.patches)


class _ImageTiles:
    """Tiles of in-memory images: item i is ``images[j][y:y+t, x:x+t]`` (whole image when smaller)."""

    def __init__(self, images: list[np.ndarray], tile: int | None):
        self.images = images
        self.index: list[tuple[int, int, int, int, int]] = []
        for j, img in enumerate(images):
            h, w = img.shape
            if not tile or (h < 2 * tile and w < 2 * tile):
                self.index.append((j, 0, 0, h, w))
                continue
            ny, nx = max(1, h // tile), max(1, w // tile)
            for a in range(ny):
                for b in range(nx):
                    self.index.append((j, a * tile, b * tile, min(tile, h), min(tile, w)))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        j, y, x, h, w = self.index[i]
        return self.images[j][y:y + h, x:x + w]


def open_corpus_source(path: str | Path) -> PatchSource:
    """A corpus written by ``cemkit curate`` (``metadata.json`` gives mean/std)."""
    from cemkit.io.corpus import open_corpus

    corpus = open_corpus(path)
    if len(corpus) == 0:
        raise InputError(f"{path}: corpus holds no patches")
    meta = getattr(corpus, "metadata", {}) or {}
    cid = meta.get("corpus_id") or getattr(corpus, "corpus_id", None)
    if not cid:
        digest = hashlib.sha1(json.dumps({k: meta.get(k) for k in ("shards", "seed", "mean", "std", "counts")},
                                         sort_keys=True, default=str).encode()).hexdigest()[:12]
        cid = f"{Path(path).resolve().name}-{digest}"
    return PatchSource(corpus, float(corpus.mean), float(corpus.std), str(cid),
                       f"corpus {path} ({len(corpus)} patches)")


def _image_files(entry: Path) -> list[Path]:
    """The files or stores one ``data.images`` entry stands for (a folder: its image files and zarr stores)."""
    from cemkit.io.image_folder import IMAGE_SUFFIXES
    from cemkit.io.zarr_store import is_zarr_dir

    if not entry.exists():
        raise InputError(f"{entry}: image folder, file or volume not found")
    if not entry.is_dir() or is_zarr_dir(entry):
        return [entry]
    suffixes = IMAGE_SUFFIXES + (".mrc", ".rec", ".st", ".npy", ".h5", ".hdf5")
    found = sorted(p for p in entry.iterdir() if not p.name.startswith(".")
                   and ((p.is_file() and p.suffix.lower() in suffixes) or (p.is_dir() and is_zarr_dir(p))))
    if not found:
        raise InputError(f"{entry}: no image files (png/tif/jpg/mrc/npy/h5) or zarr stores in the folder")
    return found


def image_entries(value: Any) -> list[Path]:
    """``data.images`` as a list of paths (one path or a list of them)."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, Path)) else list(value)
    return [Path(str(v).strip()).expanduser() for v in items if str(v).strip()]


def open_image_source(path: Any, tile: int | None = 224, max_norm_images: int = 64) -> PatchSource:
    """Folders of 2D images, image stacks and volumes (one path or a list), read with :func:`cemkit.io.open_volume`.

    Each entry is a folder (its png/tif/jpg/mrc/npy/h5 files and zarr stores, each file a 2D image or
    a stack), or one file / zarr store: a 2D image, a tif stack, mrc, h5, zarr or npy volume. Every
    z-slice (xy section) of every file becomes an image; images larger than twice ``tile`` are cut
    into non-overlapping ``tile`` x ``tile`` patches (``tile=None`` keeps whole images). Intensities
    are converted to uint8 by :meth:`cemkit.io.Volume.as_uint8`; mean/std are measured on up to
    ``max_norm_images`` images. xz / yz sections and near-duplicate removal: ``cemkit curate`` first.
    """
    from cemkit.io import open_volume

    entries = image_entries(path)
    if not entries:
        raise ConfigError("data.images is empty")
    files = [f for entry in entries for f in _image_files(entry)]
    images: list[np.ndarray] = []
    for f in files:
        vol = open_volume(f).as_uint8()
        if vol.ndim != 3:
            raise InputError(f"{f}: expected grey images or a (z, y, x) volume, got shape {vol.shape}")
        images.extend(np.ascontiguousarray(vol[z:z + 1][0]) for z in range(vol.shape[0]))
    total = sum(i.nbytes for i in images)
    where = ", ".join(str(e) for e in entries)
    if total > 4 * 2**30:
        log.warning("%s: %.1f GB of images held in memory; curate a corpus (`cemkit curate`) for large data",
                    where, total / 2**30)
    step = max(1, len(images) // max_norm_images)
    sample = np.concatenate([images[i].ravel() for i in range(0, len(images), step)]).astype(np.float64) / 255.0
    mean, std = float(sample.mean()), float(sample.std())
    if std <= 0:
        raise InputError(f"{where}: images have no intensity variation (std 0)")
    names = "|".join(f"{f.name}:{_size(f)}" for f in files)
    sid = f"{entries[0].name}-{hashlib.sha1(names.encode()).hexdigest()[:12]}"
    tiles = _ImageTiles(images, tile)
    return PatchSource(tiles, mean, std, sid, f"images {where} ({len(files)} files, {len(images)} images, "
                                              f"{len(tiles)} patches)")


def _size(path: Path) -> int:
    """Bytes of a file, or of all files of a store folder (zarr)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def open_source(data_cfg: Mapping[str, Any]) -> PatchSource:
    """Open ``data.corpus`` or ``data.images`` (exactly one must be set); ``data.mean/std`` override norms."""
    corpus, images = data_cfg["corpus"], data_cfg["images"]
    if bool(corpus) == bool(images):
        raise ConfigError("set exactly one of data.corpus=CORPUS_DIR (from `cemkit curate`) or data.images=PATH "
                          "(a folder, file or volume, or a list [A,B])")
    if corpus:
        source = open_corpus_source(corpus)
    else:
        if not isinstance(images, (str, Path)):
            images = list(images)  # a ListConfig
        source = open_image_source(images, tile=data_cfg["tile_size"])
    mean, std = data_cfg["mean"], data_cfg["std"]
    if mean is not None:
        source.mean = float(mean)
    if std is not None:
        source.std = float(std)
    return source


# --------------------------------------------------------------------------------------------
# dataset and sampler


class TwoViewDataset(Dataset):
    """Position ``i`` of the (endless) sample stream -> two augmented views ``(2, 1, H, W)``.

    Pass ``p = i // N`` visits the ``N`` patches in the permutation drawn from ``(seed, p)``; the
    augmentation of position ``i`` is seeded with ``(seed, i)``.
    """

    def __init__(self, patches: Any, transform: TwoViewTransform, seed: int = 0):
        self.patches = patches
        self.transform = transform
        self.seed = int(seed)
        self.n = len(patches)
        if self.n == 0:
            raise InputError("no patches to train on")
        self._perm_pass = -1
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    def patch_index(self, position: int) -> int:
        p, r = divmod(int(position), self.n)
        if p != self._perm_pass:
            self._perm = np.random.default_rng(mix_seed(self.seed, 1, p)).permutation(self.n)
            self._perm_pass = p
        return int(self._perm[r])

    def __getitem__(self, position: int) -> torch.Tensor:
        image = np.asarray(self.patches[self.patch_index(position)])
        return self.transform(image, mix_seed(self.seed, 2, position))


class StepBatchSampler(Sampler[list[int]]):
    """Batches of stream positions for one rank, from ``start_step`` to ``total_steps``.

    Step ``s`` of rank ``r`` is ``[s * B + r * b + j for j in range(b)]`` with ``b = B / world``.
    """

    def __init__(self, global_batch: int, rank: int, world: int, start_step: int, total_steps: int):
        if global_batch % world:
            raise ConfigError(f"data.batch_size={global_batch} must be divisible by the number of processes {world}")
        self.global_batch, self.rank, self.world = int(global_batch), int(rank), int(world)
        self.local = self.global_batch // self.world
        self.start_step, self.total_steps = int(start_step), int(total_steps)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start_step, self.total_steps):
            first = s * self.global_batch + self.rank * self.local
            yield list(range(first, first + self.local))


def single_threaded_worker(worker_id: int) -> None:
    """Loader worker set-up: OpenCV without its thread pool (each worker is one of many processes)."""
    import cv2

    cv2.setNumThreads(0)


def collate_views(batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack ``(2, 1, H, W)`` pairs into ``(B, 2, 1, H, W)``."""
    return torch.stack(list(batch))


# --------------------------------------------------------------------------------------------
# Lightning data module


def _lightning_datamodule_base():
    import pytorch_lightning as pl

    return pl.LightningDataModule


class PretrainDataModule(_lightning_datamodule_base()):
    """Two-view batches of ``data.batch_size`` images in total (split evenly over the ranks).

    Parameters
    ----------
    source
        Opened :class:`PatchSource`.
    augment_cfg
        The ``augment`` config.
    image_size, batch_size, num_workers
        View side length, global batch size (all ranks together), loader workers per rank.
    total_steps
        Optimiser steps of the whole run (the stream is cut there).
    seed
        Seed of data order and augmentations.
    """

    def __init__(self, source: PatchSource, augment_cfg: Mapping[str, Any], image_size: int, batch_size: int,
                 num_workers: int, total_steps: int, seed: int = 0, pin_memory: bool = True,
                 prefetch_factor: int | None = 4):
        super().__init__()
        self.source = source
        self.transform = TwoViewTransform(augment_cfg, int(image_size), source.mean, source.std)
        self.dataset = TwoViewDataset(source.patches, self.transform, seed)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.total_steps, self.seed = int(total_steps), int(seed)
        self.pin_memory, self.prefetch_factor = bool(pin_memory), prefetch_factor

    def queue_fill_dataloader(self, queue_size: int) -> DataLoader:
        """Batches of ``ceil(queue_size / batch_size)`` steps for filling the queue, from a stream of its own
        (seeded by ``(seed, 5)``, not the training stream); each rank gets its share, as in training."""
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        dataset = TwoViewDataset(self.dataset.patches, self.transform, mix_seed(self.seed, 5))
        steps = -(-int(queue_size) // self.batch_size)
        sampler = StepBatchSampler(self.batch_size, rank, world, 0, steps)
        extra = {"worker_init_fn": single_threaded_worker} if self.num_workers > 0 else {}
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate_views,
                          pin_memory=self.pin_memory and torch.cuda.is_available(), **extra)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        start = trainer.global_step if trainer is not None else 0
        sampler = StepBatchSampler(self.batch_size, rank, world, start, self.total_steps)
        log.debug("rank %d/%d: data from step %d to %d", rank, world, start, self.total_steps)
        extra = {}
        if self.num_workers > 0:
            extra = {"persistent_workers": False, "prefetch_factor": self.prefetch_factor,
                     "worker_init_fn": single_threaded_worker}
        pin = self.pin_memory and torch.cuda.is_available()
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_views, pin_memory=pin, **extra)
