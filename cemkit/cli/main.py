"""`cemkit` console entry point.

``cemkit <command> [key=value ...]`` dispatches to a stage. Stage commands are Hydra apps composed
from the packaged ``conf/`` (see :mod:`cemkit.cli.hydra_app`); ``cemkit zoo`` is a plain
argparse command.
"""

from __future__ import annotations

import importlib
import sys

from cemkit import __version__
from cemkit.cli.commands import BY_NAME, COMMANDS


def _usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        "usage: cemkit <command> [key=value ...] [--cfg job] [-m] [--help]",
        "",
        "cemkit: raw volume-EM data to segmentation models (curate -> pretrain -> finetune -> predict).",
        "",
        "commands:",
    ]
    lines += [f"  {c.name:<{width}}  {c.help}" for c in COMMANDS]
    lines += [
        "",
        "Stage commands take Hydra overrides, e.g.:",
        "  cemkit curate input=raw/ output=corpus/ workers=2",
        "  cemkit pretrain data.corpus=corpus/ model/encoder=resnet18 --cfg job",
        "Run `cemkit <command> --help` for a command's configuration.",
    ]
    return "\n".join(lines)


def _load(target: str):
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            return None
        raise
    return getattr(module, func_name, None)


def _configure_plain_logging() -> None:
    """Logging for the non-Hydra commands (Hydra configures it for the stage commands)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"cemkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    command = BY_NAME.get(name)
    if command is None:
        print(f"cemkit: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    func = _load(command.target)
    if func is None:
        print(f"cemkit {name}: this stage is not built yet in cemkit {__version__}.", file=sys.stderr)
        return 3
    if not command.hydra:
        _configure_plain_logging()
        return int(func(rest) or 0)
    import cemkit.zoo  # noqa: F401 - registers the resolver the stages use for ``zoo:NAME`` settings
    from cemkit.cli.hydra_app import run_hydra_command

    return run_hydra_command(name, func, rest, list_keys=command.list_keys)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
