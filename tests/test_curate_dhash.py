"""Batched dHash == imagehash.dhash, bit for bit, on every patch of the real EM data."""

from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from cemkit.curate.dhash import (
    dhash_batch,
    dhash_bits,
    hash_to_hex,
    hex_to_hash,
    resize_lanczos_u8,
)
from cemkit.curate.patches import extract_patches

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real_images():
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    files = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".png", ".tif", ".tiff"))
    assert len(files) >= 40  # 25 + 20 labels + 18 cem500k images + masks
    return files


def test_hash_equals_imagehash_on_every_real_patch():
    n = 0
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
            ours = dhash_batch(batch, 8)
            for h, p in zip(ours, batch):
                assert hash_to_hex(h) == str(imagehash.dhash(Image.fromarray(p))), (f, p.shape)
                n += 1
    assert n > 1500


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
def test_resize_equals_pil_lanczos(shape, out):
    rng = np.random.default_rng(sum(shape))
    imgs = rng.integers(0, 256, (5, *shape), dtype=np.uint8)
    imgs[0] = 0
    imgs[1] = 255  # saturated: exercises the clipping of both passes
    imgs[2, :, ::2] = 255
    imgs[2, :, 1::2] = 0  # maximal overshoot of the Lanczos lobes
    ours = resize_lanczos_u8(imgs, *out)
    for a, b in zip(ours, imgs):
        np.testing.assert_array_equal(a, np.asarray(Image.fromarray(b).resize(out, Image.LANCZOS)))


def test_batch_size_does_not_change_hashes():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (37, 64, 64), dtype=np.uint8)
    np.testing.assert_array_equal(dhash_batch(imgs, batch_size=1), dhash_batch(imgs, batch_size=16))
    with pytest.raises(ValueError):
        dhash_batch(imgs, hash_size=9)
