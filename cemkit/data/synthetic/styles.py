"""Per-"dataset" imaging styles of the synthetic EM generator.

A :class:`Style` holds everything that differs between two labs imaging the same kind of
tissue: voxel size, brightness / contrast / gamma of the detector, how strongly membranes and
mitochondria take up the heavy-metal stain, shot and read noise, blur, uneven illumination,
slice-to-slice brightness flicker and whether contrast is inverted (raw back-scatter signal:
stain bright on dark, instead of the usual stain-dark-on-light display).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Style:
    """Imaging parameters of one synthetic "dataset".

    Attributes
    ----------
    name : str
        Short identifier.
    voxel_size : tuple of float
        Default (z, y, x) voxel size in nm (``make_volume(voxel_size=None)`` uses it).
    black, white : float
        Grey levels of fully stained and of unstained material before noise (0..255).
    gamma : float
        Detector response exponent applied to the unstained fraction (1 = linear).
    membrane_stain : float
        Peak stain density of a plasma membrane (0..1).
    cytoplasm_stain : float
        Stain density of cytoplasm.
    mito_stain : float
        Stain density of the mitochondrial matrix (mitochondria darkness).
    cristae_contrast : float
        Amplitude of the cristae stripes inside mitochondria.
    granularity : float
        Amplitude of fine, voxel-scale cytoplasm texture (ribosomes, glycogen).
    photons : float
        Expected electron counts of a white voxel; smaller means heavier shot noise.
    read_noise : float
        Standard deviation of additive Gaussian noise in grey levels.
    blur_sigma : float
        In-plane Gaussian blur (probe size), in pixels, applied before shot noise.
    noise_blur : float
        In-plane Gaussian blur applied after noise (detector bandwidth), in pixels.
    illumination : float
        Relative amplitude of the smooth brightness gradient across the field.
    flicker : float
        Standard deviation of the per-slice brightness change, in grey levels.
    inverted : bool
        True: stained material is bright (raw back-scatter contrast).
    """

    name: str
    voxel_size: tuple[float, float, float] = (40.0, 6.0, 6.0)
    black: float = 10.0
    white: float = 232.0
    gamma: float = 1.0
    membrane_stain: float = 0.85
    cytoplasm_stain: float = 0.36
    mito_stain: float = 0.78
    cristae_contrast: float = 0.16
    granularity: float = 0.12
    photons: float = 35.0
    read_noise: float = 3.0
    blur_sigma: float = 1.2
    noise_blur: float = 1.0
    illumination: float = 0.05
    flicker: float = 1.5
    inverted: bool = False

    def with_(self, **changes) -> Style:
        """Return a copy with some fields changed."""
        return replace(self, **changes)


#: The built-in styles; ``make_volume(style=i)`` picks ``STYLES[i]``.
STYLES: tuple[Style, ...] = (
    # Serial block-face SEM of brain (CDeep3M-like): light grey, crisp dark membranes, heavy noise.
    Style(name="sbem_brain"),
    # FIB-SEM of cultured cells: near-isotropic voxels, finer pixels, lower noise, softer stain.
    Style(
        name="fibsem_cells", voxel_size=(8.0, 8.0, 8.0), black=55.0, white=205.0, gamma=0.85,
        membrane_stain=0.6, cytoplasm_stain=0.25, mito_stain=0.55, cristae_contrast=0.14,
        granularity=0.05, photons=260.0, read_noise=3.0, blur_sigma=1.3, noise_blur=0.7,
        illumination=0.08, flicker=0.5,
    ),
    # Weakly stained, low-contrast, bright, noisy, large pixels (older SBEM of a different tissue).
    Style(
        name="sbem_lowcontrast", voxel_size=(50.0, 10.0, 10.0), black=95.0, white=200.0, gamma=1.3,
        membrane_stain=0.65, cytoplasm_stain=0.35, mito_stain=0.58, cristae_contrast=0.1,
        granularity=0.1, photons=70.0, read_noise=6.0, blur_sigma=0.8, noise_blur=0.3,
        illumination=0.12, flicker=3.0,
    ),
    # Raw back-scatter FIB-SEM: inverted contrast (stain bright on dark), strong stain.
    Style(
        name="fibsem_inverted", voxel_size=(10.0, 5.0, 5.0), black=20.0, white=210.0, gamma=1.0,
        membrane_stain=0.85, cytoplasm_stain=0.22, mito_stain=0.7, cristae_contrast=0.2,
        granularity=0.06, photons=140.0, read_noise=5.0, blur_sigma=1.2, noise_blur=0.6,
        illumination=0.06, flicker=1.0, inverted=True,
    ),
    # Heavily stained, high-contrast, dark tissue, sharp but grainy (TEM-tomography-like look).
    Style(
        name="heavy_stain", voxel_size=(30.0, 4.0, 4.0), black=5.0, white=245.0, gamma=0.7,
        membrane_stain=0.9, cytoplasm_stain=0.42, mito_stain=0.78, cristae_contrast=0.18,
        granularity=0.12, photons=70.0, read_noise=3.0, blur_sigma=0.7, noise_blur=0.4,
        illumination=0.04, flicker=2.0,
    ),
)


def resolve_style(style: int | str | Style) -> Style:
    """Return the :class:`Style` for an index into :data:`STYLES`, a style name or a Style."""
    if isinstance(style, Style):
        return style
    if isinstance(style, str):
        for s in STYLES:
            if s.name == style:
                return s
        raise ValueError(f"unknown synthetic style {style!r}; known: {[s.name for s in STYLES]}")
    idx = int(style)
    if not 0 <= idx < len(STYLES):
        raise ValueError(f"style index {idx} out of range 0..{len(STYLES) - 1}")
    return STYLES[idx]
