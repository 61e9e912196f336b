import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusemix._store_writer as store_writer_module
import fusemix.store as store_module
from _extract_sleepy import BATCH, COUNT, IDENTITY, SHARD, SineEncoder, run
from fusemix.extract import SPEC, encoder_identity_of, extract_latents, finalize_store
from fusemix.store import MANIFEST, LatentStore, StoreError, write_store

SLEEPY = Path(__file__).parent / "_extract_sleepy.py"
DIM = 6


class CountingEncoder:
    """Deterministic toy encoder over integer items; records every batch it sees."""

    identity = {"name": "counting", "dim": DIM}

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.batches: list[list[int]] = []
        self.inference_mode: list[bool] = []

    def __call__(self, batch):
        self.batches.append(list(batch))
        self.inference_mode.append(torch.is_inference_mode_enabled())
        x = torch.tensor(batch, dtype=torch.float64)[:, None] * torch.arange(1, self.dim + 1) / 10.0
        return torch.cos(x).float()

    @property
    def seen(self) -> list[int]:
        return [i for b in self.batches for i in b]


class CrashingEncoder(CountingEncoder):
    """Fails like a crashed job once it reaches item ``crash_at``."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def __call__(self, batch):
        if batch[0] >= self.crash_at:
            raise RuntimeError("encoder crashed")
        return super().__call__(batch)


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


def reference(encoder, items, batch_size):
    """The plain loop extraction replaces."""
    return np.concatenate([encoder(items[i : i + batch_size]).numpy() for i in range(0, len(items), batch_size)])


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store; the manifest without its creation time."""
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop(MANIFEST))
    manifest.pop("created")
    files[MANIFEST] = json.dumps(manifest).encode()
    return files


def without_item_fingerprints(files: dict[str, bytes]) -> dict[str, bytes]:
    """``store_bytes`` of an extracted store as write_store would write it: no per-shard ``items`` fingerprints."""
    manifest = json.loads(files[MANIFEST])
    assert all(entry.pop("items").startswith("sha256:") for entry in manifest["shards"])
    return {**files, MANIFEST: json.dumps(manifest).encode()}


def extract(encoder, items, out, **kwargs):
    kwargs = {"modality": "toy", "batch_size": 4, "shard_size": 10, "progress": False, **kwargs}
    return extract_latents(encoder, items, out, **kwargs)


# --- results -----------------------------------------------------------------------------------------------------


def test_equals_a_plain_loop_and_write_store(tmp_path):
    encoder = CountingEncoder()
    items = list(range(37))
    store = extract(encoder, items, tmp_path / "x", metadata={"split": "val"})
    assert encoder.seen == items  # each item encoded once, in order
    assert all(encoder.inference_mode)
    expected = reference(CountingEncoder(), items, 4)  # batches restart at shard boundaries; values do not change
    np.testing.assert_array_equal(store.to_numpy(), expected.astype(np.float16))
    assert store.encoder == CountingEncoder.identity and store.modality == "toy" and store.metadata == {"split": "val"}
    write_store(
        tmp_path / "w",
        expected,
        modality="toy",
        encoder=CountingEncoder.identity,
        shard_size=10,
        metadata={"split": "val"},
    )
    assert without_item_fingerprints(store_bytes(tmp_path / "x")) == store_bytes(tmp_path / "w")
    assert not (tmp_path / "x" / SPEC).exists()
    assert [len(b) for b in encoder.batches] == [4, 4, 2] * 3 + [4, 3]  # no batch crosses a shard boundary


def test_dataset_iterable_and_list_give_identical_stores(tmp_path):
    extract(CountingEncoder(), list(range(23)), tmp_path / "list", dtype="float32")
    extract(CountingEncoder(), Items(23), tmp_path / "dataset", dtype="float32")
    extract(CountingEncoder(), (i for i in range(23)), tmp_path / "generator", dtype="float32")
    extract(CountingEncoder(), iter(range(20)), tmp_path / "exact", dtype="float32", shard_size=5)
    assert store_bytes(tmp_path / "list") == store_bytes(tmp_path / "dataset") == store_bytes(tmp_path / "generator")
    assert len(LatentStore.open(tmp_path / "exact").shards) == 4


