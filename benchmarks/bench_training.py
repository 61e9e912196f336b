"""Training: one FuseMix step's FLOP/s against the machine's GEMM peak, and loader + step end to end.

The step is what :func:`fusemix.train.fit` runs per batch, built from the
same public pieces: ``model_from_config(dims, config)``,
``build_optimizer(model, config)``, ``augmentation_from_config(config,
generator)``; then ``loss = model(fusemix(batch))`` (under autocast with
``--amp bf16``), ``zero_grad``, ``backward``, AdamW ``step``. ``config`` is
``TrainConfig()``: the paper's recipe (4-block fusion adapters, expansion 4,
dropout 0.6, 512-d shared space, FuseMix in halves so the model sees ``B/2``
rows, InfoNCE with a learnable temperature). Latents are the paper's: image
1536-d, text 1024-d.

Part ``step`` (per batch size ``B``):

- analytic FLOPs of the step: every ``nn.Linear`` costs ``2 * rows * in *
  out`` forward and twice that backward (input and weight gradients), so
  ``3 * 2 * rows * sum(in * out)`` over the adapters, plus the ``B/2 x B/2``
  logits ``a @ b.T`` (``3 * 2 * rows^2 * 512``), with ``rows = B/2``. The
  count is checked against ``torch.utils.flop_counter.FlopCounterMode`` once
  per run;
- achieved FLOP/s = FLOPs / median step time, against the machine's GEMM
  peak measured in the same run: ``_common.gemm_flops`` picks the fastest
  square size, then that GEMM is timed round-robin with the step, each
  GEMM call lasting about as long as one timed step call, so both see the
  same machine load (on ``--amp bf16`` the GEMMs are bf16);
- where the time goes: one step under ``torch.profiler``, split into GEMM
  (``aten::mm`` / ``addmm`` / ``bmm``), LayerNorm, GELU, dropout, the
  FuseMix call, the AdamW step and the rest (elementwise ops of the loss,
  casts, autograd bookkeeping), as shares of the profiled step.

Part ``e2e``: the same step fed by each loader for one epoch of
``--e2e-steps`` batches of ``--e2e-batch`` pairs: the authors' pipeline
(per-sample dict, ``Dataset``, ``default_collate``, ``DataLoader`` with 0 and
``N`` workers; see ``_authors_pipeline.py``) against fusemix's
``LatentBatcher`` with preloaded float16 latents (device-resident on CUDA),
round-robin. Then :func:`fusemix.train.fit` itself on the same data, its
per-step time taken from its callbacks (not round-robin; it runs after).
On a CPU the step dominates and the loaders barely matter; on a GPU the
step takes milliseconds and the loader decides.

Usage::

    python benchmarks/bench_training.py [--quick] [--device cpu|cuda] [--threads N] [--amp off|bf16]
                                        [--parts step,e2e] [--batch-sizes 1024,4096] [--e2e-batch B]
                                        [--e2e-steps K] [--workers N] [--repeats R]
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch
from _authors_pipeline import FeaturePairDataset, authors_batches, authors_loader, default_workers, per_sample_dict
from _common import (
    Timing,
    add_common_arguments,
    apply_threads,
    fmt_ratio,
    fmt_seconds,
    gemm_flops,
    markdown_table,
    print_footer,
    print_header,
    resolve_device,
    synchronize,
    time_interleaved,
)
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fusemix.data import LatentBatcher, PairedLatents
from fusemix.train import (
    TrainConfig,
    TrainState,
    augmentation_from_config,
    build_optimizer,
    fit,
    model_from_config,
)

PAPER_DIMS = {"image": 1536, "text": 1024}
QUICK_DIMS = {"image": 192, "text": 128}
GEMM_SIZES = {"cpu": (512, 1024, 2048, 4096), "cuda": (2048, 4096, 8192)}
QUICK_GEMM_SIZES = (128, 256)
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}
GEMM_CALL_MAX_SECONDS = 20.0


@dataclass(frozen=True)
class Setup:
    """What every part shares: device, shapes, config and precision."""

    device: torch.device
    dims: dict[str, int]
    config: TrainConfig
    amp: torch.dtype | None

    @property
    def gemm_dtype(self) -> torch.dtype:
        return self.amp if self.amp is not None else torch.float32


# --------------------------------------------------------------------------- the step


class Trainer:
    """Model, optimizer and FuseMix of a ``TrainConfig``, and the step :func:`fusemix.train.fit` runs."""

    def __init__(self, setup: Setup, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.setup = setup
        self.model = model_from_config(setup.dims, setup.config).to(setup.device).train()
        self.optimizer = build_optimizer(self.model, setup.config)
        self.augment = augmentation_from_config(setup.config, torch.Generator().manual_seed(seed + 1))

    def step(self, batch: Mapping[str, Tensor], stamps: list[float] | None = None) -> None:
        """One training step; with ``stamps``, append synchronised clock readings at its start and after each phase.

        Phases: FuseMix, forward + loss, zero_grad + backward, AdamW step (so 5 stamps).
        """
        device, amp = self.setup.device, self.setup.amp

        def stamp() -> None:
            if stamps is not None:
                synchronize(device)
                stamps.append(time.perf_counter())

        stamp()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            mixed = self.augment(batch) if self.augment is not None else batch
            stamp()
            loss = self.model(mixed)
        stamp()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stamp()
        self.optimizer.step()
        stamp()


def linear_weight_elements(model: nn.Module) -> int:
    """``sum(in * out)`` over the model's ``nn.Linear`` layers."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def step_flops(model: nn.Module, shared_dim: int, rows: int, modality_pairs: int = 1) -> float:
    """Analytic GEMM FLOPs of one training step on ``rows`` rows (forward + backward, see the module docstring)."""
    linear = 3 * 2 * rows * linear_weight_elements(model)
    logits = modality_pairs * 3 * 2 * rows * rows * shared_dim
    return float(linear + logits)


