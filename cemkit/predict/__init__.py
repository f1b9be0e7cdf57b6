"""Tiled, streaming inference with TTA, ensembles and post-processing (`cemkit predict`).

>>> from cemkit.predict import PredictSettings, run_prediction   # doctest: +SKIP
>>> run_prediction("stack.tif", "outputs/p", "outputs/finetune", settings=PredictSettings.defaults(tta=8))  # doctest: +SKIP

Modules: ``tiling`` (windows, padding, blending weights), ``tta`` (16 variants and inverses),
``ensemble`` (mean / weighted / vote), ``streaming`` (slab engine, z context), ``orthoplane``,
``postprocess`` (mask, components, watershed, object table), ``overlays``, ``progress`` (resume),
``devices`` (device, AMP, torchrun), ``models`` (checkpoint specs), ``runner`` (orchestration),
``command`` (Hydra entry point). See docs/predict.md.
"""

from __future__ import annotations

_EXPORTS = {
    "PredictSettings": "cemkit.predict.runner",
    "run_prediction": "cemkit.predict.runner",
    "Segmenter": "cemkit.predict.models",
    "resolve_checkpoints": "cemkit.predict.models",
    "load_segmenters": "cemkit.predict.models",
    "SlabPredictor": "cemkit.predict.streaming",
    "TileSettings": "cemkit.predict.streaming",
    "frame_indices": "cemkit.predict.streaming",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):  # lazy: `cemkit predict --help` should not import torch
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cemkit.predict' has no attribute {name!r}")
