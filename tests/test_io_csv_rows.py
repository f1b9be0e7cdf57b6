"""cemkit.io.csv_rows: the metrics rows of the steps before a resume are kept, each step once."""

from __future__ import annotations

import csv

import pytest

from cemkit.io.csv_rows import prepend_rows, read_rows, rows_kept


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def test_prepend_keeps_earlier_steps_once_and_unions_the_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    prior = [{"step": "0", "loss": "3"}, {"step": "1", "loss": "2"}, {"step": "2", "loss": "1.5"}]
    _write(path, [{"step": "2", "loss": "1.4", "lr": "0.1"}, {"step": "3", "loss": "1.2", "lr": "0.1"}])
    prepend_rows(path, prior)
    rows = read_rows(path)
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == [("0", "3", ""), ("1", "2", ""), ("2", "1.4", "0.1"),
                                                               ("3", "1.2", "0.1")]


def test_rows_are_put_back_also_when_the_resumed_block_fails(tmp_path):
    path = tmp_path / "metrics.csv"
    _write(path, [{"step": "0", "loss": "3"}, {"step": "5", "loss": "1"}])
    with pytest.raises(RuntimeError), rows_kept(path, keep=True):
        _write(path, [{"step": "4", "loss": "1.1"}])  # what the resumed run logged before failing
        raise RuntimeError("interrupted again")
    assert [r["step"] for r in read_rows(path)] == ["0", "4"]


def test_nothing_is_kept_for_a_fresh_run_or_without_a_csv_logger(tmp_path):
    path = tmp_path / "metrics.csv"
    _write(path, [{"step": "0", "loss": "3"}])
    with rows_kept(path, keep=False):
        _write(path, [{"step": "0", "loss": "2"}])
    assert read_rows(path) == [{"step": "0", "loss": "2"}]
    with rows_kept(None, keep=True):
        pass
    assert read_rows(tmp_path / "missing.csv") == []
