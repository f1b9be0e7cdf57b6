"""Export a finetuned segmenter to ONNX (dynamic batch, height and width), checked with onnxruntime.

The metadata travels in the model's ``metadata_props``: ``cemkit`` (the full JSON of
:func:`cemkit.export.metadata.export_metadata`) plus ``frames``, ``norm_mean``, ``norm_std`` and
``output`` as plain strings for tools that read single keys.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from cemkit.errors import CemkitError
from cemkit.export.check import check_inputs, compare
from cemkit.export.metadata import export_metadata
from cemkit.export.scripting import reference_output, script_segmenter
from cemkit.io.atomic import atomic_path

logger = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "input", "output"


def _require():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise CemkitError(f"ONNX export needs the `export` extra: pip install 'cemkit[export]' "
                          f"({exc.name} is missing)") from None
    return onnx, onnxruntime


def export_onnx(model, meta: dict[str, Any], path: str | os.PathLike, *, tile: int = 256,
                output: str = "probabilities", opset: int = 17, tolerance: float = 1e-4,
                source: str | None = None) -> Path:
    """Write ``model`` as ONNX to ``path`` after checking it with onnxruntime against PyTorch.

    Raises :class:`~cemkit.export.check.ExportCheckError` (and writes nothing) when an output on
    random inputs of other sizes than the ``tile`` example differs by more than ``tolerance``.
    """
    onnx, ort = _require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = script_segmenter(model, tile=tile, output=output)
    stride = int(model.max_stride)
    side = max(stride, -(-int(tile) // stride) * stride)
    example = torch.zeros(1, int(model.frames), side, side)
    info = export_metadata(model, meta, output, source)
    with atomic_path(path) as tmp:  # a failed check deletes the temporary file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated but exact
            torch.onnx.export(
                scripted, (example,), str(tmp), dynamo=False, opset_version=int(opset),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}})
        proto = onnx.load(str(tmp))
        props = {"cemkit": json.dumps(info), "frames": str(info["frames"]),
                 "output": output, "stride": str(stride)}
        if info["norms"] is not None:
            props.update(norm_mean=repr(info["norms"][0]), norm_std=repr(info["norms"][1]))
        if info["pixel_size_nm"] is not None:
            props.update(pixel_size_nm=repr(info["pixel_size_nm"]))
        onnx.helper.set_model_props(proto, props)
        proto.producer_name = "cemkit"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        compare(lambda x: reference_output(model, x, output),
                lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0],
                check_inputs(int(model.frames), tile, stride), tolerance,
                f"ONNX export of {source or 'the model'}")
    logger.info("wrote ONNX model %s (opset %d)", path, opset)
    return path


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``cemkit`` metadata stored in an ONNX export."""
    onnx, _ = _require()
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props["cemkit"])