def counted_flops(trainer: Trainer, batch: Mapping[str, Tensor]) -> float:
    """FLOPs of one step as ``FlopCounterMode`` counts them (matmuls only, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        trainer.step(batch)
    return float(counter.get_total_flops())


def random_batch(setup: Setup, batch_size: int, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch_size, d, generator=gen).to(setup.device) for m, d in setup.dims.items()}


# --------------------------------------------------------------------------- part 1: FLOP/s and GEMM share

GEMM_OPS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|addmv|_addmm_activation|mkldnn_linear|_scaled_mm)$")
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GEMM (mm, addmm, bmm)", GEMM_OPS),
    ("LayerNorm (forward + backward)", re.compile(r"^aten::native_layer_norm")),
    ("GELU (forward + backward)", re.compile(r"^aten::gelu")),
    ("dropout (forward + backward)", re.compile(r"^aten::(native_dropout|bernoulli)")),
)


def _self_seconds(event: object, device: torch.device) -> float:
    """An averaged profiler event's self time in seconds: kernel time on CUDA, operator time on the CPU."""
    if device.type == "cuda":
        micros = getattr(event, "self_device_time_total", None)
        if micros is None:
            micros = getattr(event, "self_cuda_time_total", 0.0)
    else:
        micros = event.self_cpu_time_total  # type: ignore[attr-defined]
    return float(micros) / 1e6


def step_breakdown(trainer: Trainer, batch: Mapping[str, Tensor]) -> tuple[float, list[tuple[str, float]]]:
    """Profile one step: its wall seconds and ``(component, seconds)``.

    Operator categories come from ``torch.profiler`` (self times of the
    operators; on CUDA, of the kernels they launch); the FuseMix call and the
    AdamW step are timed as phases of the step (synchronised clock readings),
    and "everything else" is the wall time minus all of these.
    """
    device = trainer.setup.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trainer.step(batch)
    stamps: list[float] = []
    with profile(activities=activities) as prof:
        trainer.step(batch, stamps)
    wall = stamps[-1] - stamps[0]
    events = prof.key_averages()
    parts = [
        (name, sum(_self_seconds(e, device) for e in events if pattern.match(e.key))) for name, pattern in CATEGORIES
    ]
    parts += [("FuseMix call", stamps[1] - stamps[0]), ("AdamW step", stamps[4] - stamps[3])]
    parts.append(("everything else (loss, casts, autograd, ...)", max(0.0, wall - sum(s for _, s in parts))))
    return wall, parts


