"""Batch loader alone: rows/s of fusemix's ``LatentBatcher`` against the authors' per-sample ``DataLoader`` pipeline.

Shapes are the paper's: image latents 1536-d (DINOv2 ViT-G/14), text latents
1024-d (BGE-large), batches of 4,096 and 40,960 pairs (the authors' batch);
the default dataset has 245,760 pairs (6 batches of 40,960), random values
(speed does not depend on them). Every loader yields, per batch, a float32
``(B, 1536)`` image tensor and a float32 ``(B, 1024)`` text tensor on
``--device``, freshly shuffled each epoch.

Baseline (reproduced from the released code, see ``_authors_pipeline.py``):
per-sample float32 tensors in a Python dict keyed by ``str(index)``, a map
``Dataset`` whose ``__getitem__`` returns one row per modality (through the
``feat_train`` processor), ``default_collate``, and
``DataLoader(batch_size=B, shuffle=True, drop_last=True)`` with
``num_workers=0`` and with ``num_workers=N`` (``--workers``, default
``min(8, usable cores)``: 8 is the authors' setting); on CUDA with
``pin_memory=True`` and a ``non_blocking`` copy to the GPU.

fusemix (:class:`fusemix.data.LatentBatcher` over
:class:`fusemix.data.PairedLatents`):

- preloaded, float16 latents (as a store holds them) kept in float16 on the
  device, each batch one ``index_select`` per modality plus the cast to
  float32;
- preloaded, float32 latents (the same bytes as the authors' dict);
- streaming from a :class:`fusemix.store.LatentStore` (float16 ``.npy``
  shards, memory-mapped; the files were just written, so they sit in the
  page cache: a warm read, not a disk read);
- each of the three again with ``reuse_buffers=True`` (as ``fit`` uses it):
  every batch is written into the same tensors instead of new ones.

Timing: one call is one whole epoch through a fresh iterator (so the
``DataLoader``'s worker start-up each epoch is included, as in the authors'
training); the variants run round-robin, one warm-up round, median of the
timed rounds; ``rows/s`` is the epoch's rows over that median.

Usage::

    python benchmarks/bench_loader.py [--quick] [--device cpu|cuda] [--threads N] [--pairs P] [--workers N]
                                      [--batch-sizes 4096,40960] [--repeats R]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from _authors_pipeline import FeaturePairDataset, authors_batches, authors_loader, default_workers, per_sample_dict
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

from fusemix.data import LatentBatcher, PairedLatents
from fusemix.store import write_store

PAPER_DIMS = {"image": 1536, "text": 1024}
DEFAULT_PAIRS = 6 * 40_960
QUICK_PAIRS = 4_096
DEFAULT_BATCH_SIZES = {False: (4_096, 40_960), True: (512, 1_024)}


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``--batch-sizes``: comma-separated positive ints."""
    try:
        sizes = tuple(int(s.replace("_", "")) for s in text.split(","))
    except ValueError:
        raise SystemExit(f"--batch-sizes: expected comma-separated ints, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--batch-sizes: expected ints >= 1, got {text!r}")
    return sizes


