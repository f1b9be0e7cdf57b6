"""From a model spec to a verified local file, and registration of user models.

``resolve(spec)`` is what the stage commands call for ``model.init=...`` (finetune) and
``checkpoint=...`` (predict):

* ``zoo:NAME``: the card's checkpoint, downloaded into the cache on first use (or its local
  ``path`` for a registered local checkpoint), checked against the card's sha256, or against the
  sha256 recorded at download time when the card has none;
* ``http(s)://...``: downloaded once into ``$CEMKIT_CACHE/urls/``;
* anything else: a local path, returned as is (it must exist).

Offline (``CEMKIT_OFFLINE=1`` or ``offline=True``), a cached model is used and a missing one raises
an :class:`~cemkit.errors.InputError` naming the model and the cache path.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from cemkit.errors import InputError
from cemkit.io.atomic import atomic_path
from cemkit.zoo.cache import OFFLINE_ENV, cards_dir, is_offline, model_dir, url_dir
from cemkit.zoo.cards import (
    KINDS,
    ModelCard,
    card_from_dict,
    filename_from_url,
    get_card,
    shipped_cards,
    user_cards,
    write_card,
)
from cemkit.zoo.download import download, sha256_file

logger = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
# EncoderWeights.meta["layout"] (cemkit.models.encoders) -> card key_layout
_LAYOUTS = {"cemkit-encoder": "cemkit_encoder", "cemkit-pretrain": "cemkit_pretrain",
            "moco": "cellemnet_moco", "swav": "swav", "state_dict": "state_dict"}


def cached_path(card: ModelCard) -> Path:
    """Where ``card``'s checkpoint is (local ``path``) or would be cached (``url``)."""
    if card.path is not None:
        return Path(card.path)
    return model_dir(card.name) / card.filename


def is_cached(card: ModelCard) -> bool:
    """Whether the checkpoint of ``card`` is on disk (no checksum is computed)."""
    return cached_path(card).is_file()


