"""MoCo v2 training-step throughput: cemkit vs lightly, side by side in one run; augmentation speed.

Both implementations get the same timm encoder (1 input channel), image size, batch, queue size,
projection head (encoder width -> encoder width -> 128), temperature 0.2, SGD and the same input
tensors. Steps are interleaved (cemkit, lightly, cemkit, ..., the order rotating every round) so that
load changes on a shared machine hit both alike; the medians after warm-up are reported.

cemkit runs twice: with its defaults (single-device Shuffle-BN emulation: 8 BN splits and a shuffled
key batch) and with Shuffle-BN off (what lightly's MoCo v2 example does).

    python scripts/bench_pretrain.py                 # CPU: resnet18, 128 px, batch 32, K 4096; augmentation
    python scripts/bench_pretrain.py --no-steps      # augmentation pairs/s per worker only (224 and 128 px)
    python scripts/bench_pretrain.py --gpu           # CUDA: resnet50, 224 px, batch 128, K 65536, bf16,
                                                     # channels-last, plus a supervised resnet50 step

lightly is in the `bench` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cemkit.models.encoders import create_encoder
from cemkit.pretrain.moco import MoCoV2, infonce_loss

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "cem500k_patches" / "unlabeled"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class CemkitStep:
    name = "cemkit"

    def __init__(self, arch, queue, device, bn_splits, shuffle_bn, channels_last):
        self.model = MoCoV2(create_encoder(arch, 1), dim=128, queue_size=queue, momentum=0.999, temperature=0.2,
                            bn_splits=bn_splits, shuffle_bn=shuffle_bn).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.query_parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)

    def __call__(self, xq, xk):
        logits, _, _ = self.model(xq, xk)
        loss = infonce_loss(logits)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


class LightlyStep:
    """lightly's MoCo v2 recipe (examples/pytorch/moco.py) with the same encoder and sizes."""

    name = "lightly"

    def __init__(self, arch, queue, device, channels_last):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum

        self._update = update_momentum
        backbone = create_encoder(arch, 1)
        width = backbone.num_features
        self.backbone = backbone.to(device)
        self.head = MoCoProjectionHead(width, width, 128).to(device)
        self.backbone_m = copy.deepcopy(self.backbone)
        self.head_m = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_m)
        deactivate_requires_grad(self.head_m)
        if channels_last:
            for m in (self.backbone, self.backbone_m):
                m.to(memory_format=torch.channels_last)
        self.criterion = NTXentLoss(temperature=0.2, memory_bank_size=(queue, 128)).to(device)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)

    def __call__(self, xq, xk):
        self._update(self.backbone, self.backbone_m, m=0.999)
        self._update(self.head, self.head_m, m=0.999)
        query = self.head(self.backbone(xq).flatten(start_dim=1))
        with torch.no_grad():
            key = self.head_m(self.backbone_m(xk).flatten(start_dim=1)).detach()
        loss = self.criterion(query, key)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


class SupervisedStep:
    """A plain supervised resnet50 classification step (reference for the MoCo overhead)."""

    name = "supervised"

    def __init__(self, arch, device, channels_last):
        import timm

        self.model = timm.create_model(arch, in_chans=1, num_classes=1000).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def __call__(self, xq, xk):
        labels = torch.arange(xq.shape[0], device=xq.device) % 1000
        loss = nn.functional.cross_entropy(self.model(xq), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


def time_steps(runners, xq, xk, steps, warmup, device, amp_dtype, clock=time.perf_counter):
    """Median seconds per step of each runner, steps interleaved; ``clock``: ``time.perf_counter`` (wall) or
    ``time.process_time`` (CPU time of this process: steadier than wall time on a shared CPU)."""
    times = {r.label: [] for r in runners}
    for i in range(warmup + steps):
        shift = i % len(runners)  # rotate the order: no runner always follows the same one
        for r in runners[shift:] + runners[:shift]:
            _sync(device)
            t0 = clock()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = r(xq, xk)
            loss.item()  # forces completion
            _sync(device)
            if i >= warmup:
                times[r.label].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_augment(sizes, count, repeats=3):
    """Two-view pairs per second of cemkit's EM pipeline (and lightly's MoCoV2Transform) in one process set up
    as a data-loader worker (1 torch thread, OpenCV single-threaded); median of ``repeats`` interleaved rounds."""
    import cv2
    from omegaconf import OmegaConf

    from cemkit.io import open_volume
    from cemkit.pretrain.augment import TwoViewTransform

    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    files = sorted(SAMPLES.glob("*.tif*")) if SAMPLES.is_dir() else []
    if files:
        images = [np.asarray(open_volume(f).as_uint8()[0:1][0]) for f in files]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (224, 224), dtype=np.uint8) for _ in range(10)]
    cfg = OmegaConf.load(ROOT / "conf" / "pretrain" / "augment" / "em.yaml")
    runners = {}
    for size in sizes:
        transform = TwoViewTransform(cfg, size, 0.58, 0.1)
        runners[("cemkit (EM recipe)", size)] = (lambda t: lambda i: t(images[i % len(images)], i))(transform)
        try:
            from lightly.transforms import MoCoV2Transform
            from PIL import Image

            lt = MoCoV2Transform(input_size=size, normalize={"mean": [0.58], "std": [0.1]})
            pil = [Image.fromarray(im) for im in images]
            runners[("lightly MoCoV2Transform", size)] = (lambda t: lambda i: t(pil[i % len(pil)]))(lt)
        except Exception as exc:  # noqa: BLE001 - optional peer
            print(f"(lightly transform not timed: {exc})")
    rates = {key: [] for key in runners}
    for key, fn in runners.items():
        for i in range(5):
            fn(i)
    for _ in range(repeats):
        for key, fn in runners.items():
            t0 = time.perf_counter()
            for i in range(count):
                fn(i)
            rates[key].append(count / (time.perf_counter() - t0))
    return {key: statistics.median(v) for key, v in rates.items()}, ("real CEM500K patches" if files else "random images")


