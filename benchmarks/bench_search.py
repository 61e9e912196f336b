"""Exact top-k search: ``fusemix.search.search`` (torch and faiss backends) against faiss's ``IndexFlatIP``.

Collection: 1,000,000 random unit vectors of 512 float32 dims (2 GiB), the
shared-space embeddings of a large image collection. Queries: random unit
vectors, in batches of 1, 16, 256 and 1,024, k = 10.

Compared, round-robin per query batch (1 warm-up round, median of the
repeats):

- ``fusemix torch``: ``search(queries, collection, k, backend="torch")``,
  65,536 collection rows at a time, at most 2**25 scores held at once.
- ``fusemix faiss``: ``search(..., backend="faiss")``: ``faiss.knn`` per chunk
  of the same size, plus the finiteness check of every chunk and the merge.
- ``faiss IndexFlatIP`` (the baseline of the ratios): the standard exact
  inner-product index, built once (its build time, a copy of the collection,
  is printed), then ``index.search(queries, k)`` on the whole collection.
- ``torch full matrix``: ``(queries @ collection.T).topk(k)``, the memory-
  unbounded one-liner, for batches whose score matrix stays under 256 MiB.

Queries per second is the batch size over the median wall time of one call.
The script checks that ``fusemix torch`` and ``fusemix faiss`` return the same
rows (and scores to float rounding) for every batch, and prints the agreement.

Then the same search streamed from a float16 ``LatentStore`` written from the
collection (1 GiB on disk, read through memory maps 65,536 rows at a time),
timed after one warm-up pass (the page cache then holds the file).

Usage::

    python benchmarks/bench_search.py [--quick] [--rows N] [--batches 1,16,256,1024] [--repeats R] [--no-store]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    add_common_arguments,
    apply_threads,
    fmt_ratio,
    fmt_seconds,
    markdown_table,
    print_footer,
    print_header,
    resolve_device,
    time_interleaved,
)

from fusemix.search import DEFAULT_CHUNK_ROWS, SearchResult, faiss_available, search
from fusemix.store import write_store

DIM = 512
K = 10
FULL_MATRIX_LIMIT = 2**26
"""Largest score matrix (elements, 256 MiB of float32) the ``torch full matrix`` variant is run with."""


def unit_vectors(rows: int, seed: int, block: int = 100_000) -> torch.Tensor:
    """``rows`` random unit vectors of ``DIM`` float32, made a block at a time (no float64 temporaries)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(rows, DIM)
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        out[start:stop] = F.normalize(torch.randn(stop - start, DIM, generator=gen), dim=1)
    return out


def agreement(a: SearchResult, b: SearchResult) -> tuple[float, float]:
    """Percentage of queries whose k rows are identical, and the largest score difference."""
    same = (a.indices == b.indices).all(dim=1).double().mean().item() * 100
    return same, (a.scores - b.scores).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rows", type=int, default=None, help="collection rows (default 1,000,000; quick 20,000)")
    parser.add_argument("--batches", default=None, help="query batch sizes (default 1,16,256,1024; quick 1,8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 1)")
    parser.add_argument("--no-store", action="store_true", help="skip the LatentStore part")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,16,256,1024")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    have_faiss = faiss_available() and device.type == "cpu"
    notes = [
        f"collection: {rows:,} random unit vectors x {DIM} float32 ({rows * DIM * 4 / 2**30:.2f} GiB); k = {K}; "
        f"fusemix chunk = {DEFAULT_CHUNK_ROWS:,} rows",
        f"round-robin per query batch, 1 warm-up round, median of {repeats}",
    ]
    if have_faiss:
        import faiss

        notes.append(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    else:
        notes.append("faiss: not installed (or not on this device): faiss rows skipped, ratios against the full matrix")
    print_header("Exact top-k search of 1M x 512: fusemix.search against faiss IndexFlatIP", device, notes)

    collection = unit_vectors(rows, seed=0).to(device)
    index = None
    if have_faiss:
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(DIM)
        index.add(collection.numpy())
        print(f"IndexFlatIP build (copies the collection): {fmt_seconds(time.perf_counter() - t0)}\n")

    table = []
    checks = []
    for batch in batches:
        queries = unit_vectors(batch, seed=1 + batch).to(device)
        variants: dict[str, Callable[[], object]] = {
            "fusemix torch": lambda q=queries: search(q, collection, K, backend="torch"),
        }
        if have_faiss:
            variants["fusemix faiss"] = lambda q=queries: search(q, collection, K, backend="faiss")
            variants["faiss IndexFlatIP"] = lambda q=queries: index.search(q.numpy(), K)
        if batch * rows <= FULL_MATRIX_LIMIT:
            variants["torch full matrix"] = lambda q=queries: (q @ collection.T).topk(K, dim=1)
        times = time_interleaved(variants, device, warmup=1, repeats=repeats)
        baseline = "faiss IndexFlatIP" if have_faiss else "torch full matrix"
        for name, timing in times.items():
            ratio = times[baseline].median / timing.median if baseline in times else float("nan")
            table.append(
                [f"{batch:,}", name, fmt_seconds(timing.median), f"{batch / timing.median:,.1f}", fmt_ratio(ratio)]
            )
        if have_faiss:
            same, gap = agreement(search(queries, collection, K), search(queries, collection, K, backend="faiss"))
            checks.append([f"{batch:,}", f"{same:.1f}%", f"{gap:.1e}"])
        print(f"batch {batch:,} done ({time.perf_counter() - started:,.0f} s)", flush=True)

    print()
    print(markdown_table(["queries", "method", "time per batch", "queries/s", "speed vs IndexFlatIP"], table))
    if checks:
        print("\nAgreement of the two fusemix backends (exact search):\n")
        print(markdown_table(["queries", "identical top-10 rows", "largest score difference"], checks))

    if not args.no_store:
        batch = max(b for b in batches if b <= 256) if any(b <= 256 for b in batches) else batches[0]
        queries = unit_vectors(batch, seed=1 + batch)
        with tempfile.TemporaryDirectory(prefix="fusemix-bench-search-") as tmp:
            t0 = time.perf_counter()
            store = write_store(tmp, collection.cpu(), modality="image", encoder={"name": "random"}, dtype="float16")
            written = time.perf_counter() - t0
            variants = {"fusemix torch (store)": lambda: search(queries, store, K, backend="torch")}
            if have_faiss:
                variants["fusemix faiss (store)"] = lambda: search(queries, store, K, backend="faiss")
            variants["fusemix torch (in memory)"] = lambda: search(queries, collection.cpu(), K, backend="torch")
            times = time_interleaved(variants, torch.device("cpu"), warmup=1, repeats=repeats)
            exact = search(queries, collection.cpu(), K)
            streamed = search(queries, store, K)
            same, gap = agreement(exact, streamed)
        print(
            f"\nStreamed from a float16 LatentStore ({store.nbytes / 2**30:.2f} GiB, {len(store.shards)} shards, "
            f"written in {fmt_seconds(written)}), {batch:,} queries:\n"
        )
        store_rows = [[name, fmt_seconds(t.median), f"{batch / t.median:,.1f}"] for name, t in times.items()]
        print(markdown_table(["method", "time per batch", "queries/s"], store_rows))
        print(
            f"\nfloat16 store against the float32 collection: {same:.1f}% identical top-{K} rows, "
            f"largest score difference {gap:.1e} (float16 rounding of the stored embeddings)"
        )
    print_footer(started)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
