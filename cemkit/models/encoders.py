"""timm encoder creation and the one loader for encoder weights (every checkpoint layout).

Layouts understood by :func:`read_encoder_weights`:

``cemkit-encoder``
    The file written by ``cemkit export`` (:func:`cemkit.pretrain.export.export_encoder`):
    ``{"format": "cemkit-encoder", "version": 1, "arch", "in_chans", "norms": [mean, std],
    "corpus_id", "state_dict"}``.
``moco``
    CEM500K / cellemnet / facebookresearch MoCo checkpoints: ``state_dict`` with
    ``module.encoder_q.*`` keys (also without ``module.``); the projection head ``fc.*`` is dropped,
    ``encoder_k``, ``queue`` and ``queue_ptr`` are ignored; ``arch`` and ``norms`` are read from the
    top level when present.
``cemkit-pretrain``
    A Lightning checkpoint of ``cemkit pretrain`` (``state_dict`` with ``model.encoder_q.*`` keys and
    ``arch``, ``in_chans``, ``norms``, ``corpus_id`` under ``hyper_parameters``).
``swav``
    CEM1.5M SwAV checkpoints: ``module.`` prefix, ``projection_head*`` / ``prototypes*`` dropped.
``state_dict``
    A plain timm or torchvision state dict (optionally under ``state_dict`` / ``model`` and with a
    ``module.`` prefix); the torchvision ``fc.*`` classifier is dropped. timm and torchvision resnets
    use the same parameter names (``conv1``, ``bn1``, ``layer1``-``layer4``).

Everything is read with ``torch.load(weights_only=True)``: no code from a checkpoint ever runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cemkit.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "EncoderWeights",
    "adapt_first_conv",
    "create_encoder",
    "first_conv_name",
    "infer_arch",
    "load_encoder_weights",
    "read_encoder_weights",
]

ENCODER_FORMAT = "cemkit-encoder"
ENCODER_FORMAT_VERSION = 1

# Keys of a MoCo / SwAV checkpoint that are not part of the encoder.
_SWAV_DROP = ("projection_head", "prototypes")
_MAX_LISTED_KEYS = 12


@dataclass
class EncoderWeights:
    """Encoder weights in timm naming plus what is known about them.

    Attributes
    ----------
    state_dict
        Parameter and buffer tensors, keyed by timm module names (no classifier head).
    arch
        timm architecture name when the checkpoint says (e.g. ``"resnet50"``), else ``None``.
    in_chans
        Input channels of the first convolution in ``state_dict`` (``None`` when no conv was found).
    norms
        ``(mean, std)`` of the intensities (uint8 / 255) the encoder was trained on, or ``None``.
    meta
        ``layout`` (see the module docstring), ``source`` (file path or ``"<dict>"``), ``dropped``
        (keys removed as not part of the encoder), and, when present, ``corpus_id`` and ``epoch``.
    """

    state_dict: dict[str, torch.Tensor]
    arch: str | None = None
    in_chans: int | None = None
    norms: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# encoder creation


def create_encoder(arch: str = "resnet50", in_chans: int = 1, pretrained: bool = False, **kwargs) -> nn.Module:
    """Create a timm model without classifier head (``num_classes=0``): ``model(x)`` gives pooled features.

    Parameters
    ----------
    arch
        Any timm model name (``resnet50``, ``resnet18``, ``resnet10t``, ``efficientnet_b0``, ...).
    in_chans
        Input channels (1 for grey EM; 3 or 5 for multi-frame inputs).
    pretrained
        timm's own (ImageNet) weights; needs network access. EM weights are loaded with
        :func:`load_encoder_weights` instead.
    **kwargs
        Passed on to :func:`timm.create_model` (e.g. ``drop_path_rate``).

    Returns
    -------
    torch.nn.Module
        The timm model; ``model.num_features`` is the width of its output.
    """
    import timm

    try:
        return timm.create_model(arch, pretrained=pretrained, in_chans=in_chans, num_classes=0, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        if "Unknown model" in str(exc):
            raise InputError(f"unknown timm architecture {arch!r} (see timm.list_models())") from exc
        raise


def first_conv_name(model: nn.Module) -> str | None:
    """Module name of the first convolution of a timm model (``conv1``, ``conv1.0``, ``stem.0``...)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if name and f"{name}.weight" in model.state_dict():
        return name
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return mod_name
    return None


