"""Training: :func:`fit` runs the FuseMix recipe on paired latents, with checkpoints, exact resume and logs.

The defaults of :class:`TrainConfig` are the authors' image-text recipe (see
:mod:`fusemix.train_config`). The run is built from parts that work on their
own: :mod:`fusemix.train_config` (the settings), :mod:`fusemix.recipe` (the
model, warm start, augmentation, optimizer and schedules a config describes)
and :mod:`fusemix.evaluation` (retrieval scoring); their public names are
importable from here as well.

A run in ``out_dir`` writes ``log.jsonl`` / ``log.csv`` (one record per log
event), ``curves.png`` (loss and recall against epochs, when matplotlib is
installed), a training checkpoint in ``checkpoint/`` every
``checkpoint_every`` epochs and at the end, and the returned model in
``model/`` (see ``fusemix.checkpoint.load_model``). Calling :func:`fit`
again on the same ``out_dir`` resumes from the checkpoint and, on the same
device, thread count and seed, ends with exactly the weights of an
uninterrupted run.

**Choosing the weights.** With ``selection="last"`` (the default) :func:`fit`
returns the weights after the last step. With ``selection="best"`` it keeps
a CPU copy of the weights at every evaluation on ``val`` that raises
``selection_metric`` strictly above the best so far, returns those, and
with ``patience`` stops training after that many evaluations in a row
without such a rise (the learning-rate schedule is not re-shaped for the
shorter run). The checkpoint carries the selection (``best.safetensors``
and the counts in ``state.json``), so a resumed run selects and stops
exactly where an uninterrupted one does, and a run that stopped early is
finished: calling :func:`fit` on it again only returns the selected model.

**Several processes.** The same script runs data-parallel under
``torchrun --nproc_per_node=N`` (or any launcher that sets ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with no change:
:func:`fit` joins the job (NCCL on CUDA, Gloo on the CPU, collective timeout
``dist_timeout_s``) unless the caller already initialised a process group,
trains on ``cuda:LOCAL_RANK``, wraps the model in
``DistributedDataParallel`` and gathers the loss's negatives from every rank.
``batch_size`` stays the global batch: every rank takes its
``batch_size / N`` rows of each batch (see
:class:`~fusemix.data.LatentBatcher`), so with ``augmentation="none"`` and no
dropout the run computes the single-process run (up to float rounding).
FuseMix mixes within each rank's slice, from a generator seeded by
``(seed, rank)``, as the authors' per-GPU code would; dropout masks are
seeded by ``(seed, rank)`` too. Rank 0 alone writes logs, checkpoints, plots
and the final model and shows the progress bar; every rank evaluates
identically (so each returns the same metrics). ``out_dir`` must be visible
to every rank (one machine, or a shared filesystem): a resume loads the
checkpoint on every rank, which also restores every rank's own random
streams; resuming on another number of processes is refused. A process
group that :func:`fit` initialised stays for later calls (re-initialising
the default group in one job is unreliable) and is destroyed at exit.
The loss: with ``local_loss=True`` (default) each rank scores its own rows
against the whole gathered batch (``B/N x B`` logits per rank) instead of
every rank scoring the full ``B x B``: the same gradients, with about
``3N/4`` times less logit memory kept for the backward pass and ``N/2``
times less similarity compute (measured: B = 4,096, 512-d).

**Rows with missing modalities.** When some training pairs lack a modality
(``-1`` in :class:`~fusemix.data.PairedLatents` ``rows``), every batch
carries its rows' presence masks, sliced per rank like the latents: FuseMix
mixes rows only with rows that share their modalities (one lambda and one
pairing for every modality; a mixed value that either row lacked is marked
absent), ``augmentation="noise"`` keeps the masks, and the loss and the
structure term score each pair of modalities on the rows that have both.
Validation scores ``val_pair`` on the ``val`` pairs that have both
modalities, and a warm start fits its aligner on the training pairs that
have its two modalities. A ``model`` passed in must then have a loss that
takes ``masks``.

safetensors, tqdm and matplotlib are optional (``pip install "fusemix[train]"``):
this module imports without them.
"""

from __future__ import annotations

