"""Benchmark `cemkit finetune` on the CDeep3M mitochondria sample: validation IoU against training steps.

Trains on slices 010-025 and validates on 026-029 (``data.val_slices=4``) of
``../shared/data/cdeep3m_mito/train``, for every ``--init`` (``none`` = random initialisation, or a
path / ``zoo:NAME`` of pretrained encoder weights) and every ``--frames`` (1, 3, 5). Prints a table of
validation IoU at each validation step and the wall time of every run, saves the table as JSON and
the curves as a PNG plot.

Example (the CPU budget quoted in docs/results.md)::

    .venv/bin/python scripts/bench_finetune.py --frames 1 --steps 200 --out outputs/bench_finetune

Runs that already finished in ``--out`` are reused (delete the folder to re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cdeep3m_mito"


def _init_name(init: str) -> str:
    if init in ("none", "random"):
        return "random"
    return Path(init.replace("zoo:", "")).stem.replace(".pth", "") or "pretrained"


def run_one(args, init: str, frames: int) -> dict:
    from cemkit.cli.main import main as cli

    out = Path(args.out) / _init_name(init)
    result_file = out / f"{frames}fm" / "result.json"
    if not result_file.is_file():
        overrides = [
            "finetune", f"data.images={args.data}/train/images", f"data.labels={args.data}/train/labels",
            "data.val_slices=4", f"model.frames={frames}", f"model.init={init}", f"model/encoder={args.arch}",
            f"data.crop={args.crop}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
            f"trainer.max_steps={args.steps}", f"val.every={args.val_every}", "val.tile=512",
            "trainer=cpu" if args.cpu else "trainer=default", "trainer.enable_progress_bar=false",
            f"output={out}", *args.override,
        ]
        if args.freeze and init not in ("none", "random"):
            overrides.append(f"model.freeze_encoder={args.freeze}")
        start = time.perf_counter()
        code = cli(overrides)
        if code != 0:
            raise SystemExit(f"cemkit finetune failed ({code}): {' '.join(overrides)}")
        wall = time.perf_counter() - start
        result = json.loads(result_file.read_text())
        result["wall_s"] = wall
        result["command"] = "cemkit " + " ".join(overrides)
        result_file.write_text(json.dumps(result, indent=2))
    return json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="outputs/bench_finetune")
    p.add_argument("--init", nargs="+", default=["none"], help="none and/or encoder weights (path or zoo:NAME)")
    p.add_argument("--frames", nargs="+", type=int, default=[1, 3, 5])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--freeze", default=None, help="model.freeze_encoder for pretrained inits (default: none)")
    p.add_argument("--cpu", action="store_true", default=True)
    p.add_argument("--gpu", dest="cpu", action="store_false")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    from cemkit.hardware import describe_machine

    print(describe_machine(), flush=True)  # the machine the numbers were taken on

    results: dict[str, dict] = {}
    for init in args.init:
        for f in args.frames:
            results[f"{_init_name(init)}/{f}fm"] = run_one(args, init, f)

    steps = sorted({h["step"] for r in results.values() for h in r["history"]})
    names = list(results)
    width = max(12, *(len(n) for n in names))
    print(f"validation IoU on CDeep3M slices 026-029 ({args.arch}, {args.crop} px crops, batch {args.batch})")
    print("step".rjust(6) + "".join(n.rjust(width + 2) for n in names))
    for s in steps:
        row = [next((h["iou"] for h in results[n]["history"] if h["step"] == s), None) for n in names]
        print(f"{s:6d}" + "".join((f"{v:.4f}" if v is not None else "-").rjust(width + 2) for v in row))
    print("best".rjust(6) + "".join(f"{results[n]['best_iou']:.4f}".rjust(width + 2) for n in names))
    print("wall s".rjust(6) + "".join(f"{results[n].get('wall_s', float('nan')):.0f}".rjust(width + 2) for n in names))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = {n: {"history": r["history"], "best_iou": r["best_iou"], "wall_s": r.get("wall_s"),
                 "command": r.get("command")} for n, r in results.items()}
    (out / "bench_finetune.json").write_text(json.dumps(table, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n, r in results.items():
        ax.plot([h["step"] for h in r["history"]], [h["iou"] for h in r["history"]], marker="o", label=n)
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation IoU (slices 026-029)")
    ax.set_title(f"cemkit finetune on the CDeep3M sample ({args.arch})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench_finetune.png", dpi=120)
    print(f"table: {out / 'bench_finetune.json'}  plot: {out / 'bench_finetune.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
