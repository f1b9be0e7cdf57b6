"""EM augmentations for MoCo pretraining: two independently augmented views of a grey uint8 patch.

The default recipe follows CEM500K (``pretraining/mocov2``), expressed with albumentations:

==  ================================  =========================================================
#   transform                         default
==  ================================  =========================================================
1   rotation                          any angle in [-180, 180], p 0.5, zero fill
2   random resized crop               ``image_size``, scale (0.2, 1), ratio (3/4, 4/3)
3   brightness / contrast jitter      factors in [0.6, 1.4] each, always applied
4   Gaussian blur                     sigma in [0.1, 2], p 0.5
5   horizontal and vertical flips     p 0.5 each
6   Gaussian noise (on [0, 1] floats) std in [0.00316, 0.01] (variance 1e-5..1e-4), p 0.5
7   normalisation                     corpus mean / std (intensities / 255)
==  ================================  =========================================================

Steps 1-5 run on uint8 (fast lookup-table / OpenCV paths); noise and normalisation on float32.
Each sample's randomness comes from a seed (:meth:`TwoViewTransform.__call__`), so a pair is a pure
function of ``(seed, image)``: data order and augmentations do not depend on the number of
workers and are reproduced exactly when a run is resumed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cemkit.errors import ConfigError

log = logging.getLogger(__name__)

_BORDER = {"constant": 0, "replicate": 1, "reflect": 2, "wrap": 3, "reflect_101": 4}


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"augment.{name} must be a pair [low, high], got {value!r}") from exc
    if lo > hi:
        raise ConfigError(f"augment.{name}: low {lo} > high {hi}")
    return lo, hi


def build_view_transform(cfg: Mapping[str, Any], image_size: int, mean: float, std: float):
    """Build the albumentations pipeline producing one normalised float32 view ``(H, W)``.

    Parameters
    ----------
    cfg
        The ``augment`` config (see ``conf/pretrain/augment/em.yaml``): ``rotate``, ``crop``,
        ``jitter``, ``blur``, ``flip``, ``noise`` sections, each with its probability ``p``.
    image_size
        Output side length in pixels.
    mean, std
        Normalisation of intensities scaled to [0, 1].
    """
    import albumentations as A

    if std <= 0:
        raise ConfigError(f"normalisation std must be > 0, got {std}")
    rot, crop, jit = cfg["rotate"], cfg["crop"], cfg["jitter"]
    blur, flip, noise = cfg["blur"], cfg["flip"], cfg["noise"]
    border = str(rot.get("border_mode", "constant"))
    if border not in _BORDER:
        raise ConfigError(f"augment.rotate.border_mode must be one of {sorted(_BORDER)}, got {border!r}")
    steps = []
    if float(rot["p"]) > 0:
        steps.append(A.Rotate(limit=float(rot["limit"]), border_mode=_BORDER[border], fill=0, p=float(rot["p"])))
    steps.append(A.RandomResizedCrop(size=(int(image_size), int(image_size)), scale=_pair(crop["scale"], "crop.scale"),
                                     ratio=_pair(crop["ratio"], "crop.ratio"), p=1.0))
    if float(jit["p"]) > 0 and (float(jit["brightness"]) > 0 or float(jit["contrast"]) > 0):
        steps.append(A.ColorJitter(brightness=float(jit["brightness"]), contrast=float(jit["contrast"]),
                                   saturation=0.0, hue=0.0, p=float(jit["p"])))
    if float(blur["p"]) > 0:
        steps.append(A.GaussianBlur(blur_limit=0, sigma_limit=_pair(blur["sigma"], "blur.sigma"), p=float(blur["p"])))
    if float(flip["horizontal"]) > 0:
        steps.append(A.HorizontalFlip(p=float(flip["horizontal"])))
    if float(flip["vertical"]) > 0:
        steps.append(A.VerticalFlip(p=float(flip["vertical"])))
    steps.append(A.ToFloat(max_value=255.0))
    if float(noise["p"]) > 0:
        steps.append(A.GaussNoise(std_range=_pair(noise["std"], "noise.std"), mean_range=(0.0, 0.0), p=float(noise["p"])))
    steps.append(A.Normalize(mean=float(mean), std=float(std), max_pixel_value=1.0))
    return A.Compose(steps, seed=0)


@dataclass
class TwoViewTransform:
    """Two independently augmented views of one grey patch, as a ``(2, 1, H, W)`` float tensor.

    Parameters
    ----------
    cfg
        The ``augment`` config.
    image_size
        Output side length.
    mean, std
        Normalisation (intensities / 255).
    """

    cfg: Mapping[str, Any]
    image_size: int
    mean: float
    std: float

    def __post_init__(self) -> None:
        self._compose = build_view_transform(self.cfg, self.image_size, self.mean, self.std)

    def __call__(self, image: np.ndarray, seed: int) -> torch.Tensor:
        """Augment ``image`` (uint8 ``(H, W)``) twice; the result depends only on ``(image, seed)``."""
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"expected a 2D uint8 image, got {image.dtype} {image.shape}")
        seed = int(seed) % (2**63)
        # one generator pair shared by all steps (set_random_seed would build two per transform)
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        first = self._compose(image=image)["image"]
        second = self._compose(image=image)["image"]
        return torch.from_numpy(np.stack([first, second])[:, None])

    def denormalise(self, views: torch.Tensor) -> np.ndarray:
        """Map normalised views back to uint8 for display."""
        arr = views.detach().float().cpu().numpy() * self.std + self.mean
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
