"""Shared helpers of the benchmarks: machine description, timing, peak memory, tables, GEMM peak.

Nothing in the ``fusemix`` package imports this module; the benchmark scripts
import it as a sibling (``python benchmarks/bench_x.py`` puts ``benchmarks/``
on ``sys.path``).

Timing: ``time.perf_counter`` around each call, warm-up calls first, median
of several repeats; on CUDA every measured call is bracketed by
``torch.cuda.synchronize``.

Peak memory of one call (:class:`PeakMemory`):

- CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before
  the call (tensors made by PyTorch's caching allocator only).
- CPU, Linux: the kernel's exact resident-set high-water mark. Writing ``5``
  to ``/proc/self/clear_refs`` resets ``VmHWM``; the peak is ``VmHWM`` after
  the call minus ``VmRSS`` before it. This counts every allocation (torch,
  NumPy, Python) that was touched. Memory that the C allocator keeps after a
  free and hands out again does not show up as new RSS, so CPU peaks are
  taken in a fresh process (:func:`peak_memory_in_subprocess`) that first
  calls :func:`return_large_frees_to_os`: glibc then serves every
  allocation of 1 MiB or more with ``mmap`` and unmaps it on free. That
  setting slows code that allocates big buffers in a loop (each one
  page-faults anew), so timings are taken in the parent, with glibc's
  defaults.
- CPU without ``clear_refs``: a thread samples ``/proc/self/statm`` every
  millisecond (misses spikes shorter than that).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fusemix import tables

MIB = 2**20


# --------------------------------------------------------------------------- command line and machine


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--quick``, ``--device`` and ``--threads`` to a benchmark's parser."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test; numbers mean little")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the torch work runs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count when ``--threads`` was given."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads: expected an int >= 1, got {threads}")
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, or exit with a clear message when CUDA is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: 'cuda' was requested but torch.cuda.is_available() is False")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return None


def machine_lines(device: torch.device) -> list[str]:
    """One line per fact about the machine and the software that ran the benchmark."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _total_memory_gib()
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable by this process)",
        f"RAM: {mem:.1f} GiB" if mem is not None else "RAM: unknown",
        f"Load average (1/5/15 min) at start: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
        f"numpy {np.__version__}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}, "
            f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
        )
    else:
        lines.append("GPU: not used (--device cpu)")
    return lines


def print_header(title: str, device: torch.device, notes: Sequence[str] = ()) -> None:
    """Print the benchmark's title, the machine description and any notes."""
    print(f"# {title}\n")
    for line in machine_lines(device):
        print(f"- {line}")
    for note in notes:
        print(f"- {note}")
    print(flush=True)


def print_footer(started: float) -> None:
    """Print the wall time since ``started`` (a ``time.perf_counter`` value) and the load average now."""
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nWall time {time.perf_counter() - started:,.0f} s; load average (1/5/15 min) at end: {load}")


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the measured repeats of one call."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn`` (synchronised before and after on CUDA)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeats: int = 3) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed."""
    for _ in range(warmup):
        fn()
    return Timing(tuple(time_once(fn, device) for _ in range(repeats)))


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], device: torch.device, *, warmup: int = 1, repeats: int = 3
) -> dict[str, Timing]:
    """Time several calls round-robin (A B C A B C ...) so a change in machine load hits them all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return {name: Timing(tuple(t)) for name, t in times.items()}


# --------------------------------------------------------------------------- memory


def return_large_frees_to_os() -> bool:
    """Make glibc ``mmap`` every allocation of >= 1 MiB and unmap it on free.

    Without this, glibc raises its mmap threshold up to 32 MiB after the first
    large free and keeps later buffers of that size in its heap, where a
    second call reuses them without new RSS. Returns ``False`` (and changes
    nothing) where glibc's ``mallopt`` is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, MIB)) and bool(libc.mallopt(m_trim_threshold, MIB))


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status: no {field} line")


