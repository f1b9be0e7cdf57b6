"""Finetune step and inference speed: cemkit's DeepEM3D decoder against cemkit 0.1's formulation and smp's U-Net.

    python scripts/bench_finetune_step.py [--threads 2] [--batch 8] [--size 256] [--repeats 7]

All models use the timm ``resnet18`` encoder and run side by side in one process on the same input,
``--batch`` x ``--size``^2 px, 1 and 5 frames, with ``--threads`` torch threads (2 = the CPU machine
cemkit is tuned for). A training step is forward + BCE loss + backward + fused AdamW step; inference
is a forward pass without gradients. Rows:

- ``previous``: cemkit 0.1's decoder, the transposed convolutions run as ``nn.ConvTranspose2d``
  (``TapUpsampler.transposed_reference``), float32, as 0.1 trained;
- ``cemkit fp32``: the same function, decoder transposed convolutions as phase convolutions + pixel
  shuffle, channels_last;
- ``cemkit bf16``: the same, under bf16 autocast (``trainer.precision=bf16-mixed``);
- ``cemkit bf16 no-s32``: ``model.tap_max_stride=16`` (no stride-32 stage), bf16;
- ``smp fp32`` / ``smp bf16``: ``segmentation_models_pytorch.Unet("tu-resnet18")``, channels_last;
- ``encoder only bf16``: resnet18's forward and backward alone, the floor of any decoder.

Prints the median img/s of each row, then ``ratio ... previous: N.NNx`` and ``ratio ... smp: N.NNx``
lines (cemkit's step against the previous step, and against smp's at the same precision), and how far
the encoder-only floor is ahead of cemkit's step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F


def _cemkit(frames: int, reference: bool = False, **kwargs):
    from cemkit.models.deepem3d import DeepEM3DSegmenter

    torch.manual_seed(0)
    model = DeepEM3DSegmenter("resnet18", frames=frames, **kwargs)
    for tap in model.decoder.taps:
        tap.transposed_reference = reference
    return model


def _smp(frames: int):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet("tu-resnet18", encoder_weights=None, in_channels=frames, classes=1)


class _EncoderOnly(torch.nn.Module):
    """The floor: resnet18's forward and backward alone (its deepest map as a 1-channel "output")."""

    def __init__(self, frames: int):
        super().__init__()
        import timm

        torch.manual_seed(0)
        self.encoder = timm.create_model("resnet18", in_chans=frames, num_classes=0, global_pool="")

    def forward(self, x):
        return self.encoder(x).mean(1, keepdim=True)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model, frames: int, batch: int, size: int, bf16: bool, channels_last: bool, repeats: int):
    """``(train img/s, inference img/s)`` medians."""
    x = torch.randn(batch, frames, size, size)
    with torch.no_grad():
        out = model.eval()(x[:1])
    y = (torch.rand(batch, *out.shape[1:]) > 0.9).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast():
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad(), autocast():
            model(x)

    model.train()
    train = batch / _median_seconds(step, repeats)
    model.eval()
    inference = batch / _median_seconds(infer, repeats)
    return train, inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, batch {args.batch} x {args.size}^2, resnet18")
    for frames in args.frames:
        rows = {
            "previous (0.1, fp32)": (lambda: _cemkit(frames, reference=True), False, False),
            "cemkit fp32": (lambda: _cemkit(frames), False, True),
            "cemkit bf16": (lambda: _cemkit(frames), True, True),
            "cemkit bf16 no-s32": (lambda: _cemkit(frames, tap_max_stride=16), True, True),
            "smp fp32": (lambda: _smp(frames), False, True),
            "smp bf16": (lambda: _smp(frames), True, True),
            "encoder only bf16": (lambda: _EncoderOnly(frames), True, True),
        }
        speed = {}
        print(f"\n{frames}fm            train img/s   inference img/s")
        for name, (build, bf16, cl) in rows.items():
            speed[name] = measure(build(), frames, args.batch, args.size, bf16, cl, args.repeats)
            print(f"  {name:<22} {speed[name][0]:>8.2f}   {speed[name][1]:>10.2f}", flush=True)
        prev = speed["previous (0.1, fp32)"][0]
        for name in ("cemkit fp32", "cemkit bf16", "cemkit bf16 no-s32"):
            print(f"ratio {frames}fm train {name} vs previous: {speed[name][0] / prev:.2f}x")
        for name, peer in (("cemkit fp32", "smp fp32"), ("cemkit bf16", "smp bf16")):
            print(f"ratio {frames}fm train {name} vs {peer.split()[1]} smp: {speed[name][0] / speed[peer][0]:.2f}x "
                  f"(inference {speed[name][1] / speed[peer][1]:.2f}x)")
        floor = speed["encoder only bf16"][0]
        print(f"ratio {frames}fm train encoder-only floor vs cemkit bf16: {floor / speed['cemkit bf16'][0]:.2f}x "
              f"(no-s32: {floor / speed['cemkit bf16 no-s32'][0]:.2f}x)")

if __name__ == "__main__":
    main()
