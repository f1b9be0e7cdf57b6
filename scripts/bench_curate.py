#!/usr/bin/env python
"""Benchmark: CEM500K's hash + dedup algorithm vs cemkit's, on the same patches in the same order.

Patches (>= 50 k, 224 x 224 uint8) come from the real EM images in ``../shared/data`` (both
datasets, one source each: cdeep3m train, cdeep3m test, cem500k) plus synthetic volumes from
``cemkit.data.synthetic.make_volume`` (one source each; cached as .npy under ``--cache``).
To reach 50 k patches from this little data, patch windows are taken every ``--stride`` px
(default 32) on every xy section; hashing and dedup cost depend only on the patches, not on how
they were cut.

Reference (CEM500K, ``crop_patches.py`` + ``deduplicate.py``): per patch
``imagehash.dhash(Image.fromarray(p).resize((224, 224), resample=2))``; then per source, in a given
random order, the per-exemplar loop ``matches = np.where(np.logical_xor(ref, hashes).sum(1) <= d)``
followed by ``np.delete`` of the matches.
cemkit: ``cemkit.curate.dhash.dhash_batch`` + ``cemkit.curate.dedup.leader_cluster`` per source,
once per dHash path (``--paths``; default: ``int8`` and ``float32`` where the CPU has VNNI or AMX,
else the path ``auto`` picks, ``float32``: torch's int8 GEMM is a plain loop there).

Both run one process per source in a pool of ``--workers`` processes (CEM500K's scripts use
``multiprocessing.Pool`` too), on the same per-source shuffled order. Prints the machine, then
patches/s of each side (median of ``--repeats`` interleaved runs), the ratio of each dHash path
to the reference (wall clock, and CPU seconds of the workers, which other jobs on a shared machine
disturb less), exemplar counts, and whether every hash agrees.

``--emulate-avx2`` runs the workers as on an AVX2-only CPU where that is under software control:
numpy's OpenBLAS with its Haswell (AVX2) kernels (``OPENBLAS_CORETYPE=Haswell``), torch's own
kernels at AVX2 (``ATEN_CPU_CAPABILITY=avx2``), MKL and oneDNN capped at AVX2, and only the
paths such a CPU gets by default. PIL (the reference) has no SIMD dispatch to cap.

    .venv/bin/python scripts/bench_curate.py --workers 2
    .venv/bin/python scripts/bench_curate.py --workers 2 --emulate-avx2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cemkit.hardware import AVX2_ONLY_ENV as AVX2_ENV

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
P = 224

def windows(image: np.ndarray, stride: int) -> np.ndarray:
    """All 224 px windows of a 2D uint8 image at ``stride`` (padded like curate when smaller)."""
    from cemkit.curate.patches import extract_patches

    h, w = image.shape
    if h < P or w < P:
        return extract_patches(image, P)[0]
    ys = range(0, h - P + 1, stride)
    xs = range(0, w - P + 1, stride)
    return np.stack([image[y:y + P, x:x + P] for y in ys for x in xs])


def make_cached_volume(args) -> None:
    """Generate one synthetic volume into its cache file (run in the pool, one volume per task)."""
    from cemkit.data.synthetic import make_volume

    vpath, shape, k = args
    part = vpath.with_name(vpath.name + ".part.npy")  # renamed when complete: no half-written cache
    np.save(part, make_volume(shape, seed=k, style=k % 5).image)
    os.replace(part, vpath)


def build_sources(out: Path, cache: Path, stride: int, volumes: int, shape: tuple[int, int, int],
                  workers: int) -> list[tuple[str, Path]]:
    from PIL import Image

    def gray(f):
        return np.asarray(Image.open(f).convert("L"))

    real = {
        "cdeep3m_train": sorted((DATA / "cdeep3m_mito" / "train" / "images").glob("*.png")),
        "cdeep3m_test": sorted((DATA / "cdeep3m_mito" / "test" / "images").glob("*.png")),
        "cem500k": sorted((DATA / "cem500k_patches" / "unlabeled").glob("*.tiff"))
        + sorted((DATA / "cem500k_patches" / "labeled" / "images").glob("*.png")),
    }
    sources = []
    for name, files in real.items():
        if not files:
            sys.exit(f"missing real data under {DATA}")
        arr = np.concatenate([windows(gray(f), stride) for f in files])
        np.save(out / f"{name}.npy", arr)
        sources.append((name, out / f"{name}.npy"))
    cache.mkdir(parents=True, exist_ok=True)
    vpaths = [cache / f"synthetic_{k}_{'x'.join(map(str, shape))}.npy" for k in range(volumes)]
    missing = [(vpath, shape, k) for k, vpath in enumerate(vpaths) if not vpath.is_file()]
    if missing:
        print(f"generating {len(missing)} synthetic volumes {shape} (cached in {cache})", flush=True)
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(make_cached_volume, missing, chunksize=1)
    for k, vpath in enumerate(vpaths):
        vol = np.load(vpath)
        arr = np.concatenate([windows(s, stride) for s in vol])
        name = f"synthetic_{k}"
        np.save(out / f"{name}.npy", arr)
        sources.append((name, out / f"{name}.npy"))
    return sources


def reference_source(args):
    """CEM500K: imagehash per patch, then the per-exemplar loop with np.delete."""
    import imagehash
    from PIL import Image

    path, order, d = args
    patches = np.load(path, mmap_mode="r")
    t0, c0 = time.perf_counter(), time.process_time()
    hashes = np.array([imagehash.dhash(Image.fromarray(np.asarray(p)).resize((P, P), resample=2), hash_size=8).hash
                       for p in patches]).reshape(len(patches), -1)
    impaths = np.arange(len(patches))[order]  # np.random.permutation(impaths), with a given permutation
    hashes = hashes[order]
    exemplars = []
    while len(hashes) > 0:
        ref_hash = hashes[0]
        matches = np.where(np.logical_xor(ref_hash, hashes).sum(1) <= d)[0]
        exemplars.append(impaths[matches[0]])
        hashes = np.delete(hashes, matches, axis=0)
        impaths = np.delete(impaths, matches, axis=0)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    packed = np.packbits(np.array([imagehash.dhash(Image.fromarray(np.asarray(p))).hash.ravel()
                                   for p in patches[:256]]), axis=1).view(">u8").ravel()
    return len(exemplars), elapsed, packed.astype(np.uint64), cpu


def cemkit_source(args):
    from cemkit.curate.dedup import leader_cluster
    from cemkit.curate.dhash import dhash_batch

    path, order, d, dhash_path = args
    patches = np.load(path, mmap_mode="r")
    t0, c0 = time.perf_counter(), time.process_time()
    hashes = dhash_batch(patches, 8, path=dhash_path)  # batched, one BLAS thread per process
    res = leader_cluster(hashes, d, order)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return res.n_exemplars, elapsed, hashes[:256], cpu


def warm_up(_):
    """Import everything both sides use (numpy, PIL, imagehash, torch, cemkit) outside the timing."""
    import imagehash
    from PIL import Image

    from cemkit.curate.dedup import leader_cluster
    from cemkit.curate.dhash import dhash_batch
    from cemkit.curate.dhash_paths import PATHS

    x = np.zeros((2, P, P), np.uint8)
    imagehash.dhash(Image.fromarray(x[0]))
    for path in PATHS:
        leader_cluster(dhash_batch(x, path=path), 12)
    return 0


def timed_pool(func, tasks, workers):
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(warm_up, range(workers), chunksize=1)  # start and warm up the workers before timing
        t0 = time.perf_counter()
        out = pool.map(func, tasks, chunksize=1)
        wall = time.perf_counter() - t0
    return out, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--volumes", type=int, default=7)
    ap.add_argument("--shape", type=int, nargs=3, default=(16, 768, 768))
    ap.add_argument("--hamming", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-patches", type=int, default=50_000)
    ap.add_argument("--paths", nargs="+", choices=("int8", "float32", "float64"), default=None,
                    help="dHash paths to time (default: int8 and float32 with VNNI/AMX, else float32)")
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="workers use AVX2 kernels (OpenBLAS Haswell, torch/MKL/oneDNN at AVX2) and the AVX2 paths")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "cemkit" / "bench_curate")
    args = ap.parse_args()
    from cemkit.curate.dedup import source_order
    from cemkit.curate.dhash_paths import auto_path, choose_path
    from cemkit.hardware import CpuFeatures, cpu_features, describe_machine

    print(describe_machine())
    features = cpu_features()
    if args.emulate_avx2:
        os.environ.update(AVX2_ENV)  # inherited by the spawned workers (this process computes nothing)
        features = CpuFeatures.from_flags(features.model, {"avx2"}, features.cores)
        print("emulating an AVX2-only CPU in the workers: " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
    auto = choose_path(features) if args.emulate_avx2 else auto_path()
    paths = args.paths or (["int8", "float32"] if auto == "int8" else [auto])
    print(f"dHash path auto picks here: {auto}; timing: {', '.join(paths)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_curate_") as tmp:
        sources = build_sources(Path(tmp), args.cache, args.stride, args.volumes, tuple(args.shape), args.workers)
        sizes = {name: len(np.load(p, mmap_mode="r")) for name, p in sources}
        total = sum(sizes.values())
        print(f"{total} patches of {P}x{P} px in {len(sources)} sources: {sizes}")
        if total < args.min_patches:
            sys.exit(f"only {total} patches (< {args.min_patches}); raise --volumes or lower --stride")
        # largest sources first so the pool stays busy (same task order for both)
        order = sorted(sources, key=lambda s: -sizes[s[0]])
        base = [(str(p), source_order(sizes[name], args.seed, name), args.hamming) for name, p in order]
        ref_walls, cem_walls = [], {path: [] for path in paths}
        ref_cpus, cem_cpus = [], {path: [] for path in paths}
        cem = {}
        for r in range(args.repeats):
            ref, wall = timed_pool(reference_source, base, args.workers)
            ref_walls.append(wall)
            ref_cpus.append(sum(x[3] for x in ref))
            line = f"repeat {r + 1}: reference {total / wall:,.0f} patches/s"
            for path in paths:
                cem[path], wall = timed_pool(cemkit_source, [t + (path,) for t in base], args.workers)
                cem_walls[path].append(wall)
                cem_cpus[path].append(sum(x[3] for x in cem[path]))
                line += f", cemkit {path} {total / wall:,.0f} patches/s"
            print(line, flush=True)
        ref_ex = sum(x[0] for x in ref)
        ref_rate = total / statistics.median(ref_walls)
        print()
        print(f"patches            {total}")
        print(f"workers            {args.workers}")
        print(f"reference (CEM500K imagehash + per-exemplar loop): {ref_rate:,.0f} patches/s "
              f"(median wall {statistics.median(ref_walls):.2f} s, CPU {statistics.median(ref_cpus):.2f} s)")
        for path in paths:
            cem_rate = total / statistics.median(cem_walls[path])
            cem_ex = sum(x[0] for x in cem[path])
            same_hash = all(np.array_equal(a[2], b[2]) for a, b in zip(ref, cem[path]))
            wall, cpu = statistics.median(cem_walls[path]), statistics.median(cem_cpus[path])
            print(f"cemkit, dHash path {path} (batched dhash + blocked leader clustering): {cem_rate:,.0f} patches/s "
                  f"(median wall {wall:.2f} s, CPU {cpu:.2f} s)")
            print(f"  ratio cemkit {path} / reference: {cem_rate / ref_rate:.1f}x "
                  f"(CPU seconds of the workers: {statistics.median(ref_cpus) / cpu:.1f}x)")
            print(f"  exemplars: reference {ref_ex}, cemkit {cem_ex}, same: {ref_ex == cem_ex}; "
                  f"hashes of the first 256 patches per source equal to imagehash: {same_hash}")
        per_source = {name: (a[0], b[0]) for (name, _), a, b in zip(order, ref, cem[paths[0]])}
        print(f"exemplars per source (reference, cemkit {paths[0]}): {per_source}")


if __name__ == "__main__":
    main()
