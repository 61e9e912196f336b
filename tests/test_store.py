import errno
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusemix.store import MANIFEST, LatentStore, LatentStoreWriter, StoreError, shard_file, write_store

ENCODER = {"name": "toy-encoder", "revision": 3}
FLOAT16_TINY = 2.0**-14  # float16's smallest normal number, 6.1035e-05


def _latents(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Standard normal latents that float16 can hold: a row below its normal range (1-D only, rare) is set to 1."""
    data = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    data[np.abs(data).max(axis=1) < FLOAT16_TINY] = 1.0
    return data


def _write(path: Path, rows: int = 10, dim: int = 4, shard_size: int = 4, dtype: str = "float16") -> np.ndarray:
    data = _latents(rows, dim)
    write_store(path, data, modality="image", encoder=ENCODER, dtype=dtype, shard_size=shard_size)
    return data.astype(dtype)


# --- round trip --------------------------------------------------------------------------------------------------


@settings(max_examples=20)
@given(
    rows=st.integers(1, 40),
    dim=st.integers(1, 6),
    shard_size=st.integers(1, 50),
    dtype=st.sampled_from(["float16", "float32"]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_any_shape_and_sharding(rows, dim, shard_size, dtype, seed):
    data = _latents(rows, dim, seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(tmp, data, modality="text", encoder=ENCODER, dtype=dtype, shard_size=shard_size)
        reopened = LatentStore.open(tmp, verify="full")
        for s in (store, reopened):
            assert s.shape == (rows, dim) and len(s) == rows and s.dim == dim
            assert s.dtype == np.dtype(dtype)
            assert len(s.shards) == -(-rows // shard_size)
            np.testing.assert_array_equal(s.to_numpy(), data.astype(dtype))
            np.testing.assert_array_equal(np.asarray(s), data.astype(dtype))
        assert [sh.shape[0] for sh in reopened.shards][:-1] == [shard_size] * (len(reopened.shards) - 1)


def test_manifest_fields_and_plain_npy_shards(tmp_path):
    data = _latents(10, 3)
    write_store(tmp_path, data, modality="image", encoder=ENCODER, shard_size=4, metadata={"split": "train"})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["format"] == "fusemix.latents" and manifest["version"] == 1
    assert (manifest["modality"], manifest["dim"], manifest["dtype"], manifest["count"]) == ("image", 3, "float16", 10)
    assert manifest["encoder"] == ENCODER and manifest["metadata"] == {"split": "train"}
    assert [e["file"] for e in manifest["shards"]] == ["shards/00000.npy", "shards/00001.npy", "shards/00002.npy"]
    assert [e["rows"] for e in manifest["shards"]] == [4, 4, 2]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.npy", "00001.npy", "00002.npy"]
    for k, entry in enumerate(manifest["shards"]):
        path = tmp_path / entry["file"]
        assert path.stat().st_size == entry["bytes"]
        # A shard is exactly what np.save writes for the converted rows, so any numpy can read it.
        reference = tmp_path / "reference.npy"
        np.save(reference, data[4 * k : 4 * k + 4].astype(np.float16))
        assert path.read_bytes() == reference.read_bytes()
        np.testing.assert_array_equal(np.load(path, allow_pickle=False), data[4 * k : 4 * k + 4].astype(np.float16))


def test_shards_are_memory_mapped_read_only(tmp_path):
    _write(tmp_path)
    store = LatentStore.open(tmp_path)
    assert all(isinstance(shard, np.memmap) and shard.mode == "r" for shard in store.shards)
    with pytest.raises(ValueError):
        store.shards[0][0, 0] = 1.0
    assert not isinstance(store[0:2], np.memmap) and not isinstance(store[[0, 1]], np.memmap)


def test_properties_repr_and_tensor(tmp_path):
    data = _write(tmp_path, rows=7, dim=3, shard_size=3, dtype="float32")
    store = LatentStore.open(tmp_path, expected_encoder=ENCODER, expected_modality="image")
    assert store.path == tmp_path and store.modality == "image" and store.encoder == ENCODER
    assert store.metadata == {} and store.nbytes == 7 * 3 * 4 and store.offsets.tolist() == [0, 3, 6, 7]
    assert "modality='image'" in repr(store) and "count=7" in repr(store) and "shards=3" in repr(store)
    t = store.to_tensor()
    assert t.dtype == torch.float32 and t.shape == (7, 3)
    torch.testing.assert_close(t, torch.from_numpy(data))
    assert store.to_tensor(torch.float64).dtype == torch.float64
    assert store.to_tensor(torch.bfloat16).dtype == torch.bfloat16
    assert store.to_numpy(np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        store.to_tensor(torch.int64)


def test_pickle_reopens_by_path_without_copying_data(tmp_path):
    _write(tmp_path, rows=500, dim=8, shard_size=100)
    store = LatentStore.open(tmp_path)
    payload = pickle.dumps(store)
    assert len(payload) < 1000
    clone = pickle.loads(payload)
    np.testing.assert_array_equal(clone.to_numpy(), store.to_numpy())


def test_writer_accepts_tensors_and_bfloat16(tmp_path):
    store = write_store(tmp_path, torch.randn(5, 2, dtype=torch.bfloat16), modality="m", encoder=ENCODER)
    assert store.shape == (5, 2)


# --- indexing ----------------------------------------------------------------------------------------------------

SHARD_SIZES = (1, 3, 7, 64)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    data = _latents(23, 5).astype(np.float16)
    out = {}
    for size in SHARD_SIZES:
        path = tmp_path_factory.mktemp(f"store{size}")
        out[size] = write_store(path, data, modality="image", encoder=ENCODER, shard_size=size)
    return data, out


index_arrays = st.lists(st.integers(-23, 22), max_size=40)


@given(shard_size=st.sampled_from(SHARD_SIZES), index=index_arrays, kind=st.sampled_from(["list", "numpy", "torch"]))
def test_fancy_indexing_matches_numpy(stores, shard_size, index, kind):
    data, by_size = stores
    key = {"list": index, "numpy": np.array(index, dtype=np.int64), "torch": torch.tensor(index, dtype=torch.int64)}
    got = by_size[shard_size][key[kind]]
    assert isinstance(got, np.ndarray) and got.shape == (len(index), 5) and got.dtype == np.float16
    np.testing.assert_array_equal(got, data[np.array(index, dtype=np.int64)])


@given(
    shard_size=st.sampled_from(SHARD_SIZES),
    start=st.none() | st.integers(-30, 30),
    stop=st.none() | st.integers(-30, 30),
    step=st.none() | st.integers(-4, 4).filter(lambda s: s != 0),
)
def test_slicing_matches_numpy(stores, shard_size, start, stop, step):
    data, by_size = stores
    np.testing.assert_array_equal(by_size[shard_size][start:stop:step], data[start:stop:step])


def test_slices_across_shard_boundaries(stores):
    data, by_size = stores
    store = by_size[7]
    for lo, hi in [(0, 7), (5, 9), (6, 15), (0, 23), (13, 14), (7, 14), (20, 100)]:
        np.testing.assert_array_equal(store[lo:hi], data[lo:hi])


def test_integer_and_mask_keys(stores):
    data, by_size = stores
    store = by_size[3]
    np.testing.assert_array_equal(store[4], data[4])
    np.testing.assert_array_equal(store[-1], data[-1])
    np.testing.assert_array_equal(store[np.int32(5)], data[5])
    np.testing.assert_array_equal(store[torch.tensor(6)], data[6])
    np.testing.assert_array_equal(store[np.array(-2)], data[-2])
    mask = np.arange(23) % 4 == 1
    np.testing.assert_array_equal(store[mask], data[mask])
    np.testing.assert_array_equal(store[np.array([], dtype=np.int64)], data[[]])
    np.testing.assert_array_equal(store[np.array([3, 1], dtype=np.uint8)], data[[3, 1]])


def test_bad_keys(stores):
    store = stores[1][3]
    with pytest.raises(IndexError, match="index 23 is out of range for a store of 23 rows"):
        store[23]
    with pytest.raises(IndexError, match="index -24"):
        store[[0, -24]]
    with pytest.raises(IndexError, match="index 99"):
        store[torch.tensor([1, 99])]
    with pytest.raises(IndexError, match="index 300"):
        store[np.array([300], dtype=np.uint64)]
    with pytest.raises(TypeError, match="integer row indices"):
        store[np.array([0.5])]
    with pytest.raises(IndexError, match="1-D"):
        store[np.zeros((2, 2), dtype=np.int64)]
    with pytest.raises(IndexError, match="mask"):
        store[np.ones(5, dtype=bool)]
    with pytest.raises(TypeError, match="key"):
        store["a"]
    with pytest.raises(TypeError, match="key"):
        store[(1, 2)]


# --- refusals ----------------------------------------------------------------------------------------------------


def test_missing_directory_and_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        LatentStore.open(tmp_path / "nope")
    writer = LatentStoreWriter(tmp_path, modality="image", dim=2, encoder=ENCODER)
    writer.write_shard(0, np.ones((3, 2), dtype=np.float32))
    with pytest.raises(StoreError, match="incomplete or not a fusemix store.*rerun extraction"):
        LatentStore.open(tmp_path)


def test_truncated_shard_is_refused(tmp_path):
    _write(tmp_path)
    path = tmp_path / shard_file(1)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 3)
    with pytest.raises(StoreError, match=r"00001\.npy: shard is \d+ bytes.*truncated"):
        LatentStore.open(tmp_path)


def test_deleted_shard_is_refused(tmp_path):
    _write(tmp_path)
    (tmp_path / shard_file(2)).unlink()
    with pytest.raises(StoreError, match=r"00002\.npy: shard listed in manifest.json is missing"):
        LatentStore.open(tmp_path)


def test_tampered_bytes_pass_quick_but_fail_full(tmp_path):
    data = _write(tmp_path)
    path = tmp_path / shard_file(0)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40  # same size, different content
    path.write_bytes(bytes(raw))
    quick = LatentStore.open(tmp_path)  # quick checks size, shape and dtype only (documented)
    assert not np.array_equal(quick.to_numpy(), data)
    with pytest.raises(StoreError, match=r"00000\.npy: sha256 does not match"):
        LatentStore.open(tmp_path, verify="full")


def test_shape_or_dtype_mismatch_is_refused(tmp_path):
    _write(tmp_path, rows=8, dim=4, shard_size=4)
    path = tmp_path / shard_file(1)
    np.save(path, np.zeros((8, 2), dtype=np.float16))  # same byte size, other shape
    with pytest.raises(StoreError, match=r"shape \(8, 2\), expected \(4, 4\)"):
        LatentStore.open(tmp_path)
    np.save(path, np.zeros((2, 4), dtype=np.float32))  # same byte size, other dtype
    with pytest.raises(StoreError, match="dtype float32, expected float16"):
        LatentStore.open(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", 11, "hold 10 rows in all, but count is 11"),
        ("format", "other", "format is 'other'"),
        ("version", 2, "newer fusemix"),
        ("dtype", "int8", "field 'dtype'"),
        ("dim", "4", "field 'dim' must be a int"),
    ],
)
def test_altered_manifest_is_refused(tmp_path, field, value, message):
    _write(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest[field] = value
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message):
        LatentStore.open(tmp_path)


def test_manifest_pointing_outside_the_store_is_refused(tmp_path):
    _write(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["shards"][0]["file"] = "../../etc/passwd"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"shards\[0\]\.file"):
        LatentStore.open(tmp_path)


def test_expected_encoder_and_modality(tmp_path):
    _write(tmp_path)
    assert len(LatentStore.open(tmp_path, expected_encoder=dict(ENCODER))) == 10
    with pytest.raises(StoreError, match='store written by encoder .*"toy-encoder".* but .*"other".* was named'):
        LatentStore.open(tmp_path, expected_encoder={"name": "other"})
    with pytest.raises(StoreError, match="modality 'image', but 'text' was named"):
        LatentStore.open(tmp_path, expected_modality="text")


def test_the_constructor_opens_a_store_like_open(tmp_path):
    data = _write(tmp_path, rows=9, shard_size=4)
    store = LatentStore(tmp_path)
    opened = LatentStore.open(tmp_path)
    assert store.shape == opened.shape == (9, 4) and store.path == opened.path == tmp_path
    assert np.array_equal(store[:], data) and np.array_equal(opened[:], data)
    checked = LatentStore(str(tmp_path), verify="full", expected_encoder=dict(ENCODER), expected_modality="image")
    assert len(checked) == 9
    with pytest.raises(StoreError, match="modality 'image', but 'text' was named"):
        LatentStore(tmp_path, expected_modality="text")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        LatentStore(tmp_path / "nope")
    with pytest.raises(ValueError, match="verify"):
        LatentStore(tmp_path, verify="none")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path: expected the store directory"):
        LatentStore(7)  # type: ignore[arg-type]


def test_float16_overflow_nan_and_inf_are_refused(tmp_path):
    data = np.zeros((6, 3), dtype=np.float32)
    data[4, 1] = 70000.0
    with pytest.raises(ValueError, match=r"float16 range.*row 4.*max \|x\| = 70000.*float32"):
        write_store(tmp_path / "a", data, modality="m", encoder=ENCODER)
    assert not (tmp_path / "a" / MANIFEST).exists()
    assert write_store(tmp_path / "b", data, modality="m", encoder=ENCODER, dtype="float32")[4][1] == 70000.0
    edge = np.full((1, 2), 65504.0, dtype=np.float32)
    assert write_store(tmp_path / "c", edge, modality="m", encoder=ENCODER)[0][0] == 65504.0
    for bad in (np.nan, np.inf, -np.inf):
        data = np.zeros((5, 2), dtype=np.float32)
        data[2, 0] = bad
        with pytest.raises(ValueError, match="1 row.*NaN or Inf.*row 2"):
            LatentStoreWriter(tmp_path / "d", modality="m", dim=2, encoder=ENCODER, dtype="float32").write_shard(
                0, data
            )
    assert not list((tmp_path / "d" / "shards").iterdir())


def test_float16_underflow_rows_are_refused(tmp_path):
    # A row float16 would store as zeros (or subnormals) is refused, as overflowing ones are; float32 keeps it.
    data = np.ones((6, 3), dtype=np.float32)
    data[4] = 1e-9
    data[5] = [-2e-6, 1e-6, 0.0]
    refused = (
        r"array \(shard 0\): 2 row\(s\) lie entirely below the float16 normal range.*row 4, max \|x\| = 1e-09.*float32"
    )
    with pytest.raises(ValueError, match=refused):
        write_store(tmp_path / "a", data, modality="m", encoder=ENCODER)
    assert not (tmp_path / "a" / MANIFEST).exists()
    writer = LatentStoreWriter(tmp_path / "b", modality="m", dim=3, encoder=ENCODER)
    for array in (torch.from_numpy(data), data.astype(np.float64), torch.from_numpy(data).to(torch.bfloat16)):
        with pytest.raises(ValueError, match=r"2 row\(s\) .*float16 normal range \|x\| >= 6.10352e-05.*row 4"):
            writer.write_shard(3, array)
    with pytest.raises(ValueError, match=r"array \(shard 1\): 1 row\(s\).*row 1, max \|x\| = 2e-06"):
        writer.write_shard(1, data[[0, 5]])
    assert not list((tmp_path / "b" / "shards").iterdir())
    kept = write_store(tmp_path / "c", data, modality="m", encoder=ENCODER, dtype="float32")
    assert np.array_equal(kept[:], data) and kept[4][0] == np.float32(1e-9)


def test_float16_underflow_is_judged_per_row_by_its_largest_magnitude(tmp_path):
    tiny = np.float32(FLOAT16_TINY)
    below = np.nextafter(tiny, np.float32(0))
    accepted = np.array(
        [
            [tiny, 0.0, tiny / 4],  # max |x| exactly float16's smallest normal
            [0.0, -tiny, 0.0],  # negative
            [1.0, 1e-9, -1e-9],  # tiny elements in a row of normal scale lose nothing that matters
            [0.0, 0.0, 0.0],  # all-zero rows are not underflow
            [-0.0, 0.0, -0.0],
        ],
        dtype=np.float32,
    )
    store = write_store(tmp_path / "ok", accepted, modality="m", encoder=ENCODER)
    assert np.array_equal(store[:], accepted.astype(np.float16)) and store[0][0] == tiny and store[2][0] == 1.0
    for row, value in enumerate((below, -below, np.float32(6.0976e-05), np.float32(3e-8))):
        data = np.ones((4, 3), dtype=np.float32)
        data[row] = [0.0, value, value / 2]
        with pytest.raises(ValueError, match=rf"1 row\(s\) lie entirely below the float16 normal range.*row {row},"):
            write_store(tmp_path / f"no{row}", data, modality="m", encoder=ENCODER)
    # float16 input is stored exactly: its subnormals are what the encoder made, not a loss in storage
    subnormal = np.full((2, 3), 1e-6, dtype=np.float16)
    assert np.array_equal(write_store(tmp_path / "h", subnormal, modality="m", encoder=ENCODER)[:], subnormal)


def test_bad_writer_input(tmp_path):
    writer = LatentStoreWriter(tmp_path, modality="m", dim=3, encoder=ENCODER)
    with pytest.raises(TypeError, match="floating"):
        writer.write_shard(0, np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"expected shape \(rows >= 1, 3\), got \(2, 4\)"):
        writer.write_shard(0, np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        writer.write_shard(0, np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="index"):
        writer.write_shard(-1, np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype"):
        LatentStoreWriter(tmp_path, modality="m", dim=3, encoder=ENCODER, dtype="int8")
    with pytest.raises(TypeError, match="encoder: expected a JSON-serialisable dict"):
        LatentStoreWriter(tmp_path, modality="m", dim=3, encoder={"f": object()})
    with pytest.raises(ValueError, match="modality"):
        LatentStoreWriter(tmp_path, modality="", dim=3, encoder=ENCODER)


def test_write_store_needs_an_empty_directory_and_writer_refuses_complete_store(tmp_path):
    _write(tmp_path / "s")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        _write(tmp_path / "s")
    with pytest.raises(StoreError, match="already holds a complete store"):
        LatentStoreWriter(tmp_path / "s", modality="m", dim=4, encoder=ENCODER)


def test_finalize_checks_shards(tmp_path):
    writer = LatentStoreWriter(tmp_path, modality="m", dim=2, encoder=ENCODER)
    writer.write_shard(0, np.ones((3, 2), dtype=np.float32))
    writer.write_shard(2, np.ones((3, 2), dtype=np.float32))
    with pytest.raises(StoreError, match=r"1 of 3 shard\(s\) are missing.*00001\.npy"):
        writer.finalize(3)
    with pytest.raises(StoreError, match=r"num_shards=1: shards/00002\.npy also exists"):
        writer.finalize(1)
    assert not (tmp_path / MANIFEST).exists()
    writer.write_shard(1, np.zeros((3, 2), dtype=np.float32))
    store = writer.finalize(3)
    assert len(store) == 9
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.npy", "00001.npy", "00002.npy"]


def test_shard_entry_resumes_from_files_with_or_without_sidecar(tmp_path):
    writer = LatentStoreWriter(tmp_path, modality="m", dim=2, encoder=ENCODER)
    assert writer.shard_entry(0) is None
    entry = writer.write_shard(0, _latents(5, 2))
    again = LatentStoreWriter(tmp_path, modality="m", dim=2, encoder=ENCODER)
    assert again.shard_entry(0) == entry
    (tmp_path / "shards" / "00000.json").unlink()  # killed between the shard and its sidecar
    assert again.shard_entry(0) == entry  # hash recomputed from the file
    with pytest.raises(StoreError, match="written by a different run"):
        LatentStoreWriter(tmp_path, modality="m", dim=3, encoder=ENCODER).shard_entry(0)


def test_failed_write_leaves_no_shard_and_names_the_path(tmp_path, monkeypatch):
    writer = LatentStoreWriter(tmp_path, modality="m", dim=2, encoder=ENCODER)

    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match=r"00000\.npy: could not write shard 0 \(No space left on device\)") as info:
        writer.write_shard(0, _latents(4, 2))
    assert info.value.errno == errno.ENOSPC
    assert list((tmp_path / "shards").iterdir()) == []
    assert writer.shard_entry(0) is None


# --- read_rows: sorted unique rows straight into a caller's array ------------------------------------------------


@given(
    shard_size=st.sampled_from(SHARD_SIZES),
    rows=st.sets(st.integers(0, 22), max_size=23),
    with_out=st.booleans(),
    kind=st.sampled_from(["int64", "int32", "uint16", "list"]),
)
def test_read_rows_matches_numpy_across_shard_boundaries(stores, shard_size, rows, with_out, kind):
    data, by_size = stores
    store = by_size[shard_size]
    index = np.array(sorted(rows), dtype=np.int64)
    key = index.tolist() if kind == "list" else index.astype(kind)
    out = np.full((len(index), 5), np.nan, dtype=np.float16) if with_out else None
    got = store.read_rows(key, out=out)
    assert got.shape == (len(index), 5) and got.dtype == np.float16
    assert got is out if with_out else isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, np.asarray(store)[index])
    np.testing.assert_array_equal(got, data[index])


def test_read_rows_writes_into_out_in_place(stores):
    data, by_size = stores
    store = by_size[7]
    buffer = np.zeros((10, 5), dtype=np.float16)
    out = buffer[2:6]  # a C-contiguous view: the rows must land in the buffer itself
    assert store.read_rows(np.array([0, 6, 7, 22]), out=out) is out
    np.testing.assert_array_equal(buffer[2:6], data[[0, 6, 7, 22]])
    assert not buffer[:2].any() and not buffer[6:].any()


def test_read_rows_refuses_bad_rows_and_bad_out(stores):
    store = stores[1][3]
    with pytest.raises(ValueError, match=r"rows: indices must lie in \[0, 23\)"):
        store.read_rows([3, 23])
    with pytest.raises(ValueError, match=r"rows: indices must lie in \[0, 23\)"):
        store.read_rows([-1, 2])
    with pytest.raises(ValueError, match=r"rows: expected strictly increasing .* rows\[1\] = 5 is followed by 4"):
        store.read_rows([1, 5, 4])
    with pytest.raises(ValueError, match=r"rows: expected strictly increasing .* rows\[0\] = 2 is followed by 2"):
        store.read_rows([2, 2])
    with pytest.raises(ValueError, match="rows: expected a 1-D"):
        store.read_rows(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="rows: expected integer"):
        store.read_rows(np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="rows: expected integer"):
        store.read_rows(np.array([True, False]))
    rows = np.array([0, 4, 9])
    with pytest.raises(ValueError, match=r"out: expected shape \(3, 5\) and dtype float16, got shape \(2, 5\)"):
        store.read_rows(rows, out=np.empty((2, 5), dtype=np.float16))
    with pytest.raises(ValueError, match=r"out: expected shape \(3, 5\) and dtype float16, got .* dtype float32"):
        store.read_rows(rows, out=np.empty((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="out: expected a writeable, C-contiguous"):
        store.read_rows(rows, out=np.empty((5, 3), dtype=np.float16).T)
    read_only = np.empty((3, 5), dtype=np.float16)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        store.read_rows(rows, out=read_only)
    with pytest.raises(TypeError, match="out: expected an np.ndarray"):
        store.read_rows(rows, out=torch.empty(3, 5, dtype=torch.float16))
    assert store.read_rows(np.array([], dtype=np.int64)).shape == (0, 5)


def test_deeply_nested_manifest_is_a_store_error(tmp_path):
    # Issue 13 item 9: a manifest nested very deeply raised RecursionError instead of a store error.
    _write(tmp_path)
    (tmp_path / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StoreError, match="manifest.json: not valid JSON .*nested too deeply"):
        LatentStore.open(tmp_path)
