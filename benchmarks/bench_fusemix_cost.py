"""Cost of FuseMix as a fraction of one training step, at the paper's shapes.

Model: ``FusionModel.from_dims({"image": 1536, "text": 1024}, shared_dim=512,
depth=4, dropout=0.6)`` (DINOv2 ViT-G/14 and BGE-large latents, the authors'
adapters), ``ContrastiveLoss``, ``torch.optim.AdamW(lr=1e-3,
weight_decay=0.1)``, float32, train mode. ``FuseMix(alpha=1.0)`` with
``pairing="halves"``, as in the authors' code: a sampled batch of ``B`` rows
becomes ``B/2`` mixed pairs, so the step after FuseMix sees ``B/2`` rows.

Measured per batch size ``B`` (round-robin, so load changes hit all alike):

- ``FuseMix(B)``: the FuseMix call alone (draw lambda, mix both modalities).
- ``step(B/2)``: zero_grad, forward, loss, backward, AdamW step on ``B/2``
  unmixed rows: the step FuseMix feeds, without FuseMix.
- ``FuseMix(B) + step(B/2)``: the training step as the paper runs it.
- ``step(B)``: a step on all ``B`` rows, for context (what a trainer that
  sampled ``B`` rows and did not mix would run; twice the loss pairs).

The fair cost of FuseMix is ``FuseMix(B) / step(B/2)``: same pairs through
the model with and without it. The difference ``[FuseMix(B) + step(B/2)] -
step(B/2)`` measures the same thing indirectly and is noisier (a difference
of two large numbers). Paper-scale batches: 4,096 and, with ``--full``,
40,960 (the authors' batch; slow on a CPU). The default CPU run uses 1,024
and 4,096; ``--quick`` uses a one-block adapter and a tiny batch (a smoke
test: latents 192-d / 128-d, shared 64-d, one block; not the paper's shapes).

Usage::

    python benchmarks/bench_fusemix_cost.py [--quick] [--full] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _common import (
    Timing,
    add_common_arguments,
    apply_threads,
    fmt_seconds,
    markdown_table,
    print_footer,
    print_header,
    resolve_device,
    time_interleaved,
)

from fusemix import FuseMix, FusionModel

PAPER_DIMS = {"image": 1536, "text": 1024}
QUICK_DIMS = {"image": 192, "text": 128}


def batch_sizes(device: torch.device, quick: bool, full: bool) -> tuple[int, ...]:
    if quick:
        return (128,)
    base = (4_096,) if device.type == "cuda" else (1_024, 4_096)
    return base + ((40_960,) if full else ())


def make_step(model: FusionModel, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimisation step on a batch of (image, text) latents."""

    def step(image: torch.Tensor, text: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model({"image": image, "text": text})
        loss.backward()
        optimizer.step()

    return step


def measure_batch(
    batch: int,
    dims: dict[str, int],
    step: Callable[[torch.Tensor, torch.Tensor], None],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Timing]:
    gen = torch.Generator().manual_seed(batch)
    image = torch.randn(batch, dims["image"], generator=gen).to(device)
    text = torch.randn(batch, dims["text"], generator=gen).to(device)
    half = batch // 2
    image_half, text_half = image[:half].contiguous(), text[:half].contiguous()
    mix = FuseMix(alpha=1.0, pairing="halves")

    def mixed_step() -> None:
        step(*mix(image, text))

    fns: dict[str, Callable[[], object]] = {
        "mix": lambda: mix(image, text),
        "half": lambda: step(image_half, text_half),
        "mixed": mixed_step,
        "full": lambda: step(image, text),
    }
    return time_interleaved(fns, device, warmup=warmup, repeats=repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--full", action="store_true", help="also run the authors' batch of 40,960")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, quick 2)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    dims, shared_dim, depth = (QUICK_DIMS, 64, 1) if args.quick else (PAPER_DIMS, 512, 4)
    batches = batch_sizes(device, args.quick, args.full)
    repeats = args.repeats or (2 if args.quick else 3)
    warmup = 1

    torch.manual_seed(0)
    model = FusionModel.from_dims(dims, shared_dim=shared_dim, depth=depth, dropout=0.6).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    step = make_step(model, optimizer)
    params = sum(p.numel() for p in model.parameters())

    print_header(
        "FuseMix cost as a fraction of one training step",
        device,
        [
            f"model: FusionModel.from_dims({dims}, shared_dim={shared_dim}, depth={depth}, dropout=0.6), "
            f"{params / 1e6:.1f} M parameters, float32, AdamW, ContrastiveLoss"
            + (" (quick: smoke-test shapes, not the paper's)" if args.quick else " (the paper's shapes)"),
            "FuseMix(alpha=1.0, pairing='halves'): B rows in, B/2 mixed rows out",
            f"batches B: {', '.join(f'{b:,}' for b in batches)}"
            + (
                " (CPU default; the paper's 40,960 needs --full)"
                if device.type == "cpu" and not args.quick and not args.full
                else ""
            ),
            f"time: median of {repeats} round-robin repeats after {warmup} warm-up round",
        ],
    )
    rows = []
    for batch in batches:
        t = measure_batch(batch, dims, step, device, warmup, repeats)
        mix_s, half_s, mixed_s, full_s = (t[k].median for k in ("mix", "half", "mixed", "full"))
        rows.append(
            [
                f"{batch:,}",
                fmt_seconds(mix_s),
                fmt_seconds(half_s),
                fmt_seconds(mixed_s),
                fmt_seconds(full_s),
                f"{100 * mix_s / half_s:.3f}%",
                f"{100 * (mixed_s - half_s) / half_s:+.2f}%",
            ]
        )
    print(
        markdown_table(
            [
                "B",
                "FuseMix(B)",
                "step(B/2)",
                "FuseMix(B) + step(B/2)",
                "step(B)",
                "FuseMix(B) / step(B/2)",
                "[FuseMix + step(B/2)] / step(B/2) - 1",
            ],
            rows,
        )
    )
    print(
        "\nFuseMix(B) / step(B/2) is the cost of FuseMix (target <= 3%): the same B/2 pairs go through the model "
        "with and without it. The last column measures it indirectly, as a difference of two noisy timings."
    )
    print_footer(started)


if __name__ == "__main__":
    main()
