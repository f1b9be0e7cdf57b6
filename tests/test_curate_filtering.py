"""Heuristic filter: real EM patches are kept; blank, low-contrast and artefact patches are dropped."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cemkit.curate.filtering import (
    HeuristicThresholds,
    heuristic_reasons,
    heuristic_scores,
)
from cemkit.curate.patches import extract_patches

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_patches():
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    files = sorted((DATA / "cdeep3m_mito").rglob("images.*.png"))[::5] + sorted(
        (DATA / "cem500k_patches").rglob("images/*.png")) + sorted((DATA / "cem500k_patches").rglob("*.tiff"))
    return np.concatenate([extract_patches(np.asarray(Image.open(f).convert("L")), 224)[0] for f in files])


def test_real_patches_are_kept(real_patches):
    scores = heuristic_scores(real_patches)
    reasons = heuristic_reasons(scores, HeuristicThresholds())
    assert len(real_patches) >= 100
    assert (reasons == "").all(), dict(zip(*np.unique(reasons, return_counts=True)))


def test_exact_scores_of_simple_patches():
    const = np.full((1, 64, 64), 100, np.uint8)
    s = heuristic_scores(const)
    assert s["contrast"][0] == 0 and s["flat_fraction"][0] == 1.0 and s["artefact"][0] == 1.0
    half = np.zeros((1, 64, 64), np.uint8)
    half[0, :, 32:] = 255  # two saturated halves, every pixel saturated
    s = heuristic_scores(half)
    assert s["contrast"][0] == 255 and s["artefact"][0] == 1.0
    ramp = np.tile(np.arange(64, dtype=np.uint8), (1, 64, 1))  # 0..63 along x
    s = heuristic_scores(ramp)
    # p1 / p99 (inverted CDF) of the sampled ramp (every second pixel: 0, 2, ..., 62)
    assert s["contrast"][0] == 62.0
    assert s["artefact"][0] == pytest.approx(1.0)  # every column is constant


def test_blank_low_contrast_and_artefact_patches_are_dropped(real_patches):
    rng = np.random.default_rng(0)
    th = HeuristicThresholds()
    base = real_patches[:4]
    noise_blank = np.clip(rng.normal(128, [[[3.0]], [[8.0]], [[20.0]], [[30.0]]], (4, 224, 224)), 0, 255).astype(np.uint8)
    flat = np.full((1, 224, 224), 200, np.uint8)
    low = (base.astype(np.float32) * (10 / 255) + 120).astype(np.uint8)  # same texture, 10 grey levels
    stripes = base.copy()
    stripes[:, :130] = 0  # 58 % of the rows are blank scan lines (signal lost)
    reasons = heuristic_reasons(heuristic_scores(np.concatenate([noise_blank, flat, low, stripes])), th)
    assert reasons[:4].tolist() == ["uniform"] * 4  # noise only, whatever its strength
    assert reasons[4:9].tolist() == ["low_contrast"] * 5  # constant, and real texture in 10 grey levels
    assert reasons[9:13].tolist() == ["artefact"] * 4
    assert heuristic_reasons(heuristic_scores(base), th).tolist() == [""] * 4
