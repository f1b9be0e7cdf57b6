"""Finetune step and inference speed: cemkit's DeepEM3D decoder against cemkit 0.1's formulation and smp's U-Net.

    python scripts/bench_finetune_step.py [--precision auto] [--forms] [--threads 2] [--batch 8] [--size 256] [--repeats 3]

Prints the machine line first (CPU model; bf16, VNNI and AMX units or not). All models use the timm
``resnet18`` encoder and run side by side in one process on the same input, ``--batch`` x ``--size``^2 px,
1 and 5 frames, with ``--threads`` torch threads (2 = the CPU machine cemkit is tuned for); the rows of a
frame count are timed interleaved (repeat r of every row, then repeat r + 1), so a load change on the
machine hits them alike. A training step is forward + BCE loss + backward + fused AdamW step; inference
is a forward pass without gradients.

``--precision auto`` (the default) takes the precision ``trainer.precision=auto`` picks on this CPU
(cemkit/precision.py): ``bf16-mixed`` with bf16 units (AVX512-BF16 or AMX), where the float32 rows run
too, and ``32-true`` without them, where the bf16 rows are skipped (emulated bf16 is many times slower
and would keep the benchmark running for over 15 minutes); ``--precision 32-true`` shows a CPU without
bf16 units on one that has them. Rows (``P`` = fp32 or bf16):

- ``previous``: cemkit 0.1's decoder, the transposed convolutions run as ``nn.ConvTranspose2d``,
  float32 without channels_last, as 0.1 trained;
- ``cemkit P``: today's model, channels_last, each tap's transposed convolutions in the exact form the
  model picks for the precision (``faster_upsample_form``: phase convolutions + pixel shuffle, or
  ``nn.ConvTranspose2d``);
- ``cemkit P phase`` / ``cemkit P transposed`` (with ``--forms``): the same with every tap in one form;
- ``cemkit P no-s32``: ``model.tap_max_stride=16`` (no stride-32 stage);
- ``smp P``: ``segmentation_models_pytorch.Unet("tu-resnet18")``, channels_last;
- ``encoder only P``: resnet18's forward and backward alone, the floor of any decoder.

Prints the median img/s of each row, then ``ratio ... previous: N.NNx`` and ``ratio ... smp: N.NNx``
lines (speed ratios, > 1 = faster: cemkit's step against the previous step, and against smp's at the same
precision), the
``decoder form`` lines with ``--forms`` (the picked forms and the phase form against the transposed
form, whole steps), and how far the encoder-only floor is ahead of cemkit's step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F


def _cemkit(frames: int, form: str = "auto", **kwargs):
    from cemkit.models.deepem3d import DeepEM3DSegmenter

    torch.manual_seed(0)
    model = DeepEM3DSegmenter("resnet18", frames=frames, **kwargs)
    for tap in model.decoder.taps:
        tap.form = form
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


LABEL = {"32-true": "fp32", "bf16-mixed": "bf16"}


def prepare(model, frames: int, batch: int, size: int, bf16: bool, channels_last: bool):
    """``(train step, inference pass)`` closures of one row."""
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
        model.train()
        with autocast():
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad(), autocast():
            model(x)

    return step, infer


def measure(rows: dict, batch: int, repeats: int, clock=time.perf_counter) -> dict[str, tuple[float, float]]:
    """``{row: (train img/s, inference img/s)}`` medians, the rows timed interleaved after one warm-up each
    (oneDNN primitive creation); ``clock`` is wall time or process CPU time."""
    times = {name: ([], []) for name in rows}
    for name, (step, infer) in rows.items():
        step()
        infer()
    for _ in range(repeats):
        for name, fns in rows.items():
            for fn, out in zip(fns, times[name]):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return {name: (batch / statistics.median(t), batch / statistics.median(i)) for name, (t, i) in times.items()}


def main() -> None:
    from cemkit.hardware import cpu_features, describe_machine
    from cemkit.models.deepem3d import faster_upsample_form
    from cemkit.precision import resolve_precision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed"],
                        help="auto: the precision trainer.precision=auto picks on this CPU")
    parser.add_argument("--forms", action="store_true",
                        help="also time every tap in the phase form and in the transposed form")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or process CPU time of all threads (steadier on a shared machine; "
                             "img/s are then per CPU-second)")
    args = parser.parse_args()
    print(describe_machine())
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, batch {args.batch} x {args.size}^2, resnet18, "
          f"{args.repeats} repeats, {args.clock} clock")
    main_p, why = resolve_precision(args.precision, "cpu", cpu_features(), None)
    print(f"precision {main_p} ({'auto: ' + why if args.precision == 'auto' else 'as given'})")
    precisions = ["32-true"] if main_p == "32-true" else ["32-true", main_p]
    if main_p == "32-true":
        print("bf16 rows skipped: " + (why if args.precision == "auto" else "--precision 32-true"))
    m = LABEL[main_p]
    for frames in args.frames:
        builds = {"previous (0.1, fp32)": (lambda: _cemkit(frames, "transposed"), False, False)}
        for p in precisions:
            bf16 = p == "bf16-mixed"
            builds[f"cemkit {LABEL[p]}"] = (lambda: _cemkit(frames), bf16, True)
            if args.forms:
                builds[f"cemkit {LABEL[p]} phase"] = (lambda: _cemkit(frames, "phase"), bf16, True)
                builds[f"cemkit {LABEL[p]} transposed"] = (lambda: _cemkit(frames, "transposed"), bf16, True)
            builds[f"smp {LABEL[p]}"] = (lambda: _smp(frames), bf16, True)
        builds[f"cemkit {m} no-s32"] = (lambda: _cemkit(frames, tap_max_stride=16), main_p != "32-true", True)
        builds[f"encoder only {m}"] = (lambda: _EncoderOnly(frames), main_p != "32-true", True)
        rows = {name: prepare(build(), frames, args.batch, args.size, bf16, cl)
                for name, (build, bf16, cl) in builds.items()}
        speed = measure(rows, args.batch, args.repeats, time.process_time if args.clock == "cpu" else time.perf_counter)
        print(f"\n{frames}fm                      train img/s   inference img/s")
        for name, (train, infer) in speed.items():
            print(f"  {name:<30} {train:>8.2f}   {infer:>10.2f}")
        prev = speed["previous (0.1, fp32)"][0]
        for p in precisions if args.forms else ():
            dtype = torch.bfloat16 if p == "bf16-mixed" else torch.float32
            picked = {s: faster_upsample_form("cpu", dtype, s) for s in (2, 4, 8, 16, 32)}
            name = f"cemkit {LABEL[p]}"
            auto, phase, transposed = speed[name], speed[f"{name} phase"], speed[f"{name} transposed"]
            print(f"decoder form {frames}fm {LABEL[p]} (picked by stride: {picked}): train speed picked vs transposed "
                  f"{auto[0] / transposed[0]:.2f}x, vs phase {auto[0] / phase[0]:.2f}x, phase vs transposed "
                  f"{phase[0] / transposed[0]:.2f}x (inference {auto[1] / transposed[1]:.2f}x, "
                  f"{auto[1] / phase[1]:.2f}x, {phase[1] / transposed[1]:.2f}x)")
        for name in [f"cemkit {LABEL[p]}" for p in precisions] + [f"cemkit {m} no-s32"]:
            print(f"ratio {frames}fm train {name} vs previous: {speed[name][0] / prev:.2f}x")
        for p in precisions:
            name, peer = f"cemkit {LABEL[p]}", f"smp {LABEL[p]}"
            print(f"ratio {frames}fm train {name} vs {LABEL[p]} smp: {speed[name][0] / speed[peer][0]:.2f}x "
                  f"(inference {speed[name][1] / speed[peer][1]:.2f}x)")
        floor = speed[f"encoder only {m}"][0]
        print(f"ratio {frames}fm train encoder-only floor vs cemkit {m}: {floor / speed[f'cemkit {m}'][0]:.2f}x "
              f"(no-s32: {floor / speed[f'cemkit {m} no-s32'][0]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
