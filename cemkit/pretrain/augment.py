"""EM augmentations for MoCo pretraining: two independently augmented views of a grey uint8 patch.

The default recipe follows CEM500K (``pretraining/mocov2``):

==  ================================  =========================================================
#   transform                         default
==  ================================  =========================================================
1   rotation                          any angle in [-180, 180], p 0.5, zero fill
2   random resized crop               ``image_size``, scale (0.2, 1), ratio (3/4, 4/3)
3   brightness / contrast jitter      factors in [0.6, 1.4] each, in random order, always applied
4   Gaussian blur                     sigma in [0.1, 2], p 0.5
5   horizontal and vertical flips     p 0.5 each
6   Gaussian noise (on [0, 1] floats) std in [0.00316, 0.01] (variance 1e-5..1e-4), p 0.5
7   normalisation                     corpus mean / std (intensities / 255)
==  ================================  =========================================================

For speed (a data-loader worker must feed about 125 view pairs/s at 224 px to keep a GPU busy),
the geometric steps 1, 2 and 5 are one bilinear ``cv2.warpAffine`` from the patch straight to the
output size (one resampling instead of a full-size rotation and a resize; flips commute with the
isotropic jitter and blur), steps 3 and 4 run on uint8 (lookup tables, OpenCV), and noise and
normalisation are one float32 pass. Each sample's randomness comes from a seed
(:meth:`TwoViewTransform.__call__`), so a pair is a pure function of ``(seed, image)``: data order
and augmentations do not depend on the number of workers and are reproduced exactly when a run is
resumed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cemkit.errors import ConfigError

log = logging.getLogger(__name__)

_BORDER = {"constant": 0, "replicate": 1, "reflect": 2, "wrap": 3, "reflect_101": 4}  # cv2.BORDER_*


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"augment.{name} must be a pair [low, high], got {value!r}") from exc
    if lo > hi:
        raise ConfigError(f"augment.{name}: low {lo} > high {hi}")
    return lo, hi


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """A random resized crop ``(top, left, h, w)`` as torchvision's ``RandomResizedCrop.get_params``.

    Area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``; 10 tries, then the
    largest centred crop with the aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_matrix(size: int, box: tuple[int, int, int, int], angle: float, shape: tuple[int, int],
                flip_h: bool, flip_v: bool) -> np.ndarray:
    """The 2x3 affine map from output pixel ``(u, v)`` to patch pixel ``(x, y)`` (``cv2.WARP_INVERSE_MAP``).

    The output is the crop ``box = (top, left, h, w)`` of the patch rotated by ``angle`` degrees
    (counter-clockwise about the patch centre, as ``cv2.getRotationMatrix2D``), resized to
    ``size`` x ``size`` (pixel centres aligned as ``cv2.resize``) and flipped.
    """
    top, left, h, w = box
    su, sv = w / size, h / size
    # output -> crop coordinates of the rotated patch (pixel centres aligned), flips folded in
    a = np.array([[su, 0.0, left + 0.5 * su - 0.5], [0.0, sv, top + 0.5 * sv - 0.5], [0.0, 0.0, 1.0]])
    if flip_h:
        a = a @ np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    if flip_v:
        a = a @ np.array([[1.0, 0.0, 0.0], [0.0, -1.0, size - 1.0], [0.0, 0.0, 1.0]])
    if angle:
        # rotated patch -> patch: the inverse of cv2.getRotationMatrix2D(centre, angle, 1)
        cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
        t = math.radians(angle)
        c, s = math.cos(t), math.sin(t)
        rot_inv = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0.0, 0.0, 1.0]])
        a = rot_inv @ a
    return a[:2]


def jitter_lut(image: np.ndarray, brightness: float, contrast: float, brightness_first: bool) -> np.ndarray:
    """Brightness (``x * b``) and contrast (``(x - mean) * c + mean``) on uint8, clipped, as torchvision."""
    import cv2

    def bright(img):
        return cv2.LUT(img, np.clip(np.arange(256, dtype=np.float32) * brightness, 0, 255).astype(np.uint8))

    def contr(img):
        mean = float(cv2.mean(img)[0])
        lut = np.clip((np.arange(256, dtype=np.float32) - mean) * contrast + mean, 0, 255).astype(np.uint8)
        return cv2.LUT(img, lut)

    return contr(bright(image)) if brightness_first else bright(contr(image))


