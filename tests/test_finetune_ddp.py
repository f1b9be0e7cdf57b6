"""Two CPU processes (gloo) for `cemkit finetune`: the patches of each step, the validations, result.json,
and validation metrics pooled over the ranks.

The processes are started with ``multiprocessing`` (spawn) and the torchrun environment variables, so
that Lightning joins them instead of launching its own, and each process can record what it does.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_data import labelled_tif_pair

pytestmark = pytest.mark.ddp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(target, args, world: int = WORLD, timeout: float = 120) -> None:
    """Run ``target(rank, port, *args)`` in ``world`` spawned processes; fail on a non-zero exit or a hang."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=target, args=(rank, port, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a process hung"
    assert [p.exitcode for p in procs] == [0] * world


def _join_as(rank: int, port: int, world: int = WORLD) -> None:
    """The environment torchrun gives a process: Lightning's DDP then joins instead of launching."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return labelled_tif_pair(tmp_path_factory.mktemp("ddp_pair"), shape=(6, 64, 64), seed=3, style=0)


STEPS, VAL_EVERY, GLOBAL_BATCH = 4, 2, 4


def _finetune_args(img, lab, out, ddp: bool) -> list[str]:
    return ["finetune", "+experiment=tiny_finetune", f"data.images={img}", f"data.labels={lab}", "data.crop=32",
            f"data.batch_size={GLOBAL_BATCH}", f"trainer.max_steps={STEPS}", f"val.every={VAL_EVERY}",
            "val.overlays=0", "model.decoder_width=4", f"output={out}",
            *(["trainer=ddp_cpu"] if ddp else [])]


def _recording(patch=setattr) -> dict:
    """Record the patch indices drawn, the validations run and the result files written in this process
    (``patch``: ``setattr``, or pytest's ``monkeypatch.setattr`` to undo it after the test)."""
    from cemkit.finetune import fit
    from cemkit.finetune.data import PatchDataset
    from cemkit.finetune.module import SegmentationModule

    rec: dict = {"patches": [], "validations": 0, "writes": []}
    get, end, write = PatchDataset.__getitem__, SegmentationModule.on_validation_epoch_end, fit._write_json

    def getitem(self, index):
        rec["patches"].append(int(index))
        return get(self, index)

    def validation_end(self):
        rec["validations"] += 1
        return end(self)

    def write_json(path, obj):
        rec["writes"].append(Path(path).name)
        return write(path, obj)

    patch(PatchDataset, "__getitem__", getitem)
    patch(SegmentationModule, "on_validation_epoch_end", validation_end)
    patch(fit, "_write_json", write_json)
    return rec


def _worker(rank, port, img, lab, val_img, val_lab, out):
    """One rank: a finetune run through the CLI; the resume of a 1-process run interrupted at step 2; a
    validation of fixed tiles (:func:`_validate`)."""
    _join_as(rank, port)
    from cemkit.cli.main import main

    rec = _recording()
    code = main(_finetune_args(img, lab, Path(out) / "ddp", ddp=True))
    Path(out, f"rank{rank}.json").write_text(json.dumps({**rec, "code": code}))
    rec.update(patches=[], validations=0, writes=[])
    code = main([*_finetune_args(img, lab, Path(out) / "resume", ddp=True), "ckpt_path=last"])
    Path(out, f"resume{rank}.json").write_text(json.dumps({**rec, "code": code}))
    ds, module = _validation_setup(val_img, val_lab)
    metrics, counts = _validate(ds, module, WORLD, strategy="ddp")
    Path(out, f"val{rank}.json").write_text(json.dumps({"metrics": metrics, "counts": counts}))


@pytest.fixture(scope="module")
def val_pair(tmp_path_factory) -> tuple[str, str]:
    """64 x 80 slices: windows of 48 overlap in both directions."""
    images, labels = labelled_tif_pair(tmp_path_factory.mktemp("ddp_val"), ("i.tif", "l.tif"),
                                       shape=(6, 64, 80), seed=4, style=0)
    return str(images), str(labels)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, pair, val_pair) -> Path:
    """What each of 2 processes recorded (one spawned session, shared by the tests below)."""
    out = tmp_path_factory.mktemp("ddp_run")
    _interrupted_single_process_run(*pair, out / "resume")
    _spawn(_worker, (str(pair[0]), str(pair[1]), *val_pair, str(out)))
    return out