def test_numpy_output_and_default_identity(tmp_path):
    def encode(batch):
        return np.ones((len(batch), 3), dtype=np.float64) * np.array(batch)[:, None]

    store = extract(encode, list(range(9)), tmp_path)
    assert store.encoder == {"name": f"{__name__}.test_numpy_output_and_default_identity.<locals>.encode"}
    np.testing.assert_array_equal(store.to_numpy()[:, 0], np.arange(9))
    assert encoder_identity_of(CountingEncoder()) == CountingEncoder.identity
    assert encoder_identity_of(torch.nn.Identity()) == {"name": "torch.nn.modules.linear.Identity"}
    with_submodule = torch.nn.Sequential()
    with_submodule.identity = torch.nn.Identity()  # an attribute that is not a dict is not an identity
    assert encoder_identity_of(with_submodule) == {"name": "torch.nn.modules.container.Sequential"}


@settings(max_examples=12)
@given(
    count=st.integers(1, 30),
    batch_size=st.integers(1, 7),
    shard_size=st.integers(1, 12),
    workers=st.integers(1, 3),
    iterable=st.booleans(),
)
def test_any_split_into_workers_gives_the_single_worker_bytes(count, batch_size, shard_size, workers, iterable):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kw = {"batch_size": batch_size, "shard_size": shard_size}
        extract(CountingEncoder(), list(range(count)), root / "one", **kw)
        encoders = [CountingEncoder() for _ in range(workers)]
        results = []
        for w, encoder in enumerate(encoders):
            items = iter(range(count)) if iterable else list(range(count))
            results.append(extract(encoder, items, root / "many", num_workers=workers, worker_index=w, **kw))
        num_shards = -(-count // shard_size)
        assert all(r is None for r in results[:-1]) or num_shards < workers
        assert isinstance(results[-1], LatentStore)
        assert sorted(i for e in encoders for i in e.seen) == list(range(count))  # every item encoded exactly once
        assert store_bytes(root / "one") == store_bytes(root / "many")


def test_two_workers_then_finalize_store(tmp_path):
    out = tmp_path / "s"
    extract(CountingEncoder(), list(range(45)), tmp_path / "one")
    assert extract(CountingEncoder(), list(range(45)), out, num_workers=2, worker_index=1) is None
    with pytest.raises(StoreError, match=r"cannot finalize: 3 shard\(s\) not written yet.*00000\.npy"):
        finalize_store(out)
    assert not (out / MANIFEST).exists()
    # a launcher may also run the workers to completion and finalize afterwards
    assert extract(CountingEncoder(), list(range(45)), out, num_workers=2, worker_index=0) is not None
    assert store_bytes(out) == store_bytes(tmp_path / "one")
    assert len(finalize_store(out)) == 45  # idempotent
    with pytest.raises(FileNotFoundError):
        finalize_store(tmp_path / "empty")


# --- reuse, resume and settings changes ------------------------------------------------------------------------


def test_complete_store_is_returned_without_work(tmp_path):
    extract(CountingEncoder(), list(range(25)), tmp_path)
    before = store_bytes(tmp_path)
    again = CountingEncoder()
    store = extract(again, list(range(25)), tmp_path)
    assert again.batches == [] and len(store) == 25
    items = iter(range(25))
    assert len(extract(again, items, tmp_path)) == 25 and again.batches == []
    assert next(items, None) is None  # an iterable is read (its items hashed, not encoded) to check them
    assert store_bytes(tmp_path) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoder_identity": {"name": "other"}}, 'encoder {"name": "counting", "dim": 6} there, {"name": "other"}'),
        ({"modality": "text"}, 'modality "toy" there, "text" now'),
        ({"dtype": "float32"}, 'dtype "float16" there, "float32" now'),
        ({"shard_size": 5}, "shard_size 5 now"),
        ({"items": list(range(26))}, "count 25 there, 26 now"),
    ],
)
def test_complete_store_with_other_settings_is_refused_unless_overwrite(tmp_path, change, message):
    extract(CountingEncoder(), list(range(25)), tmp_path)
    change = dict(change)
    items = change.pop("items", list(range(25)))
    with pytest.raises(ValueError, match="already holds a complete store made with other settings") as info:
        extract(CountingEncoder(), items, tmp_path, **change)
    assert message in str(info.value) and "overwrite=True" in str(info.value)
    encoder = CountingEncoder()
    store = extract(encoder, items, tmp_path, overwrite=True, **change)
    assert encoder.batches and len(store) == len(encoder.seen)


