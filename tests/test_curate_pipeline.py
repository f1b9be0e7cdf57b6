"""End-to-end curate runs on a synthetic raw folder with injected duplicates, blanks and a corrupt file."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cemkit.curate import source_work
from cemkit.io.corpus import open_corpus
from cemkit.curate.pipeline import CurateParams, FilterSettings, curate

PARAMS = CurateParams(patch_size=64)
FILTER_REASONS = {"low_contrast", "uniform", "artefact"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from cemkit.data.synthetic import write_raw_folder

    root = tmp_path_factory.mktemp("raw")
    info = write_raw_folder(root, n_sources=4, seed=0, size=128, depth=5, n_images=4, fib_shape=(48, 80, 80),
                            corrupt=True)
    return info


@pytest.fixture(scope="module")
def run1(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus1")
    meta = curate(raw.root, out, PARAMS, FilterSettings(), shard_size=50)
    return out, meta


def _manifest(out):
    with (Path(out) / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _src(name):
    return name.split(".")[0]


def test_injected_duplicates_and_blanks_dropped_distinct_kept(raw, run1):
    out, _ = run1
    rows = _manifest(out)
    by_key = {}
    for r in rows:
        if r["plane"] == "xy":
            by_key.setdefault((r["source"], int(r["index"])), []).append(r)
    injected = {(_src(i.source), i.index): i for i in raw.injected}
    n_checked = n_blank = 0
    for item in raw.injected:
        patches = by_key[(_src(item.source), item.index)]
        if item.kind in ("blank", "low_contrast", "artefact"):
            # never kept; dropped by the filter (or as a duplicate of another blank patch)
            assert all(r["kept"] == "0" for r in patches), (item, [r["reason"] for r in patches])
            assert {r["reason"] for r in patches} <= FILTER_REASONS | {"duplicate"}
            n_blank += len(patches)
        else:
            # a duplicate and its original share one group: at most one of the two is kept
            originals = {(r["y"], r["x"]): r for r in by_key[(_src(item.source), item.original)]}
            for r in patches:
                o = originals[(r["y"], r["x"])]
                assert not (r["kept"] == "1" and o["kept"] == "1"), (item, r["patch_id"])
                if item.kind == "exact_duplicate":
                    assert r["hash"] == o["hash"] and r["group"] == o["group"]
                if r["group"] == o["group"]:
                    # the copy comes after its original in the source, and a group keeps its first patch
                    assert r["kept"] == "0" and r["reason"] == "duplicate", (item, r["patch_id"])
                assert r["reason"] in ("", "duplicate") and o["reason"] in ("", "duplicate")
                n_checked += 1
    assert n_checked >= 20 and n_blank >= 20
    # distinct content of the png sources (every image from its own seed) is kept, once
    for s in raw.sources:
        if s.format != "png_folder":
            continue
        for z in s.distinct:
            twins = [i.index for i in raw.injected if i.source == s.name and i.original == z]
            for r in by_key[(_src(s.name), z)]:
                group = [r] + [t for k in twins for t in by_key[(_src(s.name), k)] if (t["y"], t["x"]) == (r["y"], r["x"])]
                assert sum(g["kept"] == "1" for g in group) == 1, (s.name, z, r["patch_id"], [g["reason"] for g in group])
    assert (_src(raw.sources[0].name), 0) not in injected
    # genuine stack slices are never dropped by the filter
    for s in raw.sources:
        for z in s.distinct:
            for r in by_key[(_src(s.name), z)]:
                assert r["reason"] in ("", "duplicate"), (s.name, z, r)


def test_corpus_files_and_reader(run1):
    out, meta = run1
    rows = _manifest(out)
    kept = [r for r in rows if r["kept"] == "1"]
    corpus = open_corpus(out)
    assert len(corpus) == len(kept) == meta["n_patches"] > 50
    assert corpus.patch_size == 64 and 0 < corpus.std < corpus.mean < 1
    assert [s["count"] for s in meta["shards"]][:-1] == [50] * (len(meta["shards"]) - 1)
    # manifest shard/offset point at the stored pixels; every patch id is unique
    assert len({r["patch_id"] for r in rows}) == len(rows)
    for i, r in enumerate(kept[:: max(1, len(kept) // 7)]):
        shard = np.load(out / meta["shards"][int(r["shard"])]["file"], mmap_mode="r")
        np.testing.assert_array_equal(shard[int(r["offset"])], corpus[kept.index(r)])
    # mean/std recomputed from the shards
    allp = np.stack(list(corpus)).astype(np.float64) / 255
    assert meta["mean"] == pytest.approx(allp.mean(), rel=1e-9)
    assert meta["std"] == pytest.approx(allp.std(), rel=1e-6)
    # optional export as TIFF files, one per kept patch, named by patch id
    import tifffile

    from cemkit.curate.assembly import export_patches

    assert export_patches(out, "tif") == len(kept)
    first = out / "export" / kept[0]["source"] / (kept[0]["patch_id"].replace(":", "_") + ".tif")
    np.testing.assert_array_equal(tifffile.imread(first), corpus[0])
    html = (out / "report.html").read_text()
    for needle in ("Duplicate groups", "Rejected patches by reason", "lab_z_truncated.tif", "data:image/png;base64"):
        assert needle in html


def test_planes_follow_voxel_size_and_corrupt_file_is_skipped(raw, run1):
    out, meta = run1
    rows = _manifest(out)
    planes = {}
    for r in rows:
        planes.setdefault(r["source"], set()).add(r["plane"])
    assert planes["lab_c_fib"] == {"xy", "xz", "yz"}  # 8 x 8 x 8 nm mrc
    assert planes["lab_b_stack"] == {"xy"}  # 50 x 10 x 10 nm tif
    assert planes["lab_d"] == {"xy"}  # 20 x 5 x 5 nm h5
    assert planes["lab_a_png"] == {"xy"}  # no voxel size: xy only
    assert "lab_z_truncated" in meta["failed_sources"]
    assert any("lab_z_truncated.tif" in e["file"] for e in meta["errors"])
    # a sources file can declare the anisotropic tif isotropic -> xz / yz planes are cut too
    yml = raw.root.parent / "sources.yaml"
    yml.write_text(f"sources:\n  - path: {raw.root / 'lab_b_stack.tif'}\n    voxel_size: [10, 10, 10]\n")
    meta2 = curate(yml, raw.root.parent / "corpus_yaml", PARAMS, FilterSettings(method="none"), report=False)
    assert meta2["counts"]["lab_b_stack"]["planes"] == [["xy", "xz", "yz"]]
    # a volume too large to load (max_volume_mb=0) is cut section by section: same patches
    yml.write_text(f"sources:\n  - path: {raw.root / 'lab_c_fib.mrc'}\n")
    lazy = raw.root.parent / "corpus_lazy"
    curate(yml, lazy, CurateParams(patch_size=64, max_volume_mb=0), FilterSettings(), report=False)
    def located(rows):  # shard / offset differ: the lazy corpus holds this source alone
        return [{k: v for k, v in r.items() if k not in ("shard", "offset")} for r in rows]

    assert located(_manifest(lazy)) == located(r for r in _manifest(out) if r["source"] == "lab_c_fib")


def test_same_seed_same_manifest_and_resume_after_kill(raw, run1, tmp_path, monkeypatch):
    out1, _ = run1
    out2 = tmp_path / "killed"

    def kill_after_first(name):
        raise KeyboardInterrupt(f"simulated kill after {name}")

    monkeypatch.setattr(source_work, "after_source_hook", kill_after_first)
    with pytest.raises(KeyboardInterrupt):
        curate(raw.root, out2, PARAMS, FilterSettings(), shard_size=50)
    done = sorted(p.parent.name for p in (out2 / ".work").glob("*/done.json"))
    assert len(done) == 1 and not (out2 / "manifest.csv").exists()
    stamp = (out2 / ".work" / done[0] / "done.json").stat().st_mtime_ns
    monkeypatch.setattr(source_work, "after_source_hook", None)
    curate(raw.root, out2, PARAMS, FilterSettings(), shard_size=50)
    assert (out2 / ".work" / done[0] / "done.json").stat().st_mtime_ns == stamp  # not redone
    assert (out2 / "manifest.csv").read_bytes() == (out1 / "manifest.csv").read_bytes()
    m1, m2 = (json.loads((o / "metadata.json").read_text()) for o in (out1, out2))
    assert m1["shards"] == m2["shards"] and m1["mean"] == m2["mean"] and m1["counts"] == m2["counts"]
    for s in m1["shards"]:
        assert (out1 / s["file"]).read_bytes() == (out2 / s["file"]).read_bytes()
    # the same corpus from two part jobs into one output, then an assembly-only run
    out3 = tmp_path / "parts"
    for part in ("1/2", "2/2"):
        res = curate(raw.root, out3, PARAMS, FilterSettings(), shard_size=50, part=part)
        assert res["part"] == part and not (out3 / "manifest.csv").exists()
    curate(raw.root, out3, PARAMS, FilterSettings(), shard_size=50, report=False)
    assert (out3 / "manifest.csv").read_bytes() == (out1 / "manifest.csv").read_bytes()
    # another seed changes which near-duplicate is kept, not how many patches there are
    meta3 = curate(raw.root, tmp_path / "seed1", CurateParams(patch_size=64, seed=1), FilterSettings(),
                   shard_size=50, report=False)
    assert meta3["totals"]["patches"] == m1["totals"]["patches"]


def test_classifier_filter_from_labels(raw, run1, tmp_path):
    out1, _ = run1
    rows = _manifest(out1)
    labels = tmp_path / "labels.csv"
    with labels.open("w") as f:
        f.write("patch_id,label\n")
        for r in rows:
            if r["reason"] == "":
                f.write(f"{r['patch_id']},good\n")
            elif r["reason"] in FILTER_REASONS:
                f.write(f"{r['patch_id']},bad\n")
    settings = FilterSettings(method="classifier", labels=str(labels),
                              classifier={"input_size": 32, "epochs": 2, "batch_size": 16, "threads": 1,
                                          "val_fraction": 0.2})
    out = tmp_path / "clf"
    shutil.copytree(out1 / ".work", out / ".work")  # finished sources are reused, not recomputed
    meta = curate(raw.root, out, PARAMS, settings, report=True)
    info = meta["filter"]["classifier"]
    assert info["trained_on"] > 40 and 0.0 <= info["val_auroc"] <= 1.0
    assert (out / "classifier.pt").is_file()
    probs = [r["p_informative"] for r in _manifest(out) if r["reason"] != "duplicate"]
    assert probs and all(p != "" for p in probs)
    # apply the saved classifier without labels
    shutil.copytree(out1 / ".work", tmp_path / "clf2" / ".work")
    meta2 = curate(raw.root, tmp_path / "clf2", PARAMS,
                   FilterSettings(method="classifier", model=str(out / "classifier.pt"),
                                  classifier={"threads": 1}), report=False)
    assert meta2["n_patches"] == meta["n_patches"]


def test_cli_end_to_end_with_workers_and_export(raw, tmp_path):
    from cemkit.cli.main import main

    out = tmp_path / "cli"
    code = main(["curate", f"input={raw.root}", f"output={out}", "+experiment=tiny_curate", "workers=2",
                 "export=png", "filter.min_contrast=15"])
    assert code == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["params"]["patch_size"] == 64 and meta["filter"]["thresholds"]["min_contrast"] == 15
    pngs = sorted((out / "export").rglob("*.png"))
    assert len(pngs) == meta["n_patches"] == len(open_corpus(out))
    assert main(["curate", f"input={tmp_path / 'missing'}", f"output={out}"]) == 2
    assert main(["curate", f"input={raw.root}", f"output={out}", "filter.method=magic"]) == 2