class _Crash(RuntimeError):
    pass


def _interrupted_single_process_run(img, lab, out: Path) -> None:
    """A 1-process run that stops at step 3, after the validation (and last.ckpt) of step 2."""
    from cemkit.cli.main import main
    from cemkit.finetune.module import SegmentationModule

    def crash(self, batch, batch_idx):
        if self.global_step == 3:
            raise _Crash("simulated interruption")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SegmentationModule, "on_train_batch_start", crash, raising=False)
        assert main([*_finetune_args(img, lab, out, ddp=False), "ckpt_path=last"]) != 0
    assert torch.load(out / "1fm" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_two_processes_see_the_patches_of_one_with_the_global_batch(tmp_path, pair, two_ranks, monkeypatch):
    """2 processes x 2 patches a step draw the patch positions 1 process x 4 draws, none twice; they
    validate every val.every optimizer steps (not twice as often); rank 0 alone writes result.json."""
    img, lab = pair
    from cemkit.cli.main import main

    single = _recording(monkeypatch.setattr)
    assert main(_finetune_args(img, lab, tmp_path / "single", ddp=False)) == 0
    ranks = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["code"] for r in ranks] == [0, 0]

    assert sorted(single["patches"]) == list(range(STEPS * GLOBAL_BATCH))
    both = ranks[0]["patches"] + ranks[1]["patches"]
    assert len(both) == len(set(both)), "a patch drawn twice"
    assert sorted(both) == sorted(single["patches"])
    # each step: rank 0 the first half of the single process's batch, rank 1 the second half
    half = GLOBAL_BATCH // WORLD
    assert ranks[0]["patches"] == [s * GLOBAL_BATCH + j for s in range(STEPS) for j in range(half)]

    assert single["validations"] == ranks[0]["validations"] == ranks[1]["validations"] == STEPS // VAL_EVERY
    assert ranks[0]["writes"] == ["result.json"] and ranks[1]["writes"] == []
    result = json.loads((two_ranks / "ddp" / "1fm" / "result.json").read_text())
    assert result["steps"] == STEPS and [h["step"] for h in result["history"]] == [2, 4]


def test_a_one_process_run_resumes_on_two_processes_with_the_patches_it_had_left(two_ranks):
    """Patch positions count global steps: 2 processes resuming a 1-process run at step 2 draw
    exactly the patches the 1-process run would have drawn in steps 2 and 3."""
    ranks = [json.loads((two_ranks / f"resume{r}.json").read_text()) for r in range(WORLD)]
    assert [r["code"] for r in ranks] == [0, 0]
    both = ranks[0]["patches"] + ranks[1]["patches"]
    assert sorted(both) == list(range(2 * GLOBAL_BATCH, STEPS * GLOBAL_BATCH))
    assert ranks[0]["validations"] == ranks[1]["validations"] == 1  # step 4 (step 2 ran before the interruption)
    result = json.loads((two_ranks / "resume" / "1fm" / "result.json").read_text())
    assert result["steps"] == STEPS and [h["step"] for h in result["history"]] == [2, 4]


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused():
    from cemkit.errors import ConfigError
    from cemkit.finetune.data import PatchBatchSampler, check_global_batch

    assert check_global_batch(8, 2) == 4
    with pytest.raises(ConfigError, match=r"data.batch_size=6 is the global batch.*multiple of the number of "
                                          r"processes \(4\)"):
        check_global_batch(6, 4)
    # positions count global steps: a run resumed at step 3 on 1 process takes what 2 processes would
    one = list(PatchBatchSampler(4, 2).batches(3, 0, 1))
    two = [b for r in range(2) for b in PatchBatchSampler(4, 2).batches(3, r, 2)]
    assert one == [[12, 13, 14, 15], [16, 17, 18, 19]]
    assert sorted(sum(one, [])) == sorted(sum(two, []))
    # gradient accumulation: an epoch of val.every optimizer steps is val.every x accumulate batches
    acc = PatchBatchSampler(4, 2, accumulate=2)
    assert len(acc) == 4 and list(acc.batches(1, 1, 2)) == [[10, 11], [14, 15], [18, 19], [22, 23]]


# ------------------------------------------------------------------------------------ pooled validation
TILE = 48  # windows of 48 on 64 x 80 slices: the last window of each row and column overlaps its neighbour


