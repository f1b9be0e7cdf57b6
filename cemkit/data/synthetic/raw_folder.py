"""`write_raw_folder`: a raw-data folder of several synthetic "labs" for curation tests and demos.

Layout written under ``root`` (the top-level entries are the source datasets)::

    root/
      lab_a_png/            2D SBEM-like images, one png each (style 0, 40 x 6 x 6 nm),
                            every distinct image from its own seed; plus injected items
      lab_b_stack.tif       anisotropic multi-page tif (style 2, 50 x 10 x 10 nm, ImageJ
                            voxel size), consecutive sections of one volume; plus injected pages
      lab_c_fib.mrc         near-isotropic FIB-SEM volume (style 1, 8 x 8 x 8 nm in the header,
                            uint16 counts = grey * 100 + 1000),
                            so curation also cuts xz / yz planes; the last slices are blank
                            (milling not started yet) -- injected, recorded
      lab_d.h5              inverted-contrast FIB-SEM stack in dataset ``"raw"`` (style 3,
                            20 x 5 x 5 nm in the ``resolution`` attribute); plus injected slices
      lab_e_tem_png/        (5th source) heavily stained 2D images (style 4, 4 nm pixels)
      lab_z_truncated.tif   only with ``corrupt=True``: a tif cut off inside its first page, so
                            its header opens but reading pixels fails (fault tests)

Injected items (all recorded in :class:`RawFolderInfo`, ``kind`` in :data:`INJECTED_KINDS`):

* ``exact_duplicate`` -- byte-identical copy of another image of the same source (a second png
  file with the same bytes; in stacks a repeated slice);
* ``near_duplicate`` -- the same image plus small noise (sigma 2 grey levels), or shifted by
  +3 / -3 grey levels, or translated by 1-2 px (``detail`` says which);
* ``blank`` -- uniform intensity;
* ``low_contrast`` -- almost uniform (grey level 120-140 with noise of sigma ~1.5);
* ``artefact`` -- reconstruction-artefact-like: black with saturated (255) stripes.

All other images / slices are genuine synthetic EM. Images of a png source come from
different seeds (pairwise dHash distances far above 12); slices of a stack are consecutive
sections of one volume, so neighbouring slices are correlated as in real data.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .volume import make_volume

logger = logging.getLogger(__name__)

#: kinds of injected items
INJECTED_KINDS = ("exact_duplicate", "near_duplicate", "blank", "low_contrast", "artefact")
#: the mrc source stores uint16 counts = grey level * gain + offset
_MRC_GAIN, _MRC_OFFSET = 100, 1000


@dataclass(frozen=True)
class InjectedItem:
    """One injected (non-distinct) image.

    Attributes
    ----------
    kind : str
        One of :data:`INJECTED_KINDS`.
    source : str
        Source name (top-level entry of the raw folder).
    path : str
        File, relative to the raw folder root (the png file, or the stack file).
    index : int
        z index in the source as :func:`cemkit.io.open_volume` reads it (for a png folder: the
        position of the file in natural order).
    original : int or None
        For duplicates: the z index of the image it copies.
    detail : str
        e.g. ``"noise sigma=2"``, ``"brightness +3"``, ``"shift dy=1 dx=2"``.
    """

    kind: str
    source: str
    path: str
    index: int
    original: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class SourceInfo:
    """One written source dataset.

    Attributes
    ----------
    name : str
        Top-level entry name (``lab_a_png``, ``lab_b_stack.tif``, ...).
    path : str
        Relative to the raw folder root.
    format : str
        ``png_folder``, ``tif``, ``mrc`` or ``h5``.
    shape : tuple of int
        (z, y, x) as read by ``open_volume``.
    voxel_size : tuple of float
        (z, y, x) nm stored in the file (png folders store none; this is the generator's).
    style : str
        Style name used.
    distinct : tuple of int
        z indices holding genuine, not-injected content.
    key : str or None
        Dataset key (h5).
    dtype : str
        Stored dtype (``uint8``; the mrc holds ``uint16`` detector counts).
    """

    name: str
    path: str
    format: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    style: str
    distinct: tuple[int, ...]
    key: str | None = None
    dtype: str = "uint8"


@dataclass
class RawFolderInfo:
    """What :func:`write_raw_folder` wrote and injected.

    Attributes
    ----------
    root : pathlib.Path
    sources : list of SourceInfo
    injected : list of InjectedItem
    corrupt : str or None
        Relative path of the deliberately truncated file (``corrupt=True``), else None.
    """

    root: Path
    sources: list[SourceInfo] = field(default_factory=list)
    injected: list[InjectedItem] = field(default_factory=list)
    corrupt: str | None = None

    def source(self, name: str) -> SourceInfo:
        """The :class:`SourceInfo` called ``name``."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def injected_in(self, source: str, kind: str | None = None) -> list[InjectedItem]:
        """Injected items of one source (optionally of one kind)."""
        return [i for i in self.injected if i.source == source and (kind is None or i.kind == kind)]


# --------------------------------------------------------------------------- fake images
def _blank(rng, shape):
    return np.full(shape, int(rng.integers(30, 226)), dtype=np.uint8)


def _low_contrast(rng, shape):
    level = rng.uniform(120, 140)
    return np.clip(np.rint(level + rng.normal(0, 1.5, size=shape)), 0, 255).astype(np.uint8)


def _artefact(rng, shape):
    """Black with a few saturated stripes (failed reconstruction / charging / scan error)."""
    img = np.zeros(shape, dtype=np.uint8)
    n = int(rng.integers(3, 7))
    if rng.random() < 0.5:
        rows = rng.choice(shape[0], size=n, replace=False)
        for r in rows:
            img[r : r + int(rng.integers(2, 12))] = 255
    else:
        cols = rng.choice(shape[1], size=n, replace=False)
        for c in cols:
            img[:, c : c + int(rng.integers(2, 12))] = 255
    return img


def _near_duplicate(rng, img, variant):
    if variant == "noise":
        out = img.astype(np.float32) + rng.normal(0, 2.0, size=img.shape)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), "noise sigma=2"
    if variant == "brightness":
        delta = int(rng.choice([-3, 3]))
        return np.clip(img.astype(np.int16) + delta, 0, 255).astype(np.uint8), f"brightness {delta:+d}"
    dy, dx = (int(v) for v in rng.integers(1, 3, size=2))
    out = np.roll(img, (dy, dx), axis=(0, 1))
    out[:dy] = out[dy : dy + 1]  # replicate the edge instead of wrapping
    out[:, :dx] = out[:, dx : dx + 1]
    return out, f"shift dy={dy} dx={dx}"