import atexit
import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fusemix._fileio import directory_lock
from fusemix._optional import progress_bar
from fusemix._run import Run, TrainState, seed_torch
from fusemix._run_files import CHECKPOINT_DIR, CURVES_PNG, MODEL_DIR, RUN_LOCK
from fusemix._run_log import RunLog, plot_curves
from fusemix._selection import Selection, check_selection_target
from fusemix.checkpoint import require_safetensors, save_model
from fusemix.data import PairedLatents
from fusemix.distributed import (
    ProcessPlace,
    all_gather_tensors,
    barrier,
    init_from_environment,
    launch_environment,
)
from fusemix.evaluation import evaluate_retrieval
from fusemix.model import FusionModel
from fusemix.recipe import (
    INIT_STREAM,
    alpha_at,
    augmentation_from_config,
    build_optimizer,
    derived_seed,
    lr_at,
    model_from_config,
    warm_start_from_config,
    weight_decay_groups,
)
from fusemix.train_config import (
    AMP_MODES,
    AUGMENTATIONS,
    RESULT_NEUTRAL_FIELDS,
    SELECTIONS,
    WARM_STARTS,
    TrainConfig,
)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: The returned model, in eval mode: the weights after the last
            step (``selection="last"``) or the selected ones (``"best"``).
        history: The log records (also in ``log.jsonl``): ``kind`` ``"step"``
            every ``log_every`` steps and ``"epoch"`` at each epoch's end,
            with ``epoch``, ``step``, ``loss``, ``lr``, ``temperature``,
            ``alpha`` and, when evaluated, ``metrics``; with
            ``selection="best"`` a last ``"selection"`` record (the selected
            ``epoch``, ``step``, ``metric``, ``value`` and ``metrics``, and
            ``stopped_early``).
        metrics: Validation metrics of the returned model (the last
            evaluation's, or the selected one's), or ``None`` without ``val``.
        out_dir: The run directory, or ``None``.
        config: The config trained with (``batch_size`` as trained, after a
            cut to the data).
        selected: The selected evaluation with ``selection="best"``, else ``None``.
        stopped_early: Whether ``patience`` ended training before ``epochs``
            (``False`` when it ran out at the last epoch).
        steps: Optimizer steps trained (over every resumed session).

    """

    model: FusionModel
    history: list[dict[str, Any]]
    metrics: dict[str, float] | None
    out_dir: Path | None
    config: TrainConfig = field(repr=False)
    selected: Selection | None = None
    stopped_early: bool = False
    steps: int = 0


def _resolve_device(config: TrainConfig, place: ProcessPlace | None = None) -> torch.device:
    """The training device; under several processes ``"auto"`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {config.device!r} requested but CUDA is not available")
    if place is not None and place.world_size > 1 and device.type == "cuda" and device.index is None:
        if place.local_rank is None:
            return torch.device("cuda", torch.cuda.current_device())
        if place.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK: {place.local_rank}, but this machine shows {torch.cuda.device_count()} CUDA device(s); "
                "start at most one process per GPU"
            )
        return torch.device("cuda", place.local_rank)
    return device


def _check_world(config: TrainConfig, world_size: int) -> None:
    """Refuse, before training, a global batch that the ranks cannot split evenly."""
    if world_size == 1:
        return
    if config.batch_size % world_size:
        raise ValueError(
            f"batch_size: {config.batch_size} is not divisible by the world size {world_size}; batch_size is the "
            f"global batch, split evenly over the ranks, so use a multiple of {world_size}"
        )
    if config.mixes_halves and (config.batch_size // world_size) % 2:
        raise ValueError(
            f"batch_size: {config.batch_size} over world size {world_size} gives {config.batch_size // world_size} "
            "rows per rank, but pairing='halves' mixes the two halves of each rank's rows and needs an even "
            f"number; use a multiple of {2 * world_size}"
        )


def _fit_batch_to_data(config: TrainConfig, num_pairs: int, world_size: int) -> TrainConfig:
    """``config``, with a ``batch_size`` above ``num_pairs`` cut to the largest full batch they allow (with a warning).

    The cut batch is a multiple of ``world_size`` and, when FuseMix mixes
    halves, even on every rank. A resume cuts the same way, so the original
    config and the cut one both match the checkpoint.

    Raises:
        ValueError: If ``num_pairs`` is too few for even the smallest batch.

    """
    if config.batch_size <= num_pairs:
        return config
    multiple = world_size * (2 if config.mixes_halves else 1)
    cut = num_pairs // multiple * multiple
    if cut < 2:
        raise ValueError(
            f"batch_size: {config.batch_size} exceeds the {num_pairs} training pairs, which are too few for one "
            f"batch (at least 2 pairs, in a multiple of {multiple})"
        )
    left_out = f" ({num_pairs - cut} left out of each epoch, drawn anew every epoch)" if cut < num_pairs else ""
    warnings.warn(
        f"batch_size: {config.batch_size} exceeds the {num_pairs} training pairs; training full batches of {cut} "
        f"pairs instead{left_out}",
        UserWarning,
        stacklevel=4,
    )
    return replace(config, batch_size=cut)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None``: as set), restoring the count afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def fit(
    train: PairedLatents,
    config: TrainConfig | None = None,
    *,
    val: PairedLatents | None = None,
    val_pair: tuple[str, str] | None = None,
    out_dir: str | Path | None = None,
    model: FusionModel | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[Callable[[TrainState], None]] = (),
    encoders: Mapping[str, Callable[..., Any] | Mapping[str, Any]] | None = None,
) -> FitResult:
    """Train fusion adapters on paired latents with FuseMix.

    Builds :func:`model_from_config` (unless ``model`` is given), the
    augmentation, AdamW with :func:`weight_decay_groups`, and a
    :class:`~fusemix.data.LatentBatcher` (shuffled, ``drop_last=True`` so
    every batch is full and even); then per step: learning rate from
    :func:`lr_at`, ``loss = model(augment(batch))`` under the configured
    autocast, backward (scaled for fp16), optional gradient clipping, AdamW
    step. The mixing alpha follows :func:`alpha_at` per epoch. No device
    sync happens on a step unless it logs.

    Every ``eval_every`` epochs and at the end, the model embeds ``val`` and
    :func:`fusemix.retrieval_metrics` scores ``val_pair`` (on the pairs of
    ``val`` that have both of its modalities).

    Which weights are returned: with ``config.selection="last"`` those after
    the last step; with ``"best"`` those of the evaluation with the highest
    ``config.selection_metric`` (the earliest on a tie), and with
    ``config.patience`` training stops after that many evaluations in a row
    without a strictly higher value. The learning-rate schedule keeps the
    shape it has for ``config.epochs`` when training stops early.
    ``FitResult.metrics`` are always the returned model's.

    A ``config.batch_size`` larger than ``train`` is cut, with a
    ``UserWarning``, to the largest batch that fits: a multiple of the world
    size, even on every rank when FuseMix mixes halves; every step then
    trains one full batch. ``FitResult.config`` and the saved configs hold
    the cut size, and a resume accepts the original config (it is cut the
    same way) as well as the cut one. ``config.threads`` sets torch's CPU
    threads while :func:`fit` runs.

    Training pairs may lack modalities (``-1`` in ``train``'s ``rows``):
    the batches then carry presence masks, which the augmentation and the
    model's loss take (see the module docstring).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the same call trains
    data-parallel: see the module docstring. ``config.batch_size`` is the
    global batch and must split evenly over the ranks; callbacks run on every
    rank and see that rank's loss (with ``local_loss=True`` its share: the
    mean over ranks is the global loss); logged losses are averaged over
    ranks. A ``model`` passed in must have a loss that gathers across ranks
    (``gather_distributed=True``) or handles several processes itself.

    With ``out_dir``: logs (``log.jsonl``, ``log.csv``, ``curves.png``),
    checkpoints in ``out_dir/checkpoint`` every ``checkpoint_every`` epochs
    and at the end (and where ``patience`` stops the run), and the returned
    model in ``out_dir/model``. A later call
    with the same ``out_dir`` and ``resume=True`` continues from the
    checkpoint, restoring weights, optimizer, random generators and the
    batcher's place, so a run killed at any point and resumed ends with the
    same weights (and the same selection and stopping point) as one never
    interrupted (same device, thread count and seed); logs are rolled back
    to the checkpoint. Randomness comes from ``config.seed``;
    torch's global random state of the caller is left as it was.

    Args:
        train: Training pairs (two or more modalities; pairs may lack some,
            each keeping at least two).
        config: The run's settings; the paper's recipe when ``None``.
        val: Validation pairs, scored during and at the end of training;
            required with ``config.selection="best"``.
        val_pair: ``(query, key)`` modalities of ``val`` to score (e.g.
            ``("image", "text")``); its first two modalities when ``None``.
        out_dir: Directory for logs, checkpoints and the final model;
            nothing is written when ``None``.
        model: A model to train instead of building one from ``config``.
        resume: Continue from a checkpoint in ``out_dir``. With ``False``, a
            checkpoint there is an error rather than silently overwritten.
        progress: Show a tqdm progress bar (when tqdm is installed).
        callbacks: Called after every optimizer step with a :class:`TrainState`.
        encoders: Modality name to the frozen encoder that made its latents
            (or its description), saved as ``out_dir/model/encoders.json``
            (:func:`fusemix.checkpoint.save_model`) so that
            :meth:`fusemix.aligned.AlignedModel.from_pretrained` gets them
            back; described and checked before training.

    Returns:
        A :class:`FitResult`.

    Raises:
        ImportError: If ``out_dir`` is given and safetensors is not installed.
        ValueError: If the config, the data or a checkpoint do not fit: in
            particular ``selection="best"`` without ``val`` or with a
            ``selection_metric`` that ``val_pair``'s evaluation lacks (before
            any step), a checkpoint saved with another config (fields in
            ``RESULT_NEUTRAL_FIELDS`` may change, except ``eval_every`` with
            ``selection="best"``), other ``train`` or ``val`` data (other
            latents of the same shape included; the message names the
            modality), or latents that hold NaN or Inf (the message names the
            modality, the store and the row).
        FileExistsError: If ``resume=False`` and ``out_dir`` holds a checkpoint,
            or another run (process) is training in ``out_dir``: a run holds
            the lock file ``out_dir/.fusemix-run.lock`` while it trains.
        FloatingPointError: If the loss becomes NaN or infinite.
        RuntimeError: Under several processes, if a collective fails: another
            rank died, or stalled for longer than ``config.dist_timeout_s``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(256, 8, generator=g)
        >>> data = PairedLatents({"image": (z @ torch.randn(8, 12, generator=g)).numpy(),
        ...                       "text": (z @ torch.randn(8, 10, generator=g)).numpy()})
        >>> config = TrainConfig(epochs=3, batch_size=64, shared_dim=8, depth=1, dropout=0.0, warmup_steps=2)
        >>> result = fit(data, config, val=data, progress=False)
        >>> sorted(result.metrics)[:3], len(result.history)
        (['i2t_R@1', 'i2t_R@10', 'i2t_R@5'], 3)

        Keep the weights of the best evaluation by image-to-text mean
        recall, evaluating every epoch and stopping after two evaluations
        without a gain:

        >>> config = replace(config, epochs=20, eval_every=1, selection="best", selection_metric="i2t_mean", patience=2)
        >>> best = fit(data, config, val=data, progress=False)
        >>> best.metrics == best.selected.metrics, best.selected.metric, best.history[-1]["kind"]
        (True, 'i2t_mean', 'selection')

    """
    if not isinstance(train, PairedLatents):
        raise TypeError(f"train: expected a PairedLatents, got {type(train).__name__}")
    if val is not None and not isinstance(val, PairedLatents):
        raise TypeError(f"val: expected a PairedLatents or None, got {type(val).__name__}")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig or None, got {type(config).__name__}")
    if model is not None and not isinstance(model, FusionModel):
        raise TypeError(f"model: expected a FusionModel or None, got {type(model).__name__}")
    described = None
    if encoders is not None:
        from fusemix.encoder_descriptions import describe_encoders

        described = describe_encoders(encoders, modalities=train.modalities)
    with _torch_threads(config.threads):
        return _fit(train, config, val, val_pair, out_dir, model, resume, progress, callbacks, described)


def _fit(
    train: PairedLatents,
    config: TrainConfig,
    val: PairedLatents | None,
    val_pair: tuple[str, str] | None,
    out_dir: str | Path | None,
    model: FusionModel | None,
    resume: bool,
    progress: bool,
    callbacks: Sequence[Callable[[TrainState], None]],
    encoders: dict[str, dict[str, Any]] | None,
) -> FitResult:
    """:func:`fit` once its arguments' types are checked and its thread count is set."""
    place = launch_environment()
    _check_world(config, place.world_size)
    config = _fit_batch_to_data(config, len(train), place.world_size)
    check_selection_target(config, val, val_pair)
    run_dir = None if out_dir is None else Path(out_dir)
    if run_dir is not None:
        require_safetensors()
        if place.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(config, place)
    joins = place.world_size > 1 and not place.initialized
    if place.world_size > 1 and device.type == "cuda":
        torch.cuda.set_device(device)
    if joins:
        init_from_environment(device, config.dist_timeout_s)
        atexit.register(_destroy_process_group)
    run: Run | None = None
    try:
        with _run_directory_held(run_dir, place, device):
            cuda_devices = []
            if device.type == "cuda":
                cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
            with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
                seed_torch(derived_seed(config.seed, INIT_STREAM), device)
                run = Run(train, config, val, val_pair, run_dir, model, callbacks, place, device)
                run.restore(resume)
                log = RunLog(run_dir if place.is_main else None, run.history)
                try:
                    total = config.epochs * run.steps_per_epoch
                    initial = run.epoch * run.steps_per_epoch + run.batcher.batch_index
                    with progress_bar(
                        progress and place.is_main,
                        user="fit",
                        total=total,
                        initial=initial,
                        unit="step",
                        dynamic_ncols=True,
                    ) as bar:
                        while not run.finished:
                            run.run_epoch(log, bar)
                    run.conclude(log)
                finally:
                    log.close()
            run.model.eval()
            if run_dir is not None and place.is_main:
                save_model(run.model, run_dir / MODEL_DIR, config=config, encoders=encoders)
                plot_curves(run.history, run_dir / CURVES_PNG)
            barrier(device)
    except Exception as err:
        if place.world_size > 1:
            _note_rank(err, place, config, run)
        raise
    return _result(run)


@contextmanager
def _run_directory_held(run_dir: Path | None, place: ProcessPlace, device: torch.device) -> Iterator[None]:
    """Hold ``run_dir``'s lock (from rank 0) for the block; every rank refuses when another run holds it.

    Under several processes every rank takes part in one collective, whether
    or not it was given ``run_dir`` (a rank without it learns the refusal too).
    """
    with contextlib.ExitStack() as held:
        refusal = None
        if run_dir is not None and place.is_main:
            try:
                held.enter_context(directory_lock(run_dir, RUN_LOCK, argument="out_dir", activity="training run"))
            except FileExistsError as err:
                refusal = err
        if place.world_size > 1:
            refused = all_gather_tensors(torch.tensor([int(refusal is not None)]), device)[0]
            if refusal is None and bool(refused):
                raise FileExistsError(
                    f"out_dir: rank 0 found {run_dir} in use by another training run (its error says which); wait "
                    "for it to end, or use another out_dir"
                )
        if refusal is not None:
            raise refusal
        yield


def _result(run: Run) -> FitResult:
    """What :func:`fit` returns, once ``run`` is concluded."""
    selector = run.selector
    selected = None if selector is None else selector.best
    if selected is not None:
        metrics: dict[str, float] | None = dict(selected.metrics)
    else:
        evaluated = [r["metrics"] for r in run.history if r.get("kind") == "epoch" and "metrics" in r]
        metrics = evaluated[-1] if evaluated else None
    return FitResult(
        model=run.model,
        history=run.history,
        metrics=metrics,
        out_dir=run.out_dir,
        config=run.config,
        selected=selected,
        stopped_early=run.stopped_early,
        steps=run.step,
    )


def _destroy_process_group() -> None:
    """At exit: destroy the process group :func:`fit` created, if it is still there."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _note_rank(err: Exception, place: ProcessPlace, config: TrainConfig, run: Run | None) -> None:
    """Add which rank failed, and where, to an error raised under several processes (Python 3.11+)."""
    where = "" if run is None else f" in epoch {run.epoch} after {run.step} optimizer steps"
    note = (
        f"fusemix.train.fit: raised on rank {place.rank} of {place.world_size}{where}. A communication error "
        "(timeout, connection closed or reset) usually means another rank died or stalled first: its own output "
        "says why; a collective fails after the process group's timeout (config.dist_timeout_s="
        f"{config.dist_timeout_s:g} s when fit started the group)."
    )
    add_note = getattr(err, "add_note", None)
    if callable(add_note):
        add_note(note)


__all__ = [
    "AMP_MODES",
    "AUGMENTATIONS",
    "CHECKPOINT_DIR",
    "MODEL_DIR",
    "RESULT_NEUTRAL_FIELDS",
    "SELECTIONS",
    "WARM_STARTS",
    "FitResult",
    "Selection",
    "TrainConfig",
    "TrainState",
    "alpha_at",
    "augmentation_from_config",
    "build_optimizer",
    "evaluate_retrieval",
    "fit",
    "lr_at",
    "model_from_config",
    "plot_curves",
    "warm_start_from_config",
    "weight_decay_groups",
]
