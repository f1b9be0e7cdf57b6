"""``cemkit export``: encoder files from pretrain checkpoints; TorchScript, ONNX and bioimage.io
packages from finetuned segmentation models.

``format=auto`` looks at the checkpoint: a finetuned segmenter is exported by the suffix of
``output`` (``.pt``/``.ts`` TorchScript, ``.onnx`` ONNX, ``.zip`` or a folder bioimage.io);
anything else is treated as a pretrain checkpoint and its encoder is written with
:func:`cemkit.pretrain.export.export_encoder`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

FORMATS = ("auto", "encoder", "torchscript", "onnx", "bioimageio")
SUFFIXES = {".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
            ".onnx": "onnx", ".zip": "bioimageio", "": "bioimageio"}

# Hydra's run folder goes next to the exported file (``output`` is a file here, not a folder).
OmegaConf.register_new_resolver("cemkit_parent", lambda p: str(Path(str(p)).parent), replace=True)


def format_for(output: Path) -> str:
    """Export format of a finetuned model implied by the suffix of ``output``."""
    fmt = SUFFIXES.get(output.suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot tell the export format from {output} (suffix {output.suffix!r}): "
                          f"use .pt/.ts (TorchScript), .onnx, .zip or a folder (bioimage.io), "
                          f"or set format=torchscript|onnx|bioimageio")
    return fmt


def _segmenter_path(path: Path) -> Path | None:
    """The segmenter checkpoint ``path`` points at, or None when it is not one."""
    from cemkit.models.checkpoint import is_segmenter_checkpoint, read_checkpoint

    if path.is_dir():
        if (path / "best.ckpt").is_file():
            return path / "best.ckpt"
        found = sorted(p.parent.name for p in path.glob("*fm/best.ckpt"))
        if found:
            raise InputError(f"{path} holds several models ({', '.join(found)}); export one of "
                             f"them, e.g. checkpoint={path / found[0]}")
        raise InputError(f"{path}: folder without best.ckpt; give a checkpoint file")
    return path if is_segmenter_checkpoint(read_checkpoint(path)) else None


def run(cfg: DictConfig) -> None:
    """Export ``cfg.checkpoint`` to ``cfg.output`` (see ``conf/export.yaml``)."""
    from cemkit.zoo import resolve

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} must be one of {', '.join(FORMATS)}")
    output = Path(str(cfg.output)).expanduser()
    source = resolve(str(cfg.checkpoint))
    segmenter = None if fmt == "encoder" else _segmenter_path(source)

    if fmt == "encoder" or (fmt == "auto" and segmenter is None):
        from cemkit.pretrain.export import export_encoder

        path = export_encoder(source, output, corpus_id=cfg.corpus_id)
        print(f"wrote encoder {path}")
        return
    if segmenter is None:
        raise InputError(f"{source}: not a finetuned cemkit segmentation checkpoint, so it cannot be "
                         f"exported as {fmt} (a pretrain checkpoint exports with format=encoder)")
    if fmt == "auto":
        fmt = format_for(output)
    if cfg.activation not in ("probabilities", "logits"):
        raise ConfigError(f"activation={cfg.activation} must be probabilities or logits")

    from cemkit.models.checkpoint import load_segmenter

    model, meta = load_segmenter(segmenter)
    common = {"tile": int(cfg.tile), "output": str(cfg.activation),
              "tolerance": float(cfg.check_tolerance), "source": str(segmenter)}
    if fmt == "torchscript":
        from cemkit.export.torchscript import export_torchscript

        path = export_torchscript(model, meta, output, **common)
    elif fmt == "onnx":
        from cemkit.export.onnx import export_onnx

        path = export_onnx(model, meta, output, opset=int(cfg.opset), **common)
    else:
        from cemkit.export.bioimageio import export_bioimageio

        bio = cfg.bioimageio
        path = export_bioimageio(
            model, meta, output, opset=int(cfg.opset), name=bio.name, description=bio.description,
            authors=list(bio.authors), licence=str(bio.license), tags=list(bio.tags),
            weight_formats=list(bio.weight_formats), **common)
    print(f"wrote {fmt} export of {segmenter} to {path} (checked against PyTorch within "
          f"{float(cfg.check_tolerance):g})")