def test_unfinished_run_with_other_settings_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="encoder crashed"):
        extract(CrashingEncoder(crash_at=12), list(range(25)), tmp_path)
    assert (tmp_path / "shards" / "00000.npy").exists() and not (tmp_path / MANIFEST).exists()
    with pytest.raises(StoreError, match="incomplete"):
        LatentStore.open(tmp_path)
    with pytest.raises(ValueError, match=r"unfinished extraction with other settings \(shard_size 10 there, 5 now\)"):
        extract(CountingEncoder(), list(range(25)), tmp_path, shard_size=5)
    with pytest.raises(ValueError, match="count 25 there, 24 now"):
        extract(CountingEncoder(), list(range(24)), tmp_path)
    resumed = CountingEncoder()
    extract(resumed, list(range(25)), tmp_path)
    assert resumed.seen == list(range(10, 25))  # shard 0 was kept


def test_a_run_that_failed_before_its_first_shard_does_not_block_other_settings(tmp_path):
    """Its settings file holds no latents: a corrected rerun with another encoder or shard size just starts."""
    with pytest.raises(RuntimeError, match="encoder crashed"):
        extract(CrashingEncoder(crash_at=0), list(range(25)), tmp_path)
    assert (tmp_path / SPEC).exists() and not (tmp_path / "shards" / "00000.npy").exists()
    encoder = CountingEncoder()
    store = extract(encoder, list(range(25)), tmp_path, shard_size=5)
    assert encoder.seen == list(range(25)) and [s.shape[0] for s in store.shards] == [5] * 5


def test_overwrite_discards_an_unfinished_run_with_other_settings(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        extract(CrashingEncoder(crash_at=12), list(range(25)), out)
    encoder = CountingEncoder()
    extract(encoder, list(range(25)), out, shard_size=5, overwrite=True)
    assert encoder.seen == list(range(25))
    extract(CountingEncoder(), list(range(25)), tmp_path / "ref", shard_size=5)
    assert store_bytes(tmp_path / "ref") == store_bytes(out)


def _wait_for_a_shard(proc: subprocess.Popen, out: Path) -> None:
    """Wait until the extraction ``proc`` runs into ``out`` has written its first shard."""
    deadline = time.monotonic() + 120
    while not list((out / "shards").glob("*.npy")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard was written in time"
        time.sleep(0.005)


def test_resume_after_sigkill_is_byte_identical_and_skips_finished_shards(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, str(SLEEPY), str(killed), "0.2"], stderr=subprocess.PIPE)
    try:
        _wait_for_a_shard(proc, killed)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / MANIFEST).exists()
    done = sorted(int(p.stem) for p in (killed / "shards").glob("*.npy"))
    num_shards = COUNT // SHARD
    assert 1 <= len(done) < num_shards
    with pytest.raises(StoreError, match="incomplete"):
        LatentStore.open(killed)

    resumed = SineEncoder()
    store = run(str(killed), resumed)
    todo = [k for k in range(num_shards) if k not in done]
    assert resumed.seen == [i for k in todo for i in range(k * SHARD, (k + 1) * SHARD)]  # finished shards not redone
    assert len(resumed.seen) // BATCH < COUNT // BATCH
    run(str(clean), SineEncoder())
    assert store_bytes(killed) == store_bytes(clean)
    assert store.encoder == IDENTITY and not [p for p in (killed / "shards").iterdir() if p.suffix != ".npy"]
    assert LatentStore.open(killed, verify="full").shape == (COUNT, 6)


