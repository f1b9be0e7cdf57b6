"""PNG overlays of a few slices: the raw image with the predicted objects coloured and outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cemkit.io.atomic import atomic_path


def overlay_slices(depth: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices of a ``depth``-slice stack (fewer if it is shorter)."""
    if count <= 0 or depth <= 0:
        return []
    return sorted({round(float(v)) for v in np.linspace(0, depth - 1, min(count, depth))})


def overlay_rgb(image: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """uint8 RGB of a gray ``image`` with ``labels`` (0 = background) colour-blended and outlined."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    gray = image.astype(np.float32) / 255.0
    rgb = label2rgb(labels, image=gray, alpha=alpha, bg_label=0, image_alpha=1.0, kind="overlay")
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 0.0)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def write_overlays(raw, labels, folder: str | Path, count: int = 4, alpha: float = 0.35,
                   prefix: str = "overlay_z") -> list[Path]:
    """Write overlays of ``count`` slices of ``raw`` (uint8, z y x) and ``labels`` as PNG files."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    depth = int(raw.shape[0])
    digits = max(4, len(str(depth - 1)))
    paths = []
    for z in overlay_slices(depth, count):
        rgb = overlay_rgb(np.asarray(raw[z:z + 1])[0], np.asarray(labels[z:z + 1])[0], alpha)
        path = folder / f"{prefix}{z:0{digits}d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        paths.append(path)
    return paths