def random_latents(pairs: int, dims: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 latents of every modality. Shape of each: ``(pairs, D_m)``."""
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(pairs, d, generator=gen) for m, d in dims.items()}


def drain(batches: Iterable[dict[str, torch.Tensor]]) -> int:
    """Consume an epoch of batches; returns the number of rows seen."""
    rows = 0
    for batch in batches:
        rows += next(iter(batch.values())).shape[0]
    return rows


class Sources:
    """The same latents in every form a loader reads: the authors' dicts, float16 and float32 arrays, stores."""

    def __init__(self, latents: dict[str, torch.Tensor], store_dir: Path) -> None:
        self.float32 = latents
        self.dataset = FeaturePairDataset(per_sample_dict(latents["image"]), per_sample_dict(latents["text"]))
        self.float16 = {m: x.half().numpy() for m, x in latents.items()}
        self.stores = {
            m: write_store(store_dir / m, x, modality=m, encoder={"name": "bench-random"})
            for m, x in self.float16.items()
        }


def loader_variants(
    sources: Sources, batch_size: int, workers: int, device: torch.device
) -> dict[str, tuple[Callable[[], int], int]]:
    """Name to (run one epoch, rows per epoch) for every loader compared."""
    kinds = {
        "preloaded float16": (sources.float16, True),
        "preloaded float32": (sources.float32, True),
        "streamed from a LatentStore": (sources.stores, False),
    }
    batchers = {
        f"fusemix LatentBatcher, {kind}{', reuse_buffers=True' if reuse else ''}": LatentBatcher(
            PairedLatents(latents), batch_size, device=device, preload=preload, seed=1, reuse_buffers=reuse
        )
        for reuse in (False, True)
        for kind, (latents, preload) in kinds.items()
    }
    variants: dict[str, tuple[Callable[[], int], int]] = {}
    for n in sorted({0, workers}):
        loader = authors_loader(sources.dataset, batch_size, n, device)
        variants[f"authors: dict + DataLoader, num_workers={n}"] = (
            lambda loader=loader: drain(authors_batches(loader, device)),
            len(loader) * batch_size,
        )
    for name, batcher in batchers.items():
        variants[name] = (lambda batcher=batcher: drain(batcher), len(batcher) * batch_size)
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--pairs", type=int, default=None, help=f"dataset size (default {DEFAULT_PAIRS:,})")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers N (default min(8, cores))")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 4096,40960)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    pairs = args.pairs or (QUICK_PAIRS if args.quick else DEFAULT_PAIRS)
    batch_sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else DEFAULT_BATCH_SIZES[args.quick]
    workers = args.workers if args.workers is not None else (2 if args.quick else default_workers())
    if workers < 0:
        raise SystemExit(f"--workers: expected an int >= 0, got {workers}")
    if pairs < max(batch_sizes):
        raise SystemExit(f"--pairs: {pairs} is fewer than the largest batch ({max(batch_sizes)})")
    repeats = args.repeats or (1 if args.quick else 3)

    print_header(
        "Batch loader throughput: fusemix LatentBatcher vs the authors' per-sample DataLoader",
        device,
        [
            f"dataset: {pairs:,} pairs, image {PAPER_DIMS['image']}-d + text {PAPER_DIMS['text']}-d; "
            "batches come out float32 on the device",
            f"batch sizes: {', '.join(f'{b:,}' for b in batch_sizes)}; DataLoader workers N = {workers}",
            f"time: one call = one epoch through a fresh iterator; round-robin, 1 warm-up round, median of {repeats}",
        ],
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="fusemix-bench-loader-") as tmp:
        sources = Sources(random_latents(pairs, PAPER_DIMS), Path(tmp))
        for batch_size in batch_sizes:
            variants = loader_variants(sources, batch_size, workers, device)
            timings = time_interleaved({k: v[0] for k, v in variants.items()}, device, warmup=1, repeats=repeats)
            rate = {name: variants[name][1] / timings[name].median for name in variants}
            base0 = rate["authors: dict + DataLoader, num_workers=0"]
            base_n = rate[f"authors: dict + DataLoader, num_workers={workers}"]
            best_base = max(base0, base_n)
            for name in variants:
                rows.append(
                    [
                        f"{batch_size:,}",
                        name,
                        f"{rate[name]:,.0f}",
                        fmt_seconds(batch_size / rate[name]),
                        fmt_ratio(rate[name] / base0),
                        fmt_ratio(rate[name] / base_n),
                        fmt_ratio(rate[name] / best_base),
                    ]
                )
            del variants, timings
        del sources
    print(
        markdown_table(
            [
                "B",
                "loader",
                "rows/s",
                "time per batch",
                "vs num_workers=0",
                f"vs num_workers={workers}",
                "vs the faster authors' loader",
            ],
            rows,
        )
    )
    print(
        "\nrows/s: pairs per second, a pair being one image row and one text row. Target for fusemix: >= 20x the "
        "authors' pipeline on the CPU, read against the faster of its two settings (last column). On the CPU "
        "the other loaders allocate each batch anew; glibc serves allocations this large with fresh mmaps, so page "
        "faults are part of what is measured (see the benchmarks README); with reuse_buffers=True the batcher "
        "writes every batch into the same tensors (as fusemix.train.fit does)."
    )
    print_footer(started)


if __name__ == "__main__":
    main()