def test_a_second_extraction_into_a_busy_out_dir_is_refused(tmp_path):
    busy, clean = tmp_path / "busy", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, str(SLEEPY), str(busy), "0.1"], stderr=subprocess.PIPE)
    try:
        _wait_for_a_shard(proc, busy)
        second = SineEncoder()
        refused = rf"out_dir: \S*busy is in use by another extraction \(pid {proc.pid} "
        with pytest.raises(FileExistsError, match=refused):
            run(str(busy), second)
        assert second.seen == [] and proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    run(str(clean), SineEncoder())
    assert store_bytes(busy) == store_bytes(clean)  # the first run finished undisturbed, and took its lock away


def test_resume_with_a_generator_skips_finished_shards(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        extract(CrashingEncoder(crash_at=20), (i for i in range(33)), out)
    resumed = CountingEncoder()
    extract(resumed, (i for i in range(33)), out)
    assert resumed.seen == list(range(20, 33))
    extract(CountingEncoder(), list(range(33)), tmp_path / "ref")
    assert store_bytes(tmp_path / "ref") == store_bytes(out)


def test_finalize_store_needs_a_known_count(tmp_path):
    with pytest.raises(RuntimeError):
        extract(CrashingEncoder(crash_at=20), iter(range(33)), tmp_path)
    with pytest.raises(StoreError, match="number of items is not known yet"):
        finalize_store(tmp_path)
    (tmp_path / SPEC).write_text("{}")
    with pytest.raises(StoreError, match="not a fusemix extraction settings file"):
        extract(CountingEncoder(), iter(range(33)), tmp_path)
    assert len(extract(CountingEncoder(), iter(range(33)), tmp_path, overwrite=True)) == 33


def test_resume_with_a_shorter_generator_is_refused(tmp_path):
    with pytest.raises(RuntimeError):
        extract(CrashingEncoder(crash_at=20), iter(range(33)), tmp_path)
    with pytest.raises(ValueError, match="yielded 15 items, but finished shard 1 covers items"):
        extract(CountingEncoder(), iter(range(15)), tmp_path)


# --- bad encoder output ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "error", "message"),
    [
        (lambda b: torch.ones(len(b)), ValueError, r"items \[0, 4\).*expected shape \(batch, dim\).*got \(4,\)"),
        (lambda b: torch.ones(len(b) - 1, 3), ValueError, r"batch = 4 items given, got \(3, 3\)"),
        (
            lambda b: torch.ones(len(b), 3, dtype=torch.int64),
            TypeError,
            "floating-point latents, got dtype torch.int64",
        ),
        (lambda b: np.ones((len(b), 3), dtype=np.int32), TypeError, "floating-point latents, got dtype int32"),
        (lambda b: [[0.0]] * len(b), TypeError, "expected a torch.Tensor or numpy array"),
        (
            lambda b: torch.ones(len(b), 3 if b[0] < 8 else 4),
            ValueError,
            r"items \[8, 10\).*latent dim is 4, but earlier batches .* have dim 3",
        ),
        (
            lambda b: torch.tensor([[float("nan") if i == 13 else 0.0] * 3 for i in b]),
            ValueError,
            r"items \[10, 14\): 1 row\(s\) contain NaN or Inf \(first: item 13\)",
        ),
        (
            lambda b: torch.full((len(b), 3), 1e5 if b[0] >= 20 else 1.0),
            ValueError,
            r"items \[20, 24\).*float16 range.*first: item 20",
        ),
        (
            lambda b: torch.full((len(b), 3), 1e-9 if b[0] >= 14 else 1.0),
            ValueError,
            r"items \[14, 18\): 4 row\(s\) lie entirely below the float16 normal range.*item 14, max \|x\| = 1e-09",
        ),
    ],
)
def test_bad_encoder_output_is_refused_and_nothing_is_finalized(tmp_path, output, error, message):
    with pytest.raises(error, match=message):
        extract(output, list(range(25)), tmp_path)
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(StoreError):
        LatentStore.open(tmp_path)


def test_float32_storage_keeps_latents_below_the_float16_normal_range(tmp_path):
    store = extract(lambda b: torch.full((len(b), 3), 1e-9), list(range(6)), tmp_path, dtype="float32")
    assert store.dtype == np.float32 and np.array_equal(store.to_numpy(), np.full((6, 3), 1e-9, dtype=np.float32))


