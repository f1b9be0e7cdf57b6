"""cemkit.io.atomic: a unique temporary sibling, renamed into place on success, deleted on failure."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading

import numpy as np
import pytest

from cemkit.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from cemkit.io.atomic import temporary_sibling


def names(folder):
    return sorted(p.name for p in folder.iterdir())


class Boom(Exception):
    pass


# ----------------------------------------------------------------------------- atomic_path
def test_file_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert not tmp.exists()  # nothing is created for the caller
        tmp.write_text("complete")
        assert not target.exists()  # not under the final name while being written
        assert names(tmp_path) == [tmp.name]
    assert target.read_text() == "complete"
    assert names(tmp_path) == ["out.json"]


def test_temporary_name_is_hidden_and_names_the_target_and_process(tmp_path):
    with atomic_path(tmp_path / "table.csv") as tmp:
        assert tmp.name.startswith(f".table.csv.tmp-{os.getpid()}-")
        assert tmp.suffix != ".csv"  # without keep_suffix the name does not look like the output
        tmp.write_text("id\n")


def test_a_raise_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert names(tmp_path) == []


def test_a_raise_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("new, half written")
        raise Boom
    assert target.read_text() == "old"
    assert names(tmp_path) == ["out.txt"]


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("?")
        raise KeyboardInterrupt
    assert names(tmp_path) == []


def test_a_raise_before_anything_is_written_is_fine(tmp_path):
    with pytest.raises(Boom), atomic_path(tmp_path / "x"):
        raise Boom
    assert names(tmp_path) == []


def test_existing_file_is_replaced(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert names(tmp_path) == ["out.txt"]


def test_keep_suffix(tmp_path):
    target = tmp_path / "table.npz"
    with atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".npz" and tmp.name.startswith(".table.npz.tmp-")
        np.savez(tmp, a=np.arange(3))  # would append ".npz" to a name without the suffix
        assert tmp.is_file()
    np.testing.assert_array_equal(np.load(target)["a"], np.arange(3))
    assert names(tmp_path) == ["table.npz"]
    assert temporary_sibling(tmp_path / "a.tar.gz", keep_suffix=True).suffix == ".gz"
    assert temporary_sibling(tmp_path / "noext", keep_suffix=True).name.startswith(".noext.tmp-")


def test_a_folder_is_built_and_renamed_into_place(tmp_path):
    target = tmp_path / "store.zarr"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "0").write_text("chunk")
    assert (target / "0").read_text() == "chunk"
    assert names(tmp_path) == ["store.zarr"]


@pytest.fixture
def old_folder(tmp_path):
    """``tmp_path / "pngs"`` holding one file, ``old.png``."""
    target = tmp_path / "pngs"
    target.mkdir()
    (target / "old.png").write_text("old")
    return target


def test_a_folder_replaces_an_existing_folder(old_folder, tmp_path):
    target = old_folder
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_text("new")
    assert names(target) == ["new.png"]
    assert names(tmp_path) == ["pngs"]


def test_a_raise_removes_a_temporary_folder_and_keeps_the_old_one(old_folder, tmp_path):
    target = old_folder
    with pytest.raises(Boom), atomic_path(target) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "half.png").write_text("?")
        raise Boom
    assert names(target) == ["old.png"]
    assert names(tmp_path) == ["pngs"]


def test_a_file_does_not_replace_a_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("keep")
    with pytest.raises(IsADirectoryError), atomic_path(target) as tmp:
        tmp.write_text("file")
    assert names(target) == ["keep"]
    assert names(tmp_path) == ["out"]


def test_a_block_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x"):
        pass
    assert names(tmp_path) == []


def test_a_missing_folder_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "no" / "x.txt") as tmp:
        tmp.write_text("?")
    assert names(tmp_path) == []


def test_names_are_unique(tmp_path):
    got = {temporary_sibling(tmp_path / "x") for _ in range(1000)}
    assert len(got) == 1000


# ----------------------------------------------------------------------------- concurrency
def test_threads_writing_one_target_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "result.json"
    n = 8
    barrier = threading.Barrier(n)
    temps, errors = [], []

    def work(i):
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "x") as fh:  # "x": fails if another writer uses the same name
                    fh.write(json.dumps({"writer": i, "pad": "x" * 10000}))
                temps.append(tmp)
                barrier.wait(timeout=30)  # every writer holds its temporary file at once
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(temps)) == n
    assert json.loads(target.read_text())["writer"] in range(n)  # one complete version wins
    assert names(tmp_path) == ["result.json"]


def _write_in_process(target, i, rounds, barrier):
    payload = f"{i}:".encode() + bytes([65 + i]) * 100_000
    for _ in range(rounds):
        with atomic_path(target) as tmp:
            with open(tmp, "xb") as fh:
                fh.write(payload)
            barrier.wait(timeout=60)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_processes_writing_one_target_never_collide(tmp_path):
    ctx = multiprocessing.get_context("fork")
    target = tmp_path / "shared.bin"
    n, rounds = 4, 5
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_write_in_process, args=(target, i, rounds, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    data = target.read_bytes()
    i = int(data.split(b":", 1)[0])
    assert data == f"{i}:".encode() + bytes([65 + i]) * 100_000  # complete, from one writer
    assert names(tmp_path) == ["shared.bin"]


# ----------------------------------------------------------------------------- write helpers
def test_write_text_bytes_json(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "é\nz") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == "é\nz".encode()
    assert atomic_write_text(str(tmp_path / "l.txt"), "é", encoding="latin-1") == tmp_path / "l.txt"
    assert (tmp_path / "l.txt").read_bytes() == b"\xe9"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    obj = {"b": 1, "a": [1.5, None], "p": tmp_path}
    assert atomic_write_json(tmp_path / "c.json", obj, indent=2, default=str) == tmp_path / "c.json"
    assert (tmp_path / "c.json").read_text() == json.dumps(obj, indent=2, default=str)
    assert names(tmp_path) == ["a.txt", "b.bin", "c.json", "l.txt"]


@pytest.mark.parametrize("bad", [
    lambda p: atomic_write_json(p, {"x": float("nan")}, allow_nan=False),
    lambda p: atomic_write_json(p, {"x": object()}),
    lambda p: atomic_write_text(p, "\u20ac", encoding="ascii"),
])
def test_bad_input_leaves_the_old_file_and_no_temporary(tmp_path, bad):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises((ValueError, TypeError)):
        bad(target)
    assert target.read_text() == "old"
    assert names(tmp_path) == ["out.json"]
