"""Near-duplicate removal: greedy leader clustering of dHash values within one source.

CEM500K's rule (``deduplicate.py``): shuffle a dataset's patches, take the first remaining patch
as an exemplar, drop every remaining patch within Hamming distance ``<= max_distance`` of it,
repeat. Equivalently, walking the shuffled order, a patch is an exemplar iff no earlier exemplar
is within ``max_distance``; otherwise it joins the group of the earliest such exemplar.

:func:`leader_cluster` computes exactly that assignment, but in blocks: each block of patches is
compared with all exemplars found so far (uint64 XOR + ``np.bitwise_count``, exemplars read in
chunks), and only the patches no earlier exemplar claims are resolved one by one, against each
other. Memory is ``O(N + block_size * exemplar_chunk)``, never ``O(N**2)``; the group of every
patch is returned, not just the exemplars. The shuffle is seeded per source
(:func:`source_order`), so a run is reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Hamming distance between packed uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64))


def source_order(n: int, seed: int, source: str) -> np.ndarray:
    """Seeded shuffle of ``range(n)`` for one source: same seed and name -> same order."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(source.encode("utf-8"))])
    return rng.permutation(n)


@dataclass
class DedupResult:
    """Outcome of deduplicating one source.

    Attributes
    ----------
    group : np.ndarray
        ``(N,)`` int64: for every patch, the index of the exemplar that represents it
        (``group[i] == i`` for exemplars).
    exemplar : np.ndarray
        ``(N,)`` bool, True for the patches that are kept.
    """

    group: np.ndarray
    exemplar: np.ndarray

    @property
    def n_exemplars(self) -> int:
        return int(self.exemplar.sum())


def leader_cluster(hashes: np.ndarray, max_distance: int = 12, order: np.ndarray | None = None,
                   block_size: int = 512, exemplar_chunk: int = 8192) -> DedupResult:
    """Greedy leader clustering of packed 64-bit hashes (CEM500K's dedup rule, exactly).

    Parameters
    ----------
    hashes : np.ndarray
        ``(N,)`` uint64 hashes of one source.
    max_distance : int
        Patches within this Hamming distance (inclusive) of an exemplar are its duplicates.
    order : np.ndarray, optional
        Visiting order (a permutation of ``range(N)``); default: input order.
    block_size, exemplar_chunk : int
        Patches compared at once, and exemplars per comparison; scratch memory is about
        ``9 * block_size * exemplar_chunk`` bytes.

    Returns
    -------
    DedupResult
        Exemplar flags and the group (exemplar index) of every patch.
    """
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    n = len(h)
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if len(order) != n:
        raise ValueError(f"order has {len(order)} entries for {n} hashes")
    group = np.empty(n, dtype=np.int64)
    ex_hash = np.empty(n, dtype=np.uint64)  # exemplar hashes, in creation order
    ex_index = np.empty(n, dtype=np.int64)  # their patch indices
    n_ex = 0
    for start in range(0, n, block_size):
        idx = order[start:start + block_size]
        hb = h[idx]
        owner, pending = _claim_by_exemplars(hb, ex_hash[:n_ex], max_distance, exemplar_chunk)
        if len(pending):
            # resolve the unclaimed patches of this block among themselves, in visiting order
            hp = hb[pending]
            local, leaders = _block_leaders(hp, max_distance)
            ids = np.empty(len(pending), np.int64)
            ids[leaders] = n_ex + np.arange(len(leaders))
            ex_hash[n_ex:n_ex + len(leaders)] = hp[leaders]
            ex_index[n_ex:n_ex + len(leaders)] = idx[pending[leaders]]
            n_ex += len(leaders)
            owner[pending] = ids[local]
        group[idx] = ex_index[owner]
    exemplar = group == np.arange(n)
    return DedupResult(group=group, exemplar=exemplar)


def _claim_by_exemplars(hb: np.ndarray, ex_hash: np.ndarray, max_distance: int,
                        exemplar_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Match a block of hashes against the exemplars found so far, ``exemplar_chunk`` at a time.

    Returns
    -------
    owner : np.ndarray
        ``(len(hb),)`` int64: position in ``ex_hash`` of the earliest exemplar within
        ``max_distance`` of each patch, -1 where none is.
    pending : np.ndarray
        Positions in the block of the patches no exemplar claims, in visiting order.
    """
    owner = np.full(len(hb), -1, dtype=np.int64)
    pending = np.arange(len(hb))
    for c0 in range(0, len(ex_hash), exemplar_chunk):
        if len(pending) == 0:
            break
        c1 = min(len(ex_hash), c0 + exemplar_chunk)
        close = np.bitwise_count(hb[pending, None] ^ ex_hash[None, c0:c1]) <= max_distance
        hit = close.any(axis=1)
        owner[pending[hit]] = c0 + close[hit].argmax(axis=1)  # earliest exemplar wins
        pending = pending[~hit]
    return owner, pending


def _block_leaders(hp: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Leader clustering of unclaimed hashes among themselves, in visiting order.

    Returns
    -------
    local : np.ndarray
        For each hash, the position (in ``hp``) of the leader of its group.
    leaders : np.ndarray
        Positions of the leaders, in visiting order (= exemplar creation order).
    """
    upper = np.triu(np.bitwise_count(hp[:, None] ^ hp[None, :]) <= max_distance, 1)
    local = np.arange(len(hp))
    claimed = np.zeros(len(hp), bool)
    # only candidates with a close neighbour inside the block need the sequential scan
    for k in np.flatnonzero(upper.any(axis=1) | upper.any(axis=0)).tolist():
        if claimed[k]:
            continue
        claim = upper[k] & ~claimed
        local[claim] = k
        claimed |= claim
    return local, np.flatnonzero(~claimed)


def first_occurrence(result: DedupResult) -> DedupResult:
    """Represent every group by its earliest member (lowest patch index) instead of its leader.

    The groups (and so the number of exemplars) are unchanged; only which member is kept changes:
    the first occurrence in cutting order, so a later copy of an image is the one dropped.

    >>> r = first_occurrence(DedupResult(group=np.array([2, 1, 2]), exemplar=np.array([False, True, True])))
    >>> r.group.tolist(), r.exemplar.tolist()
    ([0, 1, 0], [True, True, False])
    """
    n = len(result.group)
    idx = np.arange(n)
    rep = idx.copy()
    np.minimum.at(rep, result.group, idx)
    group = rep[result.group]
    return DedupResult(group=group, exemplar=group == idx)


def dedup_source(hashes: np.ndarray, source: str, seed: int = 0, max_distance: int = 12) -> DedupResult:
    """Deduplicate the patches of one source.

    Groups follow CEM500K's greedy rule in a seeded random order (see :func:`source_order`); each
    group keeps its first patch in cutting order (:func:`first_occurrence`).
    """
    grouped = leader_cluster(hashes, max_distance=max_distance, order=source_order(len(hashes), seed, source))
    return first_occurrence(grouped)


def reference_leader_cluster(hashes: np.ndarray, max_distance: int = 12,
                             order: np.ndarray | None = None) -> np.ndarray:
    """CEM500K's per-exemplar loop, kept as the executable specification (slow: O(groups * N)).

    Returns the exemplar indices in the order they were chosen.
    """
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    remaining = np.arange(len(h)) if order is None else np.asarray(order, dtype=np.int64)
    exemplars = []
    while len(remaining):
        ref = remaining[0]
        matches = hamming(h[remaining], h[ref]) <= max_distance
        exemplars.append(int(ref))
        remaining = remaining[~matches]
    return np.asarray(exemplars, dtype=np.int64)