def test_bad_arguments(tmp_path):
    encoder = CountingEncoder()
    with pytest.raises(TypeError, match="encoder: expected a callable"):
        extract(42, [1], tmp_path)
    with pytest.raises(ValueError, match="items: is empty"):
        extract(encoder, [], tmp_path)
    with pytest.raises(ValueError, match="items: is empty"):
        extract(encoder, iter([]), tmp_path / "gen")
    with pytest.raises(TypeError, match="items"):
        extract(encoder, "abc", tmp_path)
    with pytest.raises(ValueError, match="worker_index"):
        extract(encoder, [1], tmp_path, num_workers=2, worker_index=2)
    with pytest.raises(ValueError, match="batch_size"):
        extract(encoder, [1], tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        extract(encoder, [1], tmp_path, dtype="bfloat16")
    with pytest.raises(TypeError, match="encoder_identity: expected a JSON-serialisable dict"):
        extract(encoder, [1], tmp_path, encoder_identity={"x": object()})
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="out_dir"):
        extract(encoder, [1], tmp_path / "file")
    assert encoder.batches == []


def test_shards_without_settings_file_are_not_adopted(tmp_path):
    write_store(tmp_path, np.ones((5, DIM), dtype=np.float32), modality="toy", encoder=CountingEncoder.identity)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ValueError, match="holds shard files but no extraction.json"):
        extract(CountingEncoder(), list(range(5)), tmp_path)
    assert len(extract(CountingEncoder(), list(range(5)), tmp_path, overwrite=True)) == 5


# --- disk failures -----------------------------------------------------------------------------------------------


def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions (e.g. root)")
        with pytest.raises(PermissionError, match=str(locked)):
            extract(CountingEncoder(), list(range(5)), locked / "store")
    finally:
        locked.chmod(0o700)
    assert not (locked / "store" / MANIFEST).exists()


def test_permission_denied_names_the_path(tmp_path, monkeypatch):
    # The same failure as an unwritable directory, reproducible as root.
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match=rf"{tmp_path}/{SPEC}: could not write .*Permission denied"):
        extract(CountingEncoder(), list(range(5)), tmp_path)
    assert not (tmp_path / MANIFEST).exists()


def _failing_shard_write(after_bytes: int):
    """The store writer's ``atomic_write``, whose shard files hit a full disk after ``after_bytes`` bytes."""
    original = store_writer_module.atomic_write

    def atomic_write(target, write, doing):
        if not str(target).endswith(".npy"):
            return original(target, write, doing)

        def limited(file):
            class Limited:
                written = 0

                def write(self, data):
                    data = memoryview(data).cast("B")
                    if self.written + data.nbytes > after_bytes:
                        file.write(data[: max(after_bytes - self.written, 0)])
                        raise OSError(errno.ENOSPC, "No space left on device")
                    self.written += data.nbytes
                    return file.write(data)

            write(Limited())

        return original(target, limited, doing)

    return atomic_write


