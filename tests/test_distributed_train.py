"""fit() and extraction under torchrun: 2 Gloo ranks on the CPU against single-process runs.

The torchrun launches (tests/_dist_train_worker.py) start together in one module fixture, so their start-up
and waiting overlap; each test then checks one launch's outcome.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix.data import LatentBatcher, PairedLatents
from fusemix.distributed import ProcessPlace, launch_environment
from fusemix.extract import extract_latents
from fusemix.train import TrainConfig, _resolve_device, fit

safetensors_torch = pytest.importorskip("safetensors.torch")

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import _dist_train_worker as worker  # noqa: E402

LAUNCH_TIMEOUT_S = {"main": 240, "kill": 180, "dead": 120, "stall": 120, "resume": 180, "extract": 120}
"""Seconds from its start within which each launch must end (a failing rank must not hang the others)."""


def _launch(scenario: str, work: Path) -> tuple[subprocess.Popen, Path, float]:
    log = work / f"{scenario}.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d"]
    cmd += ["--rdzv_endpoint=127.0.0.1:0", str(TESTS / "_dist_train_worker.py"), scenario, str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log, time.monotonic() + LAUNCH_TIMEOUT_S[scenario]


def _finish(proc: subprocess.Popen, log: Path, deadline: float) -> dict:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes SIGTERM on to its workers
        proc.wait(timeout=30)
        timed_out = True
    return {"rc": proc.returncode, "timed_out": timed_out, "output": log.read_text(errors="replace")}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run every scenario once: main, kill, dead, stall and extract together, and resume once kill is over."""
    work = tmp_path_factory.mktemp("torchrun")
    started = {s: _launch(s, work) for s in ("main", "kill", "dead", "stall", "extract")}
    results = {"kill": _finish(*started["kill"])}
    started["resume"] = _launch("resume", work)
    for scenario in ("extract", "dead", "stall", "main", "resume"):
        results[scenario] = _finish(*started[scenario])
    return work, results


def _ok(result: dict) -> None:
    assert result["rc"] == 0 and not result["timed_out"], result["output"][-4000:]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(model_dir / "model.safetensors"))


def _history(out_dir: Path) -> list[dict]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in lines]


# -- batching over ranks (in-process) ---------------------------------------------------------------------------------


@given(
    num_pairs=st.integers(8, 60),
    per_rank=st.integers(1, 4),
    world=st.integers(2, 4),
    preload=st.booleans(),
    shuffle=st.booleans(),
)
def test_ranks_split_every_global_batch_exactly(num_pairs, per_rank, world, preload, shuffle):
    batch_size = per_rank * world
    if batch_size > num_pairs:
        return
    data = PairedLatents({"a": np.arange(num_pairs * 2.0).reshape(num_pairs, 2), "b": np.ones((num_pairs, 3))})
    single = LatentBatcher(data, batch_size, seed=4, shuffle=shuffle, preload=preload)
    ranks = [
        LatentBatcher(data, batch_size, seed=4, shuffle=shuffle, preload=preload, num_replicas=world, rank=r)
        for r in range(world)
    ]
    assert all(len(b) == len(single) and b.local_batch_size == per_rank for b in ranks)
    for epoch in range(2):
        whole = list(single)
        slices = [list(b) for b in ranks]
        for i, batch in enumerate(whole):
            for m in ("a", "b"):
                torch.testing.assert_close(torch.cat([s[i][m] for s in slices]), batch[m], rtol=0, atol=0)
        assert all(b.epoch == epoch + 1 for b in ranks)
    states = [b.state_dict() for b in ranks]
    assert all(s == states[0] for s in states) and states[0]["num_replicas"] == world


def test_rank_batcher_resumes_from_rank_zeros_state():
    data = PairedLatents({"a": np.random.default_rng(0).standard_normal((40, 3)), "b": np.zeros((40, 2))})
    full = list(LatentBatcher(data, 8, seed=1, num_replicas=2, rank=1))
    rank0 = LatentBatcher(data, 8, seed=1, num_replicas=2, rank=0)
    for _, _ in zip(range(2), rank0):
        pass
    resumed = LatentBatcher(data, 8, seed=1, num_replicas=2, rank=1)
    resumed.load_state_dict(rank0.state_dict())
    rest = list(resumed)
    assert len(rest) == 3 and all(torch.equal(x["a"], y["a"]) for x, y in zip(rest, full[2:]))
    with pytest.raises(ValueError, match=r"num_replicas=2 \(here 1\)"):
        LatentBatcher(data, 8, seed=1).load_state_dict(rank0.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 9, "num_replicas": 2}, r"batch_size: 9 \(the global batch\) is not divisible by num_rep"),
        ({"batch_size": 8, "num_replicas": 2, "drop_last": False}, "drop_last: must be True with num_replicas=2"),
        ({"batch_size": 8, "num_replicas": 2, "rank": 2}, r"rank: expected an int in \[0, num_replicas=2\)"),
        ({"batch_size": 8, "num_replicas": 0}, "num_replicas"),
    ],
)
def test_rank_batcher_refuses_uneven_splits(kwargs, match):
    data = PairedLatents({"a": np.zeros((20, 2)), "b": np.zeros((20, 2))})
    with pytest.raises(ValueError, match=match):
        LatentBatcher(data, **kwargs)


