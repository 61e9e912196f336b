"""Retrieval evaluation: ``fusemix.retrieval_metrics`` against a LAVIS-style per-row ``argsort`` loop.

Sizes: COCO-5K (5,000 images x 25,000 captions, 5 captions per image, 512-d
L2-normalised embeddings) and 10x larger (50,000 x 250,000). Embeddings are
synthetic: random unit image vectors, and each caption is its image's vector
plus Gaussian noise, renormalised, so recall lands in a realistic middle
range rather than at chance.

The baseline reimplements the ranking of LAVIS's ``_report_metrics``
(``lavis/tasks/retrieval.py``): the full image-by-text score matrix as a
NumPy array (computed in torch, then ``.cpu().numpy()``, as LAVIS does), and
for every query row a full descending ``np.argsort`` followed by
``np.where(order == positive)`` for each positive; the text->image rows are
the rows of the transposed matrix. At 10x the full baseline would need a
46.6 GiB matrix and about half an hour on two cores, so it is timed on an
evenly spaced subset of queries and extrapolated linearly (its cost is
linear in the number of queries); such rows are labelled.

Timing: at COCO size the baseline and each fusemix chunk size run
round-robin (median of the rounds); at 10x the baseline's subset is timed
before and after the long fusemix run and the two estimates are averaged.
The machine's load is printed at the start and the end.

Correctness: on every scale where the full baseline runs, both methods are
also run once on float64 copies of the same embeddings and must give
identical ranks (and Recall@K equal up to float rounding of ``100 * c / n``);
the script exits with an error otherwise. In float64 the per-chunk and full
matmuls agree to ~1e-16, far below the gaps between scores, so ranking ties
cannot differ. The timed runs use float32; whether their Recall@K also
agreed is printed.

Memory (see ``_common.py``): on CPU, each method's peak is measured by one
extra call in a fresh process: the process RSS high-water mark during the
call minus RSS just before it, with glibc told to ``mmap`` (and unmap on
free) every allocation of 1 MiB or more, so buffers reused from earlier
work cannot hide. On CUDA, fusemix's peak is ``torch.cuda.max_memory_allocated``
during the call; the LAVIS loop's is still host RSS (its matrix lives in
NumPy). The "largest score block" column is analytic: the biggest block of
scores held at once.

Usage::

    python benchmarks/bench_retrieval.py [--quick] [--device cpu|cuda] [--sizes all|coco|10x]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    MIB,
    add_common_arguments,
    apply_threads,
    fmt_mib,
    fmt_ratio,
    fmt_seconds,
    markdown_table,
    peak_memory_in_subprocess,
    print_footer,
    print_header,
    report_peaks,
    resolve_device,
    return_large_frees_to_os,
    time_call,
    time_interleaved,
)

from fusemix import retrieval_metrics, retrieval_ranks
from fusemix.metrics import DEFAULT_CHUNK_ELEMENTS

CAPTIONS_PER_IMAGE = 5
DIM = 512
CAPTION_NOISE = 7.0
"""Norm of the noise added to an image's unit vector to make each caption.

