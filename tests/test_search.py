"""fusemix.search: exact top-k against a brute-force sort, chunked reading, stores, faiss agreement, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fusemix.search as search_module
from fusemix.search import SearchResult, faiss_available, search
from fusemix.store import LatentStore, write_store

needs_faiss = pytest.mark.skipif(not faiss_available(), reason='faiss is not installed (pip install "fusemix[faiss]")')


def brute_force(queries: torch.Tensor, collection: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the full score matrix, a stable descending sort (ties: lowest row first), the first k."""
    scores = queries.double() @ collection.double().T
    values, rows = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k].float(), rows[:, :k]


@st.composite
def small_integer_problems(draw):
    """Integer-valued embeddings in [-2, 2]: dot products are exact in float32, and ties are frequent."""
    rows = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 4))
    queries = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    collection = torch.randint(-2, 3, (rows, dim), generator=g).float()
    query = torch.randint(-2, 3, (queries, dim), generator=g).float()
    return query, collection, draw(st.integers(1, 12)), draw(st.integers(1, 50))


@given(small_integer_problems())
def test_top_k_equals_a_stable_argsort_of_all_scores(problem):
    """Catches a wrong merge across chunks, a lost row at a chunk border, and topk's arbitrary choice among ties."""
    queries, collection, k, chunk = problem
    scores, rows = search(queries, collection, k, chunk_size=chunk, backend="torch")
    expected_scores, expected_rows = brute_force(queries, collection, min(k, len(collection)))
    assert torch.equal(rows, expected_rows)
    assert torch.equal(scores, expected_scores)


@given(small_integer_problems())
def test_chunked_equals_unchunked_for_tensors_arrays_and_stores(tmp_path_factory, problem):
    """Catches a collection kind read differently from the others, or results that depend on the chunk size."""
    queries, collection, k, chunk = problem
    whole = search(queries, collection, k, chunk_size=len(collection))
    store = write_store(tmp_path_factory.mktemp("store"), collection, modality="image", encoder={"name": "ints"})
    for kind in (collection, collection.numpy(), store):
        scores, rows = search(queries, kind, k, chunk_size=chunk)
        assert torch.equal(rows, whole.indices) and torch.equal(scores, whole.scores)


def test_hand_computed_example():
    collection = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    scores, rows = search(queries, collection, k=3, chunk_size=3)
    assert rows.tolist() == [[0, 3, 2], [0, 3, 2]]  # row 0 and its duplicate 3 tie: the lower first
    assert scores.flatten().tolist() == pytest.approx([1.0, 1.0, 0.6, 0.0, 0.0, -0.8])
    assert isinstance(search(queries, collection, k=1), SearchResult)


def test_k_larger_than_the_collection_returns_every_row():
    collection = torch.eye(3)
    scores, rows = search(torch.tensor([[0.0, 1.0, 0.5]]), collection, k=10)
    assert rows.tolist() == [[1, 2, 0]] and scores.shape == (1, 3)


def test_a_store_is_read_in_chunks_of_at_most_chunk_size(tmp_path, monkeypatch):
    """Catches reading a whole store (larger than RAM) into memory at once."""
    data = torch.nn.functional.normalize(torch.randn(103, 8), dim=-1)
    store = write_store(tmp_path / "s", data, modality="image", encoder={"name": "x"}, shard_size=40, dtype="float32")
    reads = []
    original = LatentStore.__getitem__

    def spy(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(LatentStore, "__getitem__", spy)
    result = search(data[:4], store, k=5, chunk_size=25)
    assert all(isinstance(key, slice) and key.stop - key.start <= 25 for key in reads)
    assert [(key.start, key.stop) for key in reads] == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 103)]
    assert result.indices[:, 0].tolist() == [0, 1, 2, 3]


def test_score_blocks_are_bounded(monkeypatch):
    """Catches a query block that grows with the number of queries (the (Q, chunk) score matrix in one piece)."""
    monkeypatch.setattr(search_module, "DEFAULT_SCORE_ELEMENTS", 60)
    shapes = []
    original = torch.mm

    def spy(a, b, *, out=None):
        shapes.append((a.shape[0], b.shape[1]))
        return original(a, b, out=out)

    monkeypatch.setattr(torch, "mm", spy)
    collection = torch.randn(50, 3)
    queries = torch.randn(17, 3)
    result = search(queries, collection, k=4, chunk_size=20)
    assert max(q * c for q, c in shapes) <= 60
    expected = brute_force(queries, collection, 4)
    assert torch.equal(result.indices, expected[1])


