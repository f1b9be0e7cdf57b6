"""`cemkit demo`: run the whole pipeline on synthetic EM data and write ``<output>/report.html``."""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from cemkit.demo.pipeline import run_demo
from cemkit.demo.report import write_report

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    start = time.perf_counter()
    result = run_demo(cfg)
    report = write_report(result)
    minutes = (time.perf_counter() - start) / 60
    log.info("demo finished in %.1f min", minutes)
    print(f"cemkit demo finished in {minutes:.1f} min. Report: {report}")