@pytest.mark.parametrize("where", ["write", "replace"])
def test_full_disk_leaves_no_partial_shard_and_resumes(tmp_path, monkeypatch, where):
    if where == "write":
        monkeypatch.setattr(store_writer_module, "atomic_write", _failing_shard_write(200))
    else:
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith("00001.npy"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "s"
    with pytest.raises(OSError, match=r"shards/0000[01]\.npy: could not write shard .*No space left") as info:
        extract(CountingEncoder(), list(range(25)), out)
    assert info.value.errno == errno.ENOSPC
    assert not (out / MANIFEST).exists()
    assert not list((out / "shards").glob(".*.tmp"))
    for path in (out / "shards").glob("*.npy"):  # whatever is there is whole
        np.load(path, allow_pickle=False)
    monkeypatch.undo()
    extract(CountingEncoder(), list(range(25)), out)
    extract(CountingEncoder(), list(range(25)), tmp_path / "ref")
    assert store_bytes(tmp_path / "ref") == store_bytes(out)


# --- progress ----------------------------------------------------------------------------------------------------


def test_progress_bar_and_plain_without_tqdm(tmp_path, capsys, monkeypatch):
    extract(CountingEncoder(), list(range(25)), tmp_path / "bar", progress=True)
    err = capsys.readouterr().err
    assert "25/25" in err and "rows/s" in err
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert len(extract(CountingEncoder(), list(range(25)), tmp_path / "plain", progress=True)) == 25
    assert capsys.readouterr().err == ""


# --- a failing shard write ---------------------------------------------------------------------------------------


def test_writer_failure_surfaces_and_a_rerun_completes_identically(tmp_path, monkeypatch):
    original = store_module.LatentStoreWriter.write_shard

    def write_shard(self, index, array, **kwargs):
        if index == 1:
            raise OSError(errno.EIO, f"{self.path}: could not write shard {index} (I/O error)")
        return original(self, index, array, **kwargs)

    monkeypatch.setattr(store_module.LatentStoreWriter, "write_shard", write_shard)
    out = tmp_path / "s"
    with pytest.raises(OSError, match=r"could not write shard 1 \(I/O error\)") as info:
        extract(CountingEncoder(), list(range(35)), out)
    assert info.value.errno == errno.EIO
    assert not (out / MANIFEST).exists()
    assert sorted(p.name for p in (out / "shards").glob("*.npy")) == ["00000.npy"]  # nothing after the failed shard
    monkeypatch.undo()
    rerun = CountingEncoder()
    extract(rerun, list(range(35)), out)
    assert rerun.seen == list(range(10, 35))
    extract(CountingEncoder(), list(range(35)), tmp_path / "ref")
    assert store_bytes(tmp_path / "ref") == store_bytes(out)


def test_deeply_nested_extraction_settings_are_a_store_error(tmp_path):
    # Issue 13 item 9: deeply nested JSON raised RecursionError instead of naming the file.
    (tmp_path / SPEC).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StoreError, match=f"{SPEC}: unreadable extraction settings .nested too deeply"):
        extract(CountingEncoder(), list(range(5)), tmp_path)


# --- the items behind a store (issue 13 item 2) ---------------------------------------------------------------------


class TextEncoder:
    """Deterministic encoder over strings (length and a letter count); records what it encodes."""

    identity = {"name": "text-toy"}

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, batch):
        self.seen.extend(batch)
        return torch.tensor([[len(t), t.count("a"), t.count("e")] for t in batch], dtype=torch.float32)


def texts(count: int, edited: dict[int, str] | None = None) -> list[str]:
    items = [f"caption number {i}" for i in range(count)]
    for index, text in (edited or {}).items():
        items[index] = text
    return items


def test_a_complete_store_is_not_reused_for_other_items_of_the_same_count(tmp_path):
    out = tmp_path / "s"
    extract(TextEncoder(), texts(25), out)
    edited = texts(25, {13: "a different caption"})
    with pytest.raises(
        ValueError, match=r"items: differ from those .* shard 1 \(items \[10, 20\)\) records content sha256"
    ):
        extract(TextEncoder(), edited, out)
    with pytest.raises(ValueError, match=r"shard 1 "):
        extract(TextEncoder(), iter(edited), out)  # an iterable is checked the same way
    encoder = TextEncoder()
    store = extract(encoder, edited, out, overwrite=True)
    assert encoder.seen == edited and store[13].tolist() == [19.0, 2.0, 2.0]
    extract(TextEncoder(), edited, tmp_path / "fresh")
    assert store_bytes(tmp_path / "fresh") == store_bytes(out)


def test_an_interrupted_run_resumed_with_edited_items_is_refused_shard_by_shard(tmp_path):
    class Crashing(TextEncoder):
        def __call__(self, batch):
            if len(self.seen) >= 20:
                raise RuntimeError("encoder crashed")
            return super().__call__(batch)

    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        extract(Crashing(), texts(35), out)  # shards 0 and 1 are finished
    with pytest.raises(ValueError, match=r"shard 0 \(items \[0, 10\)\)"):
        extract(TextEncoder(), texts(35, {4: "edited"}), out)
    with pytest.raises(ValueError, match=r"shard 1 \(items \[10, 20\)\)"):
        extract(TextEncoder(), (t for t in texts(35, {19: "edited"})), out)
    # Items not encoded yet may change: the store then holds exactly the new items' latents.
    resumed = TextEncoder()
    later_edit = texts(35, {27: "edited after the crash"})
    extract(resumed, later_edit, out, batch_size=3)  # another batch size: the fingerprints do not depend on it
    assert resumed.seen == later_edit[20:]
    extract(TextEncoder(), later_edit, tmp_path / "fresh")
    assert store_bytes(tmp_path / "fresh") == store_bytes(out)


