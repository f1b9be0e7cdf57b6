#!/usr/bin/env python
"""Benchmark: cemkit's tiled predictor against MONAI's ``sliding_window_inference``, side by side.

Same model, same volume (the CDeep3M test images, 5 x 1024 x 1024 uint8, or a synthetic stand-in),
same tile, overlap, batch size and Gaussian blending (sigma 0.125 x tile). Prints for each the median
voxels/s over ``--repeats`` alternating runs, the ratio cemkit / MONAI and the maximum absolute
difference of the two probability maps. Then measures cemkit's peak RSS (a subprocess streaming
``run_prediction`` from a zarr volume to zarr outputs) on a small and on a large volume; the large
one is several times bigger than that RSS.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"      # MONAI
    .venv/bin/python scripts/bench_predict.py                   # add --quick for a fast smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cdeep3m_mito" / "test" / "images"


class BenchNet(torch.nn.Module):
    """A small fully convolutional net (3x3, 3x3, 1x1; 16 channels): 1 frame in, 1 logit out."""

    def __init__(self, width: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 1, 1))

    def forward(self, x):
        return self.body(x)


class ScaleNet(torch.nn.Module):
    """An element-wise "model" (learned scale and shift of the centre frame) for the long streaming
    run that measures memory: it costs next to nothing, so the run measures cemkit's own streaming."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(8.0))
        self.shift = torch.nn.Parameter(torch.tensor(-4.0))

    def forward(self, x):
        return x[:, x.shape[1] // 2:x.shape[1] // 2 + 1] * self.scale + self.shift


def load_volume(quick: bool) -> np.ndarray:
    if DATA.is_dir():
        from cemkit.io import open_volume

        vol = np.asarray(open_volume(DATA).as_uint8()[...])
        source = str(DATA)
    else:
        from scipy import ndimage

        rng = np.random.default_rng(0)
        vol = (ndimage.gaussian_filter(rng.random((5, 1024, 1024)), (0, 3, 3)) * 255).astype(np.uint8)
        source = "synthetic"
    if quick:
        vol = vol[:2, :512, :512]
    print(f"volume: {source} {vol.shape} uint8")
    return np.ascontiguousarray(vol)


def run_cemkit(model, vol, args) -> tuple[np.ndarray, float]:
    from cemkit.predict.models import Segmenter
    from cemkit.predict.streaming import SlabPredictor, TileSettings, run_slabs

    pred = SlabPredictor([Segmenter(model, frames=1)],
                         TileSettings(args.tile, args.overlap, "gaussian", 0.125, 0, args.batch, 0),
                         device="cpu", amp=False, ensemble="mean", threshold=0.5)
    out = np.zeros(vol.shape, np.float32)

    def sink(z0, z1, p):
        out[z0:z1] = p[:, 0]

    t = time.perf_counter()
    run_slabs(pred, vol, sink, slab_size=args.slab, progress=False)
    return out, time.perf_counter() - t


def run_monai(model, vol, args) -> tuple[np.ndarray, float]:
    from monai.inferers import sliding_window_inference

    t = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(vol).float()[:, None] / 255.0
        out = sliding_window_inference(x, (args.tile, args.tile), args.batch, lambda b: torch.sigmoid(model(b)),
                                       overlap=args.overlap, mode="gaussian", sigma_scale=0.125)
        out = out[:, 0].numpy()
    return out, time.perf_counter() - t


def rss_child(volume: str, output: str, tile: int, batch: int, slab: int) -> None:
    """Subprocess: stream-predict ``volume`` (zarr) to ``output`` and report the peak RSS."""
    from cemkit.predict.models import Segmenter
    from cemkit.predict.runner import PredictSettings, run_prediction

    settings = PredictSettings.defaults(tile_size=tile, overlap=0.25, border=0, batch_size=batch, slab_size=slab,
                               device="cpu", progress=False, instances=False, overlays=0, resume=False)
    rec = run_prediction(volume, output, models=[Segmenter(ScaleNet().eval())], settings=settings)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "voxels_per_s": rec["timings"]["voxels_per_s"]}))


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM of /proc/self/status (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` survives ``fork`` + ``exec`` on Linux, so in a child started by a big parent it
    reports the parent's size; VmHWM belongs to the child's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib if sys.platform == "darwin" else kib * 1024


def make_zarr(path: Path, base: np.ndarray, slices: int) -> int:
    from cemkit.io import create_zarr

    arr = create_zarr(path, (slices, *base.shape[1:]), "uint8", (8, 512, 512), overwrite=True)
    for z0 in range(0, slices, 8):  # the real slices repeated, mirrored on every other pass
        arr[z0:min(z0 + 8, slices)] = np.stack([base[z % len(base)] if (z // len(base)) % 2 == 0
                                                else base[z % len(base), ::-1] for z in range(z0, min(z0 + 8, slices))])
    return slices * base.shape[1] * base.shape[2]


def measure_rss(base: np.ndarray, slices: int, args, workdir: Path) -> dict:
    vol = workdir / f"vol_{slices}.zarr"
    nbytes = make_zarr(vol, base, slices)
    cmd = [sys.executable, __file__, "--rss-child", str(vol), str(workdir / f"out_{slices}"),
           "--tile", str(args.tile), "--batch", str(args.batch), "--slab", str(args.slab)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["volume_bytes"] = nbytes
    info["slices"] = slices
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--slab", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-small", type=int, default=40, help="slices of the small RSS volume")
    ap.add_argument("--rss-large", type=int, default=2400, help="slices of the large RSS volume")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-child", nargs=2, metavar=("VOLUME", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child, args.tile, args.batch, args.slab)
        return
    if args.quick:
        args.repeats, args.rss_small, args.rss_large = 1, 8, 32

    from cemkit.hardware import describe_machine

    print(describe_machine(), flush=True)  # the machine the numbers were taken on
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    vol = load_volume(args.quick)
    model = BenchNet().eval()
    voxels = vol.size
    speeds: dict[str, list[float]] = {"cemkit": [], "monai": []}
    outs = {}
    run_cemkit(model, vol[:1, :256, :256], args)  # warm-up both
    run_monai(model, vol[:1, :256, :256], args)
    for _ in range(args.repeats):
        for name, fn in (("cemkit", run_cemkit), ("monai", run_monai)):
            out, seconds = fn(model, vol, args)
            speeds[name].append(voxels / seconds)
            outs[name] = out
    med = {k: statistics.median(v) for k, v in speeds.items()}
    diff = float(np.abs(outs["cemkit"] - outs["monai"]).max())
    print(f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}, gaussian blending, "
          f"{args.repeats} repeats (median)")
    print(f"{'':8} {'voxels/s':>12}")
    print(f"{'cemkit':8} {med['cemkit']:12.4g}")
    print(f"{'MONAI':8} {med['monai']:12.4g}")
    print(f"ratio cemkit/MONAI: {med['cemkit'] / med['monai']:.3f}x   max |cemkit - MONAI|: {diff:.2e}")

    if args.skip_rss:
        return
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        rows = [measure_rss(vol, n, args, Path(tmp)) for n in (args.rss_small, args.rss_large)]
    print("streaming run_prediction (zarr in -> zarr out, element-wise model), peak RSS of the process:")
    for r in rows:
        print(f"  {r['slices']:5d} x {vol.shape[1]} x {vol.shape[2]}: volume {r['volume_bytes'] / 2**20:8.1f} MiB, "
              f"peak RSS {r['peak_rss_bytes'] / 2**20:7.1f} MiB, "
              f"volume/RSS {r['volume_bytes'] / r['peak_rss_bytes']:5.2f}, {r['voxels_per_s']:.3g} voxels/s")
    growth = rows[1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"]
    print(f"peak RSS ratio large/small: {growth:.3f} for a {rows[1]['volume_bytes'] / rows[0]['volume_bytes']:.0f}x "
          f"larger volume")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    main()
