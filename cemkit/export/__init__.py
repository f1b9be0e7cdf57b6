"""Export: encoder files (see :mod:`cemkit.pretrain.export`), and finetuned segmenters as
TorchScript, ONNX and BioImage Model Zoo packages, each checked against PyTorch.

>>> from cemkit.models.checkpoint import load_segmenter
>>> from cemkit.export import export_onnx
>>> model, meta = load_segmenter("outputs/finetune/best.ckpt")
>>> export_onnx(model, meta, "model.onnx")
"""

from cemkit.export.check import ExportCheckError
from cemkit.export.onnx import export_onnx, read_onnx_metadata
from cemkit.export.scripting import script_segmenter
from cemkit.export.torchscript import export_torchscript, read_torchscript_metadata


def export_bioimageio(*args, **kwargs):
    """See :func:`cemkit.export.bioimageio.export_bioimageio` (imported lazily: bioimageio is big)."""
    from cemkit.export.bioimageio import export_bioimageio as _export

    return _export(*args, **kwargs)


__all__ = ["ExportCheckError", "export_bioimageio", "export_onnx", "export_torchscript",
           "read_onnx_metadata", "read_torchscript_metadata", "script_segmenter"]
