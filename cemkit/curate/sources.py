"""The source datasets of a curate run, from a RAW folder or a sources YAML file.

RAW folder: every top-level entry is one source dataset (hidden entries and files with other
extensions are ignored):

* a folder of 2D images (``.png``, ``.tif``, ...) -- opened as one stack when the images share a
  shape, else image by image;
* a stack or volume file (``.tif``/``.tiff``, ``.mrc``/``.rec``/``.map``/``.st``, ``.h5``/``.hdf5``,
  ``.png``/``.jpg``/``.bmp`` single images) or a ``.zarr`` store.

Sources YAML (``input=sources.yaml``)::

    sources:
      - path: raw/fib_volume.mrc       # relative to the YAML file's folder, or absolute
        voxel_size: [8, 8, 8]          # z, y, x in nm (optional; overrides the file)
      - path: raw/tem_images/
        name: tem_2019                 # optional source name (default: file/folder stem)
      - path: raw/cells.h5
        key: raw                       # dataset inside an HDF5/zarr container (optional)

Source names are unique and safe for file names; dedup is done within each source.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cemkit.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
VOLUME_EXTS = (".tif", ".tiff", ".mrc", ".rec", ".map", ".st", ".ali", ".h5", ".hdf5", ".hdf",
               ".zarr", ".n5", ".npy")
KNOWN_EXTS = tuple(sorted(set(IMAGE_EXTS + VOLUME_EXTS)))


@dataclass
class Source:
    """One source dataset.

    Attributes
    ----------
    name : str
        Unique, file-name-safe name (dedup scope and manifest ``source`` column).
    path : Path
        The file or folder.
    voxel_size : tuple of float or None
        ``(z, y, x)`` nm from the sources file; None: read from the file metadata.
    key : str or None
        Dataset key inside a container (HDF5/zarr).
    """

    name: str
    path: Path
    voxel_size: tuple[float, float, float] | None = None
    key: str | None = None
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Identity of the input data: path, sizes and modification times of its files."""
        h = hashlib.sha1(str(self.path.resolve()).encode())
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        h.update(repr((self.voxel_size, self.key)).encode())
        return h.hexdigest()[:16]


def safe_name(text: str) -> str:
    """A file-name-safe source name (letters, digits, ``._-``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "source"
    return name


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem if path.suffix else name


def _is_source_entry(path: Path) -> bool:
    if path.name.startswith(".") or path.name.startswith("_"):
        return False
    if path.is_dir():
        return True
    return path.suffix.lower() in KNOWN_EXTS


def _unique(sources: list[Source]) -> list[Source]:
    seen: dict[str, int] = {}
    for s in sources:
        base = s.name
        if base in seen:
            seen[base] += 1
            s.name = f"{base}_{seen[base]}"
        else:
            seen[base] = 0
    return sources


def discover_sources(input_path: str | Path) -> list[Source]:
    """List the sources of a RAW folder or a sources YAML file, sorted by name.

    Raises
    ------
    InputError
        When the path does not exist, the YAML is malformed, or no source is found.
    """
    path = Path(input_path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: input does not exist (expected a RAW folder or a sources .yaml)")
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        sources = _from_yaml(path)
    elif path.is_dir() and not path.suffix.lower() in (".zarr", ".n5"):
        entries = sorted(p for p in path.iterdir() if _is_source_entry(p))
        ignored = sorted(p.name for p in path.iterdir() if not _is_source_entry(p))
        if ignored:
            logger.info("%s: ignoring %d entries that are not sources: %s", path, len(ignored), ignored[:10])
        sources = [Source(name=safe_name(_stem(p)), path=p) for p in entries]
    else:  # a single file or store is one source
        sources = [Source(name=safe_name(_stem(path)), path=path)]
    if not sources:
        raise InputError(f"{path}: no source datasets found (supported: folders of images, {', '.join(KNOWN_EXTS)})")
    return sorted(_unique(sources), key=lambda s: s.name)


def _from_yaml(path: Path) -> list[Source]:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from exc
    items = doc.get("sources") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InputError(f"{path}: expected a list under 'sources:'")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise InputError(f"{path}: source #{i + 1} needs a 'path'")
        unknown = set(item) - {"path", "name", "voxel_size", "key"}
        if unknown:
            raise InputError(f"{path}: source #{i + 1} has unknown keys {sorted(unknown)}")
        p = Path(str(item["path"])).expanduser()
        if not p.is_absolute():
            p = (path.parent / p).resolve()
        if not p.exists():
            raise InputError(f"{path}: source #{i + 1} path {p} does not exist")
        vs = item.get("voxel_size")
        if vs is not None:
            if isinstance(vs, (int, float)):
                vs = [vs, vs, vs]
            if len(vs) != 3 or min(float(v) for v in vs) <= 0:
                raise InputError(f"{path}: source #{i + 1} voxel_size must be [z, y, x] > 0, got {vs}")
            vs = tuple(float(v) for v in vs)
        out.append(Source(name=safe_name(str(item.get("name") or _stem(p))), path=p,
                          voxel_size=vs, key=item.get("key")))
    return out
