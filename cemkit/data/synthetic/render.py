"""Turn the label-space :class:`~.anatomy.Anatomy` into an EM-looking uint8 image.

Stain density (0 = unstained, 1 = saturated heavy metal) is composed from the anatomy, mapped
to grey levels by the style's detector response, blurred by the probe, corrupted by shot and
read noise, and quantised.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy
from .fields import smooth_noise
from .styles import Style


def _blend(base, target, weight):
    """base + (target - base) * weight, in place on ``base``."""
    base += (target - base) * weight
    return base


def stain_density(rng, anat: Anatomy, style: Style, voxel_size) -> np.ndarray:
    """Stain density (float32, (z, y, x)) of the volume before imaging."""
    shape = anat.instances.shape
    cyto = style.cytoplasm_stain
    # per-cell tone (some neurites are darker) + smooth local variation + fine granular texture
    tone = rng.normal(0.0, 0.045, size=anat.n_cells + 1).astype(np.float32)
    s = cyto + tone[anat.cell_id]
    s += 0.05 * smooth_noise(rng, shape, voxel_size, 250.0)
    s += 0.04 * smooth_noise(rng, shape, voxel_size, 60.0)
    s += style.granularity * 0.6 * smooth_noise(rng, shape, voxel_size, 2.2 * max(voxel_size[1:]))
    s += style.granularity * 0.5 * rng.standard_normal(shape, dtype=np.float32)
    # ER-like wiggly thin cisternae: a thin level set of a smooth field, in patches
    er_field = smooth_noise(rng, shape, voxel_size, 160.0)
    er_patch = np.clip(smooth_noise(rng, shape, voxel_size, 400.0) - 0.3, 0.0, 1.0)
    s += 0.28 * er_patch * np.exp(-((er_field / 0.09) ** 2))
    # sparse dark granules (ribosomes, glycogen)
    dots = smooth_noise(rng, shape, voxel_size, 1.6 * max(voxel_size[1:]) + 12.0)
    s += 0.3 * np.clip(dots - 2.0, 0.0, 1.0)

    # nucleus: slightly paler nucleoplasm, chromatin clumps, heterochromatin under a dark envelope
    if anat.nucleus_sdf is not None:
        sdf = anat.nucleus_sdf
        inside = 1.0 / (1.0 + np.exp(np.clip(sdf / 4.0, -30, 30)))
        chrom = smooth_noise(rng, shape, voxel_size, 110.0)
        clumps = 1.0 / (1.0 + np.exp(-(chrom - 0.9) * 5.0))
        hetero = np.exp(-np.maximum(-sdf, 0.0) / 45.0)
        nucleo = cyto - 0.06 + 0.32 * clumps + 0.3 * hetero + 0.04 * smooth_noise(rng, shape, voxel_size, 40.0)
        _blend(s, nucleo, inside)
        _blend(s, np.float32(style.membrane_stain), np.exp(-((sdf + 6.0) / 9.0) ** 2))

    # cell membranes (suppressed inside the nucleus, which has its own envelope)
    # membrane width and darkness vary along the membrane (fixation, section angle)
    width = 9.0 * (1.0 + 0.25 * smooth_noise(rng, shape, voxel_size, 200.0))
    memb = np.exp(-((anat.face_dist / np.maximum(width, 4.0)) ** 2))
    memb *= np.clip(0.85 + 0.15 * smooth_noise(rng, shape, voxel_size, 300.0), 0.4, 1.0)
    if anat.nucleus_sdf is not None:
        memb *= anat.nucleus_sdf > 0
    _blend(s, np.float32(style.membrane_stain), memb)

    # vesicles: dark rim, pale lumen
    ves = anat.vesicle_sdf
    _blend(s, np.float32(cyto - 0.12), (ves < 0).astype(np.float32) * 0.7)
    _blend(s, np.float32(min(style.membrane_stain, 0.8)), np.exp(-((ves + 4.0) / 7.5) ** 2))

    # mitochondria: dark matrix, pale cristae lamellae, dark double outer membrane
    m = anat.instances > 0
    d = anat.mito_depth[m]
    matrix = style.mito_stain + 0.05 * rng.standard_normal(d.shape, dtype=np.float32)
    matrix -= style.cristae_contrast * 1.5 * anat.cristae[m] * np.clip((d - 18.0) / 12.0, 0, 1)
    rim = np.exp(-(((d - 7.0) / 7.0) ** 2))
    s[m] = matrix + (min(style.mito_stain + 0.25, 1.0) - matrix) * rim
    return s


def image_from_stain(rng, stain: np.ndarray, style: Style, voxel_size) -> np.ndarray:
    """Image formation: detector response, illumination, probe blur, noise, uint8."""
    shape = stain.shape
    v = np.clip(1.0 - stain, 0.0, 1.0)
    if style.inverted:
        v = 1.0 - v
    if style.gamma != 1.0:
        v **= style.gamma
    g = style.black + (style.white - style.black) * v
    # uneven illumination (same for the whole stack) and per-slice brightness flicker
    ext_px = max(shape[1], shape[2])
    illum = smooth_noise(rng, shape[1:], (1.0, 1.0), ext_px * 0.6)
    g *= np.clip(1.0 + style.illumination * illum[None], 0.6, 1.4)
    g += rng.normal(0.0, style.flicker, size=(shape[0], 1, 1)).astype(np.float32)
    if style.blur_sigma > 0:
        g = ndimage.gaussian_filter(g, sigma=(0, style.blur_sigma, style.blur_sigma), mode="nearest")
    # shot noise: variance proportional to the signal (Gaussian approximation of Poisson)
    np.maximum(g, 0.0, out=g)
    noise_sd = np.sqrt(g * (255.0 / style.photons))
    g += noise_sd * rng.standard_normal(shape, dtype=np.float32)
    g += style.read_noise * rng.standard_normal(shape, dtype=np.float32)
    if style.noise_blur > 0:
        g = ndimage.gaussian_filter(g, sigma=(0, style.noise_blur, style.noise_blur), mode="nearest")
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)