@dataclass(frozen=True)
class GemmReference:
    """The fastest square GEMM of this run, and calls of it to time against the step."""

    size: int
    best_flops: float
    dtype: torch.dtype
    device: torch.device

    def call(self, seconds: float) -> tuple[Callable[[], None], float]:
        """A call of back-to-back ``n x n`` matmuls lasting about ``seconds`` at the best rate, and its FLOPs."""
        per_mm = 2.0 * self.size**3
        calls = max(1, round(seconds * self.best_flops / per_mm))
        gen = torch.Generator().manual_seed(1)
        a = torch.randn(self.size, self.size, generator=gen, dtype=self.dtype).to(self.device)
        b = torch.randn(self.size, self.size, generator=gen, dtype=self.dtype).to(self.device)
        out = torch.empty(self.size, self.size, dtype=self.dtype, device=self.device)

        def run() -> None:
            for _ in range(calls):
                torch.mm(a, b, out=out)

        return run, calls * per_mm


def gemm_reference(setup: Setup, sizes: Iterable[int]) -> GemmReference:
    """Measure square GEMMs of ``sizes`` (``_common.gemm_flops``) and keep the fastest."""
    results = gemm_flops(setup.device, tuple(sizes), dtype=setup.gemm_dtype, repeats=3)
    best = max(results, key=lambda r: r.best_flops)
    return GemmReference(best.size, best.best_flops, setup.gemm_dtype, setup.device)


def steps_per_call(trainer: Trainer, batch: Mapping[str, Tensor], seconds: float = 0.3) -> tuple[int, float]:
    """Steps to time as one call so that it lasts at least about ``seconds`` (1 for slow steps, more on a GPU).

    Returns:
        ``(steps, estimated seconds of one call)``.

    """
    trainer.step(batch)
    stamps: list[float] = []
    trainer.step(batch, stamps)
    one = max(stamps[-1] - stamps[0], 1e-9)
    steps = max(1, round(seconds / one))
    return steps, steps * one