def _recorded_sha(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_file(path: Path, expected: str | None, what: str) -> bool:
    """True when ``path`` matches ``expected`` sha256 or the sha256 recorded next to it."""
    record = _recorded_sha(path)
    if expected is None and record.is_file():
        expected = record.read_text().split()[0].strip().lower()
    actual = sha256_file(path)
    if expected is None:
        record.write_text(f"{actual}  {path.name}\n")
        logger.warning("%s has no published sha256, so its integrity cannot be verified; recorded "
                       "sha256 %s in %s to detect later corruption", what, actual, record)
        return True
    if actual != expected:
        logger.warning("%s: %s has sha256 %s but %s was expected", what, path, actual, expected)
        return False
    return True


def fetch(card: ModelCard, *, offline: bool | None = None, force: bool = False,
          progress: bool = True) -> Path:
    """The verified local checkpoint of ``card``, downloading it if needed.

    A cached file whose sha256 no longer matches (the card's, or the one recorded at download time)
    is deleted and downloaded again; offline, that is an error.
    """
    path = cached_path(card)
    what = f"model {card.name!r}"
    if card.path is not None:
        if not path.is_file():
            raise InputError(f"{what}: its checkpoint {path} (registered in {card.source}) does not "
                             f"exist any more")
        if card.sha256 is not None and sha256_file(path) != card.sha256:
            raise InputError(f"{what}: {path} has changed since it was registered (sha256 differs "
                             f"from {card.sha256} in {card.source}); register it again")
        return path
    offline = is_offline(offline)
    if path.is_file() and not force:
        if _check_file(path, card.sha256, what):
            return path
        if offline:
            raise InputError(f"{what}: the cached file {path} is corrupt (sha256 mismatch) and "
                             f"cemkit is offline; delete it and download again with network")
        logger.warning("deleting the corrupt cached file %s and downloading it again", path)
        path.unlink()
    if offline:
        raise InputError(
            f"{what} is not in the cache (expected {path}) and cemkit is offline "
            f"({OFFLINE_ENV}=1 or offline=True). Run `cemkit zoo download {card.name}` where there "
            f"is network and copy {path.parent} into the cache ($CEMKIT_CACHE), or go online.")
    _recorded_sha(path).unlink(missing_ok=True)
    if card.sha256 is None:
        logger.warning("%s has no published sha256: the download cannot be verified; its sha256 "
                       "will be recorded to detect later corruption", what)
    try:
        digest = download(card.url, path, sha256=card.sha256, size=card.size, progress=progress)
    except InputError as exc:
        raise InputError(f"{what}: {exc} (cache: {path})") from None
    _recorded_sha(path).write_text(f"{digest}  {path.name}\n")
    return path


def resolve(spec: str | os.PathLike, *, offline: bool | None = None, progress: bool = True) -> Path:
    """A local checkpoint file for ``spec`` (``zoo:NAME``, an http(s) URL or a path).

    Raises
    ------
    InputError
        Unknown zoo name, missing local file, failed or unverifiable download, or offline without
        a cached copy.
    """
    text = os.fspath(spec)
    if text.startswith(ZOO_PREFIX):
        return fetch(get_card(text[len(ZOO_PREFIX):]), offline=offline, progress=progress)
    if re.match(r"^https?://", text):
        card = card_from_dict({"name": "url", "kind": "encoder", "frames": 1, "in_chans": 1,
                               "url": text}, source=text)
        path = url_dir(text) / card.filename
        if path.is_file() and _check_file(path, None, text):
            return path
        if is_offline(offline):
            raise InputError(f"{text} is not in the cache (expected {path}) and cemkit is offline")
        digest = download(text, path, progress=progress)
        _recorded_sha(path).write_text(f"{digest}  {path.name}\n")
        return path
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist (give a file, zoo:NAME or a URL; "
                         f"`cemkit zoo list` shows the zoo)")
    return path


def encoder_weights(spec: str | os.PathLike, *, offline: bool | None = None):
    """Resolve ``spec`` and read its encoder weights, with the card's normalisation mapped.

    The checkpoint's own ``norms`` take precedence; when it has none, the card's are used (for
    ``precedence: card`` cards, the card's always win). Returns ``EncoderWeights``.
    """
    from cemkit.models.encoders import read_encoder_weights

    text = os.fspath(spec)
    weights = read_encoder_weights(resolve(text, offline=offline))
    if not text.startswith(ZOO_PREFIX):
        return weights
    card = get_card(text[len(ZOO_PREFIX):])
    if card.normalisation is None:
        return weights
    if weights.norms is None or card.normalisation.precedence == "card":
        return _replace(weights, norms=card.norms)
    if any(abs(a - b) > 1e-4 for a, b in zip(weights.norms, card.norms)):
        logger.warning("model %r: the checkpoint's norms %s differ from the card's %s; using the "
                       "checkpoint's", card.name, tuple(weights.norms), card.norms)
    return weights


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **changes)
    if hasattr(obj, "_replace"):  # NamedTuple
        return obj._replace(**changes)
    for key, value in changes.items():
        setattr(obj, key, value)
    return obj


