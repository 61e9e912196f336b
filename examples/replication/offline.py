"""The default replication: FuseMix on OpenMoji drawings and their names, offline, on a CPU.

The paper's recipe, scaled to what runs on a laptop with no dataset and no GPU:

- **Data**: 1,884 OpenMoji drawings paired with their CLDR short names
  (:mod:`replication.openmoji`), a fixed seeded split into 500 held-out test
  pairs, 284 validation pairs and 1,100 training pairs. Test pairs are
  scored once per run, at the end; nothing is chosen on them.
- **Frozen unimodal encoders**, pretrained on unimodal data as in the paper:
  EfficientNet-Lite0 (ImageNet) for images and all-MiniLM-L6-v2 for text.
  Latents are extracted once with :func:`fusemix.extract.extract_latents`
  into a cache and reused by later runs.
- **Adapters** trained with :func:`fusemix.train.fit`, one per method, each
  at several training-set sizes and seeds:

  =========================  =================================================
  ``none``                   no augmentation
  ``fusemix``                FuseMix (shared lambda and pairing)
  ``cca``                    regularised CCA fitted in closed form
                             (training-free linear baseline)
  ``cca+fusemix+structure``  FuseMix from a CCA warm start with the
                             structure-preserving term
  ``noise``                  Gaussian noise in latent space (``--grid full``)
  ``fusemix-independent``    FuseMix with an independent lambda per modality,
                             which breaks the positive pairs (``--grid full``)
  ``cca+fusemix``            FuseMix from a CCA warm start (``--grid full``)
  ``fusemix+structure``      FuseMix with the structure-preserving term
                             (``--grid full``)
  =========================  =================================================

- **How long each run trains** (the same rule for every trained method, fixed
  before any test score was looked at; see :data:`BUDGET_RULE`): full batches
  (the whole training subset in every step), at most :data:`MAX_STEPS`
  steps; every :data:`EVAL_INTERVAL` steps the run scores mean recall on the
  validation pairs and keeps the best weights; it stops after
  :data:`PATIENCE` evaluations without improvement. The test split scores
  the kept weights, and the tables say at which step they were kept.

Runs go to a pool of worker processes with one thread each: the adapters
are small, and several single-threaded runs use a CPU far better than one
run on many threads (which, on a loaded machine, can be tens of times slower).

The result is a table of image→text and text→image Recall@1/5/10 on the
test split (mean ± std over seeds), mean recall against training-set size,
the per-seed difference of every method from no augmentation, the steps each
method trained, ``results.json``, ``recall_vs_size.png`` and
``convergence.png`` (validation mean recall against step at the largest size).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusemix.aligners import CCAAligner
from fusemix.data import PairedLatents
from fusemix.evaluation import Embedder, evaluate_retrieval
from fusemix.train import TrainConfig, fit

from . import report, zeroshot
from .efficientnet import efficientnet_identity
from .openmoji import split_pairs
from .openmoji_latents import extract_openmoji_latents

STRUCTURE_WEIGHT = 10.0
"""Weight of the structure term in the ``+structure`` methods (1 made no difference in a pilot on this data)."""

VAL_SIZE = 284
"""Validation pairs carved once (seeded) out of the 1,384 non-test pairs, leaving 1,100 to train on."""

MAX_STEPS = 1000
"""Most optimizer steps of a trained run; also the length of its cosine learning-rate schedule."""

EVAL_INTERVAL = 10
"""Steps between two scores of validation mean recall."""

PATIENCE = 10
"""Evaluations without a new best validation mean recall after which a run stops."""

BUDGET_RULE = (
    "every trained method: full batches; validation mean recall every {eval_interval} steps on {val} pairs "
    "carved out of the training pairs; the best weights are kept; stop after {patience} evaluations without "
    "improvement or at {max_steps} steps; the test split scores the kept weights once"
)
"""The rule that decides how long every trained method trains, as the report prints it."""

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

GRIDS: dict[str, tuple[str, ...]] = {
    "default": ("none", "fusemix", "cca", "cca+fusemix+structure"),
    "full": tuple(METHODS),
}
"""Methods of ``--grid``: ``default`` keeps a rerun under 3 minutes on 2 CPU cores with five seeds; ``full`` adds
the paper's other ablations (latent noise, an independent lambda per modality) and the single combinations."""

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