def _sub_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0])


def _inject(rng, slices, plan, source, rel, info):
    """Insert fake images into a list of 2D slices at random positions.

    ``plan`` is a list of kinds; duplicates copy a random genuine slice. Returns the new list
    and the indices of genuine slices; injected items are appended to ``info.injected``.
    """
    genuine = list(range(len(slices)))
    items = []  # (kind, image, original genuine position, detail)
    variants = ["noise", "brightness", "shift"]
    for k, kind in enumerate(plan):
        shape = slices[0].shape
        if kind == "exact_duplicate":
            orig = int(rng.integers(len(genuine)))
            items.append((kind, slices[orig].copy(), orig, ""))
        elif kind == "near_duplicate":
            orig = int(rng.integers(len(genuine)))
            img, detail = _near_duplicate(rng, slices[orig], variants[k % 3])
            items.append((kind, img, orig, detail))
        elif kind == "blank":
            items.append((kind, _blank(rng, shape), None, "uniform"))
        elif kind == "low_contrast":
            items.append((kind, _low_contrast(rng, shape), None, "almost uniform"))
        elif kind == "artefact":
            items.append((kind, _artefact(rng, shape), None, "black with saturated stripes"))
        else:
            raise ValueError(f"unknown injected kind {kind!r}")
    order = [("g", i) for i in range(len(slices))]
    for j in range(len(items)):
        orig = items[j][2]
        # a copy always comes after its original, as when a lab re-exports an image
        first = 1 if orig is None else order.index(("g", orig)) + 1
        order.insert(int(rng.integers(first, len(order) + 1)), ("i", j))
    out = []
    pos_of_genuine = {}
    for kind, j in order:
        if kind == "g":
            pos_of_genuine[j] = len(out)
            out.append(slices[j])
        else:
            out.append(items[j][1])
    for pos, (kind, j) in enumerate(order):
        if kind == "i":
            k, _, orig, detail = items[j]
            info.injected.append(
                InjectedItem(
                    kind=k,
                    source=source,
                    path=rel if not isinstance(rel, list) else rel[pos],
                    index=pos,
                    original=None if orig is None else pos_of_genuine[orig],
                    detail=detail,
                )
            )
    return out, tuple(sorted(pos_of_genuine.values()))