def view_batches(batch: int, size: int, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed random ``(batch, 1, size, size)`` view batches (seed 0), channels-last when asked."""
    torch.manual_seed(0)
    xq = torch.randn(batch, 1, size, size, device=device)
    xk = torch.randn(batch, 1, size, size, device=device)
    if channels_last:
        xq, xk = xq.contiguous(memory_format=torch.channels_last), xk.contiguous(memory_format=torch.channels_last)
    return xq, xk


def bench_steps(args) -> dict:
    """Interleaved MoCo steps (cemkit with and without Shuffle-BN, lightly, a supervised step on a GPU)."""
    gpu = args.gpu
    arch = args.arch or ("resnet50" if gpu else "resnet18")
    size = args.size or (224 if gpu else 128)
    batch = args.batch or (128 if gpu else 32)
    queue = args.queue or (65536 if gpu else 4096)
    steps = args.steps or (20 if gpu else 8)
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    device = torch.device("cuda" if gpu else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if gpu else None
    channels_last = gpu
    if gpu:
        torch.backends.cudnn.benchmark = True

    xq, xk = view_batches(batch, size, device, channels_last)

    runners = []
    r = CemkitStep(arch, queue, device, bn_splits=8, shuffle_bn=True, channels_last=channels_last)
    r.label = "cemkit (Shuffle-BN: 8 splits)"
    runners.append(r)
    r = CemkitStep(arch, queue, device, bn_splits=1, shuffle_bn=False, channels_last=channels_last)
    r.label = "cemkit (no Shuffle-BN)"
    runners.append(r)
    if not args.no_lightly:
        r = LightlyStep(arch, queue, device, channels_last)
        r.label = "lightly MoCo v2"
        runners.append(r)
    if gpu:
        r = SupervisedStep(arch, device, channels_last)
        r.label = "supervised step"
        runners.append(r)

    print(f"MoCo v2 step: {arch}, 1 channel, {size} px, batch {batch}, K {queue}, device {device}, "
          f"{'bf16' if amp else 'fp32'}, threads {torch.get_num_threads()}, median of {steps} steps "
          f"after {args.warmup} warm-up (interleaved)")
    cpu_clock = args.clock == "cpu" and not gpu
    if cpu_clock:
        print("  (process CPU time per step, all threads summed: img/s are per CPU-second)")
    med = time_steps(runners, xq, xk, steps, args.warmup, device, amp,
                     clock=time.process_time if cpu_clock else time.perf_counter)
    for label, t in med.items():
        print(f"  {label:<32} {t * 1000:9.1f} ms/step  {batch / t:9.1f} img/s")
    peer = med.get("lightly MoCo v2")
    if peer:
        for label in [k for k in med if k.startswith("cemkit")]:
            print(f"  ratio {label} / lightly: {peer / med[label]:.2f}x throughput")
    if "supervised step" in med:
        for label in [k for k in med if k != "supervised step"]:
            print(f"  {label} step time / supervised step: {med[label] / med['supervised step']:.2f}")
    return med


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="CUDA, resnet50, 224 px, batch 128, K 65536, bf16")
    p.add_argument("--arch", default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--queue", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--aug-pairs", type=int, default=300, help="view pairs per round of the augmentation timing "
                                                                "(0: skip it)")
    p.add_argument("--aug-repeats", type=int, default=3, help="rounds of the augmentation timing (median)")
    p.add_argument("--no-steps", action="store_true", help="time the augmentation only")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="CPU steps: wall time, or process CPU time (steadier on a shared machine)")
    p.add_argument("--no-lightly", action="store_true")
    args = p.parse_args(argv)
    from cemkit.hardware import describe_machine

    print(describe_machine(), flush=True)  # the machine the numbers were taken on

    if not args.no_steps:
        bench_steps(args)
    if args.aug_pairs > 0:
        aug, what = bench_augment((224, 128), args.aug_pairs, args.aug_repeats)
        print(f"augmentation pairs/s per loader worker (1 process, 1 thread), {what}, median of {args.aug_repeats} "
              f"rounds of {args.aug_pairs} pairs:")
        for (label, px), pairs in aug.items():
            feed = 2000 / (2 * pairs)
            print(f"  {label:<28} {px:4d} px {pairs:8.1f} pairs/s  {2 * pairs:8.1f} img/s  "
                  f"(workers for 2000 img/s: {feed:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
