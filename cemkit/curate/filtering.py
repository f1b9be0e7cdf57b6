"""Heuristic informativeness scores of uint8 patches, and the keep/drop decision.

CEM500K calls a patch uninformative when it is mostly (>= 80 %) uniform intensity (nuclei,
cytoplasm, resin), has low contrast, or shows reconstruction artefacts. Three scores measure
exactly that, batched over ``(N, P, P)`` uint8 patches:

``flat_fraction``
    Share of the patch that is locally uniform. The patch is averaged over 8 x 8 pixel blocks,
    and a block counts as flat when the standard deviation of its 3 x 3 block neighbourhood is
    below ``flat_std + 2 * noise / 8`` grey levels, where ``noise`` is the patch's pixel noise
    (robust: ``1.4826 * median(|horizontal neighbour difference|) / sqrt(2)`` over every fourth
    row). Pure noise of any strength is flat; membranes and organelles are not.
    Default drop: ``>= 0.8``.
``contrast``
    Robust intensity range ``p99 - p1`` in grey levels, from a histogram of every second pixel
    along y and x. Default drop: ``< 12``.
``artefact``
    The larger of: the fraction of saturated pixels (0 or 255, same sample as the contrast) and
    the fraction of rows or columns that are constant (at most 2 grey levels apart: missing scan
    lines, blank stripes, padding bands of a reconstruction). Default drop: ``>= 0.5``.

A patch is dropped for the first test it fails in the order ``low_contrast``, ``uniform``,
``artefact``; that name is its drop reason in the manifest. (A constant patch is therefore
``low_contrast``; pure noise of any strength is ``uniform``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_NAMES = ("flat_fraction", "contrast", "artefact")
BLOCK = 8  # block side (px) of the flatness test
NOISE_K = 2.0  # noise allowance of the flatness test, in standard errors of a block mean
CONSTANT_RANGE = 2  # a row/column whose grey levels span at most this is constant
REASONS = ("low_contrast", "uniform", "artefact")


@dataclass(frozen=True)
class HeuristicThresholds:
    """Drop thresholds of the heuristic filter (see the module docstring)."""

    flat_std: float = 2.0
    max_flat_fraction: float = 0.8
    min_contrast: float = 12.0
    max_artefact: float = 0.5


def _percentiles_from_hist(hist: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    cdf = np.cumsum(hist, axis=1)
    total = cdf[:, -1:]
    out = []
    for q in qs:
        # lowest grey level whose cumulative count reaches q of the pixels (inverted CDF)
        out.append((cdf < np.ceil(q * total)).sum(axis=1).astype(np.float32))
    return out


def _hist(rows: np.ndarray) -> np.ndarray:
    """Per-row histograms of uint8 values: ``(N, K)`` -> ``(N, 256)`` int64."""
    return np.stack([np.bincount(r, minlength=256) for r in rows]) if len(rows) else np.zeros((0, 256), np.int64)


def heuristic_scores(patches: np.ndarray, flat_std: float = HeuristicThresholds.flat_std) -> dict[str, np.ndarray]:
    """Scores of a batch of patches.

    Parameters
    ----------
    patches : np.ndarray
        ``(N, H, W)`` uint8, H and W multiples of 8 work best (a remainder is ignored by
        ``flat_fraction``).
    flat_std : float
        Grey-level standard deviation below which an 8 x 8 block neighbourhood is flat
        (plus the noise allowance).

    Returns
    -------
    dict of str to np.ndarray
        ``flat_fraction``, ``contrast``, ``artefact``: ``(N,)`` float32 each.
    """
    x = np.asarray(patches)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 patches, got {x.shape} {x.dtype}")
    n, h, w = x.shape
    if n == 0:
        return {k: np.zeros(0, np.float32) for k in SCORE_NAMES}
    x = np.ascontiguousarray(x)
    # contrast: p99 - p1 from per-patch histograms of every second pixel in y and x (no sort)
    sub = np.ascontiguousarray(x[:, ::2, ::2])
    hist = _hist(sub.reshape(n, -1))
    p1, p99 = _percentiles_from_hist(hist, (0.01, 0.99))
    contrast = p99 - p1
    # pixel noise (robust): MAD of horizontal neighbour differences, on every fourth row
    rows = x[:, ::4]
    a, b = rows[:, :, 1:], rows[:, :, :-1]
    diff = np.maximum(a, b) - np.minimum(a, b)  # |a - b| without leaving uint8
    (mad,) = _percentiles_from_hist(_hist(diff.reshape(n, -1)), (0.5,))
    noise = 1.4826 * mad / np.sqrt(2.0)
    # flat fraction on 8 x 8 block means, 3 x 3 block neighbourhoods
    bh, bw = h // BLOCK, w // BLOCK
    if bh >= 3 and bw >= 3:
        sums = x[:, :bh * BLOCK, :bw * BLOCK].reshape(n, bh, BLOCK, bw * BLOCK).sum(axis=2, dtype=np.uint16)
        blocks = sums.reshape(n, bh, bw, BLOCK).sum(axis=3, dtype=np.uint32).astype(np.float32) / BLOCK ** 2
        s1 = np.zeros((n, bh - 2, bw - 2), np.float32)
        s2 = np.zeros_like(s1)
        for dy in range(3):
            for dx in range(3):
                v = blocks[:, dy:dy + bh - 2, dx:dx + bw - 2]
                s1 += v
                s2 += v * v
        var = np.maximum(s2 / 9 - (s1 / 9) ** 2, 0)
        limit = (flat_std + NOISE_K * noise / BLOCK)[:, None, None]
        flat = (var < limit * limit).mean(axis=(1, 2)).astype(np.float32)
    else:
        flat = (contrast < 1).astype(np.float32)
    # artefacts: saturation and constant rows/columns (range of at most 2 grey levels)
    saturated = (hist[:, 0] + hist[:, 255]) / float(sub[0].size)
    const_rows = ((x.max(axis=2) - x.min(axis=2)) <= CONSTANT_RANGE).mean(axis=1)
    const_cols = ((x.max(axis=1) - x.min(axis=1)) <= CONSTANT_RANGE).mean(axis=1)
    artefact = np.maximum(saturated, np.maximum(const_rows, const_cols)).astype(np.float32)
    return {"flat_fraction": flat, "contrast": contrast.astype(np.float32), "artefact": artefact}


def heuristic_reasons(scores: dict[str, np.ndarray], thresholds: HeuristicThresholds) -> np.ndarray:
    """Drop reason per patch (``""`` = keep), the first failed test in the order of :data:`REASONS`."""
    n = len(scores["contrast"])
    reason = np.full(n, "", dtype=object)
    tests = (
        ("low_contrast", scores["contrast"] < thresholds.min_contrast),
        ("uniform", scores["flat_fraction"] >= thresholds.max_flat_fraction),
        ("artefact", scores["artefact"] >= thresholds.max_artefact),
    )
    for name, fail in reversed(tests):  # earlier tests overwrite later ones
        reason[fail] = name
    return reason
