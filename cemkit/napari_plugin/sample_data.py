"""napari's File > Open Sample for cemkit: a synthetic EM volume, and a tiny trained model to try every widget.

The model is trained once, on synthetic EM of another "lab" (another contrast style) than the sample
volume, so that Predict shows what a model from elsewhere gets wrong and Adapt can fix it; it is
cached in ``$CEMKIT_CACHE/napari-sample/`` (about 20 s on a 2-core CPU, nothing downloaded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cemkit.napari_plugin.llvm_guard import load_triton_apart
from cemkit.zoo.cache import cache_root

load_triton_apart()  # before anything imports torch's dynamo: see llvm_guard
log = logging.getLogger(__name__)

#: metadata key of an Image layer that names the model to use with it (the widgets pick it up)
MODEL_KEY = "cemkit_model"
SAMPLE_SHAPE = (12, 192, 192)
SAMPLE_STYLE = 2   # the sample volume's contrast style ...
MODEL_STYLE = 0    # ... differs from the one the tiny model was trained on


def sample_volume(shape: tuple[int, int, int] = SAMPLE_SHAPE, seed: int = 3):
    """The synthetic EM sample (:func:`cemkit.data.synthetic.make_volume`): ``(image uint8, mito 0/1 uint8)``."""
    from cemkit.data.synthetic import make_volume

    sv = make_volume(shape=shape, seed=seed, style=SAMPLE_STYLE)
    return np.asarray(sv.image), np.asarray(sv.mito, dtype=np.uint8)


def sample_model(steps: int = 60, root: Path | None = None) -> Path:
    """The tiny sample model's folder (``1fm/best.ckpt``), trained on first use and cached.

    It is a ``cemkit finetune +experiment=tiny_finetune`` run (resnet10t, 64 px crops) of ``steps`` steps.
    """
    from hydra import compose, initialize_config_module

    from cemkit.data.synthetic import make_volume
    from cemkit.finetune.orchestrate import run_finetune
    from cemkit.io import write_tif_stack
    from cemkit.napari_plugin.jobs import written_to

    folder = (root or cache_root() / "napari-sample") / f"tiny-{steps}"
    if (folder / "1fm" / "best.ckpt").exists():
        return folder
    log.info("training the tiny sample model (%d steps, once) into %s", steps, folder)
    with written_to(folder) as partial:
        sv = make_volume(shape=(8, 128, 128), seed=1, style=MODEL_STYLE)
        images = write_tif_stack(partial / "data" / "images.tif", sv.image)
        labels = write_tif_stack(partial / "data" / "labels.tif", (np.asarray(sv.mito) * 255).astype(np.uint8))
        with initialize_config_module(config_module="cemkit.conf", version_base=None):
            cfg = compose(config_name="finetune", overrides=[
                "+experiment=tiny_finetune", f"data.images={images}", f"data.labels={labels}", f"output={partial}",
                f"trainer.max_steps={steps}", f"val.every={steps}", "val.overlays=0", "logger=none"])
        run_finetune(cfg)
    return folder


def synthetic_em() -> list[tuple]:
    """File > Open Sample > cemkit > Synthetic EM volume: the image and its true mitochondria."""
    image, mito = sample_volume()
    return [(image, {"name": "synthetic EM"}, "image"),
            (mito, {"name": "true mitochondria", "visible": False}, "labels")]


def synthetic_em_with_model() -> list[tuple]:
    """File > Open Sample > cemkit > Synthetic EM volume + tiny model: the same, with the model named in the
    image layer's metadata, so that Predict and Adapt start from it."""
    layers = synthetic_em()
    image, meta, kind = layers[0]
    layers[0] = (image, {**meta, "metadata": {MODEL_KEY: str(sample_model())}}, kind)
    return layers
