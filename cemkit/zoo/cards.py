"""Model cards: one YAML file per model, shipped in ``cemkit/zoo/cards/`` or registered by the user.

A card says what a checkpoint is (encoder or segmentation model, architecture, input frames and
channels, normalisation, the pixel size it was trained at, checkpoint key layout), where to get it (``url``, or ``path`` for a local
file), how to check it (``sha256``, ``size``) and how it may be used (``licence``, ``citation``).

User cards live in ``$CEMKIT_CACHE/cards/<name>.yaml`` and shadow a shipped card of the same name
(with a warning), as in empanada's registry; unlike empanada, cards carry a checksum and a licence,
and unknown or malformed fields fail with a message naming the card file.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cemkit.errors import CemkitError, InputError
from cemkit.io.atomic import atomic_write_text
from cemkit.io.pixel_size import check_pixel_size
from cemkit.zoo.cache import cards_dir

logger = logging.getLogger(__name__)

KINDS = ("encoder", "segmentation")
KEY_LAYOUTS = (
    "cemkit_encoder",   # cemkit encoder export {"format": "cemkit-encoder", "state_dict", ...}
    "cemkit_segmenter",  # cemkit finetune checkpoint (load_segmenter)
    "cellemnet_moco",   # CEM500K MoCo: module.encoder_q.* (fc.* = MLP head, dropped)
    "swav",             # CEM1.5M SwAV: module.* (projection_head.*, prototypes.* dropped)
    "cemkit_pretrain",  # cemkit pretrain (Lightning) checkpoint
    "state_dict",       # plain timm / torchvision state dict (fc.* dropped)
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation of uint8/255 input: ``(x / 255 - mean) / std``.

    ``precedence`` is ``"checkpoint"`` when the checkpoint stores its own ``norms`` and those win
    over the card's numbers (the card then documents them), or ``"card"`` when the card's numbers
    are to be used.
    """

    mean: float
    std: float
    precedence: str = "checkpoint"


@dataclass(frozen=True)
class ModelCard:
    """One zoo entry. See ``docs/zoo.md`` for the YAML fields."""

    name: str
    kind: str
    frames: int
    in_chans: int
    architecture: str | None = None
    normalisation: Normalisation | None = None
    url: str | None = None
    path: str | None = None
    filename: str | None = None
    key_layout: str | None = None
    sha256: str | None = None
    size: int | None = None
    licence: str | None = None
    citation: str | None = None
    homepage: str | None = None
    description: str | None = None
    num_classes: int | None = None
    pixel_size_nm: float | None = None  # yx pixel size (nm) of the training data; the checkpoint's own wins
    source: str = field(default="", compare=False)  # the card file it was read from
    user: bool = field(default=False, compare=False)  # True for a user card

    @property
    def norms(self) -> tuple[float, float] | None:
        """``(mean, std)`` or None."""
        if self.normalisation is None:
            return None
        return (self.normalisation.mean, self.normalisation.std)

    def to_dict(self) -> dict[str, Any]:
        """The card as plain YAML-able data (without ``source``/``user``, None fields dropped)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("user")
        if self.normalisation is not None:
            data["normalisation"] = dataclasses.asdict(self.normalisation)
        return {k: v for k, v in data.items() if v is not None}


_FIELDS = {f.name: f for f in dataclasses.fields(ModelCard) if f.name not in ("source", "user")}
_REQUIRED = ("name", "kind", "frames", "in_chans")


def filename_from_url(url: str) -> str:
    """Last path component of ``url`` without the query (``.../x.pth.tar?download=1`` -> ``x.pth.tar``)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return name or "checkpoint.pth"


def card_from_dict(data: Any, source: str = "<dict>", user: bool = False) -> ModelCard:
    """Validate plain data and build a :class:`ModelCard`.

    Raises
    ------
    InputError
        Naming ``source`` and the field at fault (unknown field, missing field, wrong type or value).
    """

    def fail(problem: str) -> InputError:
        return InputError(f"model card {source}: {problem}")

    _check_fields(data, fail)
    values = dict(data)
    _check_values(values, fail)
    _check_location(values, fail)
    if values.get("normalisation") is not None:
        values["normalisation"] = _normalisation(values["normalisation"], fail)
    return ModelCard(**values, source=source, user=user)