# --------------------------------------------------------------------------------------------
# first-conv channel adaptation


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-convolution kernel ``(out, C, kh, kw)`` to ``in_chans`` input channels.

    The rule keeps the output identical when the same grey image is fed into every input channel:
    the ``C`` source channels are summed into one grey kernel, which is repeated ``in_chans``
    times and divided by ``in_chans``. For a 1-channel source this is ``w.repeat(1, N, 1, 1) / N``
    (exact for any ``N``); for a 3-channel (RGB) source it is ``w.sum(1).repeat(N) / N``, i.e. the
    RGB kernel seen by a grey image replicated into three channels.

    Parameters
    ----------
    weight
        Kernel of shape ``(out_channels, C, kh, kw)``.
    in_chans
        Wanted number of input channels (>= 1).

    Returns
    -------
    torch.Tensor
        New kernel ``(out_channels, in_chans, kh, kw)`` with the dtype of ``weight``; a copy when
        ``C == in_chans``.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4D conv kernel, got shape {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if weight.shape[1] == in_chans:
        return weight.clone()
    if weight.shape[1] == 1:
        grey = weight
    else:  # accumulate in float64, round once
        grey = weight.sum(dim=1, keepdim=True, dtype=torch.float64).to(weight.dtype)
    return grey.repeat(1, in_chans, 1, 1) / in_chans


def inflate_first_conv(weight: torch.Tensor, frames: int) -> torch.Tensor:
    """Grow a ``k``-frame first-convolution kernel to ``frames`` input frames, centred.

    The ``k`` source channels go onto the ``k`` central channels of the new kernel and the added
    outer channels are zero, so the inflated model computes exactly what the source model computes
    on the centre ``k`` slices, whatever the outer slices hold (I3D-style inflation along z). A 3fm
    model started from a trained 1fm model therefore starts at the 1fm model's accuracy and learns
    to use the neighbouring slices from there.

    Parameters
    ----------
    weight
        Kernel of shape ``(out_channels, k, kh, kw)`` with ``k`` odd.
    frames
        Wanted number of input frames: odd and ``>= k``.

    Returns
    -------
    torch.Tensor
        New kernel ``(out_channels, frames, kh, kw)``, same dtype and device (a copy).
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4D conv kernel, got shape {tuple(weight.shape)}")
    k = int(weight.shape[1])
    if k % 2 == 0 or frames % 2 == 0 or frames < k:
        raise ValueError(f"can only inflate an odd number of frames to a larger odd number, got {k} -> {frames}")
    out = weight.new_zeros((weight.shape[0], frames, *weight.shape[2:]))
    start = (frames - k) // 2
    out[:, start:start + k] = weight
    return out


# --------------------------------------------------------------------------------------------
# reading checkpoints


def read_encoder_weights(source: str | os.PathLike | Mapping[str, Any], *, map_location: str | torch.device = "cpu") -> EncoderWeights:
    """Read encoder weights from any supported checkpoint layout into timm names.

    Parameters
    ----------
    source
        Path of a checkpoint (cemkit export, cemkit pretrain ``.ckpt``, CEM500K/cellemnet MoCo
        ``.pth.tar``, CEM1.5M SwAV, plain timm/torchvision state dict), or the already loaded dict.
    map_location
        Device the tensors are loaded to.

    Returns
    -------
    EncoderWeights

    Raises
    ------
    cemkit.errors.InputError
        When the file is missing, cannot be read with ``weights_only=True``, or has no encoder
        weights in a known layout.
    """
    if isinstance(source, Mapping):
        obj: Mapping[str, Any] = source
        where = "<dict>"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise InputError(f"{path}: encoder weights file not found")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # any unpickling / zip problem is a bad input file
            raise InputError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({exc})") from exc
        if not isinstance(obj, Mapping):
            raise InputError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")

    weights = _parse(obj, where)
    if not weights.state_dict:
        raise InputError(f"{where}: no encoder weights found (layout {weights.meta.get('layout')})")
    weights.meta.setdefault("source", where)
    if weights.in_chans is None:
        weights.in_chans = _infer_in_chans(weights.state_dict)
    log.debug("read %d encoder tensors from %s (layout %s)", len(weights.state_dict), where, weights.meta["layout"])
    return weights


def _parse(obj: Mapping[str, Any], where: str) -> EncoderWeights:
    if obj.get("format") == ENCODER_FORMAT:
        version = int(obj.get("version", 0))
        if version > ENCODER_FORMAT_VERSION:
            raise InputError(f"{where}: cemkit-encoder format version {version} is newer than this cemkit "
                             f"reads ({ENCODER_FORMAT_VERSION}); update cemkit")
        sd = _tensor_dict(obj.get("state_dict"), where)
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        meta.update(layout="cemkit-encoder", dropped=[])
        return EncoderWeights(sd, arch=obj.get("arch"), in_chans=obj.get("in_chans"),
                              norms=_norms(obj.get("norms"), where), meta=meta)

    top_norms = _norms(obj.get("norms"), where) if "norms" in obj else None
    top_arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    extra = {k: obj[k] for k in ("epoch", "corpus_id") if k in obj and isinstance(obj[k], (int, float, str))}

    hparams: Mapping[str, Any] = {}
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        raw = obj["state_dict"]
        if "pytorch-lightning_version" in obj and isinstance(obj.get("hyper_parameters"), Mapping):
            hparams = obj["hyper_parameters"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        raw = obj["model"]
    else:
        raw = obj
    raw = _tensor_dict(raw, where, only_tensors=True)

    moco_prefix = _moco_prefix(raw)
    if moco_prefix is not None:
        sd, dropped = {}, []
        for key, value in raw.items():
            if key.startswith(moco_prefix):
                name = key[len(moco_prefix):]
                if name.startswith(("fc.", "head.")):
                    dropped.append(key)  # MoCo projection head inside the encoder (cellemnet fc.0 / fc.2)
                else:
                    sd[name] = value
            else:
                dropped.append(key)  # encoder_k.*, head_q/k, queue, queue_ptr
        if hparams.get("arch"):  # a cemkit pretrain Lightning checkpoint
            meta = dict(extra, layout="cemkit-pretrain", dropped=dropped)
            if hparams.get("corpus_id") is not None:
                meta["corpus_id"] = str(hparams["corpus_id"])
            hp_norms = _norms(hparams.get("norms"), where) if hparams.get("norms") is not None else None
            return EncoderWeights(sd, arch=str(hparams["arch"]), in_chans=hparams.get("in_chans"),
                                  norms=hp_norms or top_norms, meta=meta)
        meta = dict(extra, layout="moco", dropped=dropped)
        return EncoderWeights(sd, arch=top_arch, norms=top_norms, meta=meta)

    sd = _strip_common_prefix(raw, "module.")
    if any(k.split(".")[0] in _SWAV_DROP for k in sd):
        kept = {k: v for k, v in sd.items() if k.split(".")[0] not in _SWAV_DROP}
        dropped = [k for k in sd if k not in kept]
        kept, more = _drop_torchvision_fc(kept)
        meta = dict(extra, layout="swav", dropped=dropped + more)
        return EncoderWeights(kept, arch=top_arch, norms=top_norms, meta=meta)

    kept, dropped = _drop_torchvision_fc(sd)
    meta = dict(extra, layout="state_dict", dropped=dropped)
    return EncoderWeights(kept, arch=top_arch, norms=top_norms, meta=meta)


def _moco_prefix(sd: Mapping[str, Any]) -> str | None:
    """``module.encoder_q.`` / ``encoder_q.`` / ``model.encoder_q.``: everything up to the query encoder."""
    for key in sd:
        idx = key.find("encoder_q.")
        if idx >= 0 and (idx == 0 or key[idx - 1] == "."):
            return key[: idx + len("encoder_q.")]
    return None


def _tensor_dict(obj: Any, where: str, only_tensors: bool = False) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise InputError(f"{where}: no state_dict of tensors found")
    out = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not only_tensors and len(out) != len(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:_MAX_LISTED_KEYS]
        raise InputError(f"{where}: state_dict has non-tensor entries: {bad}")
    return out


def _strip_common_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _drop_torchvision_fc(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop a torchvision/timm resnet classifier (``fc.weight``/``fc.bias``, or an MLP ``fc.N.*``)."""
    dropped = [k for k in sd if k.startswith("fc.")]
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}, dropped


