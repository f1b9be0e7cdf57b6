"""Cost of predict's pixel-size resampling per slab: the input slab to the model's grid and the map back.

A slab of 8 planes of 1024 x 1024 px plus the 2-plane halo of a 5fm model (10 uint8 planes) is zoomed by
4.6 / 5.9 (VNC data for a CDeep3M model) and an 8-plane float32 map is brought back, as
:class:`cemkit.predict.streaming.SlabPredictor` does. Medians of ``--repeats`` runs.

    .venv/bin/python scripts/bench_rescale.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cemkit.hardware import describe_machine
from cemkit.predict.rescale import to_input_grid, to_model_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--planes", type=int, default=8)
    ap.add_argument("--factor", type=float, default=4.6 / 5.9)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(describe_machine(), f"; torch threads {torch.get_num_threads()}")
    block = np.random.default_rng(0).integers(0, 256, (args.planes + 2, args.size, args.size), dtype=np.uint8)
    times: dict[str, list[float]] = {"to model grid": [], "back to input grid": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        small = to_model_grid(block, args.factor)
        times["to model grid"].append(time.perf_counter() - t)
        prob = np.random.default_rng(1).random((args.planes, 1, *small.shape[-2:]), dtype=np.float32)
        t = time.perf_counter()
        to_input_grid(prob, args.size, args.size)
        times["back to input grid"].append(time.perf_counter() - t)
    print(f"slab {block.shape} uint8 x {args.factor:.4f} -> {small.shape}; map back to {args.size}^2")
    for name, values in times.items():
        print(f"{name:<20} median {np.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
