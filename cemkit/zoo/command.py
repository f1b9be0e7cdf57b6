"""``cemkit zoo list | info NAME | download NAME | register PATH_OR_URL`` (argparse, not Hydra)."""

from __future__ import annotations

import argparse
import logging
import sys

from cemkit.errors import CemkitError
from cemkit.zoo.cache import cache_root, is_offline
from cemkit.zoo.cards import KINDS, all_cards, get_card
from cemkit.zoo.registry import cached_path, fetch, register


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cemkit zoo",
        description="Model zoo: pretrained encoders and segmentation models. Cards ship with "
                    "cemkit; user cards live in $CEMKIT_CACHE/cards (default ~/.cache/cemkit). "
                    "Use a model as model.init=zoo:NAME (finetune) or checkpoint=zoo:NAME (predict).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="list the models, whether each is cached")
    p.add_argument("--kind", choices=KINDS, help="only models of this kind")

    p = sub.add_parser("info", help="show a model card and its cache path")
    p.add_argument("name")

    p = sub.add_parser("download", help="download a model into the cache (verified; resumes)")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--offline", action="store_true", default=None,
                   help="never use the network (same as CEMKIT_OFFLINE=1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("register", help="add a user card for a local checkpoint or a URL")
    p.add_argument("source", metavar="PATH_OR_URL")
    p.add_argument("--name", help="card name (default: the file name without suffix)")
    p.add_argument("--kind", choices=KINDS, help="default: read from the checkpoint")
    p.add_argument("--arch", dest="architecture", help="architecture (default: from the checkpoint)")
    p.add_argument("--frames", type=int, help="input frames of a segmentation model (1, 3 or 5)")
    p.add_argument("--in-chans", type=int, help="input channels (default: frames)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--mean", type=float, help="normalisation mean of uint8/255 intensities")
    p.add_argument("--std", type=float, help="normalisation std of uint8/255 intensities")
    p.add_argument("--pixel-size", type=float, dest="pixel_size_nm",
                   help="yx pixel size (nm) of the training data (default: from the checkpoint)")
    p.add_argument("--sha256", help="expected sha256 (checked for local and fetched files)")
    p.add_argument("--licence")
    p.add_argument("--citation")
    p.add_argument("--description")
    p.add_argument("--copy", action="store_true",
                   help="copy a local checkpoint into the cache instead of referring to it")
    p.add_argument("--fetch", action="store_true",
                   help="download a URL now to record its sha256 and read its metadata")
    p.add_argument("--overwrite", action="store_true", help="replace a user card of that name")
    return parser


def _fmt_size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "?"  # pragma: no cover


def _list(kind: str | None) -> int:
    cards = [c for c in all_cards().values() if kind is None or c.kind == kind]
    rows = [("NAME", "KIND", "ARCH", "FRAMES", "SIZE", "CACHED", "SOURCE")]
    for c in cards:
        path = cached_path(c)
        size = path.stat().st_size if path.is_file() else c.size
        rows.append((c.name, c.kind, c.architecture or "?", str(c.frames), _fmt_size(size),
                     "yes" if path.is_file() else "no", "user" if c.user else "shipped"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"\ncache: {cache_root()}{'  (offline)' if is_offline() else ''}")
    return 0


def _info(name: str) -> int:
    card = get_card(name)
    path = cached_path(card)
    data = card.to_dict()
    norm = data.pop("normalisation", None)
    data.setdefault("sha256", "unknown (not published; recorded in the cache at download)")
    data.setdefault("size", "unknown")
    width = max(len(k) for k in [*data, "normalisation", "card", "cached"])
    for key, value in data.items():
        print(f"{key:<{width}}  {value}")
    if norm is not None:
        note = (" (the checkpoint's own norms take precedence)"
                if norm["precedence"] == "checkpoint" else "")
        print(f"{'normalisation':<{width}}  mean {norm['mean']}, std {norm['std']}{note}")
    print(f"{'card':<{width}}  {card.source}{' (user)' if card.user else ''}")
    state = "yes" if path.is_file() else "no"
    print(f"{'cached':<{width}}  {state}: {path}")
    record = path.with_name(path.name + ".sha256")
    if card.sha256 is None and record.is_file():
        print(f"{'recorded':<{width}}  sha256 {record.read_text().split()[0]} (at download time)")
    return 0


def _register(args: argparse.Namespace) -> int:
    if (args.mean is None) != (args.std is None):
        raise CemkitError("give both --mean and --std, or neither")
    card = register(
        args.source, name=args.name, kind=args.kind, architecture=args.architecture,
        frames=args.frames, in_chans=args.in_chans, num_classes=args.num_classes,
        norms=None if args.mean is None else (args.mean, args.std), sha256=args.sha256,
        pixel_size_nm=args.pixel_size_nm,
        licence=args.licence, citation=args.citation, description=args.description,
        copy=args.copy, fetch_now=args.fetch, overwrite=args.overwrite)
    print(f"registered {card.name} ({card.kind}, {card.architecture or 'architecture unknown'}) "
          f"in {card.source}; use it as zoo:{card.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cemkit zoo``; returns the exit status (2 for a user error)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "list":
            return _list(args.kind)
        if args.action == "info":
            return _info(args.name)
        if args.action == "download":
            path = fetch(get_card(args.name), offline=args.offline, force=args.force,
                         progress=not args.quiet)
            print(path)
            return 0
        return _register(args)
    except CemkitError as exc:
        print(f"cemkit zoo: error: {exc}", file=sys.stderr)
        return 2
