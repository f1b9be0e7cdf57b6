"""Tiling rule (edge strips, small images), cross-section planning, sources discovery."""

import numpy as np
import pytest

from cemkit.curate.patches import count_tiles, extract_patches, tile_grid, tile_starts
from cemkit.curate.sections import (
    Section,
    is_isotropic,
    plan_sections,
    read_section,
    section_planes,
)
from cemkit.curate.sources import discover_sources
from cemkit.errors import InputError


@pytest.mark.parametrize("size,starts", [
    (224, [0]),
    (447, [0, 223]),             # remainder 223 >= 112: flush tile
    (448, [0, 224]),
    (559, [0, 224]),             # remainder 111 < 112: discarded
    (560, [0, 224, 336]),        # remainder exactly 112 (half a patch): kept, flush with the end
    (1000, [0, 224, 448, 672]),  # remainder 104: discarded
    (1024, [0, 224, 448, 672, 800]),
    (112, [0]),                  # smaller than a patch, at least half: one padded tile
    (111, []),                   # less than half a patch: nothing
])
def test_tile_starts(size, starts):
    assert tile_starts(size, 224).tolist() == starts


def test_tile_starts_no_bankers_rounding():
    # CEM500K: round(2.5) == 2 drops a 112 px remainder of 560; here 2.5 tiles -> 3 tiles
    assert len(tile_starts(560, 224)) == 3
    assert len(tile_starts(336, 224)) == 2  # 1.5 tiles -> 2 (round() would also give 2)
    assert tile_starts(150, 224, small="drop").tolist() == []
    assert tile_starts(400, 224, small="drop").tolist() == [0, 176]
    assert tile_starts(300, 224, small="drop").tolist() == [0]  # remainder 76 < 112
    with pytest.raises(ValueError):
        tile_starts(300, 224, small="stretch")


def test_grid_and_extraction_values():
    img = np.arange(400 * 500, dtype=np.int64).reshape(400, 500)
    patches, origins = extract_patches(img, 224)
    # y: remainder 176 -> flush tile at 176; x: remainder 52 dropped
    assert origins.tolist() == [[0, 0], [0, 224], [176, 0], [176, 224]]
    assert count_tiles(400, 500, 224) == len(tile_grid(400, 500, 224)) == 4
    for p, (y, x) in zip(patches, origins):
        np.testing.assert_array_equal(p, img[y:y + 224, x:x + 224])


def test_small_image_is_mirror_padded():
    img = np.arange(138 * 224, dtype=np.uint8).reshape(138, 224)  # like the cem500k examples
    patches, origins = extract_patches(img, 224)
    assert patches.shape == (1, 224, 224) and origins.tolist() == [[0, 0]]
    np.testing.assert_array_equal(patches[0, :138], img)
    np.testing.assert_array_equal(patches[0, 138:], img[::-1][: 224 - 138])  # symmetric mirror
    assert extract_patches(img, 224, small="drop")[0].shape == (0, 224, 224)
    assert extract_patches(np.zeros((100, 400), np.uint8), 224)[0].shape == (0, 224, 224)


def test_isotropy_and_planes():
    assert is_isotropic((5.0, 5.0, 5.0))
    assert is_isotropic((6.0, 5.0, 5.0))      # 20 % exactly: included
    assert not is_isotropic((6.1, 5.0, 5.0))
    assert not is_isotropic((40.0, 5.9, 5.9))  # SBEM: xy only
    assert not is_isotropic(None)
    assert section_planes((10, 64, 64), (8, 8, 8)) == ("xy", "xz", "yz")
    assert section_planes((10, 64, 64), (40, 6, 6)) == ("xy",)
    assert section_planes((1, 64, 64), (8, 8, 8)) == ("xy",)  # a 2D image
    assert section_planes((10, 64, 64), None, 0.2) == ("xy",)


def test_plan_and_read_sections():
    secs = plan_sections((5, 4, 3), ("xy", "xz", "yz"), stride=2)
    assert secs == [Section("xy", 0), Section("xy", 2), Section("xy", 4),  # last slice included
                    Section("xz", 0), Section("xz", 2), Section("yz", 0), Section("yz", 2)]
    vol = np.arange(5 * 4 * 3).reshape(5, 4, 3)
    np.testing.assert_array_equal(read_section(vol, Section("xy", 4)), vol[4])
    np.testing.assert_array_equal(read_section(vol, Section("xz", 2)), vol[:, 2, :])
    np.testing.assert_array_equal(read_section(vol, Section("yz", 1)), vol[:, :, 1])
    with pytest.raises(ValueError):
        plan_sections((5, 4, 3), ("xy",), stride=0)


def test_discover_sources_folder_and_yaml(tmp_path):
    raw = tmp_path / "raw"
    (raw / "tem_images").mkdir(parents=True)
    (raw / "vol.tif").write_bytes(b"")
    (raw / "notes.txt").write_text("not a source")
    (raw / ".hidden").mkdir()
    names = [s.name for s in discover_sources(raw)]
    assert names == ["tem_images", "vol"]
    y = tmp_path / "sources.yaml"
    y.write_text("sources:\n  - path: raw/vol.tif\n    voxel_size: [8, 8, 8]\n  - path: raw/tem_images\n    name: tem\n")
    srcs = discover_sources(y)
    assert [(s.name, s.voxel_size) for s in srcs] == [("tem", None), ("vol", (8.0, 8.0, 8.0))]
    y.write_text("sources:\n  - path: raw/missing.tif\n")
    with pytest.raises(InputError, match="missing.tif"):
        discover_sources(y)
    with pytest.raises(InputError, match="does not exist"):
        discover_sources(tmp_path / "nope")
