"""How the other ranks of a multi-process (DDP) run re-run the current ``cemkit`` stage command.

The CLI (:mod:`cemkit.cli.hydra_app`) records the command it runs with :func:`set_current_command`;
:func:`cemkit.tracking.build_trainer` calls :func:`prepare_ddp_relaunch` before Lightning starts the
other ranks. This module sits in the bottom layer so that the stages' trainer builder need not
import the CLI.
"""

from __future__ import annotations

import os
import sys

_current_command: str | None = None  # the stage command being run (for DDP re-launch)


def set_current_command(name: str | None) -> None:
    """Record the ``cemkit`` stage command being run (``None``: not a CLI run)."""
    global _current_command
    _current_command = name


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP re-launch of the other ranks re-run the current stage command.

    Lightning rebuilds each extra rank's command line from ``sys.argv`` (``python -m module`` or
    ``script`` plus ``sys.argv[1:]``) and appends ``hydra.run.dir=...``. The CLI rewrote ``sys.argv``
    for Hydra, so it is set here to ``<entry> <command> <overrides>``. Outside a CLI run (e.g. a
    test calling ``run(cfg)`` directly) nothing changes.
    """
    from hydra.core.hydra_config import HydraConfig

    import __main__

    if _current_command is None or not HydraConfig.initialized():
        return
    overrides = list(HydraConfig.get().overrides.task)
    if getattr(__main__, "__spec__", None) is not None:
        sys.argv = [sys.argv[0], _current_command, *overrides]
    else:
        orig = getattr(sys, "orig_argv", None) or sys.argv
        script = orig[1] if len(orig) > 1 and not orig[1].startswith("-") else orig[0]
        sys.argv = [os.path.abspath(script), _current_command, *overrides]