It sets recall, not speed: 7.0 gives COCO-like numbers at 5K (i2t R@1 ~65, t2i R@1 ~33)."""


@dataclass(frozen=True)
class Scale:
    """One problem size, and how the baseline is run at that size."""

    name: str
    num_images: int
    baseline_queries: tuple[int, int] | None
    """``None``: run the whole baseline; else (image, text) queries to time and extrapolate from."""
    chunks: tuple[int | None, ...]
    """``chunk_size`` values for fusemix (``None`` = its default)."""
    repeats: int

    @property
    def num_texts(self) -> int:
        return self.num_images * CAPTIONS_PER_IMAGE


def scales(quick: bool, which: str) -> list[Scale]:
    """The problem sizes to run: ``which`` is ``"all"``, ``"coco"`` (the first) or ``"10x"`` (the second)."""
    if quick:
        chosen = [
            Scale("300 images (quick)", 300, None, (64, None), repeats=1),
            Scale("1,500 images (quick)", 1_500, (30, 150), (None,), repeats=1),
        ]
    else:
        chosen = [
            Scale("COCO-5K", 5_000, None, (256, 1024, None), repeats=3),
            Scale("10x COCO-5K", 50_000, (200, 1_000), (None,), repeats=1),
        ]
    return {"all": chosen, "coco": chosen[:1], "10x": chosen[1:]}[which]


# --------------------------------------------------------------------------- data


def make_embeddings(num_images: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Unit image and caption embeddings with 5 captions per image.

    Returns:
        ``(image_emb, text_emb, text_to_image)`` of shapes ``(I, 512)``,
        ``(5 I, 512)`` and ``(5 I,)``; caption ``t`` belongs to image
        ``t // 5``.

    """
    gen = torch.Generator().manual_seed(seed)
    image_emb = F.normalize(torch.randn(num_images, DIM, generator=gen), dim=1)
    text_to_image = np.repeat(np.arange(num_images), CAPTIONS_PER_IMAGE)
    noise = torch.randn(num_images * CAPTIONS_PER_IMAGE, DIM, generator=gen) * (CAPTION_NOISE / DIM**0.5)
    text_emb = F.normalize(image_emb[torch.from_numpy(text_to_image)] + noise, dim=1)
    return image_emb, text_emb, text_to_image


def captions_of_images(text_to_image: np.ndarray, num_images: int) -> list[list[int]]:
    """LAVIS's ``img2txt``: for each image, the indices of its captions."""
    img2txt: list[list[int]] = [[] for _ in range(num_images)]
    for t, i in enumerate(text_to_image.tolist()):
        img2txt[i].append(t)
    return img2txt


# --------------------------------------------------------------------------- LAVIS-style baseline


