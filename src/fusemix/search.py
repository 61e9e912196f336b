"""Exact top-k search of a collection of embeddings, in bounded memory.

:func:`search` scores every query against every row of a collection by inner
product (the cosine similarity of unit-norm embeddings, which is what
:meth:`fusemix.aligned.AlignedEncoder.encode` and
:func:`fusemix.aligned.embed_store` produce) and returns the ``k`` best rows
per query with their scores. The collection may be a tensor, a numpy array
(a memory map too) or a :class:`~fusemix.store.LatentStore` larger than RAM:
it is read ``chunk_size`` rows at a time, and the scores of at most
:data:`DEFAULT_SCORE_ELEMENTS` query-row pairs are held at once, so memory is
``chunk_size * dim`` collection values, that many scores and the ``(Q, k)``
results, whatever the collection's size.

**Order and ties.** Each query's results are sorted by score, highest first;
equal scores are ordered by row, lowest first, and a tie at the ``k``-th place
keeps the lowest rows. So the torch backend returns exactly what a stable
descending sort of the full score row would (the same for every
``chunk_size``).

**Backends.** ``"torch"`` (exact, on any device) and ``"faiss"`` (exact,
``faiss.knn`` with the inner-product metric per chunk, CPU only;
``pip install "fusemix[faiss]"``). Both compute the same float32 dot products
with different summation orders, so scores agree to float rounding and the
rows agree except between candidates whose scores differ by about that much;
faiss may pick any of the rows tied at the ``k``-th place. ``"auto"`` uses
torch: on 2 CPU cores and 1M x 512 it was faster than the faiss backend at
every query batch size measured, 1 to 1,024 (``benchmarks/bench_search.py``,
``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_choice, check_positive_int
from fusemix.metrics import DEFAULT_CHUNK_ELEMENTS
from fusemix.store import LatentStore

Backend = Literal["auto", "torch", "faiss"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "faiss")
"""Values of ``backend``."""

DEFAULT_CHUNK_ROWS = 65536
"""Collection rows read and scored at once when ``chunk_size`` is not given (128 MiB of float32 at 512 dims)."""

DEFAULT_SCORE_ELEMENTS = DEFAULT_CHUNK_ELEMENTS
"""Most query-row scores held at once by the torch backend (``2**25``, 128 MiB of float32)."""

Collection = Tensor | np.ndarray | LatentStore


class SearchResult(NamedTuple):
    """The ``k`` best rows of the collection for every query, best first.

    Attributes:
        scores: Inner products, float32. Shape: ``(Q, k)``.
        indices: Rows of the collection, int64. Shape: ``(Q, k)``.

    """

    scores: torch.Tensor  # spelt out for the API reference, which does not resolve a bare "Tensor"
    indices: torch.Tensor


def _faiss() -> Any:
    try:
        return importlib.import_module("faiss")
    except ImportError as err:
        raise ImportError(
            'backend: "faiss" needs the optional dependency faiss; install it with: pip install "fusemix[faiss]"'
        ) from err


def faiss_available() -> bool:
    """Whether ``faiss`` can be imported (the ``faiss`` extra is installed)."""
    try:
        _faiss()
    except ImportError:
        return False
    return True


def _as_queries(queries: object) -> Tensor:
    if isinstance(queries, np.ndarray):
        queries = torch.from_numpy(queries)
    if not isinstance(queries, Tensor):
        raise TypeError(f"queries: expected a tensor or numpy array, got {type(queries).__name__}")
    if not queries.is_floating_point():
        raise TypeError(f"queries: expected floating values, got dtype {queries.dtype}")
    if queries.ndim != 2 or queries.shape[0] < 1:
        raise ValueError(
            f"queries: expected shape (Q >= 1, dim), got {tuple(queries.shape)}; one query is queries[None]"
        )
    if not bool(torch.isfinite(queries).all()):
        raise ValueError("queries: contain NaN or Inf")
    return queries


class _Rows:
    """Read a collection (tensor, array or store) in float32 row chunks."""

    def __init__(self, collection: object) -> None:
        if isinstance(collection, LatentStore):
            self.count, self.dim = collection.shape
            self.checked = True  # a store refuses NaN and Inf when it is written
        elif isinstance(collection, (Tensor, np.ndarray)):
            dtype = collection.dtype
            if not (dtype.is_floating_point if isinstance(dtype, torch.dtype) else dtype.kind == "f"):
                raise TypeError(f"collection: expected floating values, got dtype {collection.dtype}")
            if collection.ndim != 2:
                raise ValueError(f"collection: expected shape (rows, dim), got {tuple(collection.shape)}")
            self.count, self.dim = (int(n) for n in collection.shape)
            self.checked = False
        else:
            raise TypeError(
                f"collection: expected a tensor, a numpy array or a LatentStore, got {type(collection).__name__}"
            )
        if self.count < 1:
            raise ValueError("collection: is empty")
        self.collection = collection

    def read(self, start: int, stop: int, device: torch.device) -> Tensor:
        """Rows ``[start, stop)`` as float32 on ``device`` (a view when they already are)."""
        rows = self.collection[start:stop]
        if isinstance(rows, np.ndarray):
            # torch tensors must be writable: a read-only memory map's chunk is copied (one chunk at a time)
            rows = torch.from_numpy(np.ascontiguousarray(rows) if rows.flags.writeable else np.array(rows))
        return rows.to(device=device, dtype=torch.float32)


def _order(values: Tensor, columns: Tensor) -> tuple[Tensor, Tensor]:
    """Sort every row by value (highest first), equal values by column (lowest first)."""
    columns, by_column = columns.sort(dim=1)
    values = values.gather(1, by_column)
    values, by_value = values.sort(dim=1, descending=True, stable=True)
    return values, columns.gather(1, by_value)


def _block_top_k(scores: Tensor, k: int, start: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best columns of every row by (score desc, column asc); ties at the ``k``-th place keep low columns.

    One ``topk`` of ``k + 1`` tells whether the ``k``-th place is tied; only
    such rows pay for a full pass. NaN and +Inf sort above every number, so
    checking the selected values catches any that could reach the results.
    """
    width = scores.shape[1]
    values, columns = torch.topk(scores, min(k + 1, width), dim=1)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"collection: rows [{start}, {start + width}) contain NaN or Inf (or their scores overflow float32)"
        )
    if k < width:
        tied = torch.nonzero(values[:, k] == values[:, k - 1]).flatten()
        values, columns = values[:, :k], columns[:, :k]
        if tied.numel():  # torch.topk picks any of the tied columns: keep the lowest
            rows, bound = scores[tied], values[tied, k - 1 :]
            above, equal = rows > bound, rows == bound
            room = k - above.sum(dim=1, keepdim=True)
            chosen = above | (equal & (equal.cumsum(dim=1) <= room))
            picked = chosen.nonzero()[:, 1].view(len(tied), k)
            columns[tied] = picked
            values[tied] = rows.gather(1, picked)
    return _order(values, columns)