# -- launcher environment and checks before training (in-process) ---------------------------------------------------


def _set_launcher(monkeypatch, world, rank=0, local_rank=0):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)


def test_launch_environment_reads_torchruns_variables(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_environment() == ProcessPlace(1, 0, None, initialized=False)
    _set_launcher(monkeypatch, 4, rank=2, local_rank=1)
    place = launch_environment()
    assert place == ProcessPlace(4, 2, 1, initialized=False) and not place.is_main
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE: expected an integer environment variable, got 'two'"):
        launch_environment()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK: expected an integer in \[0, WORLD_SIZE=2\)"):
        launch_environment()


def test_each_rank_trains_on_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    two_ranks = ProcessPlace(world_size=2, rank=1, local_rank=1, initialized=False)
    assert _resolve_device(TrainConfig(device="auto"), two_ranks) == torch.device("cuda", 1)
    assert _resolve_device(TrainConfig(device="cuda"), two_ranks) == torch.device("cuda", 1)
    assert _resolve_device(TrainConfig(device="cuda:0"), two_ranks) == torch.device("cuda", 0)  # as asked
    assert _resolve_device(TrainConfig(device="cpu"), two_ranks) == torch.device("cpu")
    assert _resolve_device(TrainConfig(device="auto"), ProcessPlace(1, 0, 1, False)) == torch.device("cuda")
    with pytest.raises(ValueError, match=r"LOCAL_RANK: 2, but this machine shows 2 CUDA device\(s\)"):
        _resolve_device(TrainConfig(device="auto"), ProcessPlace(world_size=3, rank=2, local_rank=2, initialized=False))


def test_fit_refuses_a_batch_the_ranks_cannot_split_before_joining(monkeypatch):
    train, val = worker.make_data()
    base = worker.MIX.to_dict()
    _set_launcher(monkeypatch, 4)
    with pytest.raises(ValueError, match="batch_size: 30 is not divisible by the world size 4"):
        fit(train, TrainConfig.from_dict({**base, "batch_size": 30}), progress=False)
    with pytest.raises(ValueError, match=r"batch_size: 36 over world size 4 gives 9 rows per rank.*multiple of 8"):
        fit(train, TrainConfig.from_dict({**base, "batch_size": 36}), progress=False)
    # Odd slices are fine without halves; joining then needs the launcher's rendezvous address.
    with pytest.raises(RuntimeError, match="MASTER_ADDR: not set, but WORLD_SIZE=4; launch with torchrun"):
        fit(train, TrainConfig.from_dict({**base, "batch_size": 36, "pairing": "permute"}), val=val, progress=False)


# -- torchrun launches ------------------------------------------------------------------------------------------------


def test_two_ranks_without_augmentation_end_at_the_single_process_weights(launched):
    work, results = launched
    _ok(results["main"])
    train, _ = worker.make_data()
    reference = fit(train, worker.PLAIN, progress=False)
    expected = reference.model.state_dict()
    got = _weights(work / "plain" / "model")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)
    # Logged losses are the global batch's loss (mean over ranks).
    logged = [r["loss"] for r in _history(work / "plain")]
    assert logged == pytest.approx([r["loss"] for r in reference.history], abs=1e-5)


