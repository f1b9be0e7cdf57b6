"""Batched dHash == imagehash.dhash, bit for bit, on every patch of the real EM data, by every exact path."""

import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from cemkit.curate import dhash_paths
from cemkit.curate.dhash import (
    dhash_batch,
    dhash_bits,
    hash_to_hex,
    hex_to_hash,
    resize_lanczos_u8,
)
from cemkit.curate.dhash_paths import PATHS, choose_path, float32_digits, resolve_path
from cemkit.curate.patches import extract_patches
from cemkit.errors import ConfigError
from cemkit.hardware import CpuFeatures, cpu_features

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real_images():
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    files = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".png", ".tif", ".tiff"))
    assert len(files) >= 40  # 25 + 20 labels + 18 cem500k images + masks
    return files


@pytest.fixture(scope="module")
def real_batches():
    """``(file, batch, imagehash hex strings)`` for every batch of real patches (imagehash run once)."""
    out = []
    for f in _real_images():
        image = np.asarray(Image.open(f).convert("L"))
        patches, _ = extract_patches(image, 224)  # incl. flush edge tiles and padded small images
        batches = [patches, image[None]]  # and the whole image (non-square, e.g. 224 x 138)
        # raw non-overlapping 224 tiles and the short edge strips CEM500K kept (e.g. 128 x 224)
        for y in range(0, image.shape[0], 224):
            row = [image[y:y + 224, x:x + 224] for x in range(0, image.shape[1], 224)]
            for shape in {r.shape for r in row}:
                batches.append(np.stack([r for r in row if r.shape == shape]))
        for batch in batches:
            out.append((f, batch, [str(imagehash.dhash(Image.fromarray(p))) for p in batch]))
    return out


@pytest.mark.parametrize("path", PATHS)
def test_hash_equals_imagehash_on_every_real_patch(real_batches, path):
    # int8 on a CPU without VNNI/AMX is torch's plain loop (~2 ms a patch): every 5th batch there
    step = 5 if path == "int8" and choose_path(cpu_features()) != "int8" else 1
    n = 0
    for f, batch, refs in real_batches[::step]:
        ours = dhash_batch(batch, 8, path=path)
        for h, ref, p in zip(ours, refs, batch):
            assert hash_to_hex(h) == ref, (f, p.shape, path)
            n += 1
    assert n > 1500 // step


def test_bits_and_other_hash_sizes_match_imagehash():
    files = _real_images()
    image = np.asarray(Image.open(files[0]).convert("L"))
    patches, _ = extract_patches(image, 224)
    for hs in (4, 6, 8):
        bits = dhash_bits(patches[:6], hs)
        packed = dhash_batch(patches[:6], hs)
        for b, h, p in zip(bits, packed, patches[:6]):
            ref = imagehash.dhash(Image.fromarray(p), hash_size=hs)
            np.testing.assert_array_equal(b, ref.hash)
            assert hash_to_hex(h, hs) == str(ref)
            assert hex_to_hash(str(ref)) == h


@pytest.mark.parametrize("shape,out", [((224, 224), (9, 8)), ((100, 37), (9, 8)), ((40, 300), (17, 16)),
                                       ((8, 9), (9, 8)), ((500, 700), (33, 12))])
@pytest.mark.parametrize("path", PATHS)
def test_resize_equals_pil_lanczos(shape, out, path):
    rng = np.random.default_rng(sum(shape))
    imgs = rng.integers(0, 256, (5, *shape), dtype=np.uint8)
    imgs[0] = 0
    imgs[1] = 255  # saturated: exercises the clipping of both passes
    imgs[2, :, ::2] = 255
    imgs[2, :, 1::2] = 0  # maximal overshoot of the Lanczos lobes
    ours = resize_lanczos_u8(imgs, *out, path=path)
    for a, b in zip(ours, imgs):
        np.testing.assert_array_equal(a, np.asarray(Image.fromarray(b).resize(out, Image.LANCZOS)))


def test_batch_size_does_not_change_hashes():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (37, 64, 64), dtype=np.uint8)
    np.testing.assert_array_equal(dhash_batch(imgs, batch_size=1), dhash_batch(imgs, batch_size=16))
    with pytest.raises(ValueError):
        dhash_batch(imgs, hash_size=9)


