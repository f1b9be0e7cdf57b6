"""The screenshots of docs/napari.md, made by running the widgets on the sample data (so they stay current).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshots.py [--out docs/img]

Predict runs the tiny sample model on the synthetic volume; two slices of the prediction are corrected
from the true labels, Adapt runs for 40 s and predicts again. One picture after each step.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np


def wait(widget) -> None:
    from qtpy.QtWidgets import QApplication

    while widget.job.running:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(path)
    logging.info("wrote %s", path)


def main() -> None:
    import napari

    from cemkit.napari_plugin import sample_data
    from cemkit.napari_plugin.adapt_widget import AdaptWidget
    from cemkit.napari_plugin.predict_widget import PredictWidget

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img", type=Path)
    parser.add_argument("--work", default=None, type=Path, help="output folder of the runs (default: a temp folder)")
    args = parser.parse_args()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="cemkit-napari-shots-"))
    viewer = napari.Viewer(title="cemkit in napari")
    viewer.window.resize(1500, 950)
    for data, meta, kind in sample_data.synthetic_em_with_model():
        getattr(viewer, f"add_{kind}")(data, **meta)
    truth = np.asarray(viewer.layers["true mitochondria"].data)
    viewer.dims.set_point(0, 6)
    predict, adapt = PredictWidget(viewer), AdaptWidget(viewer)
    predict.output.value = adapt.output.value = work
    viewer.window.add_dock_widget(predict, name="Predict (cemkit)", area="right")
    viewer.window.add_dock_widget(adapt, name="Adapt (cemkit)", area="right")

    predict.run()
    wait(predict)
    shot(viewer, args.out / "napari_predict.png")

    objects = viewer.layers["synthetic EM objects"]
    for z in (3, 8):  # the user corrects two slices of the prediction
        zz, yy, xx = np.nonzero(np.ones_like(truth[z:z + 1]))
        objects.data_setitem((zz + z, yy, xx), truth[z].ravel().astype(objects.data.dtype))
    adapt.label_layer.value, adapt.minutes.value = objects, 40 / 60
    adapt.run()
    wait(adapt)
    wait(predict)  # Adapt hands the model to Predict, which runs again
    viewer.layers["synthetic EM objects"].visible = False
    shot(viewer, args.out / "napari_adapt.png")
    viewer.close()


if __name__ == "__main__":
    main()
