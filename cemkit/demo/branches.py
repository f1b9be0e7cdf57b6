"""Run the demo's two encoder-init branches (pretrained, random) one after the other or side by side.

A branch finetunes its 1fm/3fm/5fm models and predicts and evaluates the test volume with them
(:func:`cemkit.demo.pipeline.run_branch`, passed in as ``run``). The two branches share nothing but their inputs, so on a
machine with two or more cores they run in two processes. On a CPU this is faster than one process
using every core, because a finetuning step of the demo's models (resnet18, batch 8, 128 px) gains little
from a second thread: on 2 cores, two 1-thread processes did 1.26x the steps of one 2-thread process
(``scripts/bench_demo_threads.py``, medians of 3 alternating repeats; 1.1x in a 3-step smoke run), and
the demo's two finetunes took 232 s side by side against 290 s one after the other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from cemkit.errors import ConfigError

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - [{init}] %(message)s"


@dataclass(frozen=True)
class BranchSpec:
    """What one branch needs; picklable, so that a worker process can run it."""

    init: str  # "pretrained" or "random": names the output folders
    init_value: str  # the finetune ``model.init`` value (the encoder file, or "none")
    output: Path
    paths: dict[str, Path]  # the demo's data files (make_data)
    lists: dict[str, list[str]]  # each stage's overrides from the demo config
    seed: int
    tta: int
    resume: bool


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_plan(jobs, threads, branches: int, cores: int | None = None) -> tuple[int, int | None]:
    """Resolve the demo's ``jobs`` / ``threads`` settings.

    Parameters
    ----------
    jobs : "auto" or int
        Branches run at once. ``auto``: all of them when there are at least as many cores, else 1.
    threads : "auto" or int
        Torch threads per branch. ``auto``: the cores divided among the jobs, or ``None`` (torch's own
        default, unchanged) when the branches run one after the other.
    branches
        Number of branches.
    cores
        Available cores (default: :func:`available_cores`).

    Returns
    -------
    (int, int or None)
        Jobs (at most ``branches``) and threads per job.

    Examples
    --------
    >>> worker_plan("auto", "auto", 2, cores=2)
    (2, 1)
    >>> worker_plan("auto", "auto", 2, cores=16)
    (2, 8)
    >>> worker_plan("auto", "auto", 2, cores=1)
    (1, None)
    >>> worker_plan(1, 4, 2, cores=16)
    (1, 4)
    """
    cores = available_cores() if cores is None else cores
    if str(jobs) == "auto":
        jobs = branches if cores >= branches else 1
    elif not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs must be 'auto' or a positive integer, got {jobs!r}")
    jobs = min(jobs, branches)
    if str(threads) == "auto":
        threads = max(1, cores // jobs) if jobs > 1 else None
    elif not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be 'auto' or a positive integer, got {threads!r}")
    return jobs, threads


def run_branches(run: Callable[[BranchSpec], tuple[list, dict]], specs: list[BranchSpec], jobs: int,
                 threads: int | None) -> list[tuple[list, dict]]:
    """Run every branch and return their ``(stage runs, metrics)`` in the order of ``specs``.

    With ``jobs > 1`` each branch runs in a fresh (spawned) process with ``threads`` torch threads; its
    log goes to stderr, tagged with the init, and to ``<output>/logs/<init>.log``. A branch that fails
    does not stop the other; the first error is raised once both have ended, and a re-run of the demo
    skips the steps that finished.
    """
    if jobs <= 1:
        import torch

        saved = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return [run(spec) for spec in specs]
        finally:
            torch.set_num_threads(saved)

    log.info("running the %s branches side by side: %d processes x %d torch threads (logs: %s)",
             "/".join(s.init for s in specs), jobs, threads or 1, specs[0].output / "logs")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_run_in_worker, run, spec) for spec in specs]
        errors = [f.exception() for f in futures]
    for spec, error in zip(specs, errors):
        if error is not None:
            log.error("demo branch %s failed: %s", spec.init, error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]


def _init_worker(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set: only possible before any parallel work
            pass


def _run_in_worker(run: Callable[[BranchSpec], tuple[list, dict]], spec: BranchSpec) -> tuple[list, dict]:
    """Worker entry: logging tagged with the branch, the packaged configs, then the branch itself."""
    from hydra import initialize_config_module

    logs = spec.output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT.format(init=spec.init))
    handlers: list[logging.Handler] = [logging.StreamHandler(), logging.FileHandler(logs / f"{spec.init}.log")]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with initialize_config_module(config_module="cemkit.conf", version_base=None):
            return run(spec)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
