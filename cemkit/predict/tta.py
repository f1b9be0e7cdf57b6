"""Test-time augmentation: the 8 in-plane dihedral transforms times a z-flip (16 variants).

A variant acts on a batch of 2.5-D tiles ``(B, frames, H, W)`` (frames = the z context, centre
slice in the middle) and is undone exactly on the model output ``(B, C, H, W)``. The z-flip
reverses the frame order; the output is the centre slice, so only the in-plane part is inverted.
Variant numbering follows CDeep3M (``v1..v16``): 0-7 are identity, vertical flip, horizontal flip,
rot90, rot270, anti-transpose, transpose, rot180 in the y-x plane; 8-15 repeat them with the z order
reversed. Tiles must be square for the rotations and transposes (cemkit tiles always are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

D4_NAMES = ("identity", "flip_v", "flip_h", "rot90", "rot270", "antitranspose", "transpose", "rot180")
# inverse of each in-plane transform, by index
_D4_INVERSE = (0, 1, 2, 4, 3, 5, 6, 7)

# Which variants each `tta` setting uses. For 1-frame models the z-flip is a no-op, so only the
# in-plane part of these presets counts and tta=16 falls back to the 8 in-plane variants.
# The subsets alternate the z-flip so that small presets still see both z orders.
PRESETS_KFRAME = {
    1: (0,),
    2: (0, 15),                      # identity; rot180 + z-flip
    4: (0, 9, 2, 15),                # Klein group {id, flip_v, flip_h, rot180}, z-flip alternated
    8: (0, 9, 2, 11, 4, 13, 6, 15),  # all 8 in-plane transforms, z-flip alternated
    16: tuple(range(16)),
}
PRESETS_1FRAME = {1: (0,), 2: (0, 7), 4: (0, 1, 2, 7), 8: tuple(range(8)), 16: tuple(range(8))}


def _spatial(x: torch.Tensor, index: int) -> torch.Tensor:
    if index == 0:
        return x
    if index == 1:
        return x.flip(-2)
    if index == 2:
        return x.flip(-1)
    if index == 3:
        return torch.rot90(x, 1, dims=(-2, -1))
    if index == 4:
        return torch.rot90(x, 3, dims=(-2, -1))
    if index == 5:
        return x.transpose(-2, -1).flip(-2, -1)
    if index == 6:
        return x.transpose(-2, -1)
    if index == 7:
        return x.flip(-2, -1)
    raise ValueError(f"in-plane transform index must be 0..7, got {index}")


@dataclass(frozen=True)
class Variant:
    """One TTA variant: in-plane transform ``d4`` (0..7) and an optional z-flip."""

    d4: int
    zflip: bool

    @property
    def index(self) -> int:
        return self.d4 + (8 if self.zflip else 0)

    @property
    def name(self) -> str:
        return D4_NAMES[self.d4] + ("+zflip" if self.zflip else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform an input batch ``(B, frames, H, W)``."""
        if self.zflip:
            x = x.flip(-3)
        return _spatial(x, self.d4)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo the in-plane transform on an output batch ``(B, C, H, W)``."""
        return _spatial(y, _D4_INVERSE[self.d4])


def variant(index: int) -> Variant:
    """Variant ``index`` in 0..15 (CDeep3M's ``v{index + 1}``)."""
    if not 0 <= index < 16:
        raise ValueError(f"TTA variant index must be 0..15, got {index}")
    return Variant(index % 8, index >= 8)


def select_variants(tta: int, frames: int) -> list[Variant]:
    """The variants used for a ``tta`` setting (0/1, 2, 4, 8 or 16) and a model with ``frames``.

    ``tta=0`` and ``tta=1`` mean no augmentation. 1-frame models have at most 8 distinct variants.
    """
    n = 1 if tta in (0, 1) else int(tta)
    table = PRESETS_1FRAME if frames == 1 else PRESETS_KFRAME
    if n not in table:
        raise ValueError(f"tta must be one of 0, 1, 2, 4, 8, 16; got {tta}")
    return [variant(i) for i in table[n]]


def tta_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              variants: list[Variant]) -> torch.Tensor:
    """Mean over ``variants`` of ``inverse(fn(forward(x)))``, accumulated as a running sum.

    Parameters
    ----------
    fn : callable
        Batch function ``(B, frames, H, W) -> (B, C, H, W)`` (e.g. a model's probabilities).
    x : torch.Tensor
        Input batch.
    variants : list of Variant
    """
    if len(variants) == 1:
        v = variants[0]
        return v.inverse(fn(v.forward(x)))
    total = None
    for v in variants:
        out = v.inverse(fn(v.forward(x))).float()
        total = out if total is None else total + out  # no in-place: out may alias x
    return total / len(variants)