ADAPTERS: dict[str, dict[str, Any]] = {
    "small": {"depth": 1, "expansion": 4, "hidden_dim": 128, "shared_dim": 128, "dropout": 0.6},
    "paper": {"depth": 4, "expansion": 4, "hidden_dim": None, "shared_dim": 512, "dropout": 0.6},
}
"""Adapter shapes of ``--adapter``: ``small`` (the default, CPU-sized) and ``paper`` (the authors' fusion adapter)."""


def describe_adapter(adapter: str) -> str:
    """One line naming an adapter shape of :data:`ADAPTERS`, for the report.

    Example:
        >>> describe_adapter("small")
        'small adapters: depth 1, hidden width 128, 128-d shared space, dropout 0.6'
    """
    shape = ADAPTERS[adapter]
    hidden = f"hidden width {shape['hidden_dim']}" if shape["hidden_dim"] else f"expansion {shape['expansion']}"
    return f"{adapter} adapters: depth {shape['depth']}, {hidden}, {shape['shared_dim']}-d shared space, " + (
        f"dropout {shape['dropout']}"
    )


def cpu_train_config(adapter: str = "small") -> TrainConfig:
    """The paper's recipe, CPU-sized for 1,100 training pairs.

    What changes against the paper (``TrainConfig()``): with ``adapter="small"``,
    adapters of depth 1 with a hidden width of 128 into a 128-d space instead
    of depth 4, expansion 4, 512-d (the paper's adapters have 52M parameters
    for a 1280-d latent, against 0.5M here; ``adapter="paper"`` keeps them);
    full batches of the training subset instead of 40,960 pairs; at most
    :data:`MAX_STEPS` steps with validation-based selection and early
    stopping (see :data:`BUDGET_RULE`) instead of 500 epochs; 20 warm-up
    steps instead of 100. The optimiser, the schedule's shape, dropout 0.6,
    FuseMix (halves, one ``lam ~ Beta(1, 1)`` per batch) and the loss are the
    paper's. ``batch_size``, ``epochs``, ``eval_every`` and ``seed`` are set
    per run by :func:`run_config`.
    """
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter: expected one of {sorted(ADAPTERS)}, got {adapter!r}")
    return TrainConfig(
        warmup_steps=20,
        **ADAPTERS[adapter],
        device="cpu",
        selection="best",
        selection_metric="mean",
        patience=PATIENCE,
        checkpoint_every=10**6,
        log_every=10**6,
    )


