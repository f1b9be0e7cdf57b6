#!/usr/bin/env python
"""Benchmark: the watershed split of touching objects, one object at a time against the whole volume.

The peer is the usual whole-volume recipe (scipy distance transform, scikit-image h-maxima and
watershed on the full mask, as ``split_touching`` and PyTorch Connectomics' watershed do). cemkit's
``cemkit predict watershed=true`` first labels connected components slab by slab into a zarr array,
then splits each component in its own bounding box (``split_objects``). Both run on the same
synthetic mask of mitochondrion-like blobs, each in its own subprocess so that its peak RSS is its
own. Prints the median time and peak RSS (above the loaded mask and imports) over ``--repeats`` alternating runs,
the ratios, and how many voxels the two labellings put in different objects.

    .venv/bin/python scripts/bench_watershed.py            # 64 x 768 x 768; add --quick for a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def make_mask(shape: tuple[int, int, int], threshold: float, seed: int = 0):
    """Smooth random blobs (about 9 % foreground at 0.62): many objects, some touching."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(max(2, s // 8) for s in shape))
    field = ndimage.gaussian_filter(ndimage.zoom(coarse, 8, order=1), 4)
    return (field[: shape[0], : shape[1], : shape[2]] > threshold).astype(np.uint8)


def child(mode: str, out: str) -> None:
    """Run one side on ``out/mask.npy``; write its labels (npy) and a JSON line of time and peak RSS to stdout."""
    import resource
    import time

    import numpy as np

    from cemkit.io import create_zarr
    from cemkit.predict.postprocess import label_components, object_table, split_objects, split_touching

    mask = np.load(Path(out) / "mask.npy")
    shape = mask.shape
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if mode == "whole":
        labels = split_touching(mask, (2, 1, 1), h=2.0)
        n = int(labels.max())
    else:
        labels = create_zarr(Path(out) / "labels.zarr", shape, "uint32", (16, *shape[1:]), overwrite=True)
        count = label_components(mask, labels, slab_size=16)
        n = split_objects(labels, object_table(labels, slab_size=16, count=count), (2, 1, 1), h=2.0, slab_size=16)
    seconds = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    np.save(Path(out) / f"{mode}.npy", np.asarray(labels[:]))
    print(json.dumps({"mode": mode, "objects": n, "seconds": seconds, "peak_mib": peak,
                      "foreground": float(mask.mean())}))


def disagreement(a, b) -> float:
    """Fraction of foreground voxels not in the object of ``b`` that overlaps their object of ``a`` most."""
    import numpy as np

    fa, fb = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    fg = fa > 0
    pairs, counts = np.unique(np.stack([fa[fg], fb[fg]]), axis=1, return_counts=True)
    best = np.zeros(fa.max() + 1, np.int64)
    np.maximum.at(best, pairs[0], counts)
    return 1 - best.sum() / fg.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 768, 768])
    ap.add_argument("--threshold", type=float, default=0.62)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="32 x 256 x 256, one repeat")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.shape, args.repeats = [32, 256, 256], 1
    shape = tuple(args.shape)
    if args.child:
        child(args.child, args.out)
        return
    from cemkit.hardware import describe_machine

    print(describe_machine(), flush=True)  # the machine the numbers were taken on

    import numpy as np

    runs: dict[str, list[dict]] = {"whole": [], "objects": []}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "mask.npy", make_mask(shape, args.threshold))
        for _ in range(args.repeats):
            for mode, results in runs.items():
                cmd = [sys.executable, __file__, "--child", mode, "--out", tmp]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                results.append(json.loads(line))
        differ = disagreement(np.load(Path(tmp) / "objects.npy"), np.load(Path(tmp) / "whole.npy"))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mib")} for m, rs in runs.items()}
    first = runs["whole"][0]
    print(f"mask {shape}, foreground {first['foreground']:.3f}, {args.repeats} alternating repeats (medians)")
    for mode, label in (("whole", "whole volume (peer)"), ("objects", "per object (cemkit)")):
        print(f"  {label:22s} {runs[mode][0]['objects']:6d} objects  {med[mode]['seconds']:7.1f} s  "
              f"peak RSS {med[mode]['peak_mib']:7.0f} MiB")
    print(f"  time ratio cemkit / peer {med['objects']['seconds'] / med['whole']['seconds']:.2f}, "
          f"memory ratio {med['objects']['peak_mib'] / med['whole']['peak_mib']:.3f}; "
          f"voxels in a different object: {differ:.5f}")


if __name__ == "__main__":
    main()