def _stem(filename: str) -> str:
    name = filename
    for suffix in (".pth.tar", ".pth", ".pt", ".ckpt", ".tar", ".bin", ".safetensors"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")
    return name or "model"


def inspect_checkpoint(path: Path, kind: str | None = None) -> dict[str, Any]:
    """Card fields read from a checkpoint (kind, architecture, frames, in_chans, norms, layout).

    Tries cemkit's segmentation loader (unless ``kind == "encoder"``), then the encoder reader.
    Returns an empty dict when neither recognises the file.
    """
    errors = []
    if kind in (None, "segmentation"):
        try:
            from cemkit.models.checkpoint import load_segmenter

            _, meta = load_segmenter(path)
            info = {"kind": "segmentation", "key_layout": "cemkit_segmenter",
                    "architecture": _get(meta, "arch"), "frames": _get(meta, "frames"),
                    "in_chans": _get(meta, "frames"), "num_classes": _get(meta, "num_classes"),
                    "norms": _get(meta, "norms"), "pixel_size_nm": _get(meta, "pixel_size_nm")}
            return {k: v for k, v in info.items() if v is not None}
        except Exception as exc:  # noqa: BLE001 - not a segmenter: try the next reader
            errors.append(f"segmentation model: {exc}")
    if kind in (None, "encoder"):
        try:
            from cemkit.models.encoders import read_encoder_weights

            weights = read_encoder_weights(path)
            meta = getattr(weights, "meta", None) or {}
            info = {"kind": "encoder", "architecture": weights.arch, "frames": 1,
                    "in_chans": weights.in_chans, "norms": weights.norms,
                    "key_layout": _LAYOUTS.get(_get(meta, "layout"))}
            return {k: v for k, v in info.items() if v is not None}
        except Exception as exc:  # noqa: BLE001
            errors.append(f"encoder: {exc}")
    logger.info("could not read %s as a cemkit model (%s)", path, "; ".join(errors))
    return {}


def _get(meta: Any, key: str) -> Any:
    if isinstance(meta, dict):
        return meta.get(key)
    return getattr(meta, key, None)


def register(source: str | os.PathLike, *, name: str | None = None, kind: str | None = None,
             architecture: str | None = None, frames: int | None = None,
             in_chans: int | None = None, norms: tuple[float, float] | None = None,
             num_classes: int | None = None, sha256: str | None = None,
             pixel_size_nm: float | None = None, licence: str | None = None, citation: str | None = None,
             description: str | None = None, copy: bool = False, fetch_now: bool = False,
             overwrite: bool = False, offline: bool | None = None,
             progress: bool = True) -> ModelCard:
    """Write a user card for a local checkpoint or a URL; returns the card.

    For a local file (and a URL with ``fetch_now=True``, which downloads it into the cache first)
    the sha256 and size are computed and kind, architecture, frames, in_chans, norms and the pixel size
    (``pixel_size_nm``, nm) are read from the checkpoint when cemkit can load it; explicit arguments win. A URL registered without
    fetching needs ``kind``; its card records ``sha256`` only if given.
    ``copy=True`` copies a local checkpoint into the cache so the card survives moving the file.
    """
    text = os.fspath(source)
    is_url = urllib.parse.urlsplit(text).scheme in ("http", "https", "file")
    filename = filename_from_url(text) if is_url else Path(text).name
    name = name or _stem(filename)
    _check_new_name(name, kind, text, is_url=is_url, overwrite=overwrite)

    info: dict[str, Any] = {}
    fields: dict[str, Any] = {"name": name}
    local = _locate(text, name, filename, fields, is_url=is_url, fetch_now=fetch_now,
                    offline=offline, sha256=sha256, progress=progress)
    if local is not None:
        sha256, info = _checksum_and_inspect(local, name, filename, fields, sha256=sha256,
                                             kind=kind, is_url=is_url, copy=copy)

    kind = kind or info.get("kind")
    if kind is None:
        where = "a URL registered without --fetch" if is_url and local is None else \
            f"{local} is not a checkpoint cemkit can read"
        raise InputError(f"cannot tell whether {text} is an encoder or a segmentation model "
                         f"({where}); pass --kind encoder|segmentation")
    fields.update(_described_fields(info, kind=kind, architecture=architecture, frames=frames,
                                    in_chans=in_chans, norms=norms, num_classes=num_classes,
                                    pixel_size_nm=pixel_size_nm))
    fields.update({"sha256": sha256, "licence": licence, "citation": citation,
                   "description": description})
    fields = {k: v for k, v in fields.items() if v is not None}
    card = card_from_dict(fields, source=f"registration of {text}", user=True)
    path = write_card(card, cards_dir())
    logger.info("registered %r in %s", name, path)
    return card_from_dict(fields, source=str(path), user=True)


def _check_new_name(name: str, kind: str | None, text: str, *, is_url: bool,
                    overwrite: bool) -> None:
    """Refuse a bad kind or a taken name; clear the cache of a user card being replaced."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"--kind {kind!r} must be one of {', '.join(KINDS)}")
    existing = user_cards()
    if name in existing and not overwrite:
        raise InputError(f"a user model called {name!r} is already registered ({existing[name].source});"
                         f" choose another --name or pass --overwrite")
    if name in shipped_cards():
        logger.warning("the user card %r will shadow the shipped card of the same name", name)
    inside = not is_url and model_dir(name).resolve() in Path(text).expanduser().resolve().parents
    if name in existing and model_dir(name).is_dir() and not inside:
        # a replaced card must not inherit the old card's cached file and recorded sha256
        shutil.rmtree(model_dir(name), ignore_errors=True)


def _locate(text: str, name: str, filename: str, fields: dict[str, Any], *, is_url: bool,
            fetch_now: bool, offline: bool | None, sha256: str | None,
            progress: bool) -> Path | None:
    """The local file to checksum (a URL is downloaded with ``fetch_now``, else None); sets the
    card's ``url`` and ``filename`` or ``path`` in ``fields``."""
    if is_url:
        fields["url"] = text
        fields["filename"] = filename
        if not fetch_now:
            return None
        local = model_dir(name) / filename
        if is_offline(offline):
            raise InputError(f"cannot fetch {text} to register it: cemkit is offline")
        download(text, local, sha256=sha256, progress=progress)
        return local
    local = Path(text).expanduser().resolve()
    if not local.is_file():
        raise InputError(f"cannot register {local}: no such file")
    fields["path"] = str(local)
    return local


def _checksum_and_inspect(local: Path, name: str, filename: str, fields: dict[str, Any], *,
                          sha256: str | None, kind: str | None, is_url: bool,
                          copy: bool) -> tuple[str, dict[str, Any]]:
    """Check ``local`` against ``sha256`` (if given), record its size, read what the checkpoint
    says about itself and, with ``copy``, copy it into the cache. Returns (sha256, checkpoint info)."""
    digest = sha256_file(local)
    if sha256 is not None and digest != sha256.lower():
        raise InputError(f"checksum mismatch for {local}: expected sha256 {sha256.lower()}, "
                         f"got {digest}")
    fields["size"] = local.stat().st_size
    info = inspect_checkpoint(local, kind)
    if is_url:
        _recorded_sha(local).write_text(f"{digest}  {local.name}\n")
    elif copy:
        target = model_dir(name) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(local, tmp)
        _recorded_sha(target).write_text(f"{digest}  {target.name}\n")
        fields["path"] = str(target)
    return digest, info


def _described_fields(info: dict[str, Any], *, kind: str, architecture: str | None,
                      frames: int | None, in_chans: int | None,
                      norms: tuple[float, float] | None,
                      num_classes: int | None, pixel_size_nm: float | None = None) -> dict[str, Any]:
    """The card fields that describe the model: explicit arguments, else what ``info`` read."""
    explicit_norms = norms is not None
    norms = norms if explicit_norms else info.get("norms")
    return {
        "kind": kind,
        "architecture": architecture or info.get("architecture"),
        "frames": frames or info.get("frames") or 1,
        "in_chans": in_chans or info.get("in_chans") or frames or info.get("frames") or 1,
        "num_classes": num_classes or info.get("num_classes"),
        "pixel_size_nm": pixel_size_nm if pixel_size_nm is not None else info.get("pixel_size_nm"),
        "key_layout": info.get("key_layout"),
        "normalisation": (None if norms is None else
                          {"mean": float(norms[0]), "std": float(norms[1]),
                           "precedence": "card" if explicit_norms or info.get("norms") is None
                           else "checkpoint"}),
    }