def test_fusemix_on_two_ranks_trains_and_only_rank_zero_writes(launched):
    work, results = launched
    _ok(results["main"])
    out = work / "mix"
    assert {"log.jsonl", "log.csv", "curves.png", "checkpoint", "model"} <= {p.name for p in out.iterdir()}
    assert json.loads((work / "rank1_writes.json").read_text()) == []
    epochs = [r for r in _history(out) if r["kind"] == "epoch"]
    assert len(epochs) == worker.MIX.epochs and epochs[-1]["loss"] < 0.8 * epochs[0]["loss"]
    # Every rank returns the same history and metrics (evaluation runs identically on each).
    summaries = [json.loads((work / f"summary_rank{r}.json").read_text()) for r in (0, 1)]
    assert summaries[0] == summaries[1] and summaries[0]["mix"]["metrics"]["mean"] > 0
    assert summaries[0]["mix"]["history"] == _history(out)
    assert summaries[0]["mix"]["history"][-1]["kind"] == "selection"  # selection="best": the same on every rank
    # Calls the ranks cannot run together fail on every rank alike, and the job goes on.
    local_negatives, partial_out_dir = summaries[0]["refused"]
    assert local_negatives.startswith("model: its ContrastiveLoss has gather_distributed=False, so on 2 processes")
    assert partial_out_dir.startswith("out_dir: given on ranks [0] only; pass the same out_dir on every rank")
    # An out_dir another process holds (here rank 1, as another run would) is refused on every rank.
    assert summaries[0]["busy"] == "FileExistsError"
    holder, follower = ((work / f"busy_rank{r}.txt").read_text() for r in (0, 1))
    assert holder.startswith(f"out_dir: {work / 'busy'} is in use by another training run (pid ")
    assert follower.startswith(f"out_dir: rank 0 found {work / 'busy'} in use by another training run")
    assert not (work / "busy" / "log.jsonl").exists()
    # The checkpoint holds every rank's random streams; the ranks mix with different ones.
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and state["batcher"]["num_replicas"] == 2
    rng = torch.load(out / "checkpoint" / "rng.pt", weights_only=True)
    per_rank = rng["per_rank"]
    assert len(per_rank) == 2 and torch.equal(per_rank[0]["augmentation"], rng["augmentation"])
    assert not torch.equal(per_rank[0]["augmentation"], per_rank[1]["augmentation"])
    assert not torch.equal(per_rank[0]["torch_cpu"], per_rank[1]["torch_cpu"])
    assert "loss=" in results["main"]["output"]  # rank 0's progress bar


def test_killed_two_rank_run_resumes_to_the_uninterrupted_weights(launched):
    work, results = launched
    _ok(results["main"])
    assert results["kill"]["rc"] == -9, results["kill"]["output"][-4000:]
    _ok(results["resume"])
    killed, reference = work / "killed", work / "mix"
    a, b = _weights(killed / "model"), _weights(reference / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _history(killed) == _history(reference)


def test_resuming_on_another_number_of_processes_is_refused(launched, tmp_path):
    work, results = launched
    _ok(results["main"])
    shutil.copytree(work / "mix", tmp_path / "mix")
    train, val = worker.make_data()
    with pytest.raises(ValueError, match=r"saved by a run on 2 process\(es\), but this run has 1.*nproc_per_node=2"):
        fit(train, worker.MIX, val=val, out_dir=tmp_path / "mix", progress=False)


def test_a_dead_rank_fails_the_launch_instead_of_hanging(launched):
    _, results = launched
    dead = results["dead"]
    assert dead["rc"] != 0 and not dead["timed_out"], dead["output"][-4000:]
    root_cause = re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*1\b", dead["output"])
    assert root_cause, dead["output"][-3000:]


def test_a_stalled_rank_makes_the_others_time_out(launched):
    _, results = launched
    stall = results["stall"]
    assert stall["rc"] != 0 and not stall["timed_out"], stall["output"][-4000:]
    assert "Timed out" in stall["output"], stall["output"][-4000:]
    expected = f"raised on rank 0 of 2 in epoch 0 after {worker.FAIL_AT_STEP} optimizer steps"
    if sys.version_info >= (3, 11):  # exception notes
        assert expected in stall["output"] and "dist_timeout_s=10 s when fit started the group" in stall["output"]


def test_two_worker_extraction_matches_one_worker_byte_for_byte(launched, tmp_path):
    work, results = launched
    _ok(results["extract"])
    items = list(range(worker.EXTRACT_ITEMS))
    extract_latents(worker.encode, items, tmp_path / "single", **worker.EXTRACT_KWARGS)
    single, double = tmp_path / "single", work / "extract"
    files = sorted(p.relative_to(single) for p in single.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(double) for p in double.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".npy"]) == 7
    for f in files:
        if f.name == "manifest.json":
            a, b = (json.loads((d / f).read_text()) for d in (single, double))
            assert a.pop("created") and b.pop("created") and a == b
        else:
            assert (single / f).read_bytes() == (double / f).read_bytes(), f
