"""Worker for tests/test_distributed_train.py, run under ``torchrun --nproc_per_node=2`` (Gloo, CPU).

Usage: ``python _dist_train_worker.py SCENARIO WORKDIR``. Scenarios:

- ``main``: ``fit`` with ``PLAIN`` into ``WORKDIR/plain`` (joining the job by
  itself), two calls that every rank refuses alike, one into ``WORKDIR/busy``
  whose lock rank 1 holds (every rank refuses), then with ``MIX`` into
  ``WORKDIR/mix`` (reusing the process group). Rank 1 records every write it makes under ``plain`` /
  ``mix`` (audit hook) in ``WORKDIR/rank1_writes.json``; every rank writes
  what ``fit`` returned to ``WORKDIR/summary_rank<r>.json``.
- ``extract``: both workers extract concurrently into ``WORKDIR/extract``
  (``extract_latents(num_workers=2, worker_index=rank)``), then rank 0 calls
  ``finalize_store`` after a barrier.
- ``kill``: ``fit`` with ``MIX`` into ``WORKDIR/killed``; right after step
  ``KILL_AT_STEP`` rank 0 SIGKILLs the launcher, then every rank itself.
- ``resume``: ``fit`` with ``MIX`` into ``WORKDIR/killed`` again.
- ``dead``: rank 1 exits with status 1 right after step ``FAIL_AT_STEP``.
- ``stall``: rank 1 stops answering after step ``FAIL_AT_STEP`` (sleeps);
  ``dist_timeout_s`` is ``STALL_TIMEOUT_S``.
"""

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fusemix import ContrastiveLoss, FusionModel
from fusemix._fileio import directory_lock
from fusemix.data import PairedLatents
from fusemix.extract import extract_latents, finalize_store
from fusemix.train import TrainConfig, fit

torch.set_num_threads(1)  # the same thread count in every process keeps CPU results bit-identical

NUM_PAIRS = 128
PLAIN = TrainConfig(
    epochs=3,
    batch_size=32,
    lr=3e-3,
    warmup_steps=2,
    shared_dim=8,
    depth=1,
    expansion=2,
    dropout=0.0,
    augmentation="none",
    eval_every=0,
    checkpoint_every=0,
    log_every=2,
    device="cpu",
)
MIX = replace(
    PLAIN, epochs=4, dropout=0.3, augmentation="fusemix", eval_every=2, checkpoint_every=1, selection="best"
)  # every rank selects the same evaluation, and a resume selects it again
STEPS_PER_EPOCH = NUM_PAIRS // 32
KILL_AT_STEP = 2 * STEPS_PER_EPOCH + 2  # mid epoch 2, after the checkpoint of epoch 1
FAIL_AT_STEP = 3
STALL_TIMEOUT_S = 10.0
EXTRACT_ITEMS = 50
EXTRACT_KWARGS = {
    "modality": "text",
    "encoder_identity": {"name": "x, sqrt x, sin x"},
    "batch_size": 3,
    "shard_size": 8,
    "dtype": "float32",
    "progress": False,
}


def make_data() -> tuple[PairedLatents, PairedLatents]:
    rng = np.random.default_rng(0)
    concepts = rng.standard_normal((NUM_PAIRS + 40, 4))
    image = np.tanh(concepts @ rng.standard_normal((4, 12))).astype(np.float32)
    text = np.tanh(concepts @ rng.standard_normal((4, 10))).astype(np.float32)
    split = slice(0, NUM_PAIRS), slice(NUM_PAIRS, None)
    return tuple(PairedLatents({"image": image[s], "text": text[s]}) for s in split)


def encode(batch: list[int]) -> torch.Tensor:
    x = torch.tensor(batch, dtype=torch.float64)
    return torch.stack([x, x.sqrt(), torch.sin(x)], dim=1).float()


def _watch_writes(roots: list[Path], record: list[str]) -> None:
    """Record every file-system change this process makes under ``roots``."""
    roots_text = [str(r) for r in roots]

    def inside(path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(tuple(roots_text))

    def hook(event: str, args: tuple) -> None:
        if event == "open" and inside(args[0]):
            mode, flags = args[1], args[2]
            writes = any(c in mode for c in "wxa+") if mode else flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writes:
                record.append(f"open {args[0]} {mode or flags}")
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.chmod"):
            if inside(args[0]) and (event in ("os.mkdir", "os.chmod") or os.path.exists(args[0])):
                record.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def _summary(result) -> dict:
    history = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in result.history]
    return {"history": history, "metrics": result.metrics}


