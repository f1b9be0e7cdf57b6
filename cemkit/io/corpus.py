"""The curated corpus on disk, and its reader for the pretraining data loader.

Layout of ``CORPUS/``::

    shards/patches_00000.npy   (n, P, P) uint8 arrays, up to ``shard_size`` patches each
    manifest.csv               one row per candidate patch: where it came from, its hash, scores,
                               and ``kept`` / ``reason`` (why it was dropped), ``shard``/``offset``
    metadata.json              format, patch size, counts, mean/std of kept intensities / 255,
                               seed, config, shard list, skipped inputs
    report.html                plots and image grids (``report=true``)
    export/                    optional PNG/TIFF copies of the kept patches (``export=png|tif``)
    .work/                     per-source intermediate results (resume); safe to delete afterwards

Shards are plain ``.npy`` files opened with ``mmap_mode="r"``: random access to any patch costs
one page-cache read, any number of DataLoader workers can share them, and no million loose files
are needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cemkit.errors import InputError
from cemkit.io.atomic import atomic_path, atomic_write_json

FORMAT = "cemkit-corpus"
VERSION = 1
SHARD_DIR = "shards"
MANIFEST = "manifest.csv"
METADATA = "metadata.json"


def shard_name(i: int) -> str:
    return f"{SHARD_DIR}/patches_{i:05d}.npy"


class ShardWriter:
    """Append uint8 patches into fixed-size ``.npy`` shards (each written to a temp name, then renamed).

    Also accumulates the intensity sum and sum of squares (of values / 255) for the corpus
    mean/std. Use as a context manager; :attr:`shards` lists ``(file, count)`` when closed.
    """

    def __init__(self, root: str | Path, patch_size: int, shard_size: int):
        self.root = Path(root)
        self.patch_size = int(patch_size)
        self.shard_size = int(shard_size)
        self.shards: list[tuple[str, int]] = []
        self.count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._buf = np.empty((self.shard_size, self.patch_size, self.patch_size), np.uint8)
        self._n = 0
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, patches: np.ndarray) -> list[tuple[int, int]]:
        """Append ``(n, P, P)`` uint8 patches; returns their ``(shard, offset)`` locations."""
        patches = np.asarray(patches, dtype=np.uint8)
        locs = []
        for p in patches:
            self._buf[self._n] = p
            locs.append((len(self.shards), self._n))
            self._n += 1
            if self._n == self.shard_size:
                self._flush()
        v = patches.astype(np.float64) / 255.0
        self._sum += float(v.sum())
        self._sumsq += float((v * v).sum())
        self.count += len(patches)
        return locs

    def _flush(self) -> None:
        if self._n == 0:
            return
        name = shard_name(len(self.shards))
        final = self.root / name
        with atomic_path(final, keep_suffix=True) as tmp:  # np.save appends .npy to other names
            np.save(tmp, self._buf[: self._n])
        self.shards.append((name, self._n))
        self._n = 0

    def close(self) -> None:
        self._flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()

    @property
    def mean(self) -> float:
        pixels = self.count * self.patch_size ** 2
        return self._sum / pixels if pixels else 0.0

    @property
    def std(self) -> float:
        pixels = self.count * self.patch_size ** 2
        if not pixels:
            return 0.0
        return float(np.sqrt(max(self._sumsq / pixels - self.mean ** 2, 0.0)))


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temp name, then rename)."""
    atomic_write_json(path, data, indent=2, sort_keys=False)


@dataclass
class Corpus:
    """Random access to a curated corpus: ``corpus[i]`` is a ``(P, P)`` uint8 patch.

    Picklable (DataLoader workers): only paths and offsets are pickled; each process opens
    the shards as memory maps on first use.

    Attributes
    ----------
    root : Path
    mean, std : float
        Mean and standard deviation of the kept patches' intensities / 255 (for Normalize).
    patch_size : int
    shard_files : list of str
    shard_counts : list of int
    metadata : dict
    """

    root: Path
    mean: float
    std: float
    patch_size: int
    shard_files: list
    shard_counts: list
    metadata: dict

    def __post_init__(self) -> None:
        self._starts = np.concatenate([[0], np.cumsum(self.shard_counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, s: int) -> np.ndarray:
        arr = self._maps.get(s)
        if arr is None:
            arr = np.load(self.root / self.shard_files[s], mmap_mode="r")
            self._maps[s] = arr
        return arr

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard, offset)`` of patch ``i``."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"patch index {i} out of range for a corpus of {n}")
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        return s, int(i - self._starts[s])

    def __getitem__(self, i: int) -> np.ndarray:
        s, off = self.locate(int(i))
        return np.array(self._shard(s)[off])

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def open_corpus(path: str | Path) -> Corpus:
    """Open a corpus written by ``cemkit curate``.

    Raises
    ------
    InputError
        When ``path/metadata.json`` is missing or not a cemkit corpus.
    """
    root = Path(path)
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise InputError(f"{root}: not a cemkit corpus (no {METADATA}); run `cemkit curate` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    shards = meta.get("shards", [])
    return Corpus(root=root, mean=float(meta["mean"]), std=float(meta["std"]),
                  patch_size=int(meta["patch_size"]), shard_files=[s["file"] for s in shards],
                  shard_counts=[int(s["count"]) for s in shards], metadata=meta)