@dataclass
class OfflineConfig:
    """What the default replication runs.

    Attributes:
        cache_dir: Where latents are extracted to and reused from.
        out_dir: Where ``results.json``, ``results.md`` and the plots go.
        seeds: One run per seed for every method and size; the same seed
            draws the same training subset and initialisation for every
            method, so methods compare pairwise.
        train_sizes: Training-set sizes for the data-efficiency sweep; sizes
            above the number of training pairs are clipped to it.
        methods: Method keys of :data:`METHODS` to run.
        test_size: Held-out test pairs.
        val_size: Validation pairs carved out of the other pairs.
        max_steps: Most optimizer steps of a trained run.
        eval_interval: Steps between validation scores.
        patience: Evaluations without improvement before a run stops.
        batch_size: Pairs per step; ``None`` trains full batches (the whole
            training subset, rounded down to an even count).
        adapter: Adapter shape, a key of :data:`ADAPTERS`.
        train: The training recipe; batch size, epochs, evaluation interval
            and seed are derived per run.
        limit: Use only the first ``limit`` pairs (for quick checks and tests).
        workers: Worker processes for the runs (``None``: one per CPU, at most 8).
        progress: Show progress bars.
    """

    cache_dir: Path
    out_dir: Path
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    train_sizes: tuple[int, ...] = (100, 400, 1100)
    methods: tuple[str, ...] = GRIDS["default"]
    test_size: int = 500
    val_size: int = VAL_SIZE
    max_steps: int = MAX_STEPS
    eval_interval: int = EVAL_INTERVAL
    patience: int = PATIENCE
    batch_size: int | None = None
    adapter: str = "small"
    train: TrainConfig | None = None
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
        for name in ("test_size", "val_size", "max_steps", "eval_interval", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if self.batch_size is not None and (self.batch_size < 2 or self.batch_size % 2):
            raise ValueError(f"batch_size: expected None (full batches) or an even int >= 2, got {self.batch_size}")
        if self.train is None:
            self.train = cpu_train_config(self.adapter)
        self.train = replace(self.train, patience=self.patience)

    def budget_rule(self) -> str:
        """:data:`BUDGET_RULE` with this configuration's numbers."""
        return BUDGET_RULE.format(
            eval_interval=self.eval_interval, val=self.val_size, patience=self.patience, max_steps=self.max_steps
        )


def _log(message: str) -> None:
    print(message, flush=True)


def split_indices(num_pairs: int, test_size: int, val_size: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The fixed seeded train / validation / test split of pair indices.

    The test pairs are those of :func:`split_pairs`; the validation pairs
    are drawn from the rest with a second seeded permutation.

    Returns:
        ``(train, val, test)`` sorted index arrays.

    Example:
        >>> [len(part) for part in split_indices(20, test_size=5, val_size=3)]
        [12, 3, 5]
    """
    rest, test = split_pairs(list(range(num_pairs)), test_size=test_size, seed=seed)
    if not 0 < val_size < len(rest):
        raise ValueError(f"val_size: expected between 1 and {len(rest) - 1} (pairs left after the test split)")
    order = np.random.default_rng(seed + 1).permutation(len(rest))
    rest_array = np.asarray(rest, dtype=np.int64)
    val, train = np.sort(rest_array[order[:val_size]]), np.sort(rest_array[order[val_size:]])
    return train, val, np.asarray(test, dtype=np.int64)


def subset_for(train_idx: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A random subset of ``size`` training pairs, different per seed (all of them when ``size`` covers the set)."""
    if size >= len(train_idx):
        return train_idx
    rng = np.random.default_rng(10_000 + seed)
    return np.sort(rng.choice(train_idx, size=size, replace=False))


@dataclass(frozen=True)
class Budget:
    """How long a trained run may train and how often it is scored (see :data:`BUDGET_RULE`)."""

    max_steps: int
    eval_interval: int
    batch_size: int | None


def run_config(base: TrainConfig, method: str, size: int, seed: int, budget: Budget) -> TrainConfig:
    """The :class:`TrainConfig` of one trained run: ``base`` with the method, the batch, the budget and the seed.

    With full batches one epoch is one step, so ``epochs`` is the step
    budget and ``eval_every`` the evaluation interval in steps.
    """
    batch = size - size % 2 if budget.batch_size is None else min(budget.batch_size, size - size % 2)
    steps_per_epoch = size // batch
    config = replace(
        base,
        **METHOD_CONFIGS[method],
        batch_size=batch,
        epochs=max(1, -(-budget.max_steps // steps_per_epoch)),
        eval_every=max(1, round(budget.eval_interval / steps_per_epoch)),
        seed=seed,
    )
    if config.warm_start != "none":
        # CCA finds at most N - 1 directions on N pairs: a warm start on 100 pairs trains a 99-d space.
        config = replace(config, shared_dim=min(config.shared_dim, size - 1))
    return config


def run_method(
    method: str, train: PairedLatents, val: PairedLatents, test: PairedLatents, *, seed: int, budget: Budget,
    base: TrainConfig, zero_shot: Callable[[Embedder], dict[str, Any]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train (or fit) one method on ``train``, selecting on ``val``, and score image↔text retrieval on ``test``.

    Args:
        method: A key of :data:`METHODS`.
        train: The training pairs.
        val: The validation pairs (trained methods keep their best step on them).
        test: The test pairs, scored once at the end.
        seed: The run's seed.
        budget: How long a trained run may train.
        base: The training recipe.
        zero_shot: Called on the trained model (or the fitted CCA aligner) for
            its zero-shot scores (:func:`replication.zeroshot.score_zero_shot`).

    Returns:
        ``{"metrics", "seconds"}``; for a trained method also ``"selected_step"``
        (the step whose weights were kept), ``"steps"`` (steps trained),
        ``"stopped_early"``, ``"val_mean"`` (validation mean recall of the kept
        weights) and ``"curve"`` (``[step, validation mean recall]`` at every
        evaluation); with ``zero_shot``, ``"zeroshot"``.
    """
    start = time.perf_counter()
    record: dict[str, Any]
    if method == "cca":
        aligner: Embedder = CCAAligner(regularization=base.warm_start_regularization).fit(train)
        record = {"seconds": time.perf_counter() - start}
    else:
        result = fit(train, run_config(base, method, len(train), seed, budget), val=val, progress=False)
        assert result.selected is not None
        aligner = result.model
        evaluations = [r for r in result.history if r.get("kind") == "epoch" and "metrics" in r]
        record = {
            "seconds": time.perf_counter() - start,
            "selected_step": result.selected.step,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "val_mean": result.selected.value,
            "curve": [[r["step"], r["metrics"]["mean"]] for r in evaluations],
        }
    record["metrics"] = evaluate_retrieval(aligner, test, ("image", "text"))
    if zero_shot is not None:
        record["zeroshot"] = zero_shot(aligner)
    return record


# Worker-process state: the latents and the split, sent once per worker.
_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class RunData:
    """What every run reads, sent once to each worker process.

    Attributes:
        images: Image latents of every drawing. Shape: ``(N, 1280)``.
        texts: Caption latents of every drawing. Shape: ``(N, 384)``.
        split: ``(train, val, test)`` index arrays (:func:`split_indices`).
        zero_shot_task: The Unicode classes of every drawing.
        prompt_latents: Text latents of ``zero_shot_task.prompts``. Shape: ``(P, 384)``.
        zero_shot_size: Runs on this many training pairs are also scored zero-shot.
    """

    images: np.ndarray
    texts: np.ndarray
    split: tuple[np.ndarray, np.ndarray, np.ndarray]
    zero_shot_task: zeroshot.ZeroShotTask
    prompt_latents: np.ndarray
    zero_shot_size: int


def _init_worker(data: RunData) -> None:
    torch.set_num_threads(1)
    paired = PairedLatents({"image": data.images, "text": data.texts})
    train_idx, val_idx, test_idx = data.split
    test_images = torch.from_numpy(np.ascontiguousarray(data.images[test_idx], dtype=np.float32))
    prompts = torch.from_numpy(data.prompt_latents)
    _WORKER.update(
        paired=paired,
        train_idx=train_idx,
        val=paired.subset(val_idx),
        test=paired.subset(test_idx),
        zero_shot=functools.partial(
            _score_zero_shot, test_images=test_images, test_idx=test_idx, task=data.zero_shot_task, prompts=prompts
        ),
        zero_shot_size=data.zero_shot_size,
    )


def _score_zero_shot(
    aligner: Embedder, *, test_images: Tensor, test_idx: np.ndarray, task: zeroshot.ZeroShotTask, prompts: Tensor
) -> dict[str, Any]:
    with torch.no_grad():
        return zeroshot.score_zero_shot(aligner, test_images, test_idx, task, prompts)


def _run_job(job: tuple[str, int, int], budget: Budget, base: TrainConfig) -> dict[str, Any]:
    method, size, seed = job
    train = _WORKER["paired"].subset(subset_for(_WORKER["train_idx"], size, seed))
    zero_shot = _WORKER["zero_shot"] if size == _WORKER["zero_shot_size"] else None
    record = run_method(method, train, _WORKER["val"], _WORKER["test"], seed=seed, budget=budget, base=base,
                        zero_shot=zero_shot)  # fmt: skip
    record["seconds"] = round(record["seconds"], 3)
    return {"method": method, "train_size": size, "seed": seed, "eval_set": "openmoji-test", **record}


def default_workers() -> int:
    """One single-threaded worker per CPU this process may use (at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def run_jobs(
    jobs: Sequence[tuple[str, int, int]],
    data: RunData,
    *,
    budget: Budget,
    base: TrainConfig,
    workers: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Run ``(method, size, seed)`` jobs in ``workers`` single-threaded processes; records in job order.

    Each run is seeded by its own ``seed``, so the records do not depend on
    the number of workers or the order in which runs finish. The slowest
    jobs (largest training sets) are submitted first, so no worker is left
    with a long run at the end.
    """
    records: dict[tuple[str, int, int], dict[str, Any]] = {}
    bar = _progress(progress, len(jobs))

    def done(record: dict[str, Any]) -> None:
        records[(record["method"], record["train_size"], record["seed"])] = record
        if bar is not None:
            r1 = f"{record['metrics']['i2t_R@1']:.1f}/{record['metrics']['t2i_R@1']:.1f}"
            bar.set_postfix_str(f"{record['method']} n={record['train_size']} seed={record['seed']} R@1 {r1}")
            bar.update(1)

    order = sorted(jobs, key=lambda job: -job[1])
    if workers <= 1:
        threads = torch.get_num_threads()
        _init_worker(data)
        try:
            for job in order:
                done(_run_job(job, budget, base))
        finally:
            torch.set_num_threads(threads)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(data,)) as pool:
            futures = [pool.submit(_run_job, job, budget, base) for job in order]
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
    assert config.train is not None
    started = time.perf_counter()
    _log(f"[1/3] Latents (cached in {config.cache_dir})")
    t0 = time.perf_counter()
    latents = extract_openmoji_latents(config.cache_dir, limit=config.limit, progress=config.progress)
    extract_seconds = time.perf_counter() - t0
    images, texts = latents.image.to_numpy(np.float32), latents.text.to_numpy(np.float32)
    test_size = min(config.test_size, len(images) // 3)
    split = split_indices(len(images), test_size, config.val_size)
    train_idx, val_idx, test_idx = split
    sizes = sorted({min(s, len(train_idx)) for s in config.train_sizes})
    _log(
        f"      {len(images)} pairs: {len(train_idx)} train, {len(val_idx)} validation, {len(test_idx)} test; "
        f"image latents {images.shape[1]}-d, text latents {texts.shape[1]}-d ({extract_seconds:.0f} s)"
    )

    jobs = [(m, s, seed) for m in config.methods for s in sizes for seed in config.seeds]
    workers = config.workers or default_workers()
    _log(
        f"[2/3] {len(jobs)} runs: {len(config.methods)} methods x {len(sizes)} sizes x {len(config.seeds)} seeds, "
        f"{workers} worker process(es); {describe_adapter(config.adapter)}\n      {config.budget_rule()}"
    )
    t0 = time.perf_counter()
    budget = Budget(config.max_steps, config.eval_interval, config.batch_size)
    data = RunData(images, texts, split, latents.zero_shot_task, latents.prompts.to_numpy(np.float32), max(sizes))
    records = run_jobs(jobs, data, budget=budget, base=config.train, workers=workers, progress=config.progress)
    train_seconds = time.perf_counter() - t0

    _log("[3/3] Report")
    labels = {m: METHODS[m] for m in config.methods}
    full = max(sizes)
    tables = {
        "recall_at_full_size": report.recall_table(records, labels=labels, train_size=full),
        "mean_recall_vs_size": report.size_table(records, labels=labels, metric="mean"),
        "difference_from_none": report.paired_difference_table(records, labels=labels, baseline="none"),
        "steps_vs_size": report.steps_table(records, labels=labels),
        "zeroshot": zeroshot.zero_shot_table(records, latents.zero_shot_task, train_idx, test_idx, labels=labels),
    }
    settings = {**asdict(config), "cache_dir": str(config.cache_dir), "out_dir": str(config.out_dir)}
    result = {
        "experiment": "FuseMix offline replication: OpenMoji drawings <-> CLDR names",
        "encoders": {"image": efficientnet_identity(), "text": latents.text.encoder},
        "split": {"pairs": len(images), "train": len(train_idx), "val": len(val_idx), "test": len(test_idx), "seed": 0},
        "budget_rule": config.budget_rule(),
        "adapter": describe_adapter(config.adapter),
        "settings": {**settings, "train": config.train.to_dict(), "workers": workers},
        "machine": machine_description(),
        "seconds": {
            "extraction": round(extract_seconds, 1),
            "runs": round(train_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "zeroshot": {
            "templates": list(zeroshot.TEMPLATES),
            "classes": {level: c.class_names for level, c in latents.zero_shot_task.labels.items()},
        },
        "runs": records,
        "tables": tables,
    }
    write_report(result, config.out_dir, labels=labels, full_size=full, captions=len(latents.captions),
                 task=latents.zero_shot_task)  # fmt: skip
    return result


def write_report(
    result: dict[str, Any],
    out_dir: Path,
    *,
    labels: dict[str, str],
    full_size: int,
    captions: int,
    task: zeroshot.ZeroShotTask,
) -> None:
    """Print the tables; write ``results.json``, ``results.md`` and the plots.

    The plots (with matplotlib): ``recall_vs_size.png``, ``convergence.png``
    and ``zeroshot_confusion.png``.
    """
    out_dir = Path(out_dir)
    tables = result["tables"]
    split = result["split"]
    text = "\n".join(
        [
            f"## {result['experiment']}",
            "",
            f"{split['pairs']} pairs ({captions} captions): {split['train']} training, {split['val']} validation, "
            f"{split['test']} held-out test pairs (chance R@1 = {100 / split['test']:.2f}%). Mean ± std over seeds; "
            f"{result['adapter']}.",
            "",
            f"How long each run trains: {result['budget_rule']}.",
            "",
            f"### Recall@K on the test split, trained on all {full_size} training pairs",
            "",
            tables["recall_at_full_size"],
            "",
            "### Mean recall (average of the six R@K) against training-set size",
            "",
            tables["mean_recall_vs_size"],
            "",
            "### Difference from no augmentation, per seed (same seed: same training pairs and initialisation)",
            "",
            "Mean recall of the method minus that of no augmentation, mean ± std over seeds, and the seeds on which "
            "the method is ahead.",
            "",
            tables["difference_from_none"],
            "",
            "### Optimizer steps: the kept step (mean over seeds), and in brackets the steps trained",
            "",
            tables["steps_vs_size"],
            "",
            "### Zero-shot: the test drawings classified into Unicode's emoji groups and subgroups",
            "",
            f"Top-1 and top-5 accuracy (%) of the models trained on all {full_size} training pairs. The class names, "
            f"never seen in training, go through the text side with {len(zeroshot.TEMPLATES)} prompt templates "
            "averaged per class; each drawing takes the closest class.",
            "",
            tables["zeroshot"],
            "",
        ]
    )
    print("\n" + text, flush=True)
    report.write_json(out_dir / "results.json", result)
    (out_dir / "results.md").write_text(text)
    title = f"OpenMoji test split ({split['test']} pairs)"
    written = [out_dir / "results.json", out_dir / "results.md"]
    if report.plot_recall_vs_size(result["runs"], out_dir / "recall_vs_size.png", labels=labels, title=title):
        written.append(out_dir / "recall_vs_size.png")
    convergence_title = f"Validation mean recall ({split['val']} pairs), {full_size} training pairs"
    if report.plot_convergence(
        result["runs"], out_dir / "convergence.png", labels=labels, train_size=full_size, title=convergence_title
    ):
        written.append(out_dir / "convergence.png")
    if zeroshot.plot_group_confusions(result["runs"], task, out_dir / "zeroshot_confusion.png", labels=labels):
        written.append(out_dir / "zeroshot_confusion.png")
    note = "" if len(written) == 5 else " (install matplotlib for the plots)"
    print(f"Wrote {', '.join(str(p) for p in written)}{note}")


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
    """A few-second configuration of the same code path, every method (used by ``--quick`` and the tests)."""
    defaults: dict[str, Any] = {
        "seeds": (0,),
        "train_sizes": (40, 80),
        "methods": GRIDS["full"],
        "test_size": 40,
        "val_size": 30,
        "max_steps": 12,
        "eval_interval": 3,
        "patience": 2,
        "limit": 160,
        "train": replace(cpu_train_config(), warmup_steps=2, shared_dim=48),
    }
    defaults.update(overrides)
    return OfflineConfig(cache_dir=cache_dir, out_dir=out_dir, **defaults)


__all__: Sequence[str] = [
    "ADAPTERS",
    "BUDGET_RULE",
    "GRIDS",
    "METHODS",
    "OfflineConfig",
    "RunData",
    "cpu_train_config",
    "extract_openmoji_latents",
    "quick_config",
    "run_config",
    "run_method",
    "run_offline",
    "split_indices",
    "subset_for",
]
