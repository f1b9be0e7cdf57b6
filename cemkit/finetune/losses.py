"""Segmentation losses: cross-entropy / BCE, soft Dice, focal, and weighted sums of them.

All losses take logits ``(B, C, H, W)`` -- ``C = 1`` for binary segmentation (sigmoid), ``C >= 3``
for multi-class (softmax) -- and integer targets ``(B, H, W)``. Pixels whose target is
:data:`IGNORE_INDEX` (not labelled) count in no term: not in a mean, not in Dice's sums, not in the
auto-balance counts.

Class weights: fixed per-class weights (CEM500K: 0.1 background, 3 for rare classes) and/or
CDeep3M's per-batch *auto-balance* ``w_c = min_count / count_c`` (rarest class present = 1,
absent classes weight 0). Unlike CDeep3M's Caffe layer, which scaled only the gradient, the weights
enter the loss value, normalised by the summed pixel weights, so the loss stays on the same scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSS_NAMES = ("ce", "dice", "focal")
#: target value of pixels that no loss term and no validation metric counts ("not labelled": slices
#: without labels, and pixels with ``data.ignore_value``); class indices stay below it
IGNORE_INDEX = 255


def auto_balance_weights(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-batch class weights ``min_count / count_c`` over the classes present (absent: 0).

    Parameters
    ----------
    target
        Integer class map ``(B, H, W)``; values ``>= num_classes`` (:data:`IGNORE_INDEX`) are not counted.
    num_classes
        Number of classes ``C`` (2 for binary).

    Returns
    -------
    torch.Tensor
        ``(C,)`` float weights; e.g. 900 background and 100 foreground pixels give ``[1/9, 1]``.
    """
    counts = torch.bincount(target.reshape(-1).long(), minlength=num_classes)[:num_classes].float()
    present = counts > 0
    w = torch.zeros(num_classes, device=target.device)
    if present.any():
        w[present] = counts[present].min() / counts[present]
    return w


