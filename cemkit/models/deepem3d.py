"""DeepEM3D-style segmentation model: any timm encoder + multi-scale transposed-convolution decoder.

The decoder follows DeepEM3D / CDeep3M (Zeng et al. 2017; Haberl et al. 2018): every encoder tap
(strides 2 to 32, whatever the encoder provides) is brought **directly to full resolution** by a
learned transposed convolution (kernel ``2s``, stride ``s``, padding ``s/2``, bilinear
initialisation) plus, on the shallow taps (stride <= ``dilated_max_stride``, 8 by default),
dilated transposed convolutions (dilations 5/11/17/23, padding ``P(s, d) = (d(2s-1)+1-s)/2``). The
branches of one tap are summed, passed through a small head (BN-ReLU-3x3 conv) and the taps are
summed into the logits. Every branch outputs exactly ``s * input`` pixels, so the model output has
the size of its input.

Frames (1fm / 3fm / 5fm) are the input channels of the encoder: ``k`` consecutive z-slices, the
output is the centre slice. Pretrained 1- or 3-channel stems are adapted by
:func:`cemkit.models.encoders.load_encoder_weights` so that ``k`` identical slices give exactly the
features of the single slice.

Input height and width need not be multiples of the encoder's largest stride (32 for most timm
encoders): :meth:`DeepEM3DSegmenter.forward` reflect-pads the input up to the next multiple and crops
the logits back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_DILATIONS = (5, 11, 17, 23)


def dilated_transposed_padding(stride: int, dilation: int) -> int:
    """Padding that makes a dilated transposed convolution (kernel ``2 * stride``) upsample exactly.

    A transposed convolution gives ``out = s (n - 1) + d (k - 1) + 1 - 2 p``; with ``k = 2 s`` this
    equals ``s n`` for ``p = (d (2 s - 1) + 1 - s) / 2`` (DeepEM3D's pads 7/16/25/34 for s = 2).

    Parameters
    ----------
    stride
        Upsampling factor ``s`` (the tap's stride), a positive even integer.
    dilation
        Dilation ``d``; ``d = 1`` gives the plain padding ``s / 2``.

    Returns
    -------
    int
        The padding ``p``.
    """
    num = dilation * (2 * stride - 1) + 1 - stride
    if stride < 2 or num % 2:
        raise ValueError(f"no exact padding for stride {stride} and dilation {dilation} (stride must be even)")
    return num // 2


def bilinear_kernel(size: int) -> np.ndarray:
    """The 2-D bilinear interpolation kernel of a transposed convolution (Caffe's ``bilinear`` filler).

    Parameters
    ----------
    size
        Kernel size ``k`` (``2 s`` for upsampling by ``s``).

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32 kernel; with stride ``s = size / 2`` and padding ``s / 2`` it
        upsamples a constant image to the same constant.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    k1 = 1 - np.abs(og - center) / factor
    return np.outer(k1, k1).astype(np.float32)


class TapUpsampler(nn.Module):
    """One encoder tap to full resolution: bilinear-initialised deconv + dilated deconvs, summed, then a head.

    Parameters
    ----------
    in_channels
        Channels of the tap.
    stride
        The tap's stride ``s`` relative to the input (1 or an even number).
    width
        Channels of the upsampled maps (DeepEM3D: 2, the number of classes).
    out_channels
        Logit channels of the head.
    dilations
        Dilations of the extra transposed convolutions (empty for none).
    final_relu
        DeepEM3D parity: end the head with BN-ReLU (makes the logits non-negative). Off by default.
    """

    def __init__(self, in_channels: int, stride: int, width: int, out_channels: int,
                 dilations: Sequence[int] = (), final_relu: bool = False):
        super().__init__()
        self.stride = int(stride)
        if self.stride == 1:
            self.plain = nn.Conv2d(in_channels, width, kernel_size=1)
            self.dilated = nn.ModuleList()
        else:
            k = 2 * self.stride
            self.plain = nn.ConvTranspose2d(in_channels, width, kernel_size=k, stride=self.stride,
                                            padding=dilated_transposed_padding(self.stride, 1))
            with torch.no_grad():
                # Caffe's bilinear filler puts the kernel on every (in, out) pair; divide by the
                # number of input channels so the initial output is the channel mean, not the sum.
                w = torch.from_numpy(bilinear_kernel(k)) / in_channels
                self.plain.weight.copy_(w.expand_as(self.plain.weight))
                self.plain.bias.zero_()
            self.dilated = nn.ModuleList()
            for d in dilations:
                conv = nn.ConvTranspose2d(in_channels, width, kernel_size=k, stride=self.stride,
                                          padding=dilated_transposed_padding(self.stride, d), dilation=d)
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
                self.dilated.append(conv)
        layers: list[nn.Module] = [nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                   nn.Conv2d(width, out_channels, kernel_size=3, padding=1)]
        if final_relu:
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.plain(x)
        for conv in self.dilated:
            y = y + conv(x)
        return self.head(y)


class DeepEM3DDecoder(nn.Module):
    """Sum of :class:`TapUpsampler` outputs over all encoder taps.

    Parameters
    ----------
    channels, strides
        Channels and strides of the encoder taps (``feature_info``), shallow to deep.
    out_channels
        Logit channels (1 for binary, ``C`` for ``C``-class segmentation).
    width
        Channels of the upsampled maps; default ``max(2, out_channels)``.
    dilations, dilated_max_stride
        Dilated transposed convolutions are added on taps with stride <= ``dilated_max_stride``.
    final_relu
        See :class:`TapUpsampler`.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int, width: int | None = None,
                 dilations: Sequence[int] = DEFAULT_DILATIONS, dilated_max_stride: int = 8,
                 final_relu: bool = False):
        super().__init__()
        width = int(width or max(2, out_channels))
        self.strides = [int(s) for s in strides]
        self.taps = nn.ModuleList(
            TapUpsampler(c, s, width, out_channels, dilations if s <= dilated_max_stride else (), final_relu)
            for c, s in zip(channels, strides))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(logits, per_tap_logits)``; all at full resolution."""
        outs = [tap(f) for tap, f in zip(self.taps, features)]
        return torch.stack(outs, 0).sum(0), outs


def _leaf_modules_up_to(encoder: nn.Module, boundary: str) -> list[str]:
    """Names of the leaf modules of ``encoder`` registered up to and including module ``boundary``."""
    names = [n for n, _ in encoder.named_modules()]
    if boundary not in names:
        raise ValueError(f"module {boundary!r} not found in the encoder")
    last = max(i for i, n in enumerate(names) if n == boundary or n.startswith(boundary + "."))
    mods = dict(encoder.named_modules())
    return [n for n in names[: last + 1] if n and not any(True for _ in mods[n].children())]


class DeepEM3DSegmenter(nn.Module):
    """timm encoder (``frames`` input channels) + :class:`DeepEM3DDecoder`.

    Parameters
    ----------
    arch
        timm model name; any model with ``forward_intermediates`` and ``feature_info``.
    frames
        Input slices (1, 3 or 5); the encoder's input channels.
    num_classes
        2 for binary segmentation (1 logit channel, sigmoid), ``C > 2`` for multi-class (softmax).
    decoder_width, dilations, dilated_max_stride, final_relu
        Decoder settings (see :class:`DeepEM3DDecoder`).
    encoder
        An already built encoder (for weight loading); created with
        :func:`cemkit.models.encoders.create_encoder` otherwise.
    """

    def __init__(self, arch: str = "resnet18", frames: int = 1, num_classes: int = 2, decoder_width: int | None = None,
                 dilations: Sequence[int] = DEFAULT_DILATIONS, dilated_max_stride: int = 8,
                 final_relu: bool = False, encoder: nn.Module | None = None):
        super().__init__()
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (2 = binary), got {num_classes}")
        self.arch, self.frames, self.num_classes = arch, int(frames), int(num_classes)
        if encoder is None:
            from cemkit.models.encoders import create_encoder

            encoder = create_encoder(arch, in_chans=self.frames, pretrained=False)
        if not hasattr(encoder, "forward_intermediates"):
            raise ValueError(f"timm encoder {arch!r} has no forward_intermediates(); choose another arch")
        info = list(encoder.feature_info)
        self.tap_modules = [f["module"] for f in info]
        self.strides = [int(f["reduction"]) for f in info]
        channels = [int(f["num_chs"]) for f in info]
        self.n_taps = len(info)
        encoder.prune_intermediate_layers(indices=self.n_taps, prune_norm=True, prune_head=True)
        self.encoder = encoder
        self.out_channels = 1 if self.num_classes == 2 else self.num_classes
        self.decoder = DeepEM3DDecoder(channels, self.strides, self.out_channels, decoder_width,
                                       dilations, dilated_max_stride, final_relu)
        self.config: dict[str, Any] = {
            "arch": arch, "frames": self.frames, "num_classes": self.num_classes,
            "decoder_width": decoder_width, "dilations": [int(d) for d in dilations],
            "dilated_max_stride": int(dilated_max_stride), "final_relu": bool(final_relu),
        }
        self._frozen: list[str] = []

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DeepEM3DSegmenter:
        """Rebuild a model from :attr:`config` (a plain dict, as stored in checkpoints)."""
        return cls(**config)

    @property
    def max_stride(self) -> int:
        return max(self.strides)

    # ------------------------------------------------------------------ forward
    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, per_tap_logits)`` for input ``(B, frames, H, W)``; any H, W."""
        if x.ndim != 4 or x.shape[1] != self.frames:
            raise ValueError(f"expected input (B, {self.frames}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.max_stride
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        feats = self.encoder.forward_intermediates(x, indices=self.n_taps, intermediates_only=True)
        logits, taps = self.decoder(feats)
        if ph or pw:
            logits = logits[..., :h, :w]
            taps = [t[..., :h, :w] for t in taps]
        return logits, taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` (C = 1 for binary) for normalised input ``(B, frames, H, W)``."""
        return self.forward_with_taps(x)[0]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid (binary, 1 channel = foreground) or softmax over classes."""
        return torch.sigmoid(logits) if self.out_channels == 1 else torch.softmax(logits, dim=1)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, C, H, W)``: binary -> 1 channel (foreground), multi-class -> softmax."""
        return self.probabilities(self(x))

    # ------------------------------------------------------------------ freezing
    def encoder_stage_modules(self, n_stages: int) -> list[str]:
        """Leaf modules (names inside ``encoder``) of the first ``n_stages`` feature stages."""
        if n_stages <= 0:
            return []
        if n_stages >= self.n_taps:
            return [n for n, m in self.encoder.named_modules() if n and not any(True for _ in m.children())]
        return _leaf_modules_up_to(self.encoder, self.tap_modules[n_stages - 1])

    def freeze_encoder(self, spec: str | int | None) -> list[str]:
        """Freeze the encoder: ``"none"``, ``"all"`` or the first ``N`` stages (stem = stage 1).

        Frozen parameters get ``requires_grad=False`` and frozen BatchNorm layers stay in eval mode
        (their running statistics do not move) even after ``model.train()``.

        Returns
        -------
        list of str
            Names (inside ``encoder``) of the frozen leaf modules.
        """
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        if spec is None or str(spec).lower() in ("none", "0", "false"):
            n = 0
        elif str(spec).lower() in ("all", "true"):
            n = self.n_taps
        else:
            try:
                n = int(spec)
            except ValueError as exc:
                raise ValueError(f"freeze_encoder must be none, all or a number of stages, got {spec!r}") from exc
        names = self.encoder_stage_modules(n)
        mods = dict(self.encoder.named_modules())
        for name in names:
            for p in mods[name].parameters():
                p.requires_grad_(False)
        self._frozen = names
        self.train(self.training)
        return names

    def train(self, mode: bool = True) -> DeepEM3DSegmenter:
        super().train(mode)
        if mode and self._frozen:
            mods = dict(self.encoder.named_modules())
            for name in self._frozen:
                mods[name].eval()
        return self

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable ``(encoder_params, decoder_params)``."""
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        dec = [p for p in self.decoder.parameters() if p.requires_grad]
        return enc, dec


FRAME_INITS = ("centre", "mean")


def build_segmenter(arch: str, frames: int, num_classes: int = 2, *, weights=None, strict: bool = True,
                    timm_pretrained: bool = False, frame_init: str = "mean",
                    **decoder_kwargs) -> tuple[DeepEM3DSegmenter, dict]:
    """Create a segmenter, optionally loading pretrained encoder weights into its ``frames``-channel stem.

    Parameters
    ----------
    weights
        :class:`cemkit.models.encoders.EncoderWeights` (from ``read_encoder_weights``) or ``None``.
        Its 1- or 3-channel first convolution is adapted to ``frames`` channels (see ``frame_init``).
    timm_pretrained
        Load timm's own (ImageNet, 3-channel) weights, adapted the same way (needs network).
    frame_init : {"mean", "centre"}
        How a ``frames > 1`` model's first convolution starts. ``mean``: the single-slice kernel
        divided over the frames, so that identical slices give the single slice's features.
        ``centre``: the model is built and initialised as a 1-frame model (same weights, same random
        draws) and its kernel is put on the centre frame with zeros on the others
        (:func:`inflate_segmenter`), so it starts as a single-slice model and learns how much to take
        from the neighbouring slices; with a short training budget this avoids the blurred start of
        ``mean`` when consecutive slices differ (anisotropic stacks).

    Returns
    -------
    (DeepEM3DSegmenter, dict)
        The model and a load report ``{"source", "loaded", "missing", "unexpected"}`` (empty without weights).
    """
    from cemkit.models.encoders import create_encoder, load_encoder_weights

    if frame_init not in FRAME_INITS:
        raise ValueError(f"frame_init must be one of {FRAME_INITS}, got {frame_init!r}")
    if frame_init == "centre" and frames > 1:
        single, report = build_segmenter(arch, 1, num_classes, weights=weights, strict=strict,
                                         timm_pretrained=timm_pretrained, **decoder_kwargs)
        return inflate_segmenter(single, frames), report
    encoder = create_encoder(arch, in_chans=frames, pretrained=False)
    report: dict[str, Any] = {}
    if weights is None and timm_pretrained:
        from cemkit.models.encoders import EncoderWeights

        src = create_encoder(arch, in_chans=3, pretrained=True)
        weights = EncoderWeights(state_dict=src.state_dict(), arch=arch, in_chans=3, norms=None,
                                 meta={"source": f"timm:{arch}"})
    if weights is not None:
        if weights.arch and weights.arch != arch:
            log.warning("encoder weights are for %s, model arch is %s", weights.arch, arch)
        own = set(encoder.state_dict())
        given = set(weights.state_dict)
        load_encoder_weights(encoder, weights, strict=strict)
        report = {"source": str((weights.meta or {}).get("source", "")), "loaded": len(own & given),
                  "missing": sorted(own - given), "unexpected": sorted(given - own)}
        log.info("encoder weights: %d tensors loaded, %d missing, %d unexpected",
                 report["loaded"], len(report["missing"]), len(report["unexpected"]))
    model = DeepEM3DSegmenter(arch, frames, num_classes, encoder=encoder, **decoder_kwargs)
    return model, report


def inflate_segmenter(model: DeepEM3DSegmenter, frames: int) -> DeepEM3DSegmenter:
    """A ``frames``-frame copy of a trained segmenter, its first convolution inflated onto the centre frames.

    The new model gives exactly the source model's output for any input whose centre
    ``model.frames`` slices are the source model's input (see
    :func:`cemkit.models.encoders.inflate_first_conv`); every other weight is copied.

    Raises
    ------
    ValueError
        ``frames`` smaller than the source's frames or not odd, or no first convolution found.
    """
    from cemkit.models.encoders import first_conv_name, inflate_first_conv

    if frames == model.frames:
        return model
    config = dict(model.config, frames=int(frames))
    new = DeepEM3DSegmenter.from_config(config)
    conv = first_conv_name(model.encoder)
    if conv is None:
        raise ValueError(f"{model.arch}: no first convolution found to inflate")
    key = f"encoder.{conv}.weight"
    state = model.state_dict()
    state[key] = inflate_first_conv(state[key], frames)
    new.load_state_dict(state, strict=True)
    return new