def _merge(best: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` best of two ordered candidate lists whose rows in ``best`` all precede those in ``new``."""
    values = torch.cat([best[0], new[0]], dim=1)
    indices = torch.cat([best[1], new[1]], dim=1)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices.gather(1, order[:, :k])


def _search_torch(queries: Tensor, rows: _Rows, k: int, chunk: int, device: torch.device) -> SearchResult:
    queries = queries.to(device=device, dtype=torch.float32)
    count = queries.shape[0]
    chunk = min(chunk, rows.count)
    query_block = min(count, max(1, DEFAULT_SCORE_ELEMENTS // chunk))
    buffer = torch.empty(query_block * chunk, device=device)  # scores, reused by every block
    scores = torch.empty(count, 0, device=device)
    indices = torch.empty(count, 0, dtype=torch.int64, device=device)
    for start in range(0, rows.count, chunk):
        stop = min(start + chunk, rows.count)
        block_rows = rows.read(start, stop, device)
        parts_scores, parts_indices = [], []
        for first in range(0, count, query_block):
            block_queries = queries[first : first + query_block]
            out = buffer[: len(block_queries) * (stop - start)].view(len(block_queries), stop - start)
            top = _block_top_k(torch.mm(block_queries, block_rows.T, out=out), min(k, stop - start), start)
            merged = _merge(
                (scores[first : first + query_block], indices[first : first + query_block]),
                (top[0], top[1] + start),
                k,
            )
            parts_scores.append(merged[0])
            parts_indices.append(merged[1])
        scores, indices = torch.cat(parts_scores), torch.cat(parts_indices)
    return SearchResult(scores, indices)


def _all_finite(rows: Tensor) -> bool:
    """Whether every value is finite: one sum (NaN and Inf propagate into it), a full check only if it is not finite."""
    return bool(torch.isfinite(rows.sum())) or bool(torch.isfinite(rows).all())


def _search_faiss(queries: Tensor, rows: _Rows, k: int, chunk: int) -> SearchResult:
    faiss = _faiss()
    cpu = torch.device("cpu")
    query_array = queries.detach().to(device=cpu, dtype=torch.float32).contiguous().numpy()
    scores = torch.empty(len(query_array), 0)
    indices = torch.empty(len(query_array), 0, dtype=torch.int64)
    for start in range(0, rows.count, chunk):
        stop = min(start + chunk, rows.count)
        block_rows = rows.read(start, stop, cpu)
        if not rows.checked and not _all_finite(block_rows):
            raise ValueError(f"collection: rows [{start}, {stop}) contain NaN or Inf")
        values, columns = faiss.knn(
            query_array, block_rows.numpy(), min(k, stop - start), metric=faiss.METRIC_INNER_PRODUCT
        )
        top = _order(torch.from_numpy(values), torch.from_numpy(columns))
        scores, indices = _merge((scores, indices), (top[0], top[1] + start), k)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("collection: scores overflow float32")
    return SearchResult(scores, indices)


def search(
    queries: Tensor | np.ndarray,
    collection: Collection,
    k: int = 10,
    *,
    chunk_size: int | None = None,
    backend: Backend = "auto",
    device: str | torch.device | None = None,
) -> SearchResult:
    """The ``k`` rows of ``collection`` with the highest inner product with each query, exactly.

    See the module docstring for memory, order, ties and backends.

    Args:
        queries: Query embeddings. Shape: ``(Q, dim)``.
        collection: Embeddings to search: a tensor, a numpy array (e.g. a
            memory map) or a :class:`~fusemix.store.LatentStore`. Shape:
            ``(N, dim)``.
        k: Results per query; ``min(k, N)`` are returned.
        chunk_size: Collection rows read and scored at once
            (:data:`DEFAULT_CHUNK_ROWS` when ``None``).
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        device: Where the torch backend computes (``None``: the queries'
            device); the results are returned there. faiss runs on the CPU.

    Returns:
        A :class:`SearchResult` ``(scores, indices)``, each of shape ``(Q, min(k, N))``.

    Raises:
        TypeError: If the queries or the collection are not floating tensors / arrays / a store.
        ValueError: If shapes do not match, the collection is empty,
            queries or collection rows hold NaN or Inf (the message names the
            rows), or faiss is asked to run on another device than the CPU.
        ImportError: If ``backend="faiss"`` and faiss is not installed.

    Example:
        >>> collection = torch.nn.functional.normalize(torch.randn(1000, 8), dim=-1)
        >>> scores, rows = search(collection[[3, 7]], collection, k=2, chunk_size=300)
        >>> rows[:, 0].tolist(), scores.shape
        ([3, 7], torch.Size([2, 2]))

    """
    query_tensor = _as_queries(queries)
    rows = _Rows(collection)
    if query_tensor.shape[1] != rows.dim:
        raise ValueError(f"queries: have dim {query_tensor.shape[1]}, but the collection has dim {rows.dim}")
    k = check_positive_int("k", k)
    chunk = DEFAULT_CHUNK_ROWS if chunk_size is None else check_positive_int("chunk_size", chunk_size)
    check_choice("backend", backend, BACKENDS)
    target = query_tensor.device if device is None else torch.device(device)
    k = min(k, rows.count)
    if backend == "faiss":
        if target.type != "cpu":
            raise ValueError(f"device: the faiss backend runs on the CPU, got {target}; use backend='torch'")
        return _search_faiss(query_tensor, rows, k, chunk)
    return _search_torch(query_tensor, rows, k, chunk, target)


__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_SCORE_ELEMENTS",
    "SearchResult",
    "faiss_available",
    "search",
]