def lavis_i2t_ranks(scores: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """Per image row: argsort all texts descending, rank = best position of any of its captions."""
    ranks = np.zeros(scores.shape[0])
    for q, row in enumerate(scores):
        order = np.argsort(row)[::-1]
        best = 1e20
        for t in positives[q]:
            position = np.where(order == t)[0][0]
            best = min(best, position)
        ranks[q] = best
    return ranks


def lavis_t2i_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Per text row: argsort all images descending, rank = position of its image."""
    ranks = np.zeros(scores.shape[0])
    for q, row in enumerate(scores):
        order = np.argsort(row)[::-1]
        ranks[q] = np.where(order == positives[q])[0][0]
    return ranks


def lavis_recalls(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """Recall@1/5/10 and means as LAVIS computes them, under fusemix's key names."""

    def recall(ranks: np.ndarray, k: int) -> float:
        return 100.0 * len(np.where(ranks < k)[0]) / len(ranks)

    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        values = [recall(ranks, k) for k in (1, 5, 10)]
        out.update({f"{direction}_R@{k}": v for k, v in zip((1, 5, 10), values)})
        out[f"{direction}_mean"] = sum(values) / 3
    out["mean"] = (out["i2t_mean"] + out["t2i_mean"]) / 2
    return out


def lavis_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, img2txt: Sequence[Sequence[int]], txt2img: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The whole baseline: full score matrix in NumPy, then both per-row loops."""
    scores = (image_emb @ text_emb.T).cpu().numpy()
    return lavis_i2t_ranks(scores, img2txt), lavis_t2i_ranks(scores.T, txt2img)


def lavis_metrics(
    image_emb: torch.Tensor, text_emb: torch.Tensor, img2txt: Sequence[Sequence[int]], txt2img: np.ndarray
) -> dict[str, float]:
    return lavis_recalls(*lavis_ranks(image_emb, text_emb, img2txt, txt2img))


def lavis_subset_seconds(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    img2txt: Sequence[Sequence[int]],
    txt2img: np.ndarray,
    queries: tuple[int, int],
    device: torch.device,
    repeats: int,
) -> float:
    """Baseline time for all queries, extrapolated from an evenly spaced subset of each direction.

    Each direction's time covers computing the subset's score rows (the
    matching slice of LAVIS's full matmul) and its argsort loop; both grow
    linearly with the number of queries.
    """
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    image_q = np.linspace(0, num_images - 1, queries[0]).astype(np.int64)
    text_q = np.linspace(0, num_texts - 1, queries[1]).astype(np.int64)
    image_positives = [img2txt[q] for q in image_q]
    text_positives = txt2img[text_q]
    image_rows, text_rows = torch.from_numpy(image_q).to(device), torch.from_numpy(text_q).to(device)

    def i2t() -> None:
        lavis_i2t_ranks((image_emb[image_rows] @ text_emb.T).cpu().numpy(), image_positives)

    def t2i() -> None:
        lavis_t2i_ranks((text_emb[text_rows] @ image_emb.T).cpu().numpy(), text_positives)

    i2t_s = time_call(i2t, device, warmup=0, repeats=repeats).median
    t2i_s = time_call(t2i, device, warmup=0, repeats=repeats).median
    return i2t_s * num_images / queries[0] + t2i_s * num_texts / queries[1]


# --------------------------------------------------------------------------- checks


def check_identical(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: np.ndarray, img2txt: list[list[int]]
) -> str:
    """Both methods on float64 copies must give the same ranks; raise ``AssertionError`` if not."""
    img64, txt64 = image_emb.double(), text_emb.double()
    ours_i2t, ours_t2i = retrieval_ranks(img64, txt64, text_to_image)
    ref_i2t, ref_t2i = lavis_ranks(img64, txt64, img2txt, text_to_image)
    if not (np.array_equal(ours_i2t.cpu().numpy(), ref_i2t) and np.array_equal(ours_t2i.cpu().numpy(), ref_t2i)):
        bad = int((ours_i2t.cpu().numpy() != ref_i2t).sum() + (ours_t2i.cpu().numpy() != ref_t2i).sum())
        raise AssertionError(f"float64 ranks differ between fusemix and the LAVIS loop for {bad} queries")
    ours = retrieval_metrics(img64, txt64, text_to_image)
    ref = lavis_recalls(ref_i2t, ref_t2i)
    worst = max_abs_difference(ours, ref)
    if worst > 1e-9:
        raise AssertionError(f"float64 Recall@K differs by {worst} between fusemix and the LAVIS loop")
    return (
        f"float64 check: identical ranks for all {len(ours_i2t):,} image and {len(ours_t2i):,} text queries; "
        f"Recall@K equal (max |diff| {worst:.1e})"
    )


def max_abs_difference(a: dict[str, float], b: dict[str, float]) -> float:
    if a.keys() != b.keys():
        raise AssertionError(f"metric keys differ: {sorted(a)} vs {sorted(b)}")
    return max(abs(a[k] - b[k]) for k in a)


def format_recalls(metrics: dict[str, float]) -> str:
    keys = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")
    return ", ".join(f"{k} {metrics[k]:.2f}" for k in keys)


# --------------------------------------------------------------------------- benchmark


def chunk_rows(chunk: int | None, num_queries: int, num_candidates: int) -> int:
    """Query rows fusemix scores at once against ``num_candidates`` (its default when ``chunk`` is None)."""
    rows = chunk if chunk is not None else max(1, DEFAULT_CHUNK_ELEMENTS // num_candidates)
    return min(rows, num_queries)


def fusemix_call(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: np.ndarray, chunk: int | None
) -> Callable[[], dict[str, float]]:
    return lambda: retrieval_metrics(image_emb, text_emb, text_to_image, chunk_size=chunk)


def lavis_call(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: np.ndarray
) -> Callable[[], dict[str, float]]:
    img2txt = captions_of_images(text_to_image, image_emb.shape[0])
    return lambda: lavis_metrics(image_emb, text_emb, img2txt, text_to_image)


def probe_argv(scale: Scale, device: torch.device) -> list[str]:
    """Command line that makes this script measure the peak memory of every call of ``scale`` in a fresh process."""
    chunks = ",".join("default" if c is None else str(c) for c in scale.chunks)
    argv = [__file__, "--probe-images", str(scale.num_images), "--probe-chunks", chunks]
    argv += ["--device", device.type, "--threads", str(torch.get_num_threads())]
    return argv + (["--probe-lavis"] if scale.baseline_queries is None else [])


def run_probe(args: argparse.Namespace) -> None:
    """Child side of :func:`probe_argv`: set glibc up, build the inputs, measure each call once, print JSON."""
    return_large_frees_to_os()
    device = resolve_device(args.device)
    image_emb, text_emb, text_to_image = make_embeddings(args.probe_images)
    image_emb, text_emb = image_emb.to(device), text_emb.to(device)
    calls: dict[str, tuple[Callable[[], object], torch.device]] = {}
    if args.probe_lavis:
        calls["lavis"] = (lavis_call(image_emb, text_emb, text_to_image), torch.device("cpu"))
    for text in args.probe_chunks.split(","):
        chunk = None if text == "default" else int(text)
        calls[f"fusemix:{text}"] = (fusemix_call(image_emb, text_emb, text_to_image, chunk), device)
    report_peaks(calls)


def log(message: str) -> None:
    """Progress on stderr, so long runs show where they are without touching the report on stdout."""
    print(f"[bench_retrieval] {message}", file=sys.stderr, flush=True)


def chunk_key(chunk: int | None) -> str:
    return "fusemix:" + ("default" if chunk is None else str(chunk))


def run_scale(scale: Scale, device: torch.device) -> tuple[list[list[object]], list[str]]:
    """Measure one scale; return its table rows and notes.

    With the full baseline, the baseline and every chunk size are timed
    round-robin. With the extrapolated baseline, its subset is timed before
    and after the fusemix runs and the two estimates are averaged, so a
    change of machine load during the long fusemix run affects both sides.
    """
    image_emb, text_emb, text_to_image = make_embeddings(scale.num_images)
    image_emb, text_emb = image_emb.to(device), text_emb.to(device)
    img2txt = captions_of_images(text_to_image, scale.num_images)
    n_img, n_txt = scale.num_images, scale.num_texts
    itemsize = image_emb.element_size()
    notes: list[str] = []
    results: dict[str, dict[str, float]] = {}

    def recorded(key: str, call: Callable[[], dict[str, float]]) -> Callable[[], None]:
        return lambda: results.__setitem__(key, call())

    calls = {
        chunk_key(c): recorded(chunk_key(c), fusemix_call(image_emb, text_emb, text_to_image, c)) for c in scale.chunks
    }
    warmup = 1 if scale.repeats > 1 else 0
    if scale.baseline_queries is None:
        log(f"{scale.name}: float64 check")
        notes.append(f"{scale.name}: {check_identical(image_emb, text_emb, text_to_image, img2txt)}")
        log(f"{scale.name}: timing the LAVIS loop and fusemix round-robin ({warmup} + {scale.repeats} rounds)")
        calls = {"lavis": recorded("lavis", lavis_call(image_emb, text_emb, text_to_image)), **calls}
        timings = {
            k: t.median for k, t in time_interleaved(calls, device, warmup=warmup, repeats=scale.repeats).items()
        }
        base_s = timings["lavis"]
        base_time, base_label = fmt_seconds(base_s), "LAVIS per-row argsort loop"
    else:
        n_i, n_t = scale.baseline_queries
        subset = (image_emb, text_emb, img2txt, text_to_image, (n_i, n_t), device)
        log(f"{scale.name}: timing the LAVIS loop on {n_i:,} + {n_t:,} queries")
        before = lavis_subset_seconds(*subset, repeats=3)
        timings = {}
        for key, call in calls.items():
            log(f"{scale.name}: timing {key} ({warmup} + {scale.repeats} runs)")
            timings[key] = time_call(call, device, warmup=warmup, repeats=scale.repeats).median
        log(f"{scale.name}: timing the LAVIS loop on {n_i:,} + {n_t:,} queries again")
        after = lavis_subset_seconds(*subset, repeats=3)
        base_s = (before + after) / 2
        notes.append(
            f"{scale.name}: LAVIS loop extrapolated to all queries: {fmt_seconds(before)} before and "
            f"{fmt_seconds(after)} after the fusemix runs; the table uses their mean"
        )
        base_time = "~" + fmt_seconds(base_s)
        base_label = f"LAVIS per-row argsort loop, extrapolated from {n_i:,} image + {n_t:,} text queries"

    log(f"{scale.name}: peak memory, in a fresh process")
    peaks = peak_memory_in_subprocess(probe_argv(scale, device))
    base_peak = fmt_mib(peaks["lavis"][0]) if "lavis" in peaks else "not run"
    rows: list[list[object]] = [
        [scale.name, base_label, "all", base_time, "1x", base_peak, fmt_mib(n_img * n_txt * itemsize)]
    ]
    for chunk in scale.chunks:
        rows_i2t, rows_t2i = chunk_rows(chunk, n_img, n_txt), chunk_rows(chunk, n_txt, n_img)
        ours_s = timings[chunk_key(chunk)]
        rows.append(
            [
                scale.name,
                "fusemix.retrieval_metrics, chunk_size=" + ("default" if chunk is None else f"{chunk:,}"),
                f"{rows_i2t:,} / {rows_t2i:,}",
                fmt_seconds(ours_s),
                fmt_ratio(base_s / ours_s),
                fmt_mib(peaks[chunk_key(chunk)][0]),
                fmt_mib(max(rows_i2t * n_txt, rows_t2i * n_img) * itemsize),
            ]
        )

    if "lavis" in results:
        diff = max_abs_difference(results[chunk_key(scale.chunks[-1])], results["lavis"])
        verdict = (
            f"equal (max |diff| {diff:.1e}, float rounding of 100 * count / n)"
            if diff <= 1e-9
            else f"differ by up to {diff:.3g} points (float32 rounding can reorder near-ties)"
        )
        notes.append(f"{scale.name}: float32 timed runs' Recall@K {verdict}")
    metrics = format_recalls(results[chunk_key(scale.chunks[-1])])
    notes.append(f"{scale.name}: fusemix recall (float32): {metrics}")
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--sizes", choices=("all", "coco", "10x"), default="all", help="COCO-5K size, 10x larger, or both (default)"
    )
    parser.add_argument("--probe-images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-chunks", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--probe-lavis", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    apply_threads(args.threads)
    if args.probe_images is not None:
        run_probe(args)
        return
    device = resolve_device(args.device)

    chosen = scales(args.quick, args.sizes)
    print_header(
        "Retrieval evaluation: fusemix.retrieval_metrics vs the LAVIS per-row argsort loop",
        device,
        [
            f"{DIM}-d unit float32 embeddings, {CAPTIONS_PER_IMAGE} captions per image; sizes: "
            + "; ".join(f"{s.name} = {s.num_images:,} x {s.num_texts:,}" for s in chosen),
            "time: median of "
            + ", ".join(f"{s.repeats} ({s.name})" for s in chosen)
            + " repeats, from embeddings to Recall@1/5/10 in both directions",
            "peak memory: one extra call of each, in a fresh process per size; "
            + ("fusemix: torch.cuda.max_memory_allocated; LAVIS loop: " if device.type == "cuda" else "")
            + "process RSS high-water mark during the call minus RSS before it, glibc mmap threshold fixed at 1 MiB",
            "largest score block: analytic, query rows x candidates x 4 bytes (float32)",
        ],
    )
    all_rows: list[list[object]] = []
    all_notes: list[str] = []
    for scale in chosen:
        rows, notes = run_scale(scale, device)
        all_rows += rows
        all_notes += notes
    headers = [
        "size",
        "method",
        "query rows per chunk (i2t / t2i)",
        "time",
        "speed-up vs LAVIS",
        "peak memory MiB (measured)",
        "largest score block MiB (analytic)",
    ]
    print(markdown_table(headers, all_rows))
    print()
    for note in all_notes:
        print(f"- {note}")
    print(f"\n(1 MiB = {MIB:,} bytes)")
    print_footer(started)


if __name__ == "__main__":
    main()
