"""Rows of a metrics CSV kept across a resumed run.

Lightning's ``CSVLogger`` replaces an existing ``metrics.csv`` when a run starts, so a resumed
pretrain or finetune run would lose the rows of the steps before the resume; :func:`rows_kept`
puts them back in front of the new rows.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path

from cemkit.io.atomic import atomic_path


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the CSV file ``path`` as dicts (``[]`` when there is no file)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def prepend_rows(path: Path, prior: list[dict[str, str]]) -> None:
    """Put the ``prior`` rows whose ``step`` is before the first step of ``path``'s rows in front of them.

    Rows of later steps (logged before an interruption and logged again after the resume) are dropped, so
    every step appears once. The file is rewritten atomically; its columns are the union of both sets.
    """
    new = read_rows(path)
    first = min((int(float(r["step"])) for r in new if r.get("step")), default=None)
    kept = [r for r in prior if first is None or (r.get("step") and int(float(r["step"])) < first)]
    fields = list(dict.fromkeys([k for r in (*kept, *new) for k in r]))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*kept, *new])


@contextlib.contextmanager
def rows_kept(path: Path | None, keep: bool) -> Iterator[None]:
    """Keep the rows of ``path`` written before the block (``keep``: the block resumes a run).

    The rows are put back when the block ends, also when it fails, so a resume that is interrupted
    again keeps them too. ``path=None`` (no CSV logger) or ``keep=False`` does nothing.
    """
    prior = read_rows(path) if keep and path is not None else []
    try:
        yield
    finally:
        if prior:
            prepend_rows(path, prior)
