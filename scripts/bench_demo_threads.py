#!/usr/bin/env python
"""Benchmark: the demo's two branches in one process using every core, or in two processes side by side.

``cemkit demo`` finetunes and predicts two encoder inits (pretrained, random) that share nothing. This
measures the throughput of the demo's own work, the same model and batch as ``conf/demo.yaml``, both ways:

* **one process, C threads** (C = the available cores): what running the branches one after the other gets;
* **two processes, C/2 threads each**, started together (``jobs: auto`` in ``conf/demo.yaml``).

Two workloads: a finetuning step (DeepEM3D resnet18 decoder, 1 frame, batch 8, 128 px crops, BCE, AdamW)
and an inference batch (3 frames, batch 8, 320 px tiles). Each worker times ``--steps`` iterations after
``--warmup`` ones and reports its median; the repeats alternate the two layouts. Printed: the median
seconds per iteration of each layout, the throughput (iterations/s summed over the processes) and the
ratio two-process / one-process.

    .venv/bin/python scripts/bench_demo_threads.py            # add --quick for a fast smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(kind: str, threads: int, steps: int, warmup: int) -> None:
    import torch

    from cemkit.models.deepem3d import build_segmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "train":
        model, _ = build_segmenter("resnet18", 1, 2)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.randn(8, 1, 128, 128)
        y = (torch.rand(8, 1, 128, 128) > 0.5).float()

        def step():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, :1], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        model, _ = build_segmenter("resnet18", 3, 2)
        model.eval()
        x = torch.randn(8, 3, 320, 320)

        def step():
            with torch.inference_mode():
                model(x)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times)}), flush=True)


def run_layout(kind: str, processes: int, threads: int, steps: int, warmup: int) -> list[float]:
    cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(threads), "--steps", str(steps),
           "--warmup", str(warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"worker failed: {' '.join(cmd)}")
        out.append(json.loads(stdout.strip().splitlines()[-1])["median_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("train", "infer"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up, 1 repeat")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.steps, args.warmup)
        return
    from cemkit.hardware import describe_machine

    print(describe_machine(), flush=True)  # the machine the numbers were taken on
    if args.quick:
        args.steps, args.warmup, args.repeats = 3, 1, 1
    from cemkit.demo.branches import available_cores

    cores = available_cores()
    if cores < 2:
        raise SystemExit("needs at least 2 cores")
    half = cores // 2
    print(f"{cores} cores; {args.repeats} repeats of {args.steps} timed iterations")
    for kind, label in (("train", "finetune step, resnet18 1fm, batch 8, 128 px"),
                        ("infer", "inference batch, resnet18 3fm, batch 8, 320 px")):
        single, double = [], []
        for _ in range(args.repeats):
            single += run_layout(kind, 1, cores, args.steps, args.warmup)
            double.append(statistics.median(run_layout(kind, 2, half, args.steps, args.warmup)))
        s, d = statistics.median(single), statistics.median(double)
        one, two = 1 / s, 2 / d
        print(f"{label}:\n"
              f"  1 process x {cores} threads : {s:.3f} s/iteration, {one:.2f} iterations/s\n"
              f"  2 processes x {half} threads: {d:.3f} s/iteration each, {two:.2f} iterations/s together\n"
              f"  throughput ratio two processes / one: {two / one:.2f}x")


if __name__ == "__main__":
    main()
