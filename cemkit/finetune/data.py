"""Training data for segmentation: image/label volumes, k-frame inputs, patch sampling, augmentation.

Images and labels are read with :func:`cemkit.io.open_volume`: a CDeep3M-style folder of 2D slices
(``images/`` and ``labels/``, paired in natural sort order), a multi-page TIFF, an HDF5 / zarr /
MRC / npy volume. Training volumes are loaded into memory (uint8 images, uint8 labels), which
is what a labelled training set (tens of slices) needs.

Labels: binary labels may be stored as 0/1 or 0/255; ``C``-class labels as 0..C-1. Anything else is
an :class:`~cemkit.errors.InputError` naming the file and the values found.

k-frame inputs (1fm / 3fm / 5fm): slices ``z - k//2 .. z + k//2`` become the input channels of the
prediction for slice ``z``; the volume ends are mirror-padded (``-1 -> 1``, ``n -> n-2``), as in
CDeep3M.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cemkit.errors import ConfigError, InputError
from cemkit.finetune.losses import IGNORE_INDEX
from cemkit.finetune.pairing import label_positions
from cemkit.models.frames import frame_indices, min_slices

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ reading
def check_ignore_value(value: Any, num_classes: int, key: str = "data.ignore_value") -> int | None:
    """The label value that marks "not labelled" pixels (``None``: every pixel is labelled), checked.

    Raises
    ------
    ConfigError
        Not a whole number, negative, or a class value (0/1/255 for binary labels, 0..C-1 otherwise).
    """
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be null or a whole number (a label value), got {value!r}") from None
    if v != value or v < 0:
        raise ConfigError(f"{key} must be null or a whole number >= 0 (a label value), got {value!r}")
    if num_classes > IGNORE_INDEX:
        raise ConfigError(f"data.num_classes={num_classes}: at most {IGNORE_INDEX} classes")
    classes = {0, 1} if num_classes == 2 else set(range(num_classes))
    if v in classes:
        raise ConfigError(f"{key}={v} is a class value (classes are {sorted(classes)}); choose a value that no "
                          f"class uses, e.g. {max(classes) + 1}")
    return v


def convert_labels(labels: np.ndarray, num_classes: int, where: str, ignore_value: int | None = None) -> np.ndarray:
    """Check label values and map them to class indices ``0..num_classes-1`` (uint8).

    Binary (``num_classes == 2``): values in {0, 1} or {0, 255}; 255 becomes 1.
    Multi-class: values in ``0..num_classes-1``.
    Pixels equal to ``ignore_value`` (checked by :func:`check_ignore_value`) become
    :data:`~cemkit.finetune.losses.IGNORE_INDEX`, which no loss or validation metric counts; with
    ``ignore_value=255`` binary labels must be 0/1.

    Raises
    ------
    InputError
        Other values; the message names ``where`` and the unexpected values.

    Examples
    --------
    >>> convert_labels(np.array([[0, 255, 2]]), 2, "lab.png", ignore_value=2).tolist()
    [[0, 1, 255]]
    """
    ignored = None if ignore_value is None else labels == ignore_value
    values = np.unique(labels if ignored is None else labels[~ignored])
    also = "" if ignore_value is None else f" (and data.ignore_value={ignore_value} for unlabelled pixels)"
    if num_classes == 2:
        vs = set(values.tolist())
        if vs <= {0, 1}:
            out = labels.astype(np.uint8, copy=ignored is not None)
        elif vs <= {0, 255}:
            out = (labels == 255).astype(np.uint8)
        else:
            raise InputError(f"{where}: binary labels must be 0/1 or 0/255{also}, found values {_show(values)}; "
                             f"for multi-class labels set data.num_classes")
    else:
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise InputError(f"{where}: labels for data.num_classes={num_classes} must be 0..{num_classes - 1}{also}, "
                             f"found values {_show(bad)}")
        out = labels.astype(np.uint8, copy=ignored is not None)
    if ignored is not None:
        out[ignored] = IGNORE_INDEX
    return out


def _show(values: np.ndarray, n: int = 10) -> str:
    vals = [int(v) if float(v).is_integer() else float(v) for v in values[:n]]
    return str(vals) + (f" ... ({values.size} distinct)" if values.size > n else "")


def open_input(path: str | Path, key: str | None, what: str):
    """Open ``path`` lazily; a missing path is an :class:`InputError` naming ``what`` (the config key)."""
    from cemkit.io import open_volume

    path = Path(path)
    if not path.exists():
        raise InputError(f"{what}: {path}: no such file or folder")
    return open_volume(path, key=key)


@dataclass
class LabelledVolume:
    """An image volume (uint8 z-y-x) with labels (uint8 class indices) for some or all slices.

    ``slices`` are the z indices whose labels are used; the image slices around them give the
    context of k-frame inputs. Slices without labels hold :data:`~cemkit.finetune.losses.IGNORE_INDEX`
    in ``label`` (never background) and are never in ``slices``.
    """

    image: np.ndarray
    label: np.ndarray
    slices: np.ndarray
    name: str

    def subset(self, slices: Sequence[int]) -> LabelledVolume:
        return LabelledVolume(self.image, self.label, np.asarray(slices, dtype=np.int64), self.name)


def read_labelled_volume(images: str | Path, labels: str | Path, num_classes: int = 2, *, frames: int = 1,
                         image_key: str | None = None, label_key: str | None = None,
                         label_slices: Sequence[int] | None = None, ignore_value: int | None = None,
                         where: str = "data") -> LabelledVolume:
    """Read and check an image / label pair; the labels may cover only some of the image slices.

    Parameters
    ----------
    images, labels
        Anything :func:`cemkit.io.open_volume` reads (a folder of 2D slices, a TIFF stack, h5, zarr, ...).
    num_classes
        2 for binary labels (0/1 or 0/255), ``C`` for 0..C-1.
    frames
        The largest number of input frames that will be used (checks there are enough slices).
    image_key, label_key
        Dataset names inside h5 / zarr containers.
    label_slices
        The image z of each label slice, when the labels cover only some slices of a container;
        see :func:`cemkit.finetune.pairing.label_positions` (folders pair by file name).
    ignore_value
        Label value of unlabelled pixels (see :func:`convert_labels`), or None.
    where
        The config key of this pair (``data``, ``data.sources[1]``), named in errors.

    Raises
    ------
    InputError
        Missing files, image / label size mismatch, unpaired label slices, unexpected label values,
        too few slices.
    """
    ivol, lvol = open_input(images, image_key, f"{where}.images"), open_input(labels, label_key, f"{where}.labels")
    if tuple(ivol.shape[1:]) != tuple(lvol.shape[1:]):
        raise InputError(f"{where}: image/label size mismatch: {ivol.path} is {tuple(ivol.shape)} (z, y, x) but "
                         f"{lvol.path} is {tuple(lvol.shape)}")
    n = ivol.shape[0]
    if n < min_slices(frames):
        raise InputError(f"{where}: {ivol.path}: {frames}-frame inputs need at least {min_slices(frames)} "
                         f"consecutive slices, found {n}")
    zs = label_positions(ivol, lvol, label_slices, where)
    image = np.ascontiguousarray(ivol.as_uint8()[:])
    label = np.full(image.shape, IGNORE_INDEX, np.uint8)
    label[zs] = convert_labels(np.asarray(lvol[:]), num_classes, f"{where}: {lvol.path}", ignore_value)
    known = label[zs]
    counted = known != IGNORE_INDEX
    log.info("read %s: %d slices of %dx%d, %d labelled, foreground fraction %.3f", ivol.path, n, image.shape[1],
             image.shape[2], len(zs), float((known[counted] > 0).mean()) if counted.any() else 0.0)
    return LabelledVolume(image, label, np.sort(zs), ivol.name)


MONITOR_SLICES = 2  # data.val_slices=0: the last slices, trained on too, are validated to monitor the fit


def split_validation(vol: LabelledVolume, val_slices: int) -> tuple[LabelledVolume, LabelledVolume]:
    """Use the last ``val_slices`` labelled slices for validation, the others for training.

    ``val_slices=0`` trains on every slice and validates on the last :data:`MONITOR_SLICES` of them
    (a measure of the fit, not of generalisation: nothing is held out).
    """
    n = len(vol.slices)
    if val_slices == 0:
        return vol, vol.subset(vol.slices[max(0, n - MONITOR_SLICES):])
    if not 0 < val_slices < n:
        raise InputError(f"{vol.name}: cannot hold out {val_slices} of {n} labelled slices for validation "
                         f"(set data.val_slices between 0 and {n - 1}, or give data.val_images / data.val_labels)")
    return vol.subset(vol.slices[: n - val_slices]), vol.subset(vol.slices[n - val_slices:])


def intensity_norms(image: np.ndarray) -> tuple[float, float]:
    """``(mean, std)`` of ``image / 255`` (uint8), for normalising inputs of a randomly initialised encoder."""
    x = image.astype(np.float64) / 255.0
    return float(x.mean()), float(max(x.std(), 1e-6))


# ------------------------------------------------------------------------------------ augmentation
PHOTOMETRIC = (False, True, "strong")


def build_augmentation(enabled: bool = True, photometric: bool | str = True, geometric: bool = False):
    """albumentations pipeline: D4 (flips, 90-degree rotations), then optional photometric and geometric changes.

    Applied to ``(H, W, frames)`` uint8 images with their mask; every frame gets the same transform,
    and the mask the same geometry (nearest neighbour).

    Parameters
    ----------
    enabled
        ``False``: no augmentation at all (``None`` is returned).
    photometric
        ``True``: brightness/contrast +-20 %, then blur or noise (30 %). ``"strong"``: brightness/contrast
        +-30 %, gamma 0.7-1.5 and blur or noise (50 %), so that grey level alone stops telling
        mitochondria from other dark membranes.
    geometric
        Scale 0.8-1.25 with any rotation (50 %) and an elastic distortion (30 %), reflect-padded.
    """
    import albumentations as A
    import cv2

    if photometric not in PHOTOMETRIC:
        raise ValueError(f"photometric must be true, false or strong, got {photometric!r}")
    if not enabled:
        return None
    ops: list[Any] = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if geometric:
        ops += [A.Affine(scale=(0.8, 1.25), rotate=(-180, 180), border_mode=cv2.BORDER_REFLECT_101,
                         interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=0.5),
                A.ElasticTransform(alpha=30, sigma=6, border_mode=cv2.BORDER_REFLECT_101, p=0.3)]
    if photometric == "strong":
        ops += [A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
                A.RandomGamma(gamma_limit=(70, 150), p=0.5),
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0),
                         A.GaussNoise(std_range=(0.02, 0.08), p=1.0)], p=0.5)]
    elif photometric:
        ops += [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0),
                         A.GaussNoise(std_range=(0.02, 0.06), p=1.0)], p=0.3)]
    return A.Compose(ops)


def normalise(x: np.ndarray, norms: Sequence[float]) -> np.ndarray:
    """uint8 -> float32 ``(x / 255 - mean) / std``."""
    mean, std = float(norms[0]), float(norms[1])
    return ((x.astype(np.float32) / 255.0) - mean) / std


# ------------------------------------------------------------------------------------ datasets
def _crop_padded(arr: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``arr[..., y0:y0+size, x0:x0+size]`` reflect-padded where the window leaves the array."""
    h, w = arr.shape[-2:]
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    out = arr[..., ys:ye, xs:xe]
    pads = ((0, 0),) * (arr.ndim - 2) + ((ys - y0, y0 + size - ye), (xs - x0, x0 + size - xe))
    if any(p for pair in pads for p in pair):
        mode = "reflect" if min(out.shape[-2:]) > 1 else "edge"
        out = np.pad(out, pads, mode=mode)
    return out


