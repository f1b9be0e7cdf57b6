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
import math
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PhasePlan:
    """How a transposed convolution (kernel ``2s``, stride ``s``, dilation ``d``) runs as a 2-tap convolution.

    Output pixel ``o = s q + r`` of such a transposed convolution receives exactly two kernel
    entries per axis, ``m(r)`` and ``s + m(r)``, from the inputs ``q + b(r)`` and ``q + b(r) - d``
    (when ``d`` and ``s`` share no factor). So the layer equals a convolution with kernel 2, dilation
    ``d`` and ``s^2 x width`` output channels (one per output phase ``(r_y, r_x)``), each phase read at its
    own offset, then a pixel shuffle: the same multiply-adds, as one dense convolution instead of
    a scatter (col2im) of ``(2s)^2`` taps.

    Attributes
    ----------
    stride, dilation
        ``s`` and ``d``.
    kernel_index
        ``m(r)`` for each output phase ``r = 0 .. s-1``.
    offsets
        ``off(r)``: output ``s q + r`` is position ``q + off(r)`` of the padded convolution's output.
    padding
        Zero padding of the 2-tap convolution.
    """

    stride: int
    dilation: int
    kernel_index: tuple[int, ...]
    offsets: tuple[int, ...]
    padding: int


def transposed_phase_plan(stride: int, dilation: int, padding: int) -> PhasePlan:
    """The :class:`PhasePlan` of a transposed convolution with kernel ``2 * stride`` that upsamples exactly.

    With ``o + p = s i + d k`` and ``k = s j + m`` (``j`` in {0, 1}), output phase ``r = o mod s``
    needs ``d m = r + p (mod s)``: ``m(r) = d^-1 (r + p) mod s``, and the inputs are
    ``i = q + b(r) - d j`` with ``b(r) = (r + p - d m(r)) / s``.

    Parameters
    ----------
    stride
        ``s >= 2``.
    dilation
        ``d``, with no factor in common with ``s`` (DeepEM3D's 1, 5, 11, 17, 23 with even strides).
    padding
        ``p``; must be :func:`dilated_transposed_padding` ``(s, d)`` (output size ``s n``).

    Returns
    -------
    PhasePlan

    Raises
    ------
    ValueError
        ``s < 2``, ``gcd(d, s) > 1`` (then a phase gets zero or several kernel entries) or a
        padding that does not give ``s n`` outputs.

    Examples
    --------
    >>> transposed_phase_plan(4, 1, 2)
    PhasePlan(stride=4, dilation=1, kernel_index=(2, 3, 0, 1), offsets=(0, 0, 1, 1), padding=1)
    """
    s, d, p = int(stride), int(dilation), int(padding)
    if s < 2:
        raise ValueError(f"stride must be >= 2, got {s}")
    if d < 1 or math.gcd(d, s) != 1:
        raise ValueError(f"dilation {d} and stride {s} share a factor: a phase gets zero or several kernel entries")
    if d * (2 * s - 1) + 1 - s != 2 * p:
        raise ValueError(f"padding {p} does not make kernel {2 * s}, stride {s}, dilation {d} upsample exactly")
    inv = pow(d, -1, s)
    m = [((r + p) * inv) % s for r in range(s)]
    b = [(r + p - d * mr) // s for r, mr in enumerate(m)]
    pad = max(0, d - min(b), max(b))
    return PhasePlan(s, d, tuple(m), tuple(v + pad - d for v in b), pad)


def phase_kernel(weight: torch.Tensor, bias: torch.Tensor | None,
                 plan: PhasePlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A transposed convolution's ``(in, out, 2s, 2s)`` weight as the ``(out s^2, in, 2, 2)`` kernel of its plan.

    Output channel ``(w, r_y, r_x)`` holds kernel entries ``(s j + m(r_y), s j' + m(r_x))`` of ``w``,
    the taps flipped (``u = 1 - j``: a convolution reads forwards, a transposed one scatters). The
    bias repeats over the ``s^2`` phases. Differentiable: the module keeps its transposed-convolution
    parameters (checkpoints unchanged) and builds this kernel in every forward pass.
    """
    s = plan.stride
    c_in, c_out = weight.shape[:2]
    idx = torch.tensor(plan.kernel_index, device=weight.device)
    k = weight.view(c_in, c_out, 2, s, 2, s).flip(2, 4).index_select(3, idx).index_select(5, idx)
    k = k.permute(1, 3, 5, 0, 2, 4).reshape(c_out * s * s, c_in, 2, 2)
    return k, None if bias is None else bias.repeat_interleave(s * s)


def _read_phases(z: torch.Tensor, offsets: Sequence[int], n: int, phase_dim: int, space_dim: int) -> torch.Tensor:
    """``out[.., r, .., q, ..] = z[.., r, .., q + offsets[r], ..]``: runs of equal offsets as one slice each."""
    parts, r0 = [], 0
    for r in range(1, len(offsets) + 1):
        if r == len(offsets) or offsets[r] != offsets[r0]:
            parts.append(z.narrow(phase_dim, r0, r - r0).narrow(space_dim, offsets[r0], n))
            r0 = r
    return parts[0] if len(parts) == 1 else torch.cat(parts, phase_dim)


def phase_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, plan: PhasePlan) -> torch.Tensor:
    """The plan's convolution read at each phase's offsets: ``(B, width s^2, H, W)``, before the pixel shuffle.

    ``F.pixel_shuffle(phase_conv(...), s)`` is the transposed convolution's output ``(B, width, s H, s W)``;
    phase maps of several branches of the same stride can be summed before one shuffle.
    """
    s, (h, w) = plan.stride, x.shape[-2:]
    z = F.conv2d(x, kernel, bias, padding=plan.padding, dilation=plan.dilation)
    # (B, width, r_y, r_x, Hz, Wz); reshape with explicit sizes, not unflatten: ONNX needs the rank
    z = z.reshape(z.shape[0], kernel.shape[0] // (s * s), s, s, z.shape[-2], z.shape[-1])
    z = _read_phases(z, plan.offsets, h, 2, 4)
    z = _read_phases(z, plan.offsets, w, 3, 5)
    return z.reshape(z.shape[0], kernel.shape[0], h, w)


def upsample_transposed(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``conv(x)`` for a transposed convolution with kernel ``2s``, stride ``s`` that upsamples exactly,
    computed as its :func:`transposed_phase_plan` (same function, several times faster on CPU).

    Layers the plan cannot express (a dilation sharing a factor with the stride) run as they are.
    """
    plan = _plan_of(conv)
    if plan is None:
        return conv(x)
    kernel, bias = phase_kernel(conv.weight, conv.bias, plan)
    return F.pixel_shuffle(phase_conv(x, kernel, bias, plan), plan.stride)


def _plan_of(conv: nn.ConvTranspose2d) -> PhasePlan | None:
    s, d, p = conv.stride[0], conv.dilation[0], conv.padding[0]
    square = conv.stride[1] == s and conv.dilation[1] == d and conv.padding[1] == p
    if not square or conv.kernel_size != (2 * s, 2 * s) or conv.output_padding != (0, 0) or conv.groups != 1:
        return None
    try:
        return transposed_phase_plan(s, d, p)
    except ValueError:
        return None


UPSAMPLE_FORMS = ("auto", "phase", "transposed")


# The faster exact form of a tap's transposed convolutions on a CPU, by precision and stride. Measured
# (docs/results.md, "Precision and decoder form per machine") on resnet18's taps, batch 8 x 256^2 px, one tap's
# upsampling forward + backward, channels_last, CPU time of 1 thread, median of 5 interleaved repeats, on an
# AMD EPYC with AVX-512, bf16 units and VNNI; phase / transposed time:
#   stride (channels, dilated branches)  2 (64, 4)   4 (64, 4)   8 (128, 4)   16 (256, 0)   32 (512, 0)
#   float32                              1.79 1.83   1.09 1.14   1.30 1.26    0.35 0.37     1.55 1.54
#   float32, oneDNN and ATen held to AVX2  1.71      1.09        1.26         0.40          1.38
#   bf16 autocast                        1.29 1.36   0.65 0.64   0.87 0.85    0.29 0.31     0.42 0.44
# (two runs each; one for AVX2). Over all taps: at float32 the phase form takes 1.23-1.26x the transposed
# form's time, the picked forms 0.87-0.88x; at bf16 the phase form 0.65-0.67x, the picked forms 0.60-0.61x
# (0.92x the phase form's). A whole training step with the picked forms (1fm / 5fm, CPU time): float32 0.89x /
# 0.93x the all-transposed and 0.86x / 0.82x the all-phase step's time; bf16 0.70x / 0.77x and 0.98x / 0.95x.
# On CUDA the phase form is kept (not measured against the other yet).
_CPU_PHASE_STRIDES = {"float32": frozenset({16}), "low": frozenset({4, 8, 16, 32})}


def faster_upsample_form(device: str, dtype: torch.dtype, stride: int) -> str:
    """The faster of the two exact forms (``phase`` or ``transposed``) of a tap's transposed convolutions.

    Parameters
    ----------
    device
        The device type of the call (``cpu``, ``cuda``, ...).
    dtype
        The dtype the convolutions compute in (the autocast dtype under autocast).
    stride
        The tap's stride.

    Returns
    -------
    str
        On a CPU, the measured faster form (see the table above): at float32 (and float64) the phase
        form only at stride 16; at bf16 / float16 the phase form except at stride 2. Elsewhere ``phase``.

    Examples
    --------
    >>> [faster_upsample_form("cpu", torch.float32, s) for s in (2, 16, 32)]
    ['transposed', 'phase', 'transposed']
    >>> [faster_upsample_form("cpu", torch.bfloat16, s) for s in (2, 16, 32)]
    ['transposed', 'phase', 'phase']
    """
    if device != "cpu":
        return "phase"
    low = dtype in (torch.bfloat16, torch.float16)
    return "phase" if int(stride) in _CPU_PHASE_STRIDES["low" if low else "float32"] else "transposed"


class TapUpsampler(nn.Module):
    """One encoder tap to full resolution: bilinear-initialised deconv + dilated deconvs, summed, then a head.

    The transposed convolutions keep their parameters (and checkpoint keys) and run in one of two exact
    forms (:attr:`form`): ``phase``, as :func:`phase_conv` with a pixel shuffle (the branches' phase maps
    summed before one shuffle), or ``transposed``, as ``nn.ConvTranspose2d`` (cemkit 0.1's formulation).
    ``auto`` (the default) runs the form that is faster for the device and precision of the call
    (:func:`faster_upsample_form`). ``transposed_reference = True`` is ``form = "transposed"``.

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
        self.form = "auto"
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

    @property
    def transposed_reference(self) -> bool:
        """Whether the transposed convolutions run as ``nn.ConvTranspose2d`` (``form == "transposed"``)."""
        return self.form == "transposed"

    @transposed_reference.setter
    def transposed_reference(self, value: bool) -> None:
        self.form = "transposed" if value else "phase"

    def form_for(self, x: torch.Tensor) -> str:
        """The form this call runs: :attr:`form`, or with ``auto`` the faster one for ``x``'s device and the
        precision it is computed at (the autocast dtype under autocast). A traced or exported model keeps
        the phase form (the form of every exported model so far)."""
        if self.form not in UPSAMPLE_FORMS:
            raise ValueError(f"TapUpsampler.form must be one of {UPSAMPLE_FORMS}, got {self.form!r}")
        if self.form != "auto":
            return self.form
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return "phase"
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return faster_upsample_form(device, dtype, self.stride)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """The summed branches at full resolution, before the head."""
        if self.stride == 1 or self.form_for(x) == "transposed":
            y = self.plain(x)
            for conv in self.dilated:
                y = y + conv(x)
            return y
        phases, rest = None, None
        for conv in (self.plain, *self.dilated):
            plan = _plan_of(conv)
            if plan is None:
                out = conv(x)
                rest = out if rest is None else rest + out
                continue
            kernel, bias = phase_kernel(conv.weight, conv.bias, plan)
            p = phase_conv(x, kernel, bias, plan)
            phases = p if phases is None else phases + p
        y = F.pixel_shuffle(phases, self.stride) if phases is not None else None
        return rest if y is None else (y if rest is None else y + rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsample(x))


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
    tap_max_stride
        Use only the encoder taps with stride <= this (``None``: all). The encoder's deeper stages
        are pruned (not computed, no parameters): ``16`` drops resnet's stride-32 stage, about a
        quarter of its multiply-adds and most of its parameters.
    encoder
        An already built encoder (for weight loading); created with
        :func:`cemkit.models.encoders.create_encoder` otherwise.
    """

    def __init__(self, arch: str = "resnet18", frames: int = 1, num_classes: int = 2, decoder_width: int | None = None,
                 dilations: Sequence[int] = DEFAULT_DILATIONS, dilated_max_stride: int = 8,
                 final_relu: bool = False, encoder: nn.Module | None = None, tap_max_stride: int | None = None):
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
        if tap_max_stride is not None:
            info = [f for f in info if int(f["reduction"]) <= int(tap_max_stride)]
            if not info:
                raise ValueError(f"tap_max_stride={tap_max_stride} keeps none of {arch}'s taps "
                                 f"(strides {[int(f['reduction']) for f in encoder.feature_info]})")
        self.tap_modules = [f["module"] for f in info]
        self.strides = [int(f["reduction"]) for f in info]
        channels = [int(f["num_chs"]) for f in info]
        self.n_taps = len(info)
        self.tap_indices = list(range(self.n_taps))  # the first n_taps stages (an int would mean the last n)
        encoder.prune_intermediate_layers(indices=self.tap_indices, prune_norm=True, prune_head=True)
        self.encoder = encoder
        self.out_channels = 1 if self.num_classes == 2 else self.num_classes
        self.decoder = DeepEM3DDecoder(channels, self.strides, self.out_channels, decoder_width,
                                       dilations, dilated_max_stride, final_relu)
        self.config: dict[str, Any] = {
            "arch": arch, "frames": self.frames, "num_classes": self.num_classes,
            "decoder_width": decoder_width, "dilations": [int(d) for d in dilations],
            "dilated_max_stride": int(dilated_max_stride), "final_relu": bool(final_relu),
            "tap_max_stride": None if tap_max_stride is None else int(tap_max_stride),
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
        feats = self.encoder.forward_intermediates(x, indices=self.tap_indices, intermediates_only=True)
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