def main_scenario(work: Path, rank: int, world: int) -> None:
    writes: list[str] = []
    if rank == 1:
        _watch_writes([work / "plain", work / "mix"], writes)
    train, val = make_data()
    plain = fit(train, PLAIN, out_dir=work / "plain", progress=False)  # joins the job by itself
    assert dist.is_initialized() and dist.get_world_size() == world
    refused = []  # errors every rank raises alike, before training
    local_negatives = FusionModel.from_dims(train.dims, shared_dim=8, depth=1, loss=ContrastiveLoss())
    for kwargs in ({"model": local_negatives}, {"out_dir": work / "partial" if rank == 0 else None}):
        try:
            fit(train, PLAIN, progress=False, **kwargs)
        except ValueError as err:
            refused.append(str(err))
    busy = _busy_out_dir(work / "busy", rank, train)
    mix = fit(train, MIX, val=val, out_dir=work / "mix", progress=True)  # reuses the process group
    summary = {"plain": _summary(plain), "mix": _summary(mix), "refused": refused, "busy": busy}
    (work / f"summary_rank{rank}.json").write_text(json.dumps(summary))
    if rank == 1:
        (work / "rank1_writes.json").write_text(json.dumps(writes))


def _busy_out_dir(out: Path, rank: int, train: PairedLatents) -> str:
    """Rank 1 holds ``out``'s run lock (as another run would) while both ranks ``fit`` into it: every rank refuses.

    Returns the type of the error (alike on every rank); each rank writes its message to ``busy_rank<r>.txt``.
    """
    with contextlib.ExitStack() as held:
        if rank == 1:
            out.mkdir()
            held.enter_context(directory_lock(out, ".fusemix-run.lock", argument="out_dir", activity="training run"))
        dist.barrier()
        try:
            fit(train, PLAIN, out_dir=out, progress=False)
        except FileExistsError as err:
            (out.parent / f"busy_rank{rank}.txt").write_text(str(err))
            return type(err).__name__
        finally:
            dist.barrier()  # rank 1 lets go once both ranks are done
    return "trained"


def extract_scenario(work: Path, rank: int, world: int) -> None:
    """Each worker extracts its own shards, concurrently; rank 0 finalizes once all are done."""
    dist.init_process_group("gloo")
    items = list(range(EXTRACT_ITEMS))
    extract_latents(encode, items, work / "extract", num_workers=world, worker_index=rank, **EXTRACT_KWARGS)
    dist.barrier()
    if rank == 0:
        finalize_store(work / "extract")
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()


def main() -> None:
    scenario, work = sys.argv[1], Path(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if scenario in ("main", "extract"):
        (main_scenario if scenario == "main" else extract_scenario)(work, rank, world)
        return
    train, val = make_data()
    config = MIX

    launcher = os.getppid()

    def callback(state) -> None:
        if scenario == "kill" and state.step == KILL_AT_STEP:
            if rank == 0:
                os.kill(launcher, signal.SIGKILL)
            while os.getppid() == launcher:  # rank 1 waits for the launcher's death, so nobody else reacts first
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        if scenario == "dead" and rank == 1 and state.step == FAIL_AT_STEP:
            os._exit(1)
        if scenario == "stall" and rank == 1 and state.step == FAIL_AT_STEP:
            time.sleep(300)

    if scenario == "stall":
        config = TrainConfig.from_dict({**MIX.to_dict(), "dist_timeout_s": STALL_TIMEOUT_S})
    out_dir = work / ("killed" if scenario in ("kill", "resume") else scenario)
    fit(train, config, val=val, out_dir=out_dir, progress=False, callbacks=[callback])


if __name__ == "__main__":
    main()
    # torch 2.13's c10d clients can abort in C++ static destructors at interpreter exit on a loaded machine
    # ("terminate called without an active exception"), after every result is written; leave without them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