@pytest.mark.parametrize("shape", [(224, 150), (150, 224), (37, 300), (300, 37), (9, 8), (17, 17)])
def test_odd_sizes_hash_like_imagehash_on_every_path(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    imgs = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    imgs[0] = np.clip(np.add.outer(np.arange(shape[0]), np.arange(shape[1])) * 3, 0, 255)  # smooth ramp
    refs = [str(imagehash.dhash(Image.fromarray(p))) for p in imgs]
    for path in PATHS:
        assert [hash_to_hex(h) for h in dhash_batch(imgs, 8, path=path)] == refs, (shape, path)


def test_choose_path_follows_the_cpu():
    assert choose_path(CpuFeatures.from_flags("x", {"avx2", "avx512f", "avx512_vnni"})) == "int8"
    assert choose_path(CpuFeatures.from_flags("x", {"avx2", "amx_int8", "amx_tile"})) == "int8"
    assert choose_path(CpuFeatures.from_flags("x", {"avx2", "avx_vnni"})) == "int8"
    assert choose_path(CpuFeatures.from_flags("x", {"avx2", "avx512f"})) == "float32"
    assert choose_path(CpuFeatures.from_flags("x", {"avx2"})) == "float32"
    assert choose_path(CpuFeatures.from_flags("x", {"avx2", "avx512_vnni"}), int8_available=False) == "float32"


def test_resolve_path_argument_then_env_then_auto(monkeypatch):
    monkeypatch.delenv(dhash_paths.ENV_VAR, raising=False)
    assert resolve_path() == dhash_paths.auto_path() in ("int8", "float32")
    if choose_path(cpu_features()) == "float32":
        assert dhash_paths.auto_path() == "float32"
    monkeypatch.setenv(dhash_paths.ENV_VAR, "float64")
    assert resolve_path() == "float64"
    assert resolve_path("float32") == "float32"  # the argument wins
    assert resolve_path("auto") == dhash_paths.auto_path()
    monkeypatch.setenv(dhash_paths.ENV_VAR, "fp16")
    with pytest.raises(ConfigError, match="CEMKIT_DHASH_PATH.*fp16"):
        resolve_path()
    with pytest.raises(ConfigError, match="path argument.*int4"):
        resolve_path("int4")


def test_float32_digits_are_exact_for_the_dhash_sizes():
    for in_size in (8, 9, 17, 37, 150, 224, 300, 1024):
        for out_size in (8, 9):
            mat, base = float32_digits(in_size, out_size)
            lo, hi = mat[:, :out_size].astype(np.int64), mat[:, out_size:].astype(np.int64)
            w = dhash_paths.resample_matrix(in_size, out_size).astype(np.int64)
            np.testing.assert_array_equal(hi * base + lo, w)
            assert 255 * max(np.abs(hi).sum(0).max(), np.abs(lo).sum(0).max()) < 2 ** 24


def test_float32_path_falls_back_to_float64_when_no_split_is_exact(monkeypatch):
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (4, 60, 50), dtype=np.uint8)
    expected = resize_lanczos_u8(imgs, 9, 8, path="float64")
    monkeypatch.setattr(dhash_paths, "float32_digits", lambda in_size, out_size: None)
    np.testing.assert_array_equal(resize_lanczos_u8(imgs, 9, 8, path="float32"), expected)
    for a, b in zip(expected, imgs):
        np.testing.assert_array_equal(a, np.asarray(Image.fromarray(b).resize((9, 8), Image.LANCZOS)))


def test_auto_path_avoids_an_int8_gemm_that_is_a_plain_loop(monkeypatch):
    real = dhash_paths.horizontal_int8

    def plain_loop(x, out_w):  # stands in for torch's int8 GEMM without oneDNN kernels
        time.sleep(0.05)
        return real(x, out_w)

    monkeypatch.setattr(dhash_paths, "horizontal_int8", plain_loop)
    monkeypatch.setattr(dhash_paths, "cpu_features", lambda: CpuFeatures.from_flags("x", {"avx2", "avx512_vnni"}))
    dhash_paths.auto_path.cache_clear()
    try:
        assert not dhash_paths.int8_gemm_is_fast()
        assert dhash_paths.auto_path() == "float32"
    finally:
        dhash_paths.auto_path.cache_clear()