def test_float16_store_scores_are_computed_in_float32(tmp_path):
    data = torch.nn.functional.normalize(torch.randn(30, 16), dim=-1)
    store = write_store(tmp_path / "h", data, modality="text", encoder={"name": "x"})
    scores, rows = search(data[:3], store, k=1)
    assert scores.dtype == torch.float32 and rows.tolist() == [[0], [1], [2]]
    assert scores.flatten().tolist() == pytest.approx([1.0] * 3, abs=2e-3)


@needs_faiss
@pytest.mark.parametrize("chunk_size", [None, 97])
def test_faiss_agrees_with_torch_on_exact_search(chunk_size):
    g = torch.Generator().manual_seed(1)
    collection = torch.nn.functional.normalize(torch.randn(2000, 32, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(40, 32, generator=g), dim=-1)
    exact = search(queries, collection, k=10, backend="torch", chunk_size=chunk_size)
    fast = search(queries, collection, k=10, backend="faiss", chunk_size=chunk_size)
    assert torch.equal(fast.indices, exact.indices)
    assert torch.allclose(fast.scores, exact.scores, atol=1e-5)


@needs_faiss
@given(small_integer_problems())
def test_faiss_scores_equal_the_exact_ones_with_ties(problem):
    """With ties faiss may pick other rows of equal score, but never other scores."""
    queries, collection, k, chunk = problem
    exact = search(queries, collection, k, chunk_size=chunk)
    fast = search(queries, collection, k, chunk_size=chunk, backend="faiss")
    assert torch.equal(fast.scores, exact.scores)
    gathered = (queries @ collection.T).gather(1, fast.indices)
    assert torch.equal(gathered, fast.scores)


def test_faiss_backend_without_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes "import faiss" fail, as when it is not installed
    with pytest.raises(ImportError, match=r"fusemix\[faiss\]"):
        search(torch.randn(1, 2), torch.randn(3, 2), backend="faiss")
    assert not faiss_available()
    assert search(torch.randn(1, 2), torch.randn(3, 2), k=2).indices.shape == (1, 2)  # auto still works


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_non_finite_rows_are_named(backend):
    collection = torch.randn(100, 4)
    collection[61, 1] = float("nan")
    with pytest.raises(ValueError, match=r"collection: rows \[60, 90\) contain NaN or Inf"):
        search(torch.randn(2, 4), collection, k=3, chunk_size=30, backend=backend)


@pytest.mark.parametrize(
    ("queries", "collection", "kwargs", "error", "match"),
    [
        (torch.randn(2, 3), torch.randn(5, 4), {}, ValueError, "queries: have dim 3"),
        (torch.randn(3), torch.randn(5, 3), {}, ValueError, r"queries\[None\]"),
        (torch.ones(2, 3, dtype=torch.int64), torch.randn(5, 3), {}, TypeError, "queries: expected floating"),
        (torch.tensor([[float("inf"), 0.0]]), torch.randn(5, 2), {}, ValueError, "queries: contain NaN"),
        (torch.randn(2, 3), torch.ones(5, 3, dtype=torch.int32), {}, TypeError, "collection: expected floating"),
        (torch.randn(2, 3), torch.randn(0, 3), {}, ValueError, "collection: is empty"),
        (torch.randn(2, 3), [[1.0, 2.0, 3.0]], {}, TypeError, "collection: expected a tensor"),
        (torch.randn(2, 3), torch.randn(5, 3), {"k": 0}, ValueError, "k: expected an int >= 1"),
        (torch.randn(2, 3), torch.randn(5, 3), {"chunk_size": 0}, ValueError, "chunk_size"),
        (torch.randn(2, 3), torch.randn(5, 3), {"backend": "annoy"}, ValueError, "backend: expected one of"),
        (torch.randn(2, 3), torch.randn(5, 3), {"backend": "faiss", "device": "meta"}, ValueError, "faiss backend"),
    ],
)
def test_bad_arguments_are_named(queries, collection, kwargs, error, match):
    with pytest.raises(error, match=match):
        search(queries, collection, **kwargs)


def test_numpy_queries_and_memory_mapped_collections(tmp_path):
    data = np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32)
    np.save(tmp_path / "c.npy", data)
    mapped = np.load(tmp_path / "c.npy", mmap_mode="r")
    scores, rows = search(data[:2], mapped, k=1, chunk_size=7)
    assert rows.flatten().tolist() == [int(np.argmax(data[0] @ data.T)), int(np.argmax(data[1] @ data.T))]