# --------------------------------------------------------------------------- writers
def _png_source(root, name, style, voxel_size, n_images, size, seed, plan, info):
    from cemkit.io import write_png_folder

    images = [
        make_volume((1, size, size), seed=_sub_seed(seed, 1, i), style=style, voxel_size=voxel_size).image[0]
        for i in range(n_images)
    ]
    rng = np.random.default_rng(_sub_seed(seed, 2))
    n_total = n_images + len(plan)
    digits = max(4, len(str(n_total - 1)))
    rels = [f"{name}/img_{i:0{digits}d}.png" for i in range(n_total)]
    slices, distinct = _inject(rng, images, plan, name, rels, info)
    stack = np.stack(slices)
    write_png_folder(root / name, stack, prefix="img_")
    # exact duplicates must be byte-identical files: copy the bytes of the original
    for item in info.injected_in(name, "exact_duplicate"):
        shutil.copyfile(root / rels[item.original], root / item.path)
    info.sources.append(
        SourceInfo(name, name, "png_folder", stack.shape, tuple(voxel_size), _style_name(style), distinct)
    )


def _volume_slices(shape, seed, style, voxel_size):
    sv = make_volume(shape, seed=seed, style=style, voxel_size=voxel_size)
    return list(sv.image)


def _style_name(style):
    from .styles import resolve_style

    return resolve_style(style).name


def write_raw_folder(
    root,
    n_sources: int = 4,
    seed: int = 0,
    *,
    size: int = 448,
    depth: int = 8,
    n_images: int = 6,
    fib_shape: tuple[int, int, int] | None = None,
    corrupt: bool = False,
) -> RawFolderInfo:
    """Write a raw-data folder of ``n_sources`` synthetic source datasets in different formats.

    See the module docstring for the layout and the injected items. Deterministic in ``seed``.

    Parameters
    ----------
    root : str or Path
        Folder to write into (created; existing source entries are replaced).
    n_sources : int
        1..5 sources, taken in the order lab_a_png, lab_b_stack.tif, lab_c_fib.mrc, lab_d.h5,
        lab_e_tem_png.
    seed : int
    size : int
        In-plane size (y = x) of png images, the tif and the h5 stack (448 gives 4 patches of
        224 px per image).
    depth : int
        Genuine slices of the tif and h5 stacks.
    n_images : int
        Genuine images of each png source.
    fib_shape : tuple of int, optional
        (z, y, x) of the near-isotropic mrc volume; default (224, 256, 256) so that xz / yz
        planes hold a 224 px patch.
    corrupt : bool
        Also write ``lab_z_truncated.tif``, a tif stack cut off inside its first page.

    Returns
    -------
    RawFolderInfo
    """
    _check_sizes(n_sources, size, depth, n_images)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    info = RawFolderInfo(root=root)
    fib_shape = tuple(fib_shape) if fib_shape is not None else (224, 256, 256)
    for k in range(int(n_sources)):
        _write_source(k, root, seed, info, size=size, depth=depth, n_images=n_images, fib_shape=fib_shape)
    if corrupt:
        info.corrupt = _truncated_tif(root, seed)
    logger.info("wrote %d sources and %d injected items under %s", len(info.sources), len(info.injected), root)
    return info


def _check_sizes(n_sources: int, size: int, depth: int, n_images: int) -> None:
    if not 1 <= int(n_sources) <= 5:
        raise ValueError(f"n_sources must be 1..5, got {n_sources}")
    if size < 32 or depth < 2 or n_images < 2:
        raise ValueError("size must be >= 32, depth >= 2 and n_images >= 2")


def _write_source(k: int, root: Path, seed: int, info: RawFolderInfo, *, size: int, depth: int,
                  n_images: int, fib_shape) -> None:
    """Write the ``k``-th source (0: lab_a_png ... 4: lab_e_tem_png) and record it in ``info``."""
    src_seed = _sub_seed(seed, 10 + k)
    rng = np.random.default_rng(_sub_seed(seed, 20 + k))
    if k == 0:
        all_kinds = ["exact_duplicate", "near_duplicate", "near_duplicate", "near_duplicate", "blank",
                     "low_contrast", "artefact"]
        _png_source(root, "lab_a_png", 0, (40.0, 6.0, 6.0), n_images, size, src_seed, all_kinds, info)
    elif k == 1:
        _tif_source(root, (depth, size, size), src_seed, rng, info)
    elif k == 2:
        _mrc_source(root, fib_shape, src_seed, rng, info)
    elif k == 3:
        _h5_source(root, (depth, size, size), src_seed, rng, info)
    else:
        _png_source(root, "lab_e_tem_png", 4, (30.0, 4.0, 4.0), n_images, size, src_seed,
                    ["exact_duplicate", "near_duplicate", "blank", "artefact"], info)


