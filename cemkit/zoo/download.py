"""Resumable, verified downloads into the model cache (standard library ``urllib`` only).

* The file is written to ``<dest>.part``; an interrupted download (dropped connection, Ctrl-C) is
  resumed from where it stopped with an HTTP ``Range`` request, by a retry in the same call or by the
  next call.
* The sha256 is computed while streaming (the bytes of a resumed ``.part`` are hashed first).
* A wrong checksum deletes the download and raises :class:`~cemkit.errors.InputError` saying the
  expected and the computed sha256; a right one moves the file into place with ``os.replace``.
* TLS certificates are always verified; there is no switch to turn that off.
* Concurrent downloads of the same file (e.g. several DDP ranks) are serialised with a lock file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from cemkit import __version__
from cemkit.errors import InputError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = f"cemkit/{__version__} (+https://github.com/cemkit)"
_RETRYABLE = (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError,
              socket.timeout, TimeoutError, urllib.error.URLError)


class _Retry(Exception):
    """A transient failure: try again, resuming from the ``.part`` file."""


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, *, sha256: str | None = None, size: int | None = None,
             retries: int = 5, timeout: float = 30.0, progress: bool = True,
             backoff: float = 1.0) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it and move it into place.

    Parameters
    ----------
    url : str
        ``http(s)://`` or ``file://`` address.
    dest : path
        Final file. Its folder is created.
    sha256 : str, optional
        Expected hex sha256; when given, a mismatch deletes the download and raises InputError.
    size : int, optional
        Expected size in bytes (checked before the hash).
    retries : int
        Extra attempts after a dropped connection, a timeout or a 5xx answer; each resumes.
    timeout : float
        Socket timeout in seconds for connecting and for each read.
    progress : bool
        Show a tqdm progress bar.
    backoff : float
        Seconds to wait before the first retry, doubled for each further one.

    Returns
    -------
    str
        The sha256 of the downloaded file.

    Raises
    ------
    InputError
        Wrong checksum or size, an HTTP error such as 404, or the network still failing after
        ``retries`` attempts (the ``.part`` file is kept so a later call resumes).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _locked(dest.with_name(f".{dest.name}.lock")):
        _fetch_with_retries(url, part, dest.name, retries=retries, timeout=timeout,
                            progress=progress, backoff=backoff)
        got_size, digest = _verify_part(url, part, size=size, sha256=sha256)
        os.replace(part, dest)
    logger.info("downloaded %s (%d bytes, sha256 %s)", dest, got_size, digest)
    return digest


def _fetch_with_retries(url: str, part: Path, name: str, *, retries: int, timeout: float,
                        progress: bool, backoff: float) -> None:
    """Complete ``part``, retrying transient failures with exponential backoff (each resumes)."""
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, timeout=timeout, progress=progress, name=name)
            return
        except _Retry as exc:
            attempt += 1
            if attempt > retries:
                raise InputError(
                    f"download of {url} failed after {retries + 1} attempts ({exc}); "
                    f"{_size(part)} bytes are kept in {part} and the next download resumes "
                    f"from there") from None
            wait = backoff * 2 ** (attempt - 1)
            logger.warning("download of %s interrupted (%s); resuming at byte %d in %.1f s "
                           "(attempt %d of %d)", name, exc, _size(part), wait,
                           attempt + 1, retries + 1)
            time.sleep(wait)


def _verify_part(url: str, part: Path, *, size: int | None, sha256: str | None) -> tuple[int, str]:
    """``(size, sha256)`` of the finished ``part``; a wrong size or checksum deletes it and raises."""
    got_size = _size(part)
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise InputError(f"download of {url} has {got_size} bytes but the card says {size}; "
                         f"the file was deleted")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise InputError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, "
                         f"got {digest}; the downloaded file was deleted")
    return got_size, digest


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool, name: str) -> None:
    """One attempt: append the missing bytes of ``url`` to ``part``. Raises _Retry if transient."""
    offset = _size(part)
    response = _open_response(url, part, offset, timeout)
    if response is None:  # the .part is already complete
        return
    with response:
        status = getattr(response, "status", None) or 200
        if offset and status != 206:
            logger.info("server does not resume downloads (HTTP %s); fetching %s from the start",
                        status, name)
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        received = _stream(response, part, offset, expected, progress=progress, name=name)
    if expected is not None and received < expected:
        raise _Retry(f"connection closed at byte {received} of {expected}")


def _open_response(url: str, part: Path, offset: int, timeout: float):
    """The response to a request for ``url`` from byte ``offset`` (None when nothing is left to
    fetch). Transient failures raise _Retry, permanent ones InputError."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    context = ssl.create_default_context()  # certificate and host name verification on
    try:
        return urllib.request.urlopen(request, timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part may be complete
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:
                return None
            part.unlink(missing_ok=True)
            raise _Retry(f"server refused to resume at byte {offset}; starting again") from None
        exc.close()
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise InputError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            raise InputError(f"cannot download {url}: TLS verification failed ({exc.reason}); "
                             f"cemkit never downloads without verifying certificates") from None
        if isinstance(exc.reason, FileNotFoundError):
            raise InputError(f"cannot download {url}: no such file") from None
        raise _Retry(f"cannot reach the server: {exc.reason}") from None
    except _RETRYABLE as exc:
        raise _Retry(f"{type(exc).__name__}: {exc}") from None


def _stream(response, part: Path, offset: int, expected: int | None, *, progress: bool,
            name: str) -> int:
    """Write the response body to ``part`` (appending after ``offset`` bytes, or from the start
    when ``offset`` is 0); returns the size reached. A dropped connection raises _Retry."""
    mode = "ab" if offset else "wb"
    received = offset
    bar = tqdm(total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=name, disable=not progress, leave=False)
    try:
        with open(part, mode) as fh:
            while True:
                try:
                    block = response.read(CHUNK)
                except _RETRYABLE as exc:
                    raise _Retry(f"connection dropped at byte {received} "
                                 f"({type(exc).__name__})") from None
                if not block:
                    break
                fh.write(block)
                received += len(block)
                bar.update(len(block))
    finally:
        bar.close()
    return received


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes \S+/(\d+)", value or "")
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock on ``path`` (POSIX ``flock``; a no-op where that is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
