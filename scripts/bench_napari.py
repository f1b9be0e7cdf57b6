"""The napari plugin's two numbers (docs/results.md, "The napari plugin"):

1. ``first-layer``: seconds from clicking Predict to the first output layer, on a real stack, next to
   ``cemkit predict``'s own time (the same function, called as the CLI calls it) on the same input and model:
   the ratio is what the plugin adds (reading the layer, worker thread, adding layers).
2. ``memory``: peak memory (RSS) while the plugin's predict streams a zarr-backed layer of ``--gib`` GiB,
   against the layer's size and against ``cemkit predict``'s run on the same store (each in its own process). The layer holds bright 64 px squares on 8 % of a grey field (objects about as
   dense as mitochondria) and the model is one 3x3 convolution that thresholds brightness, so that the run
   measures the data path (slab reads, tiling, zarr writes, objects) and not a network's speed on 2 cores.

    xvfb-run -a python scripts/bench_napari.py first-layer --model MODEL \\
        --images ../shared/data/vnc_mito/stack1/images --pixel-size 4.6
    python scripts/bench_napari.py memory --gib 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from cemkit.hardware import describe_machine


def first_layer(args) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from cemkit.io import open_volume
    from cemkit.napari_plugin.predict_widget import PredictWidget
    from cemkit.predict import PredictSettings, run_prediction

    image = np.asarray(open_volume(args.images)[:])
    viewer = napari.Viewer(show=False)
    layer = viewer.add_image(image, name="stack")
    widget = PredictWidget(viewer)
    widget.model.value, widget.pixel_size.value = args.model, args.pixel_size or 0.0
    plugin_s, cli_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            widget.output.value = Path(tmp) / f"plugin{r}"
            widget.run(layer)  # times itself: widget.first_layer_s
            while widget.job.running:
                QApplication.processEvents()
                time.sleep(0.01)
            plugin_s.append(widget.first_layer_s)
            settings = PredictSettings.defaults(voxel_size=args.pixel_size or None, progress=False, overlays=0)
            start = time.perf_counter()
            run_prediction(args.images, Path(tmp) / f"cli{r}", args.model, settings=settings)
            cli_s.append(time.perf_counter() - start)
    viewer.close()
    p, c = statistics.median(plugin_s), statistics.median(cli_s)
    print(f"input {args.images}: {image.shape} {image.dtype}; model {args.model}")
    print(f"plugin, click to first layer: median {p:.1f} s ({', '.join(f'{v:.1f}' for v in plugin_s)})")
    print(f"cemkit predict (run_prediction), same input: median {c:.1f} s ({', '.join(f'{v:.1f}' for v in cli_s)})")
    print(f"ratio plugin / cemkit predict: {p / c:.2f}")


class PeakRSS:
    """The largest resident set size of this process, sampled every 50 ms in a thread."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _threshold_model():
    import torch

    from cemkit.predict import Segmenter

    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():  # probability = sigmoid(20 (x - 0.55)) of the normalised centre pixel
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 20.0
        conv.bias.fill_(-11.0)
    return Segmenter(conv, frames=1, name="one-conv threshold")


def memory_run(args) -> None:
    """One run in its own process (``--via plugin``: the widget's job on the layer; ``cli``: run_prediction on
    the store, as ``cemkit predict`` calls it): prints the peak RSS while predicting and over the whole run."""
    import zarr

    from cemkit.napari_plugin.jobs import predict_layer
    from cemkit.napari_plugin.layer_data import image_volume
    from cemkit.predict import PredictSettings, run_prediction

    store, out = Path(args.store), Path(args.out)
    phase = {"predict": 0}
    with PeakRSS() as peak:
        def last_slab(done: int, total: int) -> None:
            if total and done == total:
                phase["predict"] = peak.peak

        start = time.perf_counter()
        if args.via == "plugin":
            record = predict_layer(image_volume(zarr.open_array(str(store), mode="r"), "layer"), "", out,
                                   models=[_threshold_model()],
                                   on_event=lambda e: e["kind"] == "progress" and last_slab(e["done"], e["total"])
                                   ).record
        else:
            settings = PredictSettings.defaults(output_format="zarr", resume=False, progress=False, overlays=0)
            record = run_prediction(store, out, models=[_threshold_model()], settings=settings,
                                    monitor=lambda stage, done, total: last_slab(done, total))
        seconds = time.perf_counter() - start
    print(f"RESULT {args.via} {phase['predict']} {peak.peak} {record.get('objects')} {seconds:.0f}")


def memory(args) -> None:
    import subprocess
    import sys

    import zarr

    side = 4096
    depth = max(1, round(args.gib * 2**30 / side**2))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        store = zarr.open_array(str(Path(tmp) / "layer.zarr"), mode="w", shape=(depth, side, side),
                                chunks=(1, 1024, 1024), dtype="uint8")
        rng = np.random.default_rng(0)
        for z in range(depth):
            bright = rng.random((side // 64, side // 64)) < 0.08
            store[z] = np.kron(np.where(bright, 200, 80).astype(np.uint8), np.ones((64, 64), np.uint8))
        layer_gib = depth * side * side / 2**30
        print(f"zarr layer {depth} x {side} x {side} uint8 = {layer_gib:.2f} GiB")
        peaks = {}
        for via in ("plugin", "cli"):
            run = subprocess.run([sys.executable, __file__, "memory-run", "--via", via, "--store",
                                  str(Path(tmp) / "layer.zarr"), "--out", str(Path(tmp) / f"out-{via}")],
                                 capture_output=True, text=True, check=True)
            _, _, predict_peak, peak, objects, seconds = next(
                line for line in run.stdout.splitlines() if line.startswith("RESULT")).split()
            peaks[via] = int(peak)
            print(f"{via:>6}: peak RSS {int(peak) / 2**30:.2f} GiB ({int(predict_peak) / 2**30:.2f} GiB until the last "
                  f"slab was predicted, then objects), {objects} objects, {seconds} s")
        print(f"ratio plugin / cemkit predict (peak RSS): {peaks['plugin'] / peaks['cli']:.2f}; "
              f"plugin peak / layer size: {peaks['plugin'] / 2**30 / layer_gib:.2f}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    a = sub.add_parser("first-layer")
    a.add_argument("--model", required=True)
    a.add_argument("--images", default="../shared/data/vnc_mito/stack1/images")
    a.add_argument("--pixel-size", type=float, default=None)
    a.add_argument("--repeats", type=int, default=3)
    b = sub.add_parser("memory")
    b.add_argument("--gib", type=float, default=2.0)
    b.add_argument("--tmp", default=None, help="where the layer and the outputs are written (disk, not tmpfs)")
    c = sub.add_parser("memory-run")  # one side of `memory`, in a process of its own
    c.add_argument("--via", choices=["plugin", "cli"], required=True)
    c.add_argument("--store", required=True)
    c.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.part == "memory-run":
        return memory_run(args)
    print(describe_machine())
    {"first-layer": first_layer, "memory": memory}[args.part](args)


if __name__ == "__main__":
    main()
