"""Run a stage command in-process from the demo, with the same config the CLI would compose."""

from __future__ import annotations

import importlib
import logging
import shlex
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    """One stage invocation: the equivalent command line and how long it took."""

    name: str
    overrides: list[str]
    seconds: float = 0.0
    skipped: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        return "cemkit " + " ".join([self.name, *(shlex.quote(o) for o in self.overrides)])


def run_stage(name: str, overrides: list[str]) -> StageRun:
    """Compose ``conf/<name>.yaml`` with ``overrides`` and call ``cemkit.<name>.command.run``.

    Must be called inside a running Hydra app (the demo command), whose config search path
    already holds the packaged configs.
    """
    from hydra import compose

    import cemkit.zoo  # noqa: F401 - registers the resolver the stages use for ``zoo:NAME`` settings

    record = StageRun(name, list(overrides))
    log.info("demo step: %s", record.command)
    cfg = compose(config_name=name, overrides=list(overrides))
    runner = importlib.import_module(f"cemkit.{name}.command").run
    start = time.perf_counter()
    runner(cfg)
    record.seconds = time.perf_counter() - start
    return record
