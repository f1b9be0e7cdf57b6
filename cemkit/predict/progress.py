"""Resume bookkeeping: which units of work (slabs, steps) of a prediction are finished.

The record is a small JSON file in the output folder, rewritten atomically (temporary file +
``os.replace``) after every finished unit, together with a signature of everything that determines
the output (input, models, settings). A rerun with the same signature skips the finished units; a
different signature starts afresh.

A multi-process run keeps one record per rank (``.progress.rank{r}.json``). A unit is global (slab
``i`` of the volume, whichever rank computed it), so a run can resume on another number of processes:
every rank reads the records of all ranks (``others``) and skips the units any of them finished. A
record therefore holds the units finished by its rank plus those it found finished when it started.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cemkit.io.atomic import atomic_write_json


class ProgressLog:
    """Finished work units (strings such as ``"xy:3"``) of one run, persisted in ``path``."""

    def __init__(self, path: str | Path, signature: dict[str, Any], resume: bool = True,
                 others: Sequence[str | Path] = (), world: int = 1):
        self.path = Path(path)
        self.signature = json.loads(json.dumps(signature, sort_keys=True, default=str))
        self.world = int(world)
        self.done: set[str] = set()
        self.worlds: set[int] = set()  # process counts of the runs whose finished units were found
        if resume:
            for p in (self.path, *(Path(o) for o in others)):
                state = _read(p)
                if state.get("signature") == self.signature and state.get("done"):
                    self.done |= set(state["done"])
                    self.worlds.add(int(state.get("world", 1)))
        self.resumed = bool(self.done)

    def is_done(self, unit: str) -> bool:
        return unit in self.done

    def finished(self, prefix: str) -> set[int]:
        """Indices ``i`` of the finished units named ``f"{prefix}:{i}"``."""
        return {int(u.split(":", 1)[1]) for u in self.done if u.startswith(prefix + ":")}

    def mark(self, unit: str) -> None:
        self.done.add(unit)
        self.save()

    def reset(self) -> None:
        self.done = set()
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"signature": self.signature, "world": self.world, "done": sorted(self.done)},
                          indent=1)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
