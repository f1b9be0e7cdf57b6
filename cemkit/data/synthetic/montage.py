"""`save_montage`: a PNG grid of a few slices, each as image | image with label overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Overlay colours for label values 1, 2, ... (cycled); semantic masks use the first one.
_COLOURS = np.array(
    [[255, 60, 60], [60, 200, 255], [255, 200, 40], [120, 255, 90], [230, 90, 255], [255, 140, 0],
     [0, 230, 180], [180, 180, 255]],
    dtype=np.float32,
)


def _overlay(slice_u8: np.ndarray, lab: np.ndarray, alpha: float) -> np.ndarray:
    rgb = np.repeat(slice_u8[..., None].astype(np.float32), 3, axis=2)
    fg = lab > 0
    if fg.any():
        colours = _COLOURS[(lab[fg].astype(np.int64) - 1) % len(_COLOURS)]
        rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours
        # outline: label boundary pixels fully coloured
        edge = fg & ~(
            np.pad(fg, 1, mode="edge")[:-2, 1:-1] & np.pad(fg, 1, mode="edge")[2:, 1:-1]
            & np.pad(fg, 1, mode="edge")[1:-1, :-2] & np.pad(fg, 1, mode="edge")[1:-1, 2:]
        )
        rgb[edge] = _COLOURS[(lab[edge].astype(np.int64) - 1) % len(_COLOURS)]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def montage_array(
    image: np.ndarray, labels: np.ndarray | None = None, n: int = 4, alpha: float = 0.35, gap: int = 4
) -> np.ndarray:
    """RGB uint8 montage: one row per slice, columns image | image with label overlay.

    Parameters
    ----------
    image : numpy.ndarray
        (z, y, x) or (y, x) uint8 image.
    labels : numpy.ndarray, optional
        Same shape; 0 = background, >0 = label or instance id (coloured per id).
    n : int
        Number of evenly spaced slices (at most z).
    alpha : float
        Overlay opacity.
    gap : int
        White gap between panels in pixels.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2:
            labels = labels[None]
        if labels.shape != image.shape:
            raise ValueError(f"labels shape {labels.shape} != image shape {image.shape}")
    if image.dtype != np.uint8:
        lo, hi = np.percentile(image, (0.5, 99.5))
        image = np.clip((image - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    z = image.shape[0]
    n = max(1, min(int(n), z))
    idx = np.unique(np.linspace(0, z - 1, n).round().astype(int))
    h, w = image.shape[1:]
    cols = 2 if labels is not None else 1
    out = np.full((len(idx) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, k in enumerate(idx):
        y0 = r * (h + gap)
        out[y0 : y0 + h, :w] = image[k][..., None]
        if labels is not None:
            out[y0 : y0 + h, w + gap :] = _overlay(image[k], labels[k], alpha)
    return out


def save_montage(
    path_png, image: np.ndarray, labels: np.ndarray | None = None, n: int = 4, alpha: float = 0.35
) -> Path:
    """Save a PNG montage of ``n`` evenly spaced slices: image | image with coloured labels.

    The file is written to a temporary name next to ``path_png`` and renamed into place.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    from cemkit.io.atomic import atomic_path

    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = montage_array(image, labels, n=n, alpha=alpha)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
