"""GPU checks called by scripts/gpu_check.sh: MoCo vs supervised step, finetune step, data for the predict timing.

    python scripts/bench_gpu.py moco       # bf16 resnet50 224 px MoCo step img/s vs a supervised resnet50 step
    python scripts/bench_gpu.py finetune   # DeepEM3D finetune step img/s (resnet18, 1fm and 5fm, bf16)
    python scripts/bench_gpu.py data DIR   # synthetic labelled stack + a 100 x 1000 x 1000 volume to predict
    python scripts/bench_gpu.py --cpu-tiny moco|finetune|data DIR   # the same code on the CPU, tiny sizes

Without a CUDA device (and without ``--cpu-tiny``) ``moco`` and ``finetune`` print ``no CUDA device`` and
exit with status 3. Medians after warm-up; the MoCo and supervised steps are interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

NO_CUDA = 3
GOAL_MOCO_VS_SUPERVISED = 0.7


def _device(cpu_tiny: bool) -> torch.device | None:
    if cpu_tiny:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False", flush=True)
        return None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    return torch.device("cuda")


def moco(cpu_tiny: bool, steps: int) -> int:
    """cemkit's single-device MoCo step (8 BN splits, shuffled keys) against a supervised step, same encoder."""
    from bench_pretrain import CemkitStep, SupervisedStep, time_steps, view_batches

    device = _device(cpu_tiny)
    if device is None:
        return NO_CUDA
    arch, size, batch, queue = ("resnet10t", 64, 16, 64) if cpu_tiny else ("resnet50", 224, 128, 65536)
    steps, warmup = (1, 1) if cpu_tiny else (steps, 5)
    channels_last = not cpu_tiny
    xq, xk = view_batches(batch, size, device, channels_last)
    runners = []
    for bn_splits, label in ((8, "cemkit MoCo (Shuffle-BN, 8 splits)"), (1, "cemkit MoCo (no Shuffle-BN)")):
        r = CemkitStep(arch, queue, device, bn_splits=bn_splits if batch % bn_splits == 0 else 1,
                       shuffle_bn=bn_splits > 1, channels_last=channels_last)
        r.label = label
        runners.append(r)
    r = SupervisedStep(arch, device, channels_last)
    r.label = "supervised step"
    runners.append(r)
    amp = torch.bfloat16 if device.type == "cuda" else None
    print(f"MoCo step: {arch}, {size} px, batch {batch}, K {queue}, {'bf16' if amp else 'fp32'}, "
          f"channels_last {channels_last}, median of {steps} steps after {warmup} warm-up", flush=True)
    med = time_steps(runners, xq, xk, steps, warmup, device, amp)
    for label, t in med.items():
        print(f"  {label:<38} {t * 1000:8.1f} ms/step {batch / t:9.1f} img/s")
    for label in [k for k in med if k != "supervised step"]:
        ratio = med["supervised step"] / med[label]
        print(f"  ratio {label} / supervised: {ratio:.2f}x img/s (goal {GOAL_MOCO_VS_SUPERVISED}x)")
    return 0


def finetune(cpu_tiny: bool, steps: int) -> int:
    """A DeepEM3D training step (forward, BCE, backward, fused AdamW) as `+experiment=gpu` runs it."""
    from cemkit.models.deepem3d import DeepEM3DSegmenter

    device = _device(cpu_tiny)
    if device is None:
        return NO_CUDA
    arch, batch, size = ("resnet10t", 2, 64) if cpu_tiny else ("resnet18", 16, 512)
    steps = 1 if cpu_tiny else steps
    amp = torch.bfloat16 if device.type == "cuda" else None
    print(f"finetune step: {arch}, batch {batch} x {size}^2 px, {'bf16' if amp else 'fp32'}, channels_last, "
          f"median of {steps} steps", flush=True)
    for frames in (1, 5):
        torch.manual_seed(0)
        model = DeepEM3DSegmenter(arch, frames=frames).to(device).to(memory_format=torch.channels_last).train()
        x = torch.randn(batch, frames, size, size, device=device).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def step():
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        times = []
        for i in range(steps + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step().item()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"  {frames}fm: {t * 1000:8.1f} ms/step {batch / t:9.1f} img/s "
              f"({batch * size * size / t / 1e6:.0f} Mpx/s)", flush=True)
    return 0


def data(folder: Path, cpu_tiny: bool) -> int:
    """A small labelled synthetic stack (to train the ensemble's members) and the volume to predict."""
    from cemkit.data.synthetic import make_volume
    from cemkit.io import write_tif_stack

    folder.mkdir(parents=True, exist_ok=True)
    train = make_volume(shape=(6, 128, 128) if cpu_tiny else (8, 256, 256), seed=0)
    write_tif_stack(folder / "train_images.tif", train.image)
    write_tif_stack(folder / "train_labels.tif", (train.mito * 255).astype(np.uint8))
    # the volume to predict: 100 x 1000 x 1000 (tiny: 6 x 100 x 100), tiled from a synthetic block
    z, yx, block = (6, 100, 64) if cpu_tiny else (100, 1000, 256)
    base = make_volume(shape=(min(z, 10), block, block), seed=1).image
    reps = (-(-z // base.shape[0]), -(-yx // block), -(-yx // block))
    vol = np.ascontiguousarray(np.tile(base, reps)[:z, :yx, :yx])
    write_tif_stack(folder / "volume.tif", vol)
    print(f"data in {folder}: train {train.image.shape}, volume {vol.shape} ({vol.nbytes / 1e6:.0f} MB)", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("moco", "finetune", "data"))
    p.add_argument("folder", nargs="?", type=Path, help="output folder of `data`")
    p.add_argument("--cpu-tiny", action="store_true", help="run on the CPU with tiny sizes (a code-path check)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    args = p.parse_args(argv)
    from cemkit.hardware import describe_machine

    print(describe_machine(), flush=True)  # the machine the numbers were taken on
    if args.part == "moco":
        return moco(args.cpu_tiny, args.steps)
    if args.part == "finetune":
        return finetune(args.cpu_tiny, args.steps)
    if args.folder is None:
        p.error("data needs an output folder")
    return data(args.folder, args.cpu_tiny)


if __name__ == "__main__":
    raise SystemExit(main())
