"""Achieved fp32 GEMM throughput of this machine: the "machine peak" other benchmarks compare against.

Square ``n x n @ n x n`` float32 matmuls at a few sizes (``2 n^3`` FLOPs
each); the peak is the best repeat over all sizes. On CUDA the result depends
on whether TF32 is allowed for float32 matmuls (printed; PyTorch's default is
off), and this script leaves that setting as it finds it.

Usage::

    python benchmarks/bench_gemm_peak.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    add_common_arguments,
    apply_threads,
    fmt_seconds,
    gemm_flops,
    markdown_table,
    print_footer,
    print_header,
    resolve_device,
)

SIZES = {
    ("cpu", False): (256, 512, 1024, 2048, 4096),
    ("cpu", True): (128, 256, 512),
    ("cuda", False): (1024, 2048, 4096, 8192, 16384),
    ("cuda", True): (512, 1024, 2048),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per size (default 5, quick 2)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    sizes = SIZES[(device.type, args.quick)]

    print_header(
        "fp32 GEMM peak",
        device,
        [f"square float32 matmuls, sizes {', '.join(map(str, sizes))}; best of {repeats} repeats per size"],
    )
    results = gemm_flops(device, sizes, dtype=torch.float32, repeats=repeats)
    rows = [
        [
            r.size,
            r.calls_per_repeat,
            fmt_seconds(r.timing.median / r.calls_per_repeat),
            f"{r.median_flops / 1e9:,.1f}",
            f"{r.best_flops / 1e9:,.1f}",
        ]
        for r in results
    ]
    print(
        markdown_table(["n", "matmuls per repeat", "time per matmul (median)", "GFLOP/s median", "GFLOP/s best"], rows)
    )
    peak = max(results, key=lambda r: r.best_flops)
    print(f"\nMachine fp32 GEMM peak (achieved): {peak.best_flops / 1e9:,.1f} GFLOP/s at n={peak.size}")
    print_footer(started)


if __name__ == "__main__":
    main()