class ViewAugment:
    """One augmented, normalised float32 view ``(size, size)`` of a grey uint8 patch (see the module docstring).

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

    def __init__(self, cfg: Mapping[str, Any], image_size: int, mean: float, std: float):
        if std <= 0:
            raise ConfigError(f"normalisation std must be > 0, got {std}")
        rot, crop, jit = cfg["rotate"], cfg["crop"], cfg["jitter"]
        blur, flip, noise = cfg["blur"], cfg["flip"], cfg["noise"]
        border = str(rot["border_mode"])
        if border not in _BORDER:
            raise ConfigError(f"augment.rotate.border_mode must be one of {sorted(_BORDER)}, got {border!r}")
        self.size = int(image_size)
        self.rotate_p, self.rotate_limit, self.border = float(rot["p"]), float(rot["limit"]), _BORDER[border]
        self.scale, self.ratio = _pair(crop["scale"], "crop.scale"), _pair(crop["ratio"], "crop.ratio")
        self.jitter_p = float(jit["p"])
        self.brightness, self.contrast = float(jit["brightness"]), float(jit["contrast"])
        self.blur_p, self.sigma = float(blur["p"]), _pair(blur["sigma"], "blur.sigma")
        self.flip_h, self.flip_v = float(flip["horizontal"]), float(flip["vertical"])
        self.noise_p, self.noise_std = float(noise["p"]), _pair(noise["std"], "noise.std")
        # x_float = x_uint8 * gain + offset normalises in one pass
        self.gain = np.float32(1.0 / (255.0 * std))
        self.offset = np.float32(-mean / std)
        self.noise_gain = 1.0 / std

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        h, w = image.shape
        angle = float(rng.uniform(-self.rotate_limit, self.rotate_limit)) if rng.random() < self.rotate_p else 0.0
        box = crop_box(rng, h, w, self.scale, self.ratio)
        flip_h, flip_v = rng.random() < self.flip_h, rng.random() < self.flip_v
        matrix = view_matrix(self.size, box, angle, (h, w), flip_h, flip_v)
        out = cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=self.border, borderValue=0)
        if rng.random() < self.jitter_p and (self.brightness > 0 or self.contrast > 0):
            b = rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
            c = rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
            out = jitter_lut(out, b, c, brightness_first=rng.random() < 0.5)
        if rng.random() < self.blur_p:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(*self.sigma)))
        view = out.astype(np.float32)
        view *= self.gain
        view += self.offset
        if rng.random() < self.noise_p:
            sigma = rng.uniform(*self.noise_std) * self.noise_gain
            # torch's normal sampler is 2-3x faster than numpy's (noise was the costliest step at 224 px)
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
            noise = torch.randn(view.shape, generator=gen)
            noise.mul_(float(sigma))
            view += noise.numpy()
        return view


def build_view_transform(cfg: Mapping[str, Any], image_size: int, mean: float, std: float) -> ViewAugment:
    """The one-view augmentation of the ``augment`` config (:class:`ViewAugment`)."""
    return ViewAugment(cfg, image_size, mean, std)


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
        self._view = build_view_transform(self.cfg, self.image_size, self.mean, self.std)

    def __call__(self, image: np.ndarray, seed: int) -> torch.Tensor:
        """Augment ``image`` (uint8 ``(H, W)``) twice; the result depends only on ``(image, seed)``."""
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"expected a 2D uint8 image, got {image.dtype} {image.shape}")
        rng = np.random.default_rng(int(seed) % (2**63))
        out = np.empty((2, 1, self.image_size, self.image_size), dtype=np.float32)
        out[0, 0] = self._view(image, rng)
        out[1, 0] = self._view(image, rng)
        return torch.from_numpy(out)

    def denormalise(self, views: torch.Tensor) -> np.ndarray:
        """Map normalised views back to uint8 for display."""
        arr = views.detach().float().cpu().numpy() * self.std + self.mean
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
