"""`cemkit predict` end to end: models + volume -> probabilities, mask, labels, objects, overlays.

Output layout (``OUTPUT/``)::

    probabilities.zarr   (z, y, x) foreground probability, float16 or uint8 (x255); (c, z, y, x) for C > 2 classes
    mask.zarr            (z, y, x) uint8: 0/1 (binary, probability > threshold) or the arg-max class
    labels.zarr          (z, y, x) uint32 instances (3-D connected components, optional watershed split)
    objects.csv          id, voxels, centroid, bounding box, mean probability (+ nm columns with a voxel size)
    overlays/*.png       a few slices with the objects drawn on the image
    predict.json         settings, models, input, timings
    .progress.json       resume record (finished slabs)

With ``output_format=tif`` the three volumes are ``*.tif`` stacks, with ``png`` folders of PNGs
(labels stay a tif stack: PNG cannot hold uint32); the zarr working copies then live in
``OUTPUT/.work/`` until the run has finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cemkit.conf import stage_defaults
from cemkit.collective import together
from cemkit.devices import select_device
from cemkit.errors import ConfigError, InputError
from cemkit.io.atomic import atomic_write_json
from cemkit.io.pixel_size import pixel_size_of
from cemkit.io.volume import Volume
from cemkit.predict import devices
from cemkit.predict.ensemble import METHODS, normalised_weights
from cemkit.predict.models import Segmenter, load_segmenters, resolve_checkpoints
from cemkit.predict.orthoplane import VIEWS, AxisView, average_views
from cemkit.predict.postprocess import (
    band_planes,
    label_components,
    largest_split_window,
    object_table,
    split_objects,
    threshold_mask,
    watershed_bytes,
    write_table_csv,
)
from cemkit.predict.progress import ProgressLog
from cemkit.predict.rescale import model_scales
from cemkit.predict.saved import SavedMapCombiner, open_saved_predictions, saved_record
from cemkit.predict.streaming import SlabPredictor, TileSettings, run_slabs, slab_ranges
from cemkit.predict.tiling import BLENDING_MODES

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("zarr", "tif", "png")
PROB_DTYPES = ("float16", "uint8", "float32")
PROGRESS_GLOB = ".progress*.json"  # ".progress.json" (one process) or ".progress.rank{r}.json"


@dataclass
class PredictSettings:
    """Every knob of a prediction: the keys of ``conf/predict.yaml`` besides input/output/checkpoint.

    The YAML is the one place their defaults are written: :meth:`from_config` reads every key of a
    composed config (no fallbacks), :meth:`defaults` gives the YAML's values with some changed.
    """

    tile_size: int
    overlap: float
    blending: str
    sigma_scale: float
    border: int
    batch_size: int
    slab_size: int
    tta: int
    ensemble: str
    weights: list[float] | None
    orthoplane: bool
    voxel_size: Any
    rescale: bool
    threshold: float
    prob_dtype: str
    output_format: str
    instances: bool
    watershed: bool
    watershed_h: float
    connectivity: int
    min_size: int
    overlays: int
    device: str
    amp: bool
    resume: bool
    progress: bool

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PredictSettings:
        """The settings of a composed ``predict`` config (every field must be there)."""
        missing = [f.name for f in fields(cls) if f.name not in cfg]
        if missing:
            raise ConfigError(f"predict: the config lacks {', '.join(missing)}")
        return cls(**{f.name: cfg[f.name] for f in fields(cls)})

    @classmethod
    def defaults(cls, **changes: Any) -> PredictSettings:
        """``conf/predict.yaml``'s settings with ``changes`` (for Python callers of :func:`run_prediction`)."""
        return replace(cls.from_config(stage_defaults("predict")), **changes)

    def check(self, n_models: int | None) -> None:
        """Raise :class:`ConfigError` naming every bad setting (weights only when ``n_models`` is known)."""
        problems = []
        if self.tile_size < 8:
            problems.append(f"tile_size={self.tile_size} (must be >= 8)")
        if not 0 <= self.overlap < 1:
            problems.append(f"overlap={self.overlap} (must be in [0, 1))")
        if self.blending not in BLENDING_MODES:
            problems.append(f"blending={self.blending!r} (one of {BLENDING_MODES})")
        if self.tta not in (0, 1, 2, 4, 8, 16):
            problems.append(f"tta={self.tta} (one of 0, 2, 4, 8, 16)")
        if self.ensemble not in METHODS:
            problems.append(f"ensemble={self.ensemble!r} (one of {METHODS})")
        if self.prob_dtype not in PROB_DTYPES:
            problems.append(f"prob_dtype={self.prob_dtype!r} (one of {PROB_DTYPES})")
        if self.output_format not in OUTPUT_FORMATS:
            problems.append(f"output_format={self.output_format!r} (one of {OUTPUT_FORMATS})")
        if self.batch_size < 1 or self.slab_size < 1:
            problems.append("batch_size and slab_size must be >= 1")
        if self.connectivity not in (1, 2, 3):
            problems.append(f"connectivity={self.connectivity} (1, 2 or 3)")
        if not isinstance(self.rescale, bool):
            problems.append(f"rescale={self.rescale!r} (true or false)")
        if problems:
            raise ConfigError("predict: bad settings: " + "; ".join(problems))
        if n_models is None:
            return
        try:
            normalised_weights(n_models, self.ensemble, self.weights)
        except ValueError as exc:
            raise ConfigError(f"predict: {exc}") from exc

    def tile_settings(self) -> TileSettings:
        return TileSettings(**{f.name: getattr(self, f.name) for f in fields(TileSettings)})


