"""A finetuned segmenter as one TorchScript module that runs on any input size.

The network (timm encoder + DeepEM3D decoder) is **traced** on an example tile: its convolutions are
size-generic but the Python padding logic of :meth:`DeepEM3DSegmenter.forward` is not traceable.
That logic (reflect-pad H and W up to a multiple of the encoder stride, crop the output back) is
re-done in a small **scripted** wrapper, so the exported module gives the same numbers as the
PyTorch model for every input size, and it exports to ONNX with dynamic height and width (the
script's control flow becomes ONNX ``If`` nodes).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

OUTPUTS = ("probabilities", "logits")


class _Network(nn.Module):
    """Encoder taps -> decoder logits, for an input whose H and W are multiples of the stride."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.tap_indices = list(model.tap_indices)
        self.activation = "none" if output == "logits" else (
            "sigmoid" if model.out_channels == 1 else "softmax")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder.forward_intermediates(x, indices=self.tap_indices, intermediates_only=True)
        logits = self.decoder(feats)[0]
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.activation == "softmax":
            return torch.softmax(logits, dim=1)
        return logits


class PadToStride(nn.Module):
    """Pad ``(B, C, H, W)`` up to multiples of ``stride`` (reflect; replicate for tiny inputs), run
    ``network`` and crop back to ``(H, W)`` -- the padding rule of ``DeepEM3DSegmenter.forward``."""

    def __init__(self, network: nn.Module, stride: int, frames: int) -> None:
        super().__init__()
        self.network = network
        self.stride = int(stride)
        self.frames = int(frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.size(1) != self.frames:
            raise ValueError("expected input of shape (B, frames, H, W)")
        h = x.size(2)
        w = x.size(3)
        ph = (self.stride - h % self.stride) % self.stride
        pw = (self.stride - w % self.stride) % self.stride
        if ph > 0 or pw > 0:
            if ph < h and pw < w:
                x = F.pad(x, [0, pw, 0, ph], mode="reflect")
            else:
                x = F.pad(x, [0, pw, 0, ph], mode="replicate")
        y = self.network(x)
        return y[:, :, :h, :w]


def script_segmenter(model: nn.Module, tile: int = 256, output: str = "probabilities"
                     ) -> torch.jit.ScriptModule:
    """TorchScript module equivalent to ``model`` (or ``model.predict_proba``) for any input size.

    Parameters
    ----------
    model : DeepEM3DSegmenter
        In eval mode; moved to CPU for tracing.
    tile : int
        Side of the example input used for tracing (rounded up to a multiple of the stride).
    output : {"probabilities", "logits"}
        ``probabilities``: sigmoid (binary, 1 channel) or softmax, as ``model.predict_proba``;
        ``logits``: as ``model(x)``.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    model = model.eval().cpu()
    stride = int(model.max_stride)
    side = max(stride, -(-int(tile) // stride) * stride)
    example = torch.zeros(1, int(model.frames), side, side)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_Network(model, output), example, check_trace=False)
    return torch.jit.script(PadToStride(traced, stride, int(model.frames)))


def reference_output(model: nn.Module, x: torch.Tensor, output: str) -> torch.Tensor:
    """What the exported module must reproduce for input ``x``."""
    with torch.no_grad():
        return model.predict_proba(x) if output == "probabilities" else model(x)