def _tif_source(root: Path, shape, seed: int, rng, info: RawFolderInfo) -> None:
    """``lab_b_stack.tif``: an anisotropic multi-page tif with injected pages."""
    from cemkit.io import write_tif_stack

    name, vs = "lab_b_stack.tif", (50.0, 10.0, 10.0)
    slices = _volume_slices(shape, seed, 2, vs)
    plan = ["exact_duplicate", "near_duplicate", "blank", "artefact"]
    slices, distinct = _inject(rng, slices, plan, name, name, info)
    stack = np.stack(slices)
    write_tif_stack(root / name, stack, voxel_size=vs)
    info.sources.append(SourceInfo(name, name, "tif", stack.shape, vs, _style_name(2), distinct))


def _mrc_source(root: Path, fib_shape, seed: int, rng, info: RawFolderInfo) -> None:
    """``lab_c_fib.mrc``: a near-isotropic uint16 FIB-SEM volume whose last slices are blank."""
    import mrcfile

    name, vs = "lab_c_fib.mrc", (8.0, 8.0, 8.0)
    # 16-bit detector counts, as FIB-SEM software writes them
    vol = make_volume(fib_shape, seed=seed, style=1, voxel_size=vs).image.astype(np.uint16)
    vol = vol * np.uint16(_MRC_GAIN) + np.uint16(_MRC_OFFSET)
    n_blank = max(1, fib_shape[0] // 32)
    vol[-n_blank:] = int(rng.integers(40, 200)) * _MRC_GAIN + _MRC_OFFSET  # milling not there yet
    for z in range(fib_shape[0] - n_blank, fib_shape[0]):
        info.injected.append(InjectedItem("blank", name, name, z, None, "uniform (end of stack)"))
    _write_mrc(root / name, vol, vs, mrcfile)
    distinct = tuple(range(fib_shape[0] - n_blank))
    info.sources.append(SourceInfo(name, name, "mrc", vol.shape, vs, _style_name(1), distinct, dtype="uint16"))


def _h5_source(root: Path, shape, seed: int, rng, info: RawFolderInfo) -> None:
    """``lab_d.h5``: an inverted-contrast stack in dataset ``raw`` with injected slices."""
    import h5py

    name, vs = "lab_d.h5", (20.0, 5.0, 5.0)
    slices = _volume_slices(shape, seed, 3, vs)
    plan = ["exact_duplicate", "near_duplicate", "low_contrast"]
    slices, distinct = _inject(rng, slices, plan, name, name, info)
    stack = np.stack(slices)
    _write_h5(root / name, stack, vs, h5py)
    info.sources.append(SourceInfo(name, name, "h5", stack.shape, vs, _style_name(3), distinct, key="raw"))


def _truncated_tif(root: Path, seed: int) -> str:
    """Write ``lab_z_truncated.tif``, a tif stack cut off inside its first page; its relative path."""
    from cemkit.io import write_tif_stack

    rel = "lab_z_truncated.tif"
    good = make_volume((4, 128, 128), seed=_sub_seed(seed, 99), style=0).image
    tmp = root / ".lab_z_full.tif"
    write_tif_stack(tmp, good, voxel_size=(40.0, 6.0, 6.0))
    data = tmp.read_bytes()
    tmp.unlink()
    (root / rel).write_bytes(data[: len(data) // 10])  # cut inside the first page's pixels
    return rel


def _write_mrc(path: Path, vol: np.ndarray, voxel_size, mrcfile) -> None:
    from cemkit.io.atomic import atomic_path

    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(vol)
        # mrc stores Angstrom, (x, y, z)
        mrc.voxel_size = (voxel_size[2] * 10.0, voxel_size[1] * 10.0, voxel_size[0] * 10.0)


def _write_h5(path: Path, vol: np.ndarray, voxel_size, h5py) -> None:
    from cemkit.io.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("raw", data=vol, chunks=(1,) + vol.shape[1:], compression="gzip", compression_opts=1)
        d.attrs["resolution"] = np.asarray(voxel_size, dtype=np.float64)