class PatchDataset(Dataset):
    """Random ``frames x crop x crop`` training patches with foreground-biased sampling.

    Patch centres are drawn uniformly over the labelled slices; a patch whose centre pixel is
    background is kept with probability ``background_keep`` (CDeep3M: 1/4), one centred on
    foreground always, so foreground is over-sampled about ``1 / background_keep`` times; one centred
    on an unlabelled pixel (:data:`~cemkit.finetune.losses.IGNORE_INDEX`) is drawn again.

    The volume of each patch is drawn with probability proportional to ``weights`` (one per volume:
    ``data.sources[i].weight``); without them, proportional to the volume's labelled pixels.

    Each item is ``(x, y)``: ``x`` float32 ``(frames, crop, crop)`` normalised with ``norms``,
    ``y`` int64 ``(crop, crop)`` class indices. With ``z_flip`` (3fm/5fm only) the frame order of each
    patch is reversed with probability 1/2, drawn after the patch position; single-frame datasets draw
    nothing for it, so their patches are the same with or without it.

    With ``seed`` set, item ``index`` is a pure function of ``(seed, index)`` (patch position and
    augmentation): draw it with a :class:`PatchSampler`, whose indices run on from epoch to epoch,
    and a resumed run sees exactly the patches of an uninterrupted one, whatever the number of
    DataLoader workers. With ``seed=None`` randomness comes from torch's generator instead (seeded
    by ``seed_everything``, distinct in every DataLoader worker).
    """

    def __init__(self, volumes: Sequence[LabelledVolume], frames: int, crop: int, length: int,
                 norms: Sequence[float], background_keep: float = 0.25, augment=None, max_tries: int = 20,
                 seed: int | None = None, z_flip: bool = False, hard_negatives: float = 0.0,
                 weights: Sequence[float] | None = None):
        self.volumes, self.frames, self.crop, self.length = list(volumes), int(frames), int(crop), int(length)
        if not 0.0 <= float(hard_negatives) <= 1.0:
            raise ValueError(f"hard_negatives must be a fraction in [0, 1], got {hard_negatives}")
        self.hard_negatives = float(hard_negatives)
        self._dark = [dark_background(v) for v in self.volumes] if self.hard_negatives > 0 else []
        self.z_flip = bool(z_flip) and self.frames > 1
        self.seed = None if seed is None else int(seed)
        self.norms, self.background_keep, self.augment, self.max_tries = norms, float(background_keep), augment, max_tries
        self._weights = self.volume_weights(self.volumes, weights)

    @staticmethod
    def volume_weights(volumes: Sequence[LabelledVolume], weights: Sequence[float] | None) -> np.ndarray:
        """Probability of drawing each volume: ``weights`` normalised, or the labelled pixel counts."""
        if weights is None:
            w = np.array([len(v.slices) * v.image.shape[1] * v.image.shape[2] for v in volumes], float)
        else:
            w = np.asarray([float(x) for x in weights], float)
            if len(w) != len(volumes) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
                raise ValueError(f"need one non-negative weight per volume ({len(volumes)}), not all 0, got {list(w)}")
        return w / w.sum()

    def __len__(self) -> int:
        return self.length

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One uint8 ``(frames, crop, crop)`` patch and its ``(crop, crop)`` labels."""
        if self.hard_negatives > 0 and rng.random() < self.hard_negatives:
            vi = int(rng.choice(len(self.volumes), p=self._weights))
            vol, candidates = self.volumes[vi], self._dark[vi]
            if len(candidates):
                z, cy, cx = (int(v) for v in candidates[rng.integers(len(candidates))])
                return self._cut(vol, z, cy, cx)
        for _ in range(self.max_tries):
            vol = self.volumes[rng.choice(len(self.volumes), p=self._weights)]
            z = int(vol.slices[rng.integers(len(vol.slices))])
            _, h, w = vol.image.shape
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            centre = vol.label[z, cy, cx]
            if centre == IGNORE_INDEX:
                continue
            if centre > 0 or rng.random() < self.background_keep:
                break
        return self._cut(vol, z, cy, cx)

    def _cut(self, vol: LabelledVolume, z: int, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = vol.image.shape[1:]
        y0, x0 = cy - self.crop // 2, cx - self.crop // 2
        # keep the window inside the slice when the slice is large enough
        y0 = min(max(y0, 0), max(h - self.crop, 0)) if h >= self.crop else y0
        x0 = min(max(x0, 0), max(w - self.crop, 0)) if w >= self.crop else x0
        zs = frame_indices(z, vol.image.shape[0], self.frames)
        img = _crop_padded(vol.image[zs], y0, x0, self.crop)
        lab = _crop_padded(vol.label[z], y0, x0, self.crop)
        return img, lab

    def __getitem__(self, index: int):
        if self.seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        else:
            seed = int(np.random.SeedSequence([self.seed, int(index)]).generate_state(1, np.uint64)[0] >> 2)
        rng = np.random.default_rng(seed)
        img, lab = self.sample(rng)
        if self.z_flip and rng.random() < 0.5:  # only multi-frame inputs draw: 1fm patches stay as they were
            img = img[::-1]
        if self.augment is not None:
            self.augment.set_random_seed(seed % 2**32)
            out = self.augment(image=np.ascontiguousarray(img.transpose(1, 2, 0)), mask=np.ascontiguousarray(lab))
            img, lab = out["image"].transpose(2, 0, 1), out["mask"]
        x = normalise(np.ascontiguousarray(img), self.norms)
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))


def dark_background(vol: LabelledVolume, max_points: int = 20000, seed: int = 0) -> np.ndarray:
    """Hard-negative patch centres: background pixels at least as dark as the median labelled foreground pixel.

    These are the membranes, myelin and other dark structures a model that learned "dark means
    foreground" marks wrongly. Pixels within 8 px of a labelled object are left out (their patch is
    a positive one anyway), and so are unlabelled pixels.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int ``(z, y, x)`` centres on the labelled slices, at most ``max_points`` (evenly
        subsampled with a fixed seed); empty when there is no foreground or no such pixel.
    """
    from scipy import ndimage

    points = []
    for z in vol.slices:
        image, raw = vol.image[z], vol.label[z]
        label = (raw > 0) & (raw != IGNORE_INDEX)
        if not label.any():
            continue
        level = np.median(image[label])
        near = ndimage.binary_dilation(label, iterations=8)
        ys, xs = np.nonzero((image <= level) & ~near & (raw == 0))
        points.append(np.stack([np.full_like(ys, z), ys, xs], 1))
    if not points:
        return np.zeros((0, 3), np.int64)
    found = np.concatenate(points).astype(np.int64)
    if len(found) > max_points:
        found = found[np.sort(np.random.default_rng(seed).choice(len(found), max_points, replace=False))]
    return found


def process_layout() -> tuple[int, int]:
    """``(rank, world size)`` of this process: from :mod:`torch.distributed` when a process group is
    initialised (Lightning's DDP has set it up by the time a loader is iterated), else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_global_batch(batch_size: int, world: int) -> int:
    """Per-process batch of the global ``data.batch_size`` split over ``world`` processes.

    Raises
    ------
    ConfigError
        ``batch_size`` not a positive multiple of ``world``.
    """
    if batch_size < 1 or batch_size % world:
        raise ConfigError(f"data.batch_size={batch_size} is the global batch (all processes together) and must be "
                          f"a positive multiple of the number of processes ({world})")
    return batch_size // world


class PatchBatchSampler(Sampler[list[int]]):
    """Batches of patch indices for a seeded :class:`PatchDataset`, one optimizer step at a time, per rank.

    ``batch_size`` is the global batch ``B`` (all processes together); rank ``r`` of ``W`` takes
    ``b = B / W`` of it. Micro-batch ``m`` (of ``accumulate``) of optimizer step ``s`` holds, on rank ``r``,
    the indices ``s * B * accumulate + m * B + r * b ... + b - 1``. Over the ``W`` ranks a step therefore
    covers exactly the indices one process with batch ``B`` takes at that step, each once, whatever ``W``.

    One epoch is ``steps`` optimizer steps (``val.every``: the loop validates after each epoch), starting
    at the step ``position()`` returns when the epoch's iteration begins (the training loop passes
    ``trainer.global_step``; default 0 then ``steps`` more each epoch). ``__iter__`` runs in the main
    process, so a run resumed at step ``s`` draws the patches of an uninterrupted run, with any number of
    DataLoader workers and, since positions count global steps, with any number of processes.

    ``layout`` gives ``(rank, world)`` when an epoch starts (default :func:`process_layout`).
    """

    def __init__(self, batch_size: int, steps: int, accumulate: int = 1, position: Callable[[], int] | None = None,
                 layout: Callable[[], tuple[int, int]] = process_layout):
        self.batch_size, self.steps, self.accumulate = int(batch_size), int(steps), int(accumulate)
        if self.steps < 1 or self.accumulate < 1:
            raise ValueError(f"steps and accumulate must be >= 1, got {steps} and {accumulate}")
        self.position, self.layout, self._epochs = position, layout, 0

    def __len__(self) -> int:
        return self.steps * self.accumulate

    def batches(self, start_step: int, rank: int, world: int) -> Iterator[list[int]]:
        """The micro-batches of rank ``rank`` of ``world`` for the epoch that starts at ``start_step``."""
        local = check_global_batch(self.batch_size, world)
        per_step = self.batch_size * self.accumulate
        for s in range(start_step, start_step + self.steps):
            for m in range(self.accumulate):
                first = s * per_step + m * self.batch_size + rank * local
                yield list(range(first, first + local))

    def __iter__(self) -> Iterator[list[int]]:
        start = int(self.position()) if self.position is not None else self._epochs * self.steps
        self._epochs += 1
        rank, world = self.layout()
        return self.batches(start, rank, world)


class RankShardSampler(Sampler[int]):
    """Validation items of one rank: ``rank, rank + W, ...`` of ``0 .. n-1``, padded to ``ceil(n / W)``.

    Every item is validated by exactly one rank. The padding (index ``n + j``, which
    :class:`SliceDataset` returns with nothing to count) gives every rank the same number of
    batches, so a rank with fewer items never leaves the others waiting in a collective.
    """

    def __init__(self, n: int, layout: Callable[[], tuple[int, int]] = process_layout):
        self.n, self.layout = int(n), layout

    def indices(self, rank: int, world: int) -> list[int]:
        mine = list(range(rank, self.n, world))
        per_rank = -(-self.n // world)
        return mine + [self.n + j for j in range(per_rank - len(mine))]

    def __len__(self) -> int:
        rank, world = self.layout()
        return len(self.indices(rank, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(*self.layout()))


class SliceDataset(Dataset):
    """Deterministic validation items: whole labelled slices, or a grid of ``tile`` x ``tile`` windows.

    Items are ``(x, y, index, counted)``: ``x`` and ``y`` as in :class:`PatchDataset`, the item number
    (for overlays) and ``counted``, int64 ``(y0, x0, y1, x1)``: the part of the window whose pixels
    the metrics count. Windows flush with a slice's far edge overlap their neighbour; the overlap is
    counted by the earlier window only, so every pixel of a slice is counted exactly once. Index
    ``len(self) + j`` (padding of :class:`RankShardSampler`) returns item ``j`` with nothing counted.
    """

    def __init__(self, volumes: Sequence[LabelledVolume], frames: int, norms: Sequence[float], tile: int | None = None):
        self.volumes, self.frames, self.norms, self.tile = list(volumes), int(frames), norms, tile
        self.items: list[tuple[int, int, int, int, int, int]] = []  # vol, z, y0, x0, h, w
        self.counted: list[tuple[int, int, int, int]] = []  # y0, x0, y1, x1 inside the window
        for vi, v in enumerate(self.volumes):
            _, h, w = v.image.shape
            for z in v.slices:
                if tile is None or (h <= tile and w <= tile):
                    self.items.append((vi, int(z), 0, 0, h, w))
                    self.counted.append((0, 0, h, w))
                else:
                    th, tw = min(tile, h), min(tile, w)
                    for y0, cy in _owned(h, tile):
                        for x0, cx in _owned(w, tile):
                            self.items.append((vi, int(z), y0, x0, th, tw))
                            self.counted.append((cy, cx, th, tw))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        n = len(self.items)
        pad = index >= n
        vi, z, y0, x0, h, w = self.items[index - n if pad else index]
        v = self.volumes[vi]
        zs = frame_indices(z, v.image.shape[0], self.frames)
        img = v.image[zs, y0:y0 + h, x0:x0 + w]
        lab = v.label[z, y0:y0 + h, x0:x0 + w]
        x = normalise(np.ascontiguousarray(img), self.norms)
        counted = torch.zeros(4, dtype=torch.int64) if pad else torch.tensor(self.counted[index], dtype=torch.int64)
        return torch.from_numpy(x), torch.from_numpy(lab.astype(np.int64)), index, counted


def _starts(size: int, tile: int) -> list[int]:
    """Window starts covering ``size`` with windows of ``tile`` (last one flush with the end)."""
    n = math.ceil(size / tile)
    return sorted({min(i * tile, size - tile) for i in range(n)})


def _owned(size: int, tile: int) -> list[tuple[int, int]]:
    """``(start, first counted offset)`` of the windows of :func:`_starts`: a window counts from where
    the previous one ends, so the windows' counted parts split ``0 .. size`` without overlap."""
    starts = _starts(size, tile)
    return [(s, 0 if i == 0 else max(0, starts[i - 1] + tile - s)) for i, s in enumerate(starts)]