def _reset_hwm() -> bool:
    """Reset the process's RSS high-water mark; ``False`` where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


def _statm_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager: peak memory added while the block runs, in bytes (see the module docstring).

    Attributes after the block: ``peak_bytes`` (``None`` where nothing could
    measure it) and ``method`` (a short description of what was measured).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self.method = "unavailable"
        self._baseline = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_hwm():
            self._baseline = _status_kib("VmRSS") * 1024
            self.method = "process RSS high-water mark (VmHWM)"
        elif os.path.exists("/proc/self/statm"):
            self._baseline = self._sampled_peak = _statm_rss_bytes()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
            self.method = "process RSS sampled every 1 ms"
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled_peak = max(self._sampled_peak, _statm_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self.method.startswith("process RSS high"):
            self.peak_bytes = _status_kib("VmHWM") * 1024 - self._baseline
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampled_peak = max(self._sampled_peak, _statm_rss_bytes())
            self.peak_bytes = self._sampled_peak - self._baseline


def peak_memory_in_subprocess(argv: Sequence[str]) -> dict[str, tuple[int | None, str]]:
    """Run ``python *argv`` in a fresh interpreter and read the peak memory of each call it measured.

    The child must call :func:`return_large_frees_to_os` before allocating
    anything and end with :func:`report_peaks`. In a fresh process so set up,
    no freed-but-resident buffer from earlier work can be reused unseen by a
    measured call (every block of 1 MiB or more goes back to the OS on
    free), so the child can measure several calls one after another; and
    its malloc setting does not slow the parent's timings.

    Returns:
        Call name to ``(peak_bytes, method)``.

    """
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {list(argv)} failed:\n{result.stdout}\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {name: (entry["peak_bytes"], entry["method"]) for name, entry in report.items()}


def report_peaks(calls: Mapping[str, tuple[Callable[[], object], torch.device]]) -> None:
    """Run each call once under :class:`PeakMemory` (watching its device) and print one JSON line of the peaks."""
    report = {}
    for name, (fn, device) in calls.items():
        gc.collect()
        with PeakMemory(device) as mem:
            fn()
        report[name] = {"peak_bytes": mem.peak_bytes, "method": mem.method}
    print(json.dumps(report))


# --------------------------------------------------------------------------- formatting


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned (:func:`fusemix.tables.markdown_table`)."""
    return tables.markdown_table(headers, rows, align_numbers=True)


def fmt_seconds(seconds: float) -> str:
    """Seconds in ms or s, three significant digits (whole seconds from 100 s)."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:,.0f} s"


def fmt_mib(num_bytes: float | None) -> str:
    """Bytes as MiB with one decimal (``n/a`` for ``None``)."""
    return "n/a" if num_bytes is None else f"{num_bytes / MIB:,.1f}"


def fmt_ratio(value: float) -> str:
    """A ratio such as ``123x`` or ``1.5x``."""
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


# --------------------------------------------------------------------------- GEMM peak


@dataclass(frozen=True)
class GemmResult:
    """Achieved FLOP/s of ``n x n @ n x n`` matmuls."""

    size: int
    calls_per_repeat: int
    timing: Timing

    @property
    def flops_per_call(self) -> float:
        return 2.0 * self.size**3

    @property
    def best_flops(self) -> float:
        return self.flops_per_call * self.calls_per_repeat / self.timing.best

    @property
    def median_flops(self) -> float:
        return self.flops_per_call * self.calls_per_repeat / self.timing.median


def gemm_flops(
    device: torch.device,
    sizes: Sequence[int] = (512, 1024, 2048, 4096),
    *,
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    min_repeat_seconds: float = 0.05,
) -> list[GemmResult]:
    """Measure square-matmul throughput at each size.

    Each repeat runs as many back-to-back matmuls (into a preallocated output)
    as take about ``min_repeat_seconds``, so small sizes are not dominated by
    timer and launch overhead.

    Args:
        device: Where the matmuls run.
        sizes: Matrix sizes ``n``.
        dtype: Element type (the benchmarks use float32).
        repeats: Timed repeats per size; the best gives the peak.
        min_repeat_seconds: Target duration of one repeat.

    Returns:
        One :class:`GemmResult` per size.

    """
    gen = torch.Generator().manual_seed(0)
    results = []
    for n in sizes:
        a = torch.randn(n, n, generator=gen, dtype=dtype).to(device)
        b = torch.randn(n, n, generator=gen, dtype=dtype).to(device)
        out = torch.empty(n, n, dtype=dtype, device=device)
        one = time_once(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), device)  # also the warm-up
        calls = max(1, math.ceil(min_repeat_seconds / max(one, 1e-9)))

        def run(a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out, calls: int = calls) -> None:
            for _ in range(calls):
                torch.mm(a, b, out=out)

        results.append(GemmResult(n, calls, time_call(run, device, warmup=1, repeats=repeats)))
        del a, b, out
    return results


def gemm_peak_flops(device: torch.device, sizes: Sequence[int] = (512, 1024, 2048, 4096), **kwargs: object) -> float:
    """The machine's achieved fp32 GEMM FLOP/s: the best over ``sizes`` and repeats of :func:`gemm_flops`."""
    return max(r.best_flops for r in gemm_flops(device, sizes, **kwargs))  # type: ignore[arg-type]