def _norms(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        mean, std = (float(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: 'norms' must be [mean, std], got {value!r}") from exc
    return (mean, std)


def _infer_in_chans(sd: Mapping[str, torch.Tensor]) -> int | None:
    if "conv1.weight" in sd and sd["conv1.weight"].ndim == 4:
        return int(sd["conv1.weight"].shape[1])
    for value in sd.values():  # state dicts follow module registration order: the stem comes first
        if value.ndim == 4:
            return int(value.shape[1])
    return None


# --------------------------------------------------------------------------------------------
# which architecture a state dict is for

# Tried in this order by :func:`infer_arch` when a checkpoint does not record its architecture
# (CEM500K / cellemnet files from before ``arch`` was stored, plain state dicts).
INFERABLE_ARCHS = ("resnet10t", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet18d",
                   "resnet26", "resnet34d", "resnet50d", "resnext50_32x4d", "wide_resnet50_2",
                   "efficientnet_b0", "convnext_atto")


def infer_arch(state_dict: Mapping[str, torch.Tensor], candidates: tuple[str, ...] = INFERABLE_ARCHS) -> str | None:
    """The timm architecture whose encoder has exactly these keys and tensor shapes, or ``None``.

    Each candidate is built on the ``meta`` device (no memory, milliseconds) and compared key by key;
    the input-channel dimension of 4D kernels is ignored (it is adapted when loading). Keys of a
    classifier head (``fc.*``) in ``state_dict`` are ignored.

    Parameters
    ----------
    state_dict
        Encoder weights in timm names (e.g. :attr:`EncoderWeights.state_dict`).
    candidates
        timm names to try, in order; the first that matches is returned.
    """
    import timm

    def signature(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        out = {}
        for key, value in sd.items():
            if key.startswith("fc.") or not isinstance(value, torch.Tensor):
                continue
            shape = tuple(value.shape)
            out[key] = (shape[0], *shape[2:]) if len(shape) == 4 else shape
        return out

    want = signature(state_dict)
    for arch in candidates:
        try:
            with torch.device("meta"):
                model = timm.create_model(arch, in_chans=1, num_classes=0)
        except Exception:  # noqa: BLE001 - a candidate this timm does not know
            continue
        if signature(model.state_dict()) == want:
            return arch
    return None


# --------------------------------------------------------------------------------------------
# loading into a model


def load_encoder_weights(model: nn.Module, weights: EncoderWeights | str | os.PathLike | Mapping[str, Any],
                         strict: bool = True):
    """Load encoder weights into a timm model, adapting the first convolution's input channels.

    Parameters
    ----------
    model
        A timm model, e.g. from :func:`create_encoder` (``num_classes=0``), or a timm
        ``features_only`` model (its flattened module names such as ``stages_0`` are mapped, and
        weights of layers after the last feature stage are ignored).
    weights
        :class:`EncoderWeights`, or anything :func:`read_encoder_weights` accepts.
    strict
        Raise :class:`~cemkit.errors.InputError` when a model key gets no weight or the weights
        have a key the model lacks (classifier-head keys of the weights are always dropped when the
        model has no head).

    Returns
    -------
    torch.nn.modules.module._IncompatibleKeys
        ``missing_keys`` / ``unexpected_keys`` (both empty after a strict load).

    Raises
    ------
    cemkit.errors.InputError
        On missing / unexpected keys (strict) or tensor shape mismatches, naming the source file.
    """
    if not isinstance(weights, EncoderWeights):
        weights = read_encoder_weights(weights)
    where = weights.meta.get("source", "<weights>")
    model_sd = model.state_dict()
    sd = _drop_classifier_head(model, dict(weights.state_dict), model_sd)
    features_only = hasattr(model, "feature_info") and type(model).__name__.startswith("Feature")
    if features_only:
        sd = _map_to_feature_net(sd, model_sd)
    _adapt_input_channels(model, sd, model_sd, where)

    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    if features_only:
        unexpected = []  # layers after the last feature stage (e.g. conv_head) are not in the model
        sd = {k: v for k, v in sd.items() if k in model_sd}
    mismatched = [f"{k}: weights {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
                  for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        raise _mismatch_error(model, weights, where, missing, unexpected, mismatched)
    result = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        log.warning("%s: loaded non-strictly: %d missing, %d unexpected keys", where, len(missing), len(unexpected))
    return result


def _drop_classifier_head(model: nn.Module, sd: dict[str, torch.Tensor],
                          model_sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Remove the weights' classifier head (timm names it per architecture) when the model has none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    heads = [head] if isinstance(head, str) else list(head or [])
    for prefix in heads:
        for key in [k for k in sd if k.startswith(prefix + ".") and k not in model_sd]:
            del sd[key]
    return sd


def _adapt_input_channels(model: nn.Module, sd: dict[str, torch.Tensor],
                          model_sd: Mapping[str, Any], where: str) -> None:
    """Adapt the first convolution's kernel in ``sd`` to the model's number of input channels."""
    conv = first_conv_name(model)
    key = f"{conv}.weight" if conv else None
    if key and key in sd and key in model_sd and sd[key].ndim == 4:
        want, have = model_sd[key].shape[1], sd[key].shape[1]
        if want != have:
            log.info("adapting %s from %d to %d input channels (%s)", key, have, want, where)
            sd[key] = adapt_first_conv(sd[key], want)


def _mismatch_error(model: nn.Module, weights: EncoderWeights, where: str, missing: list[str],
                    unexpected: list[str], mismatched: list[str]) -> InputError:
    """The error naming the source, the layouts and the keys that do not match."""
    model_arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (model keys without a weight): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (weights the model lacks): {_listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    hint = ""
    if weights.arch and weights.arch != model_arch:
        hint = f" (the checkpoint says arch={weights.arch!r}; create the encoder with that arch)"
    return InputError(f"{where}: encoder weights (layout {weights.meta.get('layout')}, arch "
                      f"{weights.arch or 'unknown'}) do not match the {model_arch} model{hint}: " + "; ".join(parts))


def _map_to_feature_net(sd: dict[str, torch.Tensor], model_sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename ``stages.0.x`` to ``stages_0.x`` where a timm features-only model flattened a Sequential."""
    out = {}
    for key, value in sd.items():
        if key not in model_sd:
            parts = key.split(".")
            if len(parts) > 2:
                alt = f"{parts[0]}_{parts[1]}." + ".".join(parts[2:])
                if alt in model_sd:
                    key = alt
        out[key] = value
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... (+{len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else "")
