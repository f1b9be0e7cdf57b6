"""Run a stage function as a Hydra app composed from the packaged configs.

The configs live in the top-level ``conf/`` folder of the repository and are installed as the
package ``cemkit.conf``, so they are found from any working directory, from a wheel or an
editable install alike.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from omegaconf import DictConfig

from cemkit.ddp_relaunch import set_current_command
from cemkit.errors import CemkitError

CONFIG_PACKAGE = "pkg://cemkit.conf"
log = logging.getLogger("cemkit")


def run_hydra_command(name: str, func: Callable[[DictConfig], object], argv: list[str],
                      list_keys: tuple[str, ...] = ()) -> int:
    """Compose ``conf/<name>.yaml`` with the Hydra overrides in ``argv`` and call ``func(cfg)``.

    Supports everything ``@hydra.main`` does (``--cfg job``, ``-m``, ``--help``, group overrides).
    A :class:`~cemkit.errors.CemkitError` is logged without a traceback and gives exit status 2.
    ``list_keys`` name keys whose ``key=a,b`` means a list (``key=[a,b]``) outside multirun.
    """
    import hydra

    status = {"code": 0}
    set_current_command(name)  # for Lightning's DDP re-launch of the other ranks

    @hydra.main(version_base=None, config_path=CONFIG_PACKAGE, config_name=name)
    def _app(cfg: DictConfig) -> None:
        try:
            func(cfg)
        except CemkitError as exc:
            log.error("%s", exc)
            status["code"] = 2
            if _is_multirun():
                raise

    saved = sys.argv
    handlers = set(logging.getLogger().handlers)
    sys.argv = [f"cemkit {name}", *_with_job_name(comma_lists_as_lists(argv, list_keys), name)]
    try:
        _app()
    except SystemExit as exc:  # hydra exits on config errors with a message already printed
        code = exc.code if isinstance(exc.code, int) else 1
        return code
    finally:
        sys.argv = saved
        _drop_run_log_files(handlers)
    return status["code"]


def _drop_run_log_files(before: set[logging.Handler]) -> None:
    """Detach the log-file handlers the run added to the root logger (``runs/<time>/<name>.log``).

    Hydra leaves them attached; a caller that runs several commands in one process (the demo, tests)
    would otherwise keep writing every later message into the first run's folder, or fail once it is gone.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in before and isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def comma_lists_as_lists(argv: list[str], keys: tuple[str, ...]) -> list[str]:
    """Rewrite ``key=a,b`` as ``key=[a,b]`` for the given keys, unless the run is a multirun (-m).

    >>> comma_lists_as_lists(["checkpoint=a.ckpt,b.ckpt", "tta=8"], ("checkpoint",))
    ['checkpoint=[a.ckpt,b.ckpt]', 'tta=8']
    """
    if not keys or "-m" in argv or "--multirun" in argv:
        return list(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and "," in value and value[:1] not in "[\"'":
            arg = f"{key}=[{value}]"
        out.append(arg)
    return out


def _with_job_name(argv: list[str], name: str) -> list[str]:
    """Add ``hydra.job.name=<name>`` next to the user's overrides (argparse wants them contiguous)."""
    is_override = [not a.startswith("-") and ("=" in a or a.startswith("~")) for a in argv]
    last = max((i for i, flag in enumerate(is_override) if flag), default=len(argv) - 1)
    return [*argv[: last + 1], f"hydra.job.name={name}", *argv[last + 1 :]]


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside a hydra run
        return False