def run_step_part(setup: Setup, batch_sizes: tuple[int, ...], repeats: int, quick: bool) -> None:
    trainer = Trainer(setup)
    shared = setup.config.shared_dim
    sizes = QUICK_GEMM_SIZES if quick else GEMM_SIZES[setup.device.type]
    gemm = gemm_reference(setup, sizes)
    best_peak = gemm.best_flops
    print(
        f"GEMM peak of this run: {best_peak / 1e9:,.1f} GFLOP/s (best repeat; {setup.gemm_dtype} n={gemm.size}, "
        f"sizes tried {', '.join(map(str, sizes))}); timed again round-robin with each step below, each GEMM call "
        "lasting about as long as one timed step call, so that both sample the machine's load alike\n"
    )
    check_batch = random_batch(setup, batch_sizes[0], seed=0)
    analytic, counted = step_flops(trainer.model, shared, batch_sizes[0] // 2), counted_flops(trainer, check_batch)
    agree = "agree" if abs(analytic - counted) <= 1e-6 * counted else "DISAGREE"
    print(
        f"FLOP count check at B={batch_sizes[0]:,}: analytic {analytic:.6g}, FlopCounterMode {counted:.6g} ({agree})\n"
    )
    rows = []
    breakdown: tuple[int, float, list[tuple[str, float]]] | None = None
    for batch_size in batch_sizes:
        batch = random_batch(setup, batch_size, seed=batch_size)
        steps, call_seconds = steps_per_call(trainer, batch)
        gemm_call, gemm_call_flops = gemm.call(min(max(call_seconds, 0.3), GEMM_CALL_MAX_SECONDS))
        timings = time_interleaved(
            {"step": lambda batch=batch, steps=steps: [trainer.step(batch) for _ in range(steps)], "gemm": gemm_call},
            setup.device,
            repeats=repeats,
        )
        flops = step_flops(trainer.model, shared, batch_size // 2)
        step_s, gemm_s = timings["step"].median / steps, timings["gemm"].median
        achieved, peak = flops / step_s, gemm_call_flops / gemm_s
        rows.append(
            [
                f"{batch_size:,}",
                f"{batch_size // 2:,}",
                fmt_seconds(step_s),
                f"{flops / 1e9:,.4g}",
                f"{achieved / 1e9:,.1f}",
                f"{peak / 1e9:,.1f}",
                f"**{100 * achieved / peak:.0f}%**",
                f"{100 * achieved / max(best_peak, peak):.0f}%",
            ]
        )
        breakdown = (batch_size, *step_breakdown(trainer, batch))
    print(
        markdown_table(
            [
                "B",
                "rows after FuseMix",
                "step time",
                "GFLOP per step",
                "achieved GFLOP/s",
                "GEMM GFLOP/s (round-robin)",
                "% of GEMM peak",
                "% of best GEMM repeat",
            ],
            rows,
        )
    )
    print(
        "\n% of GEMM peak: achieved / the square GEMM's median rate, timed round-robin with the step (target >= 60% "
        "on the CPU); the last column uses the best GEMM repeat of the run instead (stricter)."
    )
    assert breakdown is not None
    batch_size, wall, parts = breakdown
    print(f"\nWhere one step's time goes (B={batch_size:,}, one profiled step of {fmt_seconds(wall)}):\n")
    print(
        markdown_table(
            ["component", "time", "share of the step"],
            [[name, fmt_seconds(s), f"{100 * s / wall:.1f}%"] for name, s in parts],
        )
    )
    gemm_share = parts[0][1] / wall
    print(f"\nNot GEMM: {100 * (1 - gemm_share):.1f}% of the profiled step.")


# --------------------------------------------------------------------------- part 2: loader + step


def epoch_of_steps(trainer: Trainer, batches: Callable[[], Iterator[Mapping[str, Tensor]]]) -> Callable[[], int]:
    """A call that runs one epoch: every batch of a fresh iterator through the step; returns the steps taken."""

    def run() -> int:
        steps = 0
        for batch in batches():
            trainer.step(batch)
            steps += 1
        return steps

    return run


def fit_step_seconds(setup: Setup, data: PairedLatents, batch_size: int, epochs: int) -> tuple[float, int]:
    """Mean seconds per step of :func:`fusemix.train.fit`, between its first and last callbacks."""
    stamps: list[float] = []

    def stamp(state: TrainState) -> None:
        synchronize(setup.device)
        stamps.append(time.perf_counter())

    config = replace(
        setup.config,
        epochs=epochs,
        batch_size=batch_size,
        device=str(setup.device),
        amp="off" if setup.amp is None else "bf16",
        preload=True,
        warmup_steps=1,
        eval_every=0,
        checkpoint_every=0,
        log_every=10**9,
    )
    fit(data, config, progress=False, callbacks=[stamp])
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), len(stamps)


def run_e2e_part(setup: Setup, batch_size: int, steps: int, workers: int, repeats: int) -> None:
    pairs = batch_size * steps
    gen = torch.Generator().manual_seed(2)
    latents = {m: torch.randn(pairs, d, generator=gen) for m, d in setup.dims.items()}
    half = {m: x.half().numpy() for m, x in latents.items()}
    dataset = FeaturePairDataset(per_sample_dict(latents["image"]), per_sample_dict(latents["text"]))
    trainer = Trainer(setup)
    batcher = LatentBatcher(PairedLatents(half), batch_size, device=setup.device, preload=True, seed=1)
    fns: dict[str, Callable[[], int]] = {}
    for n in sorted({0, workers}):
        loader = authors_loader(dataset, batch_size, n, setup.device)
        fns[f"authors: dict + DataLoader, num_workers={n}, + step"] = epoch_of_steps(
            trainer, lambda loader=loader: authors_batches(loader, setup.device)
        )
    fns["fusemix LatentBatcher (preloaded float16) + step"] = epoch_of_steps(trainer, lambda: iter(batcher))
    timings: dict[str, Timing] = time_interleaved(fns, setup.device, warmup=1, repeats=repeats)
    per_step = {name: t.median / steps for name, t in timings.items()}
    fit_epochs = 2
    fit_s, fit_steps = fit_step_seconds(setup, PairedLatents(half), batch_size, fit_epochs)
    base0 = per_step["authors: dict + DataLoader, num_workers=0, + step"]
    base_n = per_step[f"authors: dict + DataLoader, num_workers={workers}, + step"]
    best_base = min(base0, base_n)

    def row(name: str, s: float) -> list[str]:
        ratios = (base0 / s, base_n / s, best_base / s)
        return [name, fmt_seconds(s), f"{batch_size / s:,.0f}", *(fmt_ratio(r) for r in ratios)]

    rows = [row(name, s) for name, s in per_step.items()]
    rows.append(
        row(f"fusemix.train.fit ({fit_epochs} epochs, {fit_steps} steps; after the others, not round-robin)", fit_s)
    )
    print(
        f"\nLoader + step, B={batch_size:,} ({batch_size // 2:,} rows after FuseMix), one epoch = {steps} steps over "
        f"{pairs:,} pairs, round-robin, 1 warm-up round, median of {repeats}:\n"
    )
    print(
        markdown_table(
            [
                "pipeline",
                "time per step",
                "pairs/s",
                "speed-up vs num_workers=0",
                f"speed-up vs num_workers={workers}",
                "speed-up vs the faster authors' loader",
            ],
            rows,
        )
    )
    print(
        "\nTarget on a GPU: >= 5x the authors' pipeline end to end (read against the faster of its two settings, "
        "last column). On a CPU the step dominates and the loader barely shows; there the ratio is reported as "
        "measured, with no target."
    )


# --------------------------------------------------------------------------- main


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s.replace("_", "")) for s in text.split(","))
    except ValueError:
        raise SystemExit(f"--batch-sizes: expected comma-separated ints, got {text!r}") from None
    if not sizes or any(s < 4 or s % 2 for s in sizes):
        raise SystemExit(f"--batch-sizes: expected even ints >= 4 (FuseMix mixes halves), got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off", help="off: fp32 (paper); bf16 autocast")
    parser.add_argument("--parts", default="step,e2e", help="comma-separated: step, e2e (default both)")
    parser.add_argument("--batch-sizes", default=None, help="part step (default CPU 1024,4096; CUDA 4096,40960)")
    parser.add_argument("--e2e-batch", type=int, default=None, help="part e2e batch (default CPU 4096, CUDA 40960)")
    parser.add_argument("--e2e-steps", type=int, default=None, help="part e2e steps per epoch (default CPU 4, CUDA 10)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers N (default min(8, cores))")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; e2e on CPU 2; quick 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or not parts <= {"step", "e2e"}:
        raise SystemExit(f"--parts: expected a comma-separated subset of step,e2e, got {args.parts!r}")
    cuda = device.type == "cuda"
    if args.quick:
        dims, config = QUICK_DIMS, TrainConfig(shared_dim=64, depth=1)
        default_sizes, e2e_batch, e2e_steps, workers = "128", 128, 2, 2
    else:
        dims, config = PAPER_DIMS, TrainConfig()
        default_sizes = "4096,40960" if cuda else "1024,4096"
        e2e_batch, e2e_steps = (40_960, 10) if cuda else (4_096, 4)
        workers = default_workers()
    batch_sizes = parse_sizes(args.batch_sizes or default_sizes)
    e2e_batch = args.e2e_batch or e2e_batch
    e2e_steps = args.e2e_steps or e2e_steps
    workers = args.workers if args.workers is not None else workers
    if e2e_batch < 4 or e2e_batch % 2 or e2e_steps < 1 or workers < 0:
        raise SystemExit("--e2e-batch must be even and >= 4, --e2e-steps >= 1, --workers >= 0")
    repeats = args.repeats or (1 if args.quick else 3)
    setup = Setup(device, dict(dims), config, AMP_DTYPES[args.amp])
    params = sum(p.numel() for p in model_from_config(dims, config).parameters())

    print_header(
        "Training step: FLOP/s against the GEMM peak, and loader + step end to end",
        device,
        [
            f"model: model_from_config({dims}, TrainConfig({'shared_dim=64, depth=1' if args.quick else ''})): "
            f"depth {config.depth}, expansion {config.expansion}, {config.shared_dim}-d shared space, dropout "
            f"{config.dropout}, {params / 1e6:.1f} M parameters"
            + (" (quick: smoke-test shapes, not the paper's)" if args.quick else " (the paper's shapes)"),
            "step: FuseMix(alpha=1, halves) -> forward -> InfoNCE -> backward -> AdamW (build_optimizer), as fit() "
            f"runs it; precision: {'bf16 autocast' if setup.amp is not None else 'fp32 (the paper)'}",
            f"parts: {', '.join(p for p in ('step', 'e2e') if p in parts)}; "
            f"part step batches B: {', '.join(f'{b:,}' for b in batch_sizes)}"
            + (" (CPU default; the paper's 40,960 is a CUDA default)" if not cuda and not args.quick else "")
            + f"; part e2e: B={e2e_batch:,}, {e2e_steps} steps per epoch, DataLoader workers N = {workers}",
        ],
    )
    if "step" in parts:
        run_step_part(setup, batch_sizes, repeats, args.quick)
    if "e2e" in parts:
        e2e_repeats = args.repeats or (1 if args.quick else (3 if cuda else 2))
        run_e2e_part(setup, e2e_batch, e2e_steps, workers, e2e_repeats)
    print_footer(started)


if __name__ == "__main__":
    main()