def _check_fields(data: Any, fail: Callable[[str], InputError]) -> None:
    """A mapping with only known fields and every required one."""
    if not isinstance(data, dict):
        raise fail(f"expected a YAML mapping of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    missing = [k for k in _REQUIRED if data.get(k) is None]
    if missing:
        raise fail(f"missing required field(s) {', '.join(missing)}")


def _check_values(values: dict[str, Any], fail: Callable[[str], InputError]) -> None:
    """Name, kind, key layout and the types of the integer and text fields."""
    name = values["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail(f"name {name!r} must be letters, digits, '_', '-' or '.'")
    if values["kind"] not in KINDS:
        raise fail(f"kind {values['kind']!r} must be one of {', '.join(KINDS)}")
    for key in ("frames", "in_chans", "size", "num_classes"):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise fail(f"{key} must be a positive integer, got {value!r}")
    for key in ("architecture", "url", "path", "filename", "licence", "citation", "homepage",
                "description", "key_layout", "sha256"):
        value = values.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(f"{key} must be a string, got {type(value).__name__}")
    if values.get("key_layout") is not None and values["key_layout"] not in KEY_LAYOUTS:
        raise fail(f"key_layout {values['key_layout']!r} must be one of {', '.join(KEY_LAYOUTS)}")
    if values.get("pixel_size_nm") is not None:
        try:
            values["pixel_size_nm"] = check_pixel_size(values["pixel_size_nm"], "pixel_size_nm")
        except CemkitError as exc:
            raise fail(str(exc)) from None


def _check_location(values: dict[str, Any], fail: Callable[[str], InputError]) -> None:
    """Exactly one of url / path, a normalised sha256 and a plain ``filename`` (filled in)."""
    if (values.get("url") is None) == (values.get("path") is None):
        raise fail("give exactly one of url (download) or path (a local checkpoint)")
    url = values.get("url")
    if url is not None and urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise fail(f"url {url!r} must be http(s):// or file://")
    sha = values.get("sha256")
    if sha is not None:
        sha = sha.strip().lower()
        if not SHA256_RE.match(sha):
            raise fail(f"sha256 {values['sha256']!r} is not 64 hexadecimal digits")
        values["sha256"] = sha
    if values.get("filename") is None:
        values["filename"] = filename_from_url(url) if url else Path(values["path"]).name
    elif Path(values["filename"]).name != values["filename"] or values["filename"] in (".", ".."):
        raise fail(f"filename {values['filename']!r} must be a plain file name")


def _normalisation(norm: Any, fail: Callable[[str], InputError]) -> Normalisation:
    """The card's ``normalisation`` mapping, checked."""
    if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm) or set(norm) - {
            "mean", "std", "precedence"}:
        raise fail("normalisation must be a mapping with mean, std and optionally precedence")
    try:
        mean, std = float(norm["mean"]), float(norm["std"])
    except (TypeError, ValueError):
        raise fail(f"normalisation mean/std must be numbers, got {norm!r}") from None
    if not std > 0:
        raise fail(f"normalisation std must be > 0, got {std}")
    precedence = norm.get("precedence", "checkpoint")
    if precedence not in ("checkpoint", "card"):
        raise fail(f"normalisation precedence {precedence!r} must be 'checkpoint' or 'card'")
    return Normalisation(mean, std, precedence)


def read_card(path: str | Path, user: bool = False) -> ModelCard:
    """Read and validate one card file; its ``name`` must equal the file stem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"model card {path}: not valid YAML ({exc})") from None
    except OSError as exc:
        raise InputError(f"model card {path}: cannot read it ({exc.strerror})") from None
    card = card_from_dict(data, source=str(path), user=user)
    if card.name != path.stem:
        raise InputError(f"model card {path}: name {card.name!r} differs from the file name "
                         f"{path.stem!r}; rename one of them")
    return card


def write_card(card: ModelCard, directory: str | Path | None = None) -> Path:
    """Write ``card`` as ``<directory>/<name>.yaml`` (default: the user cards folder), atomically."""
    directory = Path(directory) if directory is not None else cards_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(directory / f"{card.name}.yaml",
                             yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True),
                             encoding="utf-8")


def shipped_cards() -> dict[str, ModelCard]:
    """Cards shipped inside the package (``cemkit/zoo/cards/*.yaml``), by name."""
    folder = resources.files("cemkit.zoo") / "cards"
    cards = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            with resources.as_file(entry) as path:
                card = read_card(path)
            cards[card.name] = card
    return cards


def user_cards() -> dict[str, ModelCard]:
    """Cards registered by the user (``$CEMKIT_CACHE/cards/*.yaml``), by name."""
    folder = cards_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: read_card(p, user=True) for p in sorted(folder.glob("*.yaml"))}


def all_cards() -> dict[str, ModelCard]:
    """Shipped cards updated with user cards; a user card shadows a shipped one (logged as a warning)."""
    cards = shipped_cards()
    for name, card in user_cards().items():
        if name in cards:
            logger.warning("user model card %s shadows the shipped card %r", card.source, name)
        cards[name] = card
    return dict(sorted(cards.items()))


def get_card(name: str) -> ModelCard:
    """The card called ``name`` (user cards first). Raises InputError listing the known names."""
    cards = all_cards()
    if name not in cards:
        known = ", ".join(cards) or "(none)"
        raise InputError(f"no model called {name!r} in the zoo; known models: {known} "
                         f"(`cemkit zoo list`; add one with `cemkit zoo register PATH_OR_URL`)")
    return cards[name]
