"""Which slices a study trains on and tests on: parsing, the split checks, even spacing, folds.

Slices are z indices of the labelled volume, counted from 0. A slice set is written as a list of
indices and inclusive ranges: ``[14, 15, 16]``, ``"14-19"``, ``"0-3,8"`` or ``["0-3", 8]``.
Every function here is pure (lists in, lists out) and raises
:class:`~cemkit.errors.ConfigError` naming the ``study.*`` key at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cemkit.errors import ConfigError


def parse_slices(spec: Any, key: str, depth: int) -> list[int]:
    """Sorted, distinct z indices from a slice spec.

    Parameters
    ----------
    spec
        An int, a string of comma-separated indices and inclusive ranges ``"a-b"``, or a list of those.
    key
        The config key, for error messages (e.g. ``"study.test_slices"``).
    depth
        Number of slices of the volume: every index must be in ``0..depth-1``.

    Returns
    -------
    list of int
        ``parse_slices("0-3,8", "k", 10) == [0, 1, 2, 3, 8]``.

    Raises
    ------
    ConfigError
        Unreadable entries, empty ranges, indices outside the volume, or an empty set.
    """
    items = list(spec) if isinstance(spec, (list, tuple)) or _is_sequence(spec) else [spec]
    out: set[int] = set()
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
            except ValueError as exc:
                raise ConfigError(f"{key}: {part!r} is not a slice index or an inclusive range like 10-21") from exc
            if b < a:
                raise ConfigError(f"{key}: the range {part!r} is empty (write low-high)")
            out.update(range(a, b + 1))
    if not out:
        raise ConfigError(f"{key}: no slices given")
    bad = sorted(z for z in out if not 0 <= z < depth)
    if bad:
        raise ConfigError(f"{key}: slices {format_slices(bad)} are outside the volume "
                          f"(z 0-{depth - 1}, {depth} slices)")
    return sorted(out)


def _is_sequence(spec: Any) -> bool:
    from omegaconf import ListConfig

    return isinstance(spec, ListConfig)


def format_slices(slices: Sequence[int]) -> str:
    """Compact text of sorted indices: ``format_slices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"``."""
    parts: list[str] = []
    run: list[int] = []
    for z in sorted(int(v) for v in slices):
        if run and z == run[-1] + 1:
            run.append(z)
            continue
        if run:
            parts.append(_run_text(run))
        run = [z]
    if run:
        parts.append(_run_text(run))
    return ",".join(parts)


def _run_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def near(slices: Sequence[int], others: Sequence[int], gap: int) -> list[int]:
    """The ``slices`` within ``gap`` of any of ``others`` (distance ``<= gap``; ``gap=0``: the shared ones)."""
    o = np.asarray(sorted(others), dtype=np.int64)
    if o.size == 0:
        return []
    return [int(z) for z in slices if int(np.abs(o - int(z)).min()) <= gap]


def training_range(train_spec: Any, test: Sequence[int], gap: int, depth: int) -> list[int]:
    """The slices runs may train on: ``study.train_slices``, or every slice more than ``gap`` away
    from the test split when it is ``null``.

    Raises
    ------
    ConfigError
        ``study.gap`` negative; a training range that overlaps the test split or comes within
        ``study.gap`` of it; no slice left to train on.
    """
    if gap < 0:
        raise ConfigError(f"study.gap must be >= 0, got {gap}")
    if train_spec is None or str(train_spec).lower() in ("", "none", "null", "auto"):
        train = [z for z in range(depth) if z not in set(near(range(depth), test, gap))]
        if not train:
            raise ConfigError(f"study.test_slices={format_slices(test)} with study.gap={gap} leave no slice of the "
                              f"{depth}-slice volume to train on")
        return train
    train = parse_slices(train_spec, "study.train_slices", depth)
    shared = near(train, test, 0)
    if shared:
        raise ConfigError(f"study.test_slices overlaps study.train_slices: slices {format_slices(shared)} are in both "
                          f"(test {format_slices(test)}, train {format_slices(train)})")
    close = near(train, test, gap)
    if close:
        raise ConfigError(f"study.train_slices {format_slices(close)} are within study.gap={gap} slices of "
                          f"study.test_slices={format_slices(test)}: leave a gap (or lower study.gap)")
    return train


def evenly_spaced(slices: Sequence[int], count: int) -> list[int]:
    """``count`` of ``slices`` spread evenly from the first to the last (one: the middle one).

    ``evenly_spaced(range(12), 4) == [0, 4, 7, 11]``; ``evenly_spaced(range(12), 1) == [6]``.

    Raises
    ------
    ConfigError
        ``count`` < 1 or more than there are slices (naming ``study.labelled``).
    """
    s = sorted(int(z) for z in slices)
    n = len(s)
    if count < 1:
        raise ConfigError(f"study.labelled: counts must be >= 1, got {count}")
    if count > n:
        raise ConfigError(f"study.labelled asks for {count} labelled slices, but the training range "
                          f"(study.train_slices={format_slices(s)}) has only {n}")
    if count == 1:
        return [s[n // 2]]
    return [s[round(i * (n - 1) / (count - 1))] for i in range(count)]


def fold_splits(slices: Sequence[int], folds: int, gap: int) -> list[tuple[list[int], list[int]]]:
    """K-fold cross-validation over slices: ``[(train, held_out), ...]``, one pair per fold.

    The held-out slices of a fold are a contiguous block (``numpy.array_split`` of the sorted
    slices, so neighbouring, correlated slices are held out together); its training slices are the
    others, less those within ``gap`` of the block.

    ``fold_splits(range(6), 3, 0) == [([2, 3, 4, 5], [0, 1]), ([0, 1, 4, 5], [2, 3]), ([0, 1, 2, 3], [4, 5])]``

    Raises
    ------
    ConfigError
        ``folds`` < 2 or more than there are slices, or a fold left without training slices.
    """
    s = sorted(int(z) for z in slices)
    if folds < 2 or folds > len(s):
        raise ConfigError(f"study.folds={folds}: needs 2..{len(s)} (the training range "
                          f"{format_slices(s)} has {len(s)} slices)")
    out = []
    for block in np.array_split(np.asarray(s), folds):
        held = [int(z) for z in block]
        excluded = set(near(s, held, gap))
        train = [z for z in s if z not in excluded]
        if not train:
            raise ConfigError(f"study.folds={folds} with study.gap={gap}: holding out {format_slices(held)} leaves "
                              f"no training slice (fewer folds or a smaller gap)")
        out.append((train, held))
    return out


def seed_list(spec: Any, base: int) -> list[int]:
    """``study.seeds``: a count ``k`` (seeds ``base .. base+k-1``) or an explicit list."""
    if isinstance(spec, bool):
        raise ConfigError(f"study.seeds must be a count or a list of seeds, got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise ConfigError(f"study.seeds must be >= 1, got {spec}")
        return [base + i for i in range(spec)]
    try:
        seeds = [int(v) for v in spec]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"study.seeds must be a count or a list of seeds, got {spec!r}") from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"study.seeds must be a non-empty list of distinct seeds, got {seeds}")
    return seeds


def labelled_counts(spec: Any) -> list[int]:
    """``study.labelled`` as a sorted list of distinct positive ints (a single int is a one-element list)."""
    items = [spec] if isinstance(spec, (int, str)) else list(spec)
    try:
        counts = sorted({int(v) for v in items})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"study.labelled must be a list of slice counts like [1,2,4,8], got {spec!r}") from exc
    if not counts or counts[0] < 1:
        raise ConfigError(f"study.labelled must be counts >= 1, got {spec!r}")
    return counts
