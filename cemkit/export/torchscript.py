"""Export a finetuned segmenter to TorchScript (``torch.jit.load`` runs it without cemkit).

The metadata (:func:`cemkit.export.metadata.export_metadata`) is stored as the extra file
``cemkit.json`` inside the archive; read it with :func:`read_torchscript_metadata`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cemkit.export.check import check_inputs, compare
from cemkit.export.metadata import export_metadata
from cemkit.export.scripting import reference_output, script_segmenter
from cemkit.io.atomic import atomic_path

logger = logging.getLogger(__name__)
EXTRA_FILE = "cemkit.json"


def export_torchscript(model, meta: dict[str, Any], path: str | os.PathLike, *, tile: int = 256,
                       output: str = "probabilities", tolerance: float = 1e-4,
                       source: str | None = None) -> Path:
    """Write ``model`` as TorchScript to ``path`` after checking it against PyTorch.

    The saved file is loaded back and run on random inputs of other sizes than the ``tile``
    example; if any output differs from PyTorch's by more than ``tolerance``,
    :class:`~cemkit.export.check.ExportCheckError` is raised and nothing is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = script_segmenter(model, tile=tile, output=output)
    info = export_metadata(model, meta, output, source)
    with atomic_path(path) as tmp:  # a failed check deletes the temporary file
        torch.jit.save(scripted, str(tmp), _extra_files={EXTRA_FILE: json.dumps(info, indent=1)})
        loaded = torch.jit.load(str(tmp), map_location="cpu")
        with torch.no_grad():
            compare(lambda x: reference_output(model, x, output), loaded,
                    check_inputs(int(model.frames), tile, int(model.max_stride)), tolerance,
                    f"TorchScript export of {source or 'the model'}")
    logger.info("wrote TorchScript model %s", path)
    return path


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``cemkit.json`` metadata stored in a TorchScript export."""
    extra = {EXTRA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_FILE])
