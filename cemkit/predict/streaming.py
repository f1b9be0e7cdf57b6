"""Slab-by-slab inference: read a z-slab plus its frame halo, run all tiles, hand finished slabs on.

Memory is bounded by the slab (``slab_size`` planes plus the z halo, reflect-padded in y/x), the
per-slab accumulators and one tile batch -- never by the volume, which is only ever indexed
``source[z0:z1]`` (a lazy :class:`cemkit.io.Volume`, a zarr array or a numpy array all work).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cemkit.models.frames import frame_indices as training_frame_indices
from cemkit.models.frames import min_slices
from cemkit.predict.ensemble import RunningEnsemble
from cemkit.predict.models import Segmenter
from cemkit.predict.rescale import to_input_grid, to_model_grid
from cemkit.predict.tiling import (
    PlaneGeometry,
    blending_weights,
    plane_geometry,
    reflect_pad,
    weight_sum,
)
from cemkit.predict.tta import select_variants, tta_apply

logger = logging.getLogger(__name__)


def reflect_index(i: int | np.ndarray, n: int) -> np.ndarray:
    """Map indices outside ``[0, n)`` back inside by mirroring without repeating the end plane.

    ``-1 -> 1``, ``-2 -> 2``, ``n -> n - 2`` (CDeep3M v1 z padding ``3, 2 | stack | end-1, end-2``);
    periodic for indices far outside. ``n == 1`` maps everything to 0.
    """
    i = np.asarray(i, dtype=np.int64)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def frame_indices(z: int, depth: int, frames: int) -> np.ndarray:
    """The ``frames`` z indices a k-frame model reads for output plane ``z`` of a ``depth``-plane stack.

    Centred on ``z`` (``z - frames // 2 .. z + frames // 2``) and mirror-padded at the stack ends,
    exactly as in training (:func:`cemkit.models.frames.frame_indices`); stacks shorter than
    ``frames // 2 + 1`` planes (e.g. a single image for a 5fm model) are mirrored periodically.
    """
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"frames must be odd and >= 1, got {frames}")
    if depth >= min_slices(frames):
        return training_frame_indices(z, depth, frames)
    half = frames // 2
    return reflect_index(np.arange(z - half, z + half + 1), depth)


def slab_ranges(depth: int, slab_size: int) -> list[tuple[int, int]]:
    """``[z0, z1)`` of consecutive slabs of ``slab_size`` planes (the last one may be shorter)."""
    if slab_size < 1:
        raise ValueError(f"slab_size must be >= 1, got {slab_size}")
    return [(z0, min(z0 + slab_size, depth)) for z0 in range(0, depth, slab_size)]


@dataclass(frozen=True)
class TileSettings:
    """How planes are tiled and each tile is predicted (the keys of ``conf/predict.yaml`` of the same
    names; :meth:`cemkit.predict.runner.PredictSettings.tile_settings` makes one)."""

    tile_size: int
    overlap: float
    blending: str
    sigma_scale: float
    border: int
    batch_size: int
    tta: int


def autocast_context(device: torch.device, amp: bool):
    """Mixed precision on CUDA when ``amp`` (float16 autocast); a no-op context elsewhere."""
    enabled = bool(amp) and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


class SlabPredictor:
    """Predicts ``(S, C, H, W)`` float32 probabilities for planes ``z0:z1`` of a ``(Z, H, W)`` uint8 source.

    Every model sees its own k-frame context (mirror-padded at the stack ends) and its own intensity
    normalisation; tiles of all planes of the slab are batched together through the model, each batch
    through all TTA variants, and blended into a per-slab accumulator that is normalised by the summed
    weights. Models are combined with :class:`~cemkit.predict.ensemble.RunningEnsemble`.

    ``scales`` (one per model, None = as is) zoom the slab's planes in yx to a model's pixel size before it
    runs; its probabilities are resampled back onto the input's grid (:mod:`cemkit.predict.rescale`).
    """

    def __init__(self, models: Sequence[Segmenter], settings: TileSettings, device: torch.device | str = "cpu",
                 *, amp: bool, ensemble: str, threshold: float, weights: Sequence[float] | None = None,
                 scales: Sequence[float | None] | None = None):
        if not models:
            raise ValueError("SlabPredictor needs at least one model")
        self.models = list(models)
        self.scales = [None] * len(self.models) if scales is None else list(scales)
        if len(self.scales) != len(self.models):
            raise ValueError(f"SlabPredictor: {len(self.scales)} scales for {len(self.models)} models")
        self.settings = settings
        self.device = torch.device(device)
        self.amp = amp
        self.ensemble = ensemble
        self.weights = weights
        self.threshold = threshold
        self.weights_map = blending_weights(settings.tile_size, settings.blending, settings.sigma_scale)
        self.variants = {m.frames: select_variants(settings.tta, m.frames) for m in self.models}
        self._geometry: dict[tuple[int, int], tuple[PlaneGeometry, np.ndarray]] = {}
        self.max_frames = max(m.frames for m in self.models)

    def geometry(self, height: int, width: int) -> tuple[PlaneGeometry, np.ndarray]:
        key = (height, width)
        if key not in self._geometry:
            s = self.settings
            g = plane_geometry(height, width, s.tile_size, s.overlap, s.border)
            self._geometry[key] = (g, weight_sum(g, self.weights_map))
        return self._geometry[key]

    def _model_fn(self, model: Segmenter) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(x: torch.Tensor) -> torch.Tensor:
            with autocast_context(self.device, self.amp):
                return model.proba(x)
        return fn

    @torch.inference_mode()
    def predict_slab(self, source, z0: int, z1: int) -> np.ndarray:
        depth, height, width = (int(v) for v in source.shape[:3])
        t = self.settings.tile_size
        # one contiguous read covers the z halo of every plane of the slab (mirror-padded indices)
        needed = np.concatenate([frame_indices(z, depth, self.max_frames) for z in range(z0, z1)])
        lo, hi = int(needed.min()), int(needed.max()) + 1
        block = np.asarray(source[lo:hi])
        if block.dtype != np.uint8:
            raise TypeError(f"predict expects uint8 planes, got {block.dtype}")
        ens = RunningEnsemble(len(self.models), self.ensemble, self.weights, self.threshold, class_axis=1)
        bs = max(1, int(self.settings.batch_size))
        grids: dict[float | None, tuple] = {}  # the slab on a model grid: (padded planes, geometry, weight sum)
        last = {factor: i for i, factor in enumerate(self.scales)}  # kept until the last model at that scale
        for i, (model, factor) in enumerate(zip(self.models, self.scales)):
            if factor not in grids:
                planes = to_model_grid(block, factor)
                geom, wsum = self.geometry(*planes.shape[-2:])
                grids[factor] = (reflect_pad(planes, geom), geom, wsum)
                del planes
            padded, geom, wsum = grids.pop(factor) if last[factor] == i else grids[factor]
            positions = [(j, y, x) for j in range(z1 - z0) for (y, x) in geom.positions]
            ctx = np.stack([frame_indices(z, depth, model.frames) - lo for z in range(z0, z1)])
            mean, std = (float(v) for v in model.norms)
            scale, shift = 1.0 / (255.0 * std), mean / std   # (x / 255 - mean) / std
            fn = self._model_fn(model)
            variants = self.variants[model.frames]
            acc = None
            for b in range(0, len(positions), bs):
                batch = positions[b:b + bs]
                tiles = np.stack([padded[ctx[j], y:y + t, x:x + t] for j, y, x in batch])
                x_in = torch.from_numpy(tiles).to(self.device, non_blocking=True).float()
                x_in.mul_(scale).sub_(shift)
                out = tta_apply(fn, x_in, variants).float().cpu().numpy()
                if acc is None:
                    acc = np.zeros((z1 - z0, out.shape[1], *geom.padded_shape), dtype=np.float32)
                np.multiply(out, self.weights_map, out=out)
                for (j, y, x), pred in zip(batch, out):
                    acc[j, :, y:y + t, x:x + t] += pred
            acc /= wsum
            ens.add(geom.crop(acc) if factor is None else to_input_grid(geom.crop(acc), height, width))
            del acc
        return ens.result()


SlabSink = Callable[[int, int, np.ndarray], None]


def run_slabs(predictor: SlabPredictor, source, sink: SlabSink, slab_size: int,
              skip: Iterable[int] = (), on_done: Callable[[int], None] | None = None,
              rank: int = 0, world: int = 1, progress: bool = True, desc: str = "predict",
              monitor: Callable[[str, int, int], None] | None = None) -> dict:
    """Predict every slab this rank owns that is not in ``skip`` and pass it to ``sink(z0, z1, probs)``.

    Slab ``i`` belongs to rank ``i % world``. ``on_done(i)`` is called after ``sink`` returns (the
    place to record progress for resuming). ``monitor(desc, done, total)`` is called with the voxels
    done so far before the first slab and after each one (a GUI's progress bar; it may raise to stop the
    run between two slabs). Returns timing statistics.
    """
    from tqdm.auto import tqdm

    depth, height, width = (int(v) for v in source.shape[:3])
    skip = set(skip)
    todo = [(i, r) for i, r in enumerate(slab_ranges(depth, slab_size)) if i % world == rank and i not in skip]
    voxels = sum((z1 - z0) for _, (z0, z1) in todo) * height * width
    start = time.perf_counter()
    done = 0
    if monitor is not None:
        monitor(desc, done, voxels)
    with tqdm(total=voxels, unit="vox", unit_scale=True, desc=desc, disable=not progress,
              leave=False) as bar:
        for i, (z0, z1) in todo:
            probs = predictor.predict_slab(source, z0, z1)
            sink(z0, z1, probs)
            if on_done is not None:
                on_done(i)
            bar.update((z1 - z0) * height * width)
            done += (z1 - z0) * height * width
            if monitor is not None:
                monitor(desc, done, voxels)
    seconds = time.perf_counter() - start
    return {"slabs": len(todo), "voxels": voxels, "seconds": seconds,
            "voxels_per_s": voxels / seconds if seconds > 0 else None}
