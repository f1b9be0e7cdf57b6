"""Labelled training sources: ``data.sources`` (several volumes, each with a pixel size and a sampling weight)
or the one-source shorthand ``data.images`` / ``data.labels``, and the one pixel size a run trains at.

Pixel sizes (yx, nm) come from a source's ``voxel_size`` or, when absent, its file metadata
(:func:`cemkit.io.pixel_size.pixel_size_of`). With ``data.sources`` every source is resampled in yx to
``data.voxel_size`` (default: the first source's size): images bilinear with antialiasing, labels
nearest neighbour (:func:`cemkit.io.pixel_size.resize_yx`). With the shorthand, ``data.voxel_size`` is
the pixel size of ``data.images`` (it overrides the metadata) and nothing is resampled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cemkit.errors import ConfigError
from cemkit.finetune.data import LabelledVolume, open_input
from cemkit.io.pixel_size import pixel_size_of, resize_yx, scaled_shape

log = logging.getLogger(__name__)

#: the keys of one ``data.sources`` entry and their values when left out (images and labels are required)
SOURCE_DEFAULTS: dict[str, Any] = {"image_key": None, "label_key": None, "label_slices": None, "voxel_size": None,
                                   "weight": 1.0}
SHORTHAND_KEYS = ("images", "labels", "label_slices")  # with data.sources, data.image_key / label_key are
# the keys of data.val_images / data.val_labels only


@dataclass(frozen=True)
class Source:
    """One labelled volume to train on, as configured."""

    images: str
    labels: str
    image_key: str | None
    label_key: str | None
    label_slices: list[int] | None
    voxel_size: Any  # the user's pixel size (nm) or None: then the file's metadata
    weight: float  # relative sampling weight
    where: str  # config key, named in errors: "data" or "data.sources[i]"


def configured_sources(data_cfg: DictConfig) -> list[Source]:
    """``data.sources`` as :class:`Source` entries, or the one source of ``data.images`` / ``data.labels``.

    Raises
    ------
    ConfigError
        Neither or both ways given, an entry without images or labels, an unknown key, a bad weight.
    """
    sources = data_cfg.sources
    shorthand = {k: data_cfg[k] for k in SHORTHAND_KEYS}
    image_key, label_key = data_cfg.image_key, data_cfg.label_key
    if sources is not None and len(sources) > 0:
        given = [f"data.{k}" for k, v in shorthand.items() if v is not None]
        if given:
            raise ConfigError(f"data.sources is set: leave {', '.join(given)} unset (give them in each entry)")
        if not isinstance(sources, (ListConfig, list)):
            raise ConfigError(f"data.sources must be a list of entries with images and labels, got {sources!r}")
        return [_entry(e, f"data.sources[{i}]") for i, e in enumerate(sources)]
    if sources is not None and not isinstance(sources, (ListConfig, list)):
        raise ConfigError(f"data.sources must be a list of entries with images and labels, got {sources!r}")
    if not shorthand["images"] or not shorthand["labels"]:
        raise ConfigError("give the labelled training data: data.images=PATH data.labels=PATH, or "
                          "data.sources=[{images: PATH, labels: PATH}, ...]")
    return [Source(str(shorthand["images"]), str(shorthand["labels"]), image_key, label_key, _slices(shorthand["label_slices"], "data.label_slices"), None, 1.0,
                   "data")]


def _entry(entry: Any, where: str) -> Source:
    if not isinstance(entry, (DictConfig, Mapping)):
        raise ConfigError(f"{where} must be a mapping with images and labels, got {entry!r}")
    plain = OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else dict(entry)
    unknown = sorted(set(plain) - set(SOURCE_DEFAULTS) - {"images", "labels"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; an entry has images, labels and optionally "
                          f"{', '.join(SOURCE_DEFAULTS)}")
    for key in ("images", "labels"):
        if not plain.get(key):
            raise ConfigError(f"{where}.{key} is missing: every entry needs images and labels")
    values = {**SOURCE_DEFAULTS, **plain}
    try:
        weight = float(values["weight"])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.weight must be a number > 0, got {values['weight']!r}") from None
    if not weight > 0 or weight == float("inf"):
        raise ConfigError(f"{where}.weight must be a number > 0, got {values['weight']!r}")
    return Source(str(values["images"]), str(values["labels"]), values["image_key"], values["label_key"],
                  _slices(values["label_slices"], f"{where}.label_slices"), values["voxel_size"], weight, where)


def _slices(value: Any, key: str) -> list[int] | None:
    """A ``label_slices`` value as a list of ints (None: every slice, or paired by file name)."""
    if value is None:
        return None
    try:
        return [int(z) for z in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be null or a list of image slice numbers, e.g. [0, 5, 9], got {value!r}") \
            from None


def source_pixel_sizes(sources: list[Source], voxel_size: Any) -> tuple[list[float | None], float | None]:
    """``(pixel size of each source, the size the run trains at)`` in nm; only headers are read.

    One source (the shorthand): ``voxel_size`` (``data.voxel_size``) is its pixel size, else its metadata.
    Several (``data.sources``): each entry's ``voxel_size`` or metadata; the run trains at ``voxel_size``,
    else at the first source's size. Sizes that are all unknown train as they are (no pixel size).

    Raises
    ------
    ConfigError
        A pixel size that is not plausible (zero, negative, over 1 µm, under 0.1 nm), or one that is
        missing where sources must be brought to one size.
    InputError
        Metadata with an implausible pixel size; a missing image file or folder.
    """
    shorthand = sources[0].where == "data"
    sizes: list[float | None] = []
    for s in sources:
        volume = open_input(s.images, s.image_key, f"{s.where}.images")
        key = "data.voxel_size" if shorthand else f"{s.where}.voxel_size"
        sizes.append(pixel_size_of(volume, voxel_size if shorthand else s.voxel_size, key))
    if shorthand:
        return sizes, sizes[0]
    target = pixel_size_of(None, voxel_size, "data.voxel_size")
    unknown = [s for s, nm in zip(sources, sizes) if nm is None]
    if unknown and (target is not None or len(unknown) < len(sources)):
        s = unknown[0]
        raise ConfigError(f"{s.where}.voxel_size is needed: {s.images} has no pixel size in its metadata, and the "
                          f"sources are brought to one pixel size (give every source its voxel_size in nm)")
    if unknown:
        log.warning("no source has a pixel size (metadata or voxel_size): they are used as they are, and the model "
                    "records no pixel size")
        return sizes, None
    return sizes, sizes[0] if target is None else target


def rescale(vol: LabelledVolume, factor: float | None) -> LabelledVolume:
    """``vol`` zoomed by ``factor`` in yx (images bilinear with antialiasing, labels nearest neighbour, so
    class and unlabelled values stay exact); unchanged for ``None``."""
    if factor is None:
        return vol
    out = scaled_shape(vol.image.shape[1:], factor)
    return replace(vol, image=resize_yx(vol.image, out), label=resize_yx(vol.label, out, labels=True))

