"""Atomic writes: build a file or folder under a unique temporary name, then rename it into place.

Every cemkit output that a reader (or a resumed job) might see half-written goes through
:func:`atomic_path`: the content is written to a hidden sibling ``.NAME.tmp-PID-RANDOM`` in the
same folder and moved onto ``NAME`` with :func:`os.replace` only when the writing code finished
without an exception. On an exception (``KeyboardInterrupt`` included) the temporary file or
folder is deleted and the exception propagates, so the final name holds either the previous
content or the complete new content, never a partial one.

The temporary name is unique per call (process id plus 64 random bits), so writers in several
threads or processes never collide on it; when they write the same target, the last rename wins.

>>> from cemkit.io.atomic import atomic_path, atomic_write_json
>>> with atomic_path("table.npz", keep_suffix=True) as tmp:   # doctest: +SKIP
...     np.savez(tmp, a=a)                                    # savez needs the .npz suffix
>>> atomic_write_json("result.json", {"iou": 0.9}, indent=2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "temporary_sibling",
]


def temporary_sibling(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """A unique, hidden temporary name next to ``path``; nothing is created.

    Parameters
    ----------
    path : str or PathLike
        The final file or folder.
    keep_suffix : bool
        End the name with ``path``'s last suffix too (``.npz``, ``.png``, ...), for writers that
        pick the format from the suffix or append one when it is missing.

    Returns
    -------
    Path
        ``<folder>/.<name>.tmp-<pid>-<16 hex digits>[<suffix>]``.
    """
    path = Path(path)
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:16]}{suffix}")


def _remove(path: Path) -> None:
    """Delete a file, link or folder; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _move_into_place(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``; a folder ``tmp`` also replaces an existing folder ``path``.

    ``rename(2)`` cannot replace a non-empty folder, so the old folder is first renamed to another
    unique sibling name and deleted after the new one is in place.
    """
    if tmp.is_dir() and not tmp.is_symlink() and path.is_dir() and not path.is_symlink():
        old = temporary_sibling(path)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)  # put the previous content back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The temporary path does not exist yet: the block creates it, as a file or as a folder. When
    the block exits normally it is moved onto ``path`` with :func:`os.replace` (an existing file
    at ``path`` is replaced; an existing folder is replaced only by a folder). When the block
    raises, the temporary file or folder is deleted and the exception propagates; ``path`` is
    left untouched. The folder of ``path`` must exist.

    Parameters
    ----------
    path : str or PathLike
        The final file or folder.
    keep_suffix : bool
        End the temporary name with ``path``'s suffix (see :func:`temporary_sibling`): needed by
        ``np.save``/``np.savez`` (they append ``.npy``/``.npz`` otherwise) and by writers that
        choose the format from the suffix (``matplotlib``'s ``savefig``, PIL without ``format``).

    Yields
    ------
    Path
        The temporary path to write.

    Raises
    ------
    OSError
        When the rename fails: ``FileNotFoundError`` if the block created nothing at the temporary
        path, ``IsADirectoryError`` for a file onto an existing folder; the temporary is deleted.

    Examples
    --------
    >>> with atomic_path(out / "objects.csv") as tmp, open(tmp, "w", newline="") as fh:  # doctest: +SKIP
    ...     csv.writer(fh).writerows(rows)
    """
    path = Path(path)
    tmp = temporary_sibling(path, keep_suffix)
    try:
        yield tmp
        _move_into_place(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or PathLike
        Final file; its folder must exist.
    data : bytes-like

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or PathLike
        Final file; its folder must exist.
    text : str
        Written as is (no newline is added; ``\\n`` is not translated).
    encoding : str

    Returns
    -------
    Path
        ``path``.
    """
    return atomic_write_bytes(path, text.encode(encoding))  # an unencodable text fails before any file exists


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **json_kwargs)`` to ``path`` atomically (UTF-8, no trailing newline).

    ``obj`` is serialised before any file is created, so an object that cannot be written
    (``TypeError``, or ``ValueError`` with ``allow_nan=False``) leaves no file behind.

    Parameters
    ----------
    path : str or PathLike
        Final file; its folder must exist.
    obj
        JSON-serialisable object.
    **json_kwargs
        Passed to :func:`json.dumps` (``indent``, ``default``, ``sort_keys``, ``allow_nan``...).

    Returns
    -------
    Path
        ``path``.
    """
    return atomic_write_text(path, json.dumps(obj, **json_kwargs))