def _validation_setup(img, lab):
    from cemkit.finetune.data import SliceDataset, read_labelled_volume
    from cemkit.finetune.losses import SegmentationLoss
    from cemkit.finetune.module import SegmentationModule
    from cemkit.models.deepem3d import build_segmenter

    vol = read_labelled_volume(img, lab, 2)
    ds = SliceDataset([vol.subset([1, 2, 4])], 1, (0.5, 0.2), tile=TILE)
    torch.manual_seed(0)
    model, _ = build_segmenter("resnet10t", 1, num_classes=2, decoder_width=4)
    module = SegmentationModule(model, SegmentationLoss({"ce": 1.0, "dice": 1.0}, 2), {"frames": 1},
                                {"encoder_lr": 0.0, "decoder_lr": 0.0}, 1, overlays=0)
    return ds, module


def _validate(ds, module, devices: int, **trainer_kwargs) -> tuple[dict, list[int]]:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from cemkit.finetune.data import RankShardSampler

    trainer = pl.Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, **trainer_kwargs)
    # batches of one item: the loss (a batch mean) is then the same however the items are split
    trainer.validate(module, DataLoader(ds, batch_size=1, sampler=RankShardSampler(len(ds))), verbose=False)
    return module.validation_metrics(), [int(v) for v in module._counts]


def test_validation_metrics_are_pooled_over_processes_and_count_each_pixel_once(val_pair, two_ranks,
                                                                                  one_torch_thread):
    ds, module = _validation_setup(*val_pair)
    assert len(ds) == 3 * 2 * 2 and len(ds) % WORLD == 0
    one, counts = _validate(ds, module, 1)
    assert sum(counts) == 3 * 64 * 80  # each pixel of the three slices once, overlaps included
    ranks = [json.loads((two_ranks / f"val{r}.json").read_text()) for r in range(WORLD)]
    for r in ranks:
        assert r["counts"] == counts  # summed over the ranks: the counts of the whole set on every rank
        assert r["metrics"]["iou"] == pytest.approx(one["iou"], rel=1e-12, abs=0)
        assert r["metrics"]["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_validation_windows_count_every_pixel_once_and_padding_nothing():
    from cemkit.finetune.data import LabelledVolume, RankShardSampler, SliceDataset

    vol = LabelledVolume(np.zeros((2, 100, 70), np.uint8), np.zeros((2, 100, 70), np.uint8), np.arange(2), "v")
    ds = SliceDataset([vol], 1, (0.5, 0.2), tile=40)
    cover = np.zeros((2, 100, 70), np.int64)
    for i, (_, z, y0, x0, h, w) in enumerate(ds.items):
        cy0, cx0, cy1, cx1 = ds[i][3].tolist()
        cover[z, y0 + cy0:y0 + cy1, x0 + cx0:x0 + cx1] += 1
    assert (cover == 1).all()
    # 5 items over 2 ranks: 3 and 2 + 1 padding item that counts nothing
    shards = RankShardSampler(5, layout=lambda: (0, 1))
    assert shards.indices(0, 2) == [0, 2, 4] and shards.indices(1, 2) == [1, 3, 5]
    assert ds[len(ds)][3].tolist() == [0, 0, 0, 0]


# ------------------------------------------------------------------------------------ a failing rank
FAULT = '''
import os
if os.environ.get("LOCAL_RANK") == "1":  # Lightning's second process: its first patch fails
    from cemkit.finetune import data

    def _fail(self, index):
        raise ValueError(f"simulated bad patch {index}")

    data.PatchDataset.__getitem__ = _fail
'''


def test_a_failing_rank_stops_the_run_with_an_error_naming_it(tmp_path, pair):
    """Rank 1 fails on its first patch while rank 0 waits for its gradients: the run ends (Lightning's
    launcher stops every process) and the log names rank 1 and its error, instead of hanging."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAULT)  # imported at start-up by every process of the run
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=f"{inject}{os.pathsep}{repo}")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    img, lab = pair
    proc = subprocess.run([sys.executable, "-m", "cemkit.cli.main", *_finetune_args(img, lab, tmp_path / "out", True)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rank 1 of 2 failed: ValueError: simulated bad patch" in text, text[-3000:]
    assert not (tmp_path / "out" / "1fm" / "result.json").exists()