def pixel_weights(target: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor | None:
    """Per-pixel weights ``class_weights[target]`` (``None`` when there are no class weights); ``target``
    holds class indices only (ignored pixels already replaced, see :func:`split_ignored`)."""
    if class_weights is None:
        return None
    return class_weights.to(target.device)[target.long()]


def split_ignored(target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(target with ignored pixels set to class 0, mask of the counted pixels)``; the mask is None when
    ``ignore_index`` is None (every pixel counts)."""
    if ignore_index is None:
        return target, None
    valid = target != ignore_index
    return torch.where(valid, target, torch.zeros_like(target)), valid


def _pixel_mean(per_pixel: torch.Tensor, weights: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_pixel`` over the counted pixels, weighted by ``weights`` when given. Ignored pixels
    enter as exact zeros (``torch.where``), so their values -- even inf or nan -- change nothing."""
    if valid is None:
        if weights is None:
            return per_pixel.mean()
        return (per_pixel * weights).sum() / weights.sum().clamp_min(1e-12)
    w = valid.to(per_pixel.dtype) if weights is None else torch.where(valid, weights, torch.zeros_like(weights))
    return torch.where(valid, per_pixel * w, torch.zeros_like(per_pixel)).sum() / w.sum().clamp_min(1e-12)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                  ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """BCE-with-logits (1 channel) or softmax cross-entropy, optionally class-weighted (weighted mean)
    over the pixels whose target is not ``ignore_index``."""
    target, valid = split_ignored(target, ignore_index)
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    return _pixel_mean(per_pixel, pixel_weights(target, class_weights), valid)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
          class_weights: torch.Tensor | None = None, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017), averaged like :func:`cross_entropy`."""
    target, valid = split_ignored(target, ignore_index)
    if logits.shape[1] == 1:
        logp1 = F.logsigmoid(logits[:, 0])
        logp0 = F.logsigmoid(-logits[:, 0])
        logpt = torch.where(target.bool(), logp1, logp0)
    else:
        logpt = torch.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1))[:, 0]
    per_pixel = -((1 - logpt.exp()) ** gamma) * logpt
    return _pixel_mean(per_pixel, pixel_weights(target, class_weights), valid)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """``1 - `` soft Dice, pooled over the batch and the pixels whose target is not ``ignore_index``;
    binary: foreground only, multi-class: mean over the foreground classes 1..C-1."""
    target, valid = split_ignored(target, ignore_index)
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits[:, 0]).unsqueeze(1)
        onehot = target.float().unsqueeze(1)
    else:
        probs = torch.softmax(logits, dim=1)[:, 1:]
        onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()[:, 1:]
    if valid is not None:
        counted = valid.unsqueeze(1)
        probs = torch.where(counted, probs, torch.zeros_like(probs))
        onehot = torch.where(counted, onehot, torch.zeros_like(onehot))
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


class SegmentationLoss(nn.Module):
    """Weighted sum of ``ce``, ``dice`` and ``focal`` terms, with optional deep supervision.

    Parameters
    ----------
    terms
        ``{name: weight}``, e.g. ``{"ce": 1.0, "dice": 1.0}``; names from :data:`LOSS_NAMES`.
    num_classes
        2 for binary (1 logit channel), ``C`` otherwise.
    class_weights
        Fixed per-class weights (length ``num_classes``) for ``ce`` and ``focal``.
    auto_balance
        Multiply by CDeep3M's per-batch inverse-frequency weights (:func:`auto_balance_weights`).
    focal_gamma
        Focusing parameter of the focal term.
    deep_supervision
        Weight of the mean loss of the per-tap logits (0 = off).
    ignore_index
        Target value that no term counts (:data:`IGNORE_INDEX`; None: every pixel counts).
    """

    def __init__(self, terms: Mapping[str, float], num_classes: int = 2, class_weights: Sequence[float] | None = None,
                 auto_balance: bool = False, focal_gamma: float = 2.0, deep_supervision: float = 0.0,
                 ignore_index: int | None = IGNORE_INDEX):
        super().__init__()
        unknown = set(terms) - set(LOSS_NAMES)
        if unknown or not terms:
            raise ValueError(f"loss terms must be a non-empty subset of {LOSS_NAMES}, got {sorted(terms)}")
        self.terms = {k: float(v) for k, v in terms.items() if float(v) != 0.0}
        if not self.terms:
            raise ValueError(f"every loss term has weight 0: {dict(terms)}")
        self.num_classes = int(num_classes)
        if class_weights is not None and len(class_weights) != self.num_classes:
            raise ValueError(f"class_weights needs {self.num_classes} values, got {len(class_weights)}")
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.tensor([float(w) for w in class_weights]), persistent=False)
        self.auto_balance, self.focal_gamma = bool(auto_balance), float(focal_gamma)
        self.deep_supervision = float(deep_supervision)
        self.ignore_index = ignore_index

    def weights_for(self, target: torch.Tensor) -> torch.Tensor | None:
        w = self.class_weights
        if self.auto_balance:
            ab = auto_balance_weights(target, self.num_classes)
            w = ab if w is None else w.to(ab.device) * ab
        return w

    def single(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
               ignore: int | None) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        if "ce" in self.terms:
            parts["ce"] = cross_entropy(logits.float(), target, weights, ignore)
        if "dice" in self.terms:
            parts["dice"] = soft_dice(logits.float(), target, ignore_index=ignore)
        if "focal" in self.terms:
            parts["focal"] = focal(logits.float(), target, self.focal_gamma, weights, ignore)
        return parts

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                taps: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, parts)``; ``parts`` holds each term (and ``deep`` when used), detached."""
        weights = self.weights_for(target)
        # a batch without unlabelled pixels takes the unmasked path: the same values, and half the loss's time
        ignore = self.ignore_index
        if ignore is not None and not bool((target == ignore).any()):
            ignore = None
        parts = self.single(logits, target, weights, ignore)
        total = sum(self.terms[k] * v for k, v in parts.items())
        if self.deep_supervision > 0 and taps:
            deep = torch.stack([sum(self.terms[k] * v for k, v in self.single(t, target, weights, ignore).items())
                                for t in taps]).mean()
            parts["deep"] = deep
            total = total + self.deep_supervision * deep
        return total, {k: v.detach() for k, v in parts.items()}