def test_overwrite_starts_over_from_a_re_iterable_but_not_from_a_one_shot_iterator(tmp_path):
    class Texts(torch.utils.data.IterableDataset):
        def __init__(self, items):
            self.items = items

        def __iter__(self):
            return iter(self.items)

    extract(TextEncoder(), texts(25), tmp_path)
    edited = texts(25, {3: "edited"})
    encoder = TextEncoder()
    assert len(extract(encoder, Texts(edited), tmp_path, overwrite=True)) == 25 and encoder.seen == edited
    once = (t for t in texts(25))
    with pytest.raises(ValueError, match="out_dir was cleared, as overwrite=True asks, but items is a one-shot"):
        extract(TextEncoder(), once, tmp_path, overwrite=True)
    assert not (tmp_path / MANIFEST).exists()
    assert extract(TextEncoder(), (t for t in texts(25)), tmp_path)[3].tolist() == [16.0, 1.0, 1.0]


class Opaque:
    """An item with no stable byte form."""

    def __init__(self, value: int) -> None:
        self.value = value


class OpaqueEncoder:
    identity = {"name": "opaque"}

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return torch.tensor([[float(item.value)] * 2 for item in batch])


def test_items_without_a_byte_form_need_an_items_id(tmp_path):
    items = [Opaque(i) for i in range(15)]
    with pytest.raises(TypeError, match=r"items: item 0 holds a test_extract\.Opaque, .*pass items_id="):
        extract(OpaqueEncoder(), items, tmp_path)
    store = extract(OpaqueEncoder(), items, tmp_path, items_id="opaque-v1")
    assert {entry["items"] for entry in read_manifest_entries(tmp_path)} == {"id:opaque-v1"}

    class Untouchable(torch.utils.data.Dataset):
        def __len__(self):
            return 15

        def __getitem__(self, index):
            raise AssertionError("a complete store named by items_id is reused without reading its items")

    again = OpaqueEncoder()
    assert len(extract(again, Untouchable(), tmp_path, items_id="opaque-v1")) == len(store) and again.calls == 0
    with pytest.raises(ValueError, match=r"shard 0 .*records items_id 'opaque-v1', these items give items_id 'v2'"):
        extract(OpaqueEncoder(), items, tmp_path, items_id="v2")
    extract(TextEncoder(), texts(15), tmp_path / "hashed")
    with pytest.raises(ValueError, match="a store of hashed items is not reused under an items_id"):
        extract(TextEncoder(), texts(15), tmp_path / "hashed", items_id="v1")
    with pytest.raises(ValueError, match="items_id: expected a non-empty string"):
        extract(OpaqueEncoder(), items, tmp_path, items_id="")


def read_manifest_entries(root: Path) -> list[dict]:
    return json.loads((root / MANIFEST).read_text())["shards"]


def test_a_store_without_item_fingerprints_is_reused_with_a_warning(tmp_path):
    write_store(tmp_path, reference(CountingEncoder(), list(range(25)), 4), modality="toy",
                encoder=CountingEncoder.identity, shard_size=10)  # fmt: skip
    encoder = CountingEncoder()
    with pytest.warns(UserWarning, match=r"3 shard\(s\) \(first: shards/00000\.npy\) record no fingerprint"):
        assert len(extract(encoder, list(range(25)), tmp_path)) == 25
    assert encoder.batches == []


def test_each_worker_checks_the_items_of_its_own_shards(tmp_path):
    for w in (0, 1):
        extract(TextEncoder(), texts(35), tmp_path, num_workers=2, worker_index=w)
    edited = texts(35, {15: "edited"})  # shard 1, which worker 1 computed
    assert extract(TextEncoder(), edited, tmp_path, num_workers=2, worker_index=0) is not None
    with pytest.raises(ValueError, match=r"shard 1 "):
        extract(TextEncoder(), edited, tmp_path, num_workers=2, worker_index=1)