def quantize(prob: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities in [0, 1] as stored: float16/float32, or uint8 scaled by 255 (rounded)."""
    if dtype == "uint8":
        return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
    return prob.astype(dtype)


def output_channels(models: Sequence[Segmenter], device: torch.device) -> int:
    """Probability channels of the models (checked to agree) from a small probe forward pass."""
    channels = set()
    with torch.inference_mode():
        for m in models:
            x = torch.zeros(1, m.frames, 64, 64, device=device)
            channels.add(int(m.proba(x).shape[1]))
    if len(channels) != 1:
        raise InputError(f"the checkpoints predict different numbers of classes {sorted(channels)}; "
                         "an ensemble needs models of the same task")
    return channels.pop()


def _chunks(shape: tuple[int, ...], slab: int, channels: bool) -> tuple[int, ...]:
    core = (slab, min(512, shape[-2]), min(512, shape[-1]))
    return ((1,) if channels else ()) + core


def _check_watershed_memory(components: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    """Refuse ``watershed=true`` when the largest object's window would not fit in free memory."""
    obj, voxels = largest_split_window(components, shape)
    need = watershed_bytes((voxels,))
    import psutil

    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        raise ConfigError(f"watershed=true splits one object at a time, but object {obj} spans {voxels} voxels "
                          f"and needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB are free; use "
                          "watershed=false (connected components only)")


def _write_prob(store, z0: int, z1: int, chw: np.ndarray, dtype: str) -> None:
    q = quantize(chw, dtype)
    if store.ndim == 4:
        store[:, z0:z1] = q
    else:
        store[z0:z1] = q[0]


def _array_view(array, name: str = "array", voxel_size: Any = None):
    """A lazy (z, y, x) :class:`cemkit.io.Volume` over a zarr array, so writers stream it."""
    from cemkit.io import Volume

    class ZarrView(Volume):
        def _read(self, zs, ys, xs):
            return np.asarray(array[zs, ys, xs])

    return ZarrView(array.shape, array.dtype, voxel_size, name, name)


def _model_record(m: Segmenter, path: Path | None) -> dict:
    rec = m.describe()
    if path is not None:
        st = path.stat()
        rec.update(path=str(path.resolve()), bytes=st.st_size, mtime=int(st.st_mtime))
    return rec


@dataclass
class PredictionPlan:
    """What a prediction will do, decided before any output is written (:func:`plan_prediction`)."""

    input_path: str | Path
    input_key: str | None
    output: Path
    settings: PredictSettings
    info: devices.DistInfo
    device: torch.device
    volume: Any                     # the input Volume
    source: Any                     # its uint8 view, what the models read
    models: list[Segmenter] | None  # the models to run, or None ...
    saved: list | None              # ... the saved probability maps to combine
    members: list[dict] | None      # predict.json records of the saved maps
    record_models: list[dict]
    channels: int
    input_nm: float | None = None          # the input's yx pixel size (nm), None when unknown
    scales: list[float | None] | None = None  # each model's yx zoom of the input (None: fed as is)

    @property
    def multi(self) -> bool:
        return self.channels > 1

    @property
    def work(self) -> Path:
        """Where the zarr arrays are written (``output``, or ``output/.work`` for tif/png output)."""
        return self.output if self.settings.output_format == "zarr" else self.output / ".work"


def plan_prediction(input_path: str | Path, output: str | Path, checkpoint: Any = None, *,
                    models: Sequence[Segmenter] | None = None, settings: PredictSettings | None = None,
                    input_key: str | None = None, predictions: Sequence[str | Path] | None = None) -> PredictionPlan:
    """Check the settings, the checkpoint files and the input, then load the models (or the saved maps).

    The cheap checks come first, so that a bad setting or path fails before any model is loaded.
    """
    from cemkit.io import open_volume

    s = settings or PredictSettings.defaults()
    info = devices.dist_info()
    device = select_device(s.device, info.local_rank)
    devices.init_distributed(info, device)

    # every rank prepares; one that fails stops the others (an error naming it) instead of leaving them waiting
    with together("preparing the prediction"):
        s.check(None)
        if s.output_format == "png" and s.prob_dtype != "uint8":
            logger.info("output_format=png: probabilities are written as uint8 (x255)")
            s.prob_dtype = "uint8"
        if (predictions is None) == (checkpoint is None and models is None):
            raise ConfigError("predict needs checkpoint=... (models to run) or predictions=[...] (saved probability "
                              "maps to combine), exactly one of them")
        if predictions is not None:
            if s.orthoplane:
                raise ConfigError("predict: orthoplane=true predicts the xz and yz planes and needs checkpoint=..., "
                                  "not predictions=[...]")
            predictions = [predictions] if isinstance(predictions, (str, Path)) else list(predictions)
            s.check(len(predictions))
            ckpts = None
        else:
            ckpts = resolve_checkpoints(checkpoint) if models is None else None
            s.check(len(ckpts) if models is None else len(models))
        vol = open_volume(input_path, key=input_key)
        src = vol.as_uint8()
        input_nm = pixel_size_of(vol, s.voxel_size, "voxel_size")
        scales = None
        saved = members = None
        if predictions is not None:
            saved = open_saved_predictions(predictions, vol.shape)
            if s.tta:
                logger.info("tta=%d does not apply to saved predictions: they are combined as they are", s.tta)
            members = [saved_record(p) for p in saved]
            record_models = [m for member in members for m in member.get("models", [])]
            channels = saved[0].channels
        else:
            paths: list[Path | None]
            if models is None:
                models = load_segmenters(ckpts, device)
                paths = list(ckpts)
            else:
                models = list(models)
                for m in models:
                    m.module.to(device).eval()
                paths = [None] * len(models)
            record_models = [_model_record(m, p) for m, p in zip(models, paths)]
            channels = output_channels(models, device)
            scales = model_scales(input_nm, [m.pixel_size_nm for m in models], [m.name for m in models],
                                  s.rescale, "voxel_size=" if s.voxel_size is not None else "the file's metadata")
            _check_orthoplane_scales(s.orthoplane, scales)
        logger.info("input %s: shape %s, voxel size %s; %d %s, %d channel(s), device %s",
                    input_path, vol.shape, vol.voxel_size, len(members or record_models),
                    "saved prediction(s)" if predictions is not None else "model(s)", channels, device)
        return PredictionPlan(input_path, input_key, Path(output), s, info, device, vol, src,
                              None if saved is not None else models, saved, members, record_models, channels,
                              input_nm, scales)


def _check_orthoplane_scales(orthoplane: bool, scales: Sequence[float | None]) -> None:
    """Refuse ``orthoplane=true`` where a model needs the input rescaled: its xz and yz planes would need z
    resampled too, which predict never does."""
    if orthoplane and any(f is not None for f in scales):
        raise ConfigError("orthoplane=true with a model trained at another pixel size than the input's: the xz "
                          "and yz planes would need z resampled; use orthoplane=false, or rescale=false to feed "
                          "the input at its own pixel size")


def _input_id(input_path: Any) -> str:
    """The input as recorded for resuming: a file's resolved path, or an in-memory volume's path and name."""
    if isinstance(input_path, Volume):
        return f"{input_path.path}:{input_path.name}"
    return str(Path(input_path).resolve())


def open_outputs(plan: PredictionPlan) -> tuple[ProgressLog, dict[str, Any], dict[str, Any]]:
    """The resume record and the zarr arrays to write into: ``(log, arrays, view_stores)``.

    A run is resumed when the record matches the plan (input, models, the settings that change the
    maps); otherwise the arrays are created afresh. Rank 0 creates them, the other ranks reopen them.
    """
    from cemkit.io import create_zarr

    s, info, vol = plan.settings, plan.info, plan.volume
    depth, height, width = vol.shape
    signature = {
        "input": _input_id(plan.input_path), "input_key": plan.input_key, "shape": list(vol.shape),
        "models": plan.record_models, "predictions": plan.members,
        # post-processing always reruns, so its settings do not invalidate finished slabs
        "settings": {k: v for k, v in asdict(s).items()
                     if k not in ("device", "amp", "resume", "progress", "batch_size", "instances", "watershed",
                                  "watershed_h", "connectivity", "min_size", "overlays")},
    }
    progress_name = ".progress.json" if info.world == 1 else f".progress.rank{info.rank}.json"
    # the records of every rank of the interrupted run, whatever its number of processes: finished
    # slabs are skipped whichever rank wrote them, so a resume may use another number of processes
    others = sorted(p for p in plan.output.glob(PROGRESS_GLOB) if p.name != progress_name)
    log = ProgressLog(plan.output / progress_name, signature, resume=s.resume, others=others, world=info.world)
    if log.resumed:
        logger.info("resuming: %d unit(s) already finished (%s)", len(log.done), log.path)
        if log.worlds - {info.world}:
            logger.info("the interrupted run had %s process(es), this one has %d: the slabs it finished are kept, "
                        "the others are shared out again", "/".join(map(str, sorted(log.worlds))), info.world)
    # one decision for all ranks: a run is resumed when any rank had finished work. (Decided per rank,
    # rank 0 with nothing finished would wipe the arrays while another rank skipped its written slabs.)
    device = plan.device
    fresh = not devices.any_rank(log.resumed, device if device.type == "cuda" else "cpu")
    work, vs, multi = plan.work, vol.voxel_size, plan.multi

    def make(path: Path, shape, dtype, chunk_channels: bool = False):
        return create_zarr(path, shape, dtype, _chunks(shape, s.slab_size, chunk_channels), voxel_size=vs,
                           overwrite=fresh and info.is_main)

    prob_shape = ((plan.channels,) if multi else ()) + (depth, height, width)
    arrays: dict[str, Any] = {}
    view_stores: dict[str, Any] = {}
    for step in (0, 1):  # rank 0 creates the arrays, the others open them after it
        with together("creating the output arrays" if step == 0 else "opening the output arrays"):
            if step == 0 and info.is_main:
                if fresh:  # records of earlier runs (other settings, other process counts) no longer hold
                    for p in others:
                        p.unlink(missing_ok=True)
                    log.reset()
                plan.output.mkdir(parents=True, exist_ok=True)
            if (step == 0) == info.is_main:
                arrays["prob"] = make(work / "probabilities.zarr", prob_shape, s.prob_dtype, multi)
                arrays["mask"] = make(work / "mask.zarr", (depth, height, width), "uint8")
                if s.orthoplane:
                    for name, order in VIEWS.items():
                        shape = ((plan.channels,) if multi else ()) + tuple(vol.shape[a] for a in order)
                        view_stores[name] = make(work / ".views" / f"{name}.zarr", shape, "float32", multi)
    return log, arrays, view_stores


def predict_volume(plan: PredictionPlan, log: ProgressLog, arrays: dict[str, Any],
                   view_stores: dict[str, Any], monitor: Any = None) -> dict[str, Any]:
    """Predict (or combine) every slab this rank owns into ``arrays``; returns the passes' statistics.

    With ``orthoplane`` the xy, xz and yz passes go to ``view_stores`` first and are then averaged.
    ``monitor``: see :func:`cemkit.predict.streaming.run_slabs`.
    """
    s, info = plan.settings, plan.info
    src = plan.source
    if plan.saved is not None:
        predictor = SavedMapCombiner(plan.saved, s.ensemble, s.weights, s.threshold)
    else:
        predictor = SlabPredictor(plan.models, s.tile_settings(), plan.device, amp=s.amp, ensemble=s.ensemble,
                                  weights=s.weights, threshold=s.threshold, scales=plan.scales)
    stats: dict[str, Any] = {}

    def write_final(z0: int, z1: int, chw: np.ndarray) -> None:
        _write_prob(arrays["prob"], z0, z1, chw, s.prob_dtype)
        arrays["mask"][z0:z1] = threshold_mask(chw, s.threshold)

    with together("predicting its slabs"):
        if not s.orthoplane:
            stats["xy"] = run_slabs(
                predictor, src, lambda z0, z1, p: write_final(z0, z1, p.transpose(1, 0, 2, 3)), s.slab_size,
                skip=log.finished("xy"), on_done=lambda i: log.mark(f"xy:{i}"), rank=info.rank,
                world=info.world, progress=s.progress, desc="predict", monitor=monitor)
        else:
            for name, order in VIEWS.items():
                store = view_stores[name]

                def sink(a: int, b: int, p: np.ndarray, store=store) -> None:
                    if store.ndim == 4:
                        store[:, a:b] = p.transpose(1, 0, 2, 3)
                    else:
                        store[a:b] = p[:, 0]

                stats[name] = run_slabs(predictor, AxisView(src, order), sink, s.slab_size,
                                        skip=log.finished(name), on_done=lambda i, n=name: log.mark(f"{n}:{i}"),
                                        rank=info.rank, world=info.world, progress=s.progress,
                                        desc=f"predict {name}", monitor=monitor)
    if s.orthoplane:
        with together("averaging the views"):  # after every rank's views are written
            for i, (z0, z1) in enumerate(slab_ranges(plan.volume.shape[0], s.slab_size)):
                if i % info.world == info.rank and not log.is_done(f"avg:{i}"):
                    write_final(z0, z1, average_views(view_stores, z0, z1, plan.multi))
                    log.mark(f"avg:{i}")
    return stats


def post_process(plan: PredictionPlan, arrays: dict[str, Any]) -> tuple[int | None, dict[str, str]]:
    """Instances (connected components, optional watershed split), the object table and the overlays.

    Adds ``arrays["labels"]``; returns the number of objects (``None`` without ``instances``) and the
    paths written so far.
    """
    from cemkit.io import create_zarr

    s, output, vs = plan.settings, plan.output, plan.volume.voxel_size
    shape = tuple(plan.volume.shape)
    outputs: dict[str, str] = {}
    n_objects = None
    if s.instances:
        arrays["labels"] = create_zarr(plan.work / "labels.zarr", shape, "uint32",
                                       _chunks(shape, s.slab_size, False), voxel_size=vs, overwrite=True)
        band = band_planes(shape, s.slab_size)  # planes per read in the post-processing passes (bounds memory)
        n_objects = label_components(arrays["mask"], arrays["labels"], slab_size=band,
                                     connectivity=s.connectivity, min_size=s.min_size)
        if s.watershed:  # each component split on its own: memory for the largest object, not the volume
            components = object_table(arrays["labels"], slab_size=band, count=n_objects)
            _check_watershed_memory(components, shape)
            n_objects = split_objects(arrays["labels"], components, vs, h=s.watershed_h, connectivity=s.connectivity,
                                      min_size=s.min_size, slab_size=band)
        table = object_table(arrays["labels"], slab_size=band,
                             probabilities=None if plan.multi else arrays["prob"],
                             prob_scale=1 / 255 if s.prob_dtype == "uint8" else 1.0, count=n_objects)
        outputs["objects"] = str(write_table_csv(output / "objects.csv", table, vs))
        logger.info("%d objects", n_objects)
    if s.overlays > 0:
        from cemkit.predict.overlays import write_overlays

        shown = arrays.get("labels", arrays["mask"])
        overlay_dir = output / "overlays"
        if overlay_dir.exists():
            shutil.rmtree(overlay_dir)
        write_overlays(plan.source, shown, overlay_dir, s.overlays)
        outputs["overlays"] = str(overlay_dir)
    return n_objects, outputs


def write_outputs(plan: PredictionPlan, arrays: dict[str, Any], log: ProgressLog) -> dict[str, str]:
    """The volumes in ``output_format``: the zarr arrays themselves, or tif stacks / png folders written
    from them (then the working zarrs and the resume record are removed). Returns their paths."""
    from cemkit.io import write_png_folder, write_tif_stack

    s, output, work, vs = plan.settings, plan.output, plan.work, plan.volume.voxel_size
    outputs: dict[str, str] = {}
    names = {"prob": "probabilities", "mask": "mask", "labels": "labels"}
    for key, name in names.items():
        if key not in arrays:
            continue
        if s.output_format == "zarr":
            outputs[name] = str(work / f"{name}.zarr")
            continue
        arr = arrays[key]
        if arr.ndim == 4:
            logger.info("%d-class probabilities stay in zarr: %s", plan.channels, work / f"{name}.zarr")
            dest = output / f"{name}.zarr"
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(work / f"{name}.zarr", dest)
            outputs[name] = str(dest)
            continue
        view = _array_view(arr, name=name, voxel_size=vs)
        if s.output_format == "tif" or key == "labels":
            outputs[name] = str(write_tif_stack(output / f"{name}.tif", view, voxel_size=vs))
        else:
            outputs[name] = str(write_png_folder(output / name, view))
    if s.output_format != "zarr":  # the working zarrs are gone: a rerun starts afresh
        shutil.rmtree(work, ignore_errors=True)
        log.path.unlink(missing_ok=True)
    if s.orthoplane and s.output_format == "zarr":
        shutil.rmtree(work / ".views", ignore_errors=True)
    return outputs


def run_prediction(input_path: str | Path, output: str | Path, checkpoint: Any = None, *,
                   models: Sequence[Segmenter] | None = None, settings: PredictSettings | None = None,
                   input_key: str | None = None, predictions: Sequence[str | Path] | None = None,
                   monitor: Any = None) -> dict:
    """Predict a volume and write the outputs listed in the module docstring.

    Plan (:func:`plan_prediction`), open the outputs (:func:`open_outputs`), run
    (:func:`predict_volume`), then on rank 0 post-process (:func:`post_process`) and write
    (:func:`write_outputs`) with ``predict.json`` last.

    Parameters
    ----------
    input_path : str or Path
        Anything :func:`cemkit.io.open_volume` opens (tif, png folder, zarr, h5, mrc, npy, ...).
    output : str or Path
        Output folder.
    checkpoint : str or list, optional
        Checkpoint spec(s) (see :func:`cemkit.predict.models.resolve_checkpoints`).
    models : sequence of Segmenter, optional
        Already-built models (instead of ``checkpoint``; used by tests and benchmarks).
    settings : PredictSettings, optional
        Default: :meth:`PredictSettings.defaults` (``conf/predict.yaml``).
    input_key : str, optional
        Dataset inside an HDF5/zarr container.
    predictions : sequence of str or Path, optional
        Saved probability maps (``cemkit predict`` output folders or probability volumes of the
        input's shape) to combine with ``settings.ensemble`` instead of running models
        (:mod:`cemkit.predict.saved`); tiling and TTA settings do not apply.
    monitor : callable, optional
        ``monitor(pass_name, voxels_done, voxels_total)`` after each slab (a GUI's progress bar); an
        exception it raises stops the run between two slabs.

    Returns
    -------
    dict
        The ``predict.json`` record.
    """
    t_start = time.perf_counter()
    plan = plan_prediction(input_path, output, checkpoint, models=models, settings=settings,
                           input_key=input_key, predictions=predictions)
    s, info, vol = plan.settings, plan.info, plan.volume
    log, arrays, view_stores = open_outputs(plan)
    t0 = time.perf_counter()
    stats = predict_volume(plan, log, arrays, view_stores, monitor)
    predict_s = time.perf_counter() - t0  # every slab of every rank is written (predict_volume's meetings)
    devices.shutdown_distributed()

    vs = vol.voxel_size
    depth, height, width = vol.shape
    record = {
        "input": {"path": str(vol.path if isinstance(input_path, Volume) else input_path), "key": input_key,
                  "shape": list(vol.shape), "voxel_size": list(vs) if vs else None},
        "models": plan.record_models, "predictions": plan.members, "settings": asdict(s), "device": str(plan.device),
        "world": info.world, "channels": plan.channels, "resumed": log.resumed,
        "pixel_size": {"input_nm": plan.input_nm, "rescale": s.rescale, "scales": plan.scales},
        "timings": {"predict_s": round(predict_s, 3),
                    "voxels_per_s": round(depth * height * width * (3 if s.orthoplane else 1) / predict_s, 1)
                    if predict_s > 0 and not log.resumed else None,
                    "passes": stats},
    }
    if not info.is_main:
        return record

    t1 = time.perf_counter()
    n_objects, outputs = post_process(plan, arrays)
    outputs.update(write_outputs(plan, arrays, log))
    record["timings"]["postprocess_s"] = round(time.perf_counter() - t1, 3)
    record["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    record["objects"] = n_objects
    record["outputs"] = outputs
    atomic_write_json(plan.output / "predict.json", record, indent=2, default=str)
    return record
