"""The build step of a finetune run: the segmenter (from ``model.init``), the loss and the LightningModule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cemkit.errors import ConfigError
from cemkit.finetune.initialization import InitSource
from cemkit.finetune.losses import SegmentationLoss

log = logging.getLogger(__name__)


def plain(cfg: Any) -> Any:
    """A resolved plain-python copy of a config node (for checkpoints loaded with weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_model(cfg: DictConfig, frames: int, init: InitSource, encoder_named: bool | None = None):
    """Create the segmenter for ``frames`` from ``cfg.model`` and the resolved ``model.init``.

    Encoder weights of another architecture than ``model.encoder.arch`` build the checkpoint's
    architecture, unless the encoder was named on the command line (``encoder_named``; ``None``:
    read from the running Hydra command), which is an error naming both
    (:func:`cemkit.models.arch_choice.arch_for_weights`).

    Returns ``(model, norms or None, load_report)``.
    """
    from cemkit.models.checkpoint import segmenter_from_checkpoint
    from cemkit.models.arch_choice import arch_for_weights, command_line_overrides
    from cemkit.models.arch_choice import encoder_named as names_encoder
    from cemkit.models.deepem3d import FRAME_INITS, build_segmenter

    num_classes = int(cfg.data.num_classes)
    if init.kind == "segmenter":
        model, meta = segmenter_from_checkpoint(init.checkpoint, str(init.path))
        if model.frames > frames:
            raise ConfigError(f"{init.path}: the checkpoint is a {model.frames}fm model but model.frames={frames} "
                              "(a model can start from one with the same or fewer frames)")
        if model.frames < frames:
            from cemkit.models.deepem3d import inflate_segmenter

            log.info("%dfm model starts from the %dfm model %s (first convolution inflated onto the centre frame)",
                     frames, model.frames, init.path)
            model = inflate_segmenter(model, frames)
        model.train()  # loaded checkpoints come in eval mode; Lightning keeps a module's mode as it finds it
        if model.num_classes != num_classes:
            raise ConfigError(f"{init.path}: the checkpoint has num_classes={model.num_classes} but "
                              f"data.num_classes={num_classes}")
        n = len(model.state_dict())
        return model, meta.get("norms"), {"source": str(init.path), "kind": "segmenter", "loaded": n,
                                          "missing": [], "unexpected": []}
    m = cfg.model
    frame_init = str(m.frame_init)
    if frame_init not in FRAME_INITS:
        raise ConfigError(f"model.frame_init must be one of {', '.join(FRAME_INITS)}, got {frame_init!r}")
    if encoder_named is None:
        encoder_named = names_encoder(command_line_overrides())
    arch = arch_for_weights(str(m.encoder.arch), init.weights, encoder_named)
    model, report = build_segmenter(
        arch, frames, num_classes, weights=init.weights,
        timm_pretrained=bool(m.encoder.timm_pretrained) and init.kind == "none",
        decoder_width=m.decoder_width, dilations=list(m.dilations),
        dilated_max_stride=int(m.dilated_max_stride), final_relu=bool(m.final_relu),
        tap_max_stride=None if m.tap_max_stride is None else int(m.tap_max_stride),
        frame_init=frame_init)
    norms = init.weights.norms if init.kind == "encoder" else None
    if init.kind == "none" and bool(m.encoder.timm_pretrained):
        norms = (0.449, 0.226)  # ImageNet mean/std averaged over RGB
    if report:
        report["kind"] = "encoder"
    return model, norms, report


def freeze(model, spec: Any) -> list:
    """Freeze the encoder modules ``model.freeze_encoder`` names; returns them (logged)."""
    try:
        frozen = model.freeze_encoder(spec)
    except ValueError as exc:
        raise ConfigError(f"model.freeze_encoder: {exc}") from exc
    if frozen:
        log.info("frozen encoder modules: %d (BatchNorm kept in eval mode)", len(frozen))
    return frozen


def build_loss(cfg: DictConfig) -> SegmentationLoss:
    """The loss of ``cfg.loss`` for ``data.num_classes`` classes."""
    l = cfg.loss
    try:
        return SegmentationLoss(dict(plain(l.terms)), int(cfg.data.num_classes),
                                class_weights=None if l.class_weights is None else list(l.class_weights),
                                auto_balance=bool(l.auto_balance), focal_gamma=float(l.focal_gamma),
                                deep_supervision=float(l.deep_supervision))
    except ValueError as exc:
        raise ConfigError(f"loss: {exc}") from exc


def build_module(cfg: DictConfig, frames: int, model, init_value: Any, init: InitSource,
                 norms: tuple[float, float], norms_source: str, total_steps: int, out_dir: Path,
                 pixel_size_nm: float | None = None):
    """The :class:`~cemkit.finetune.module.SegmentationModule` of one run, with the metadata its
    checkpoints carry (frames, classes, norms, arch, init, crop, class names, and ``pixel_size_nm``: the
    yx pixel size of the training data in nm, or None when unknown; ``cemkit predict`` rescales new data
    to it)."""
    from cemkit.finetune.module import SegmentationModule

    d = cfg.data
    pixel_nm = None if pixel_size_nm is None else float(pixel_size_nm)
    meta = {"frames": frames, "num_classes": int(d.num_classes), "norms": [float(norms[0]), float(norms[1])],
            "arch": model.arch, "norms_source": norms_source, "init": str(init_value),
            "init_kind": init.kind, "crop": int(d.crop), "class_names": plain(d.class_names),
            "pixel_size_nm": pixel_nm}
    hparams = {"config": plain(cfg), "frames": frames, "pixel_size_nm": pixel_nm}
    if pixel_nm is None:
        log.info("%dfm: the training data's pixel size is unknown (no metadata, data.voxel_size=null): the model "
                 "records none, and predict feeds new data at its own pixel size", frames)
    else:
        log.info("%dfm: the model records a pixel size of %g nm (yx); predict rescales new data to it", frames,
                 pixel_nm)
    return SegmentationModule(model, build_loss(cfg), meta, dict(plain(cfg.optim)), total_steps, hparams=hparams,
                              overlays=int(cfg.val.overlays), overlay_dir=out_dir / "overlays")
