"""Training: :func:`fit` runs the FuseMix recipe on paired latents, with checkpoints, exact resume and logs.

The defaults of :class:`TrainConfig` are the authors' image-text recipe:
AdamW (betas 0.9/0.999, weight decay 0.1 on the weights of linear layers
only), learning rate 1e-3 with 100 linear warm-up steps from 1e-6 and a
per-epoch cosine to 1e-6, 500 epochs of batches of 40,960 pairs mixed in
halves with one ``lam ~ Beta(1, 1)`` per batch, fusion adapters of depth 4,
expansion 4, dropout 0.6 into a 512-d space, InfoNCE with a learnable
temperature initialised at 0.07. One default departs from it: ``amp="auto"``
trains under bf16 autocast on CUDA, where the authors used fp32
(``amp="off"``).

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
import csv
import hashlib
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from fusemix._checks import check_choice, check_positive, check_positive_int
from fusemix._fileio import recover_directory, write_text_atomic
from fusemix._optional import progress_bar
from fusemix._version import fusemix_version
from fusemix.aligners import CCAAligner, ProcrustesAligner
from fusemix.checkpoint import (
    BEST_WEIGHTS,
    TrainingCheckpoint,
    load_training_checkpoint,
    require_safetensors,
    save_model,
    save_training_checkpoint,
)
from fusemix.data import LatentBatch, LatentBatcher, PairedLatents
from fusemix.distributed import (
    ProcessPlace,
    all_gather_tensors,
    all_reduce_sum,
    barrier,
    init_from_environment,
    launch_environment,
)
from fusemix.losses import ContrastiveLoss, PairwiseContrastiveLoss, SigLIPLoss
from fusemix.metrics import metrics_from_ranks, retrieval_metrics
from fusemix.mixing import PAIRINGS, CosineAlphaSchedule, ExponentialAlphaSchedule, FuseMix, LatentNoise
from fusemix.model import FusionModel, loss_accepts_masks
from fusemix.regularizers import StructureLoss
from fusemix.warmstart import aligner_input_norm, warm_start

AUGMENTATIONS: tuple[str, ...] = ("fusemix", "none", "noise", "fusemix-independent")
AMP_MODES: tuple[str, ...] = ("auto", "off", "bf16", "fp16")
WARM_STARTS: tuple[str, ...] = ("none", "cca", "procrustes")
SELECTIONS: tuple[str, ...] = ("last", "best")
RESULT_NEUTRAL_FIELDS: frozenset[str] = frozenset(
    {
        "eval_every",
        "checkpoint_every",
        "log_every",
        "eval_chunk_size",
        "device",
        "threads",
        "preload",
        "dist_timeout_s",
    }
)
"""Config fields that do not change the trained weights; a resume may change them.

``device`` and ``threads`` change float rounding only (a resume that changes
them warns). ``eval_every`` is neutral only with ``selection="last"``: with
``selection="best"`` it decides which weights are kept and when training
stops, and a resume must keep it.
"""

CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
CHECKPOINT_FORMAT = "fusemix-training-checkpoint"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are the paper's recipe.

    Attributes:
        epochs: Passes over the training pairs (paper: 500).
        batch_size: Pairs per optimizer step, before mixing (paper: 40,960;
            FuseMix in halves feeds the loss ``batch_size / 2`` pairs). A
            batch larger than the training pairs is cut by :func:`fit` to
            the largest full batch they allow, with a warning.
        lr: Peak learning rate (paper: 1e-3).
        warmup_steps: Optimizer steps of linear warm-up (paper: 100).
        warmup_start_lr: Learning rate of the first step (paper: 1e-6).
        min_lr: Learning rate the per-epoch cosine ends at (paper: 1e-6).
        weight_decay: AdamW decay, applied to the weights of ``nn.Linear``
            layers only, never to biases, norms or the temperature (paper: 0.1).
        betas: AdamW betas (paper: (0.9, 0.999)).
        eps: AdamW epsilon.
        shared_dim: Dimension of the shared space (paper: 512).
        adapter: ``"fusion"`` (the paper's residual MLP) or ``"linear"``.
        depth: Residual blocks per fusion adapter (paper: 4).
        expansion: Hidden width multiplier of each block (paper: 4).
        hidden_dim: Hidden width of each block, overriding ``expansion``
            (``None``: ``expansion * latent dim``, the paper); a cheaper
            adapter for wide latents on small data or a CPU.
        dropout: Dropout inside each block (paper: 0.6).
        augmentation: ``"fusemix"`` (the method), ``"none"``, ``"noise"``
            (Gaussian latent noise baseline) or ``"fusemix-independent"``
            (one lambda per modality: the ablation that breaks the pairs).
        alpha: ``Beta(alpha, alpha)`` concentration (paper: 1.0).
        alpha_schedule: ``None`` (constant ``alpha``), ``"cosine"`` or
            ``"exponential"``: per-epoch schedule from ``alpha`` to
            ``alpha_end`` over ``epochs``, as in the authors' code.
        alpha_end: Final alpha of ``alpha_schedule``; only with a schedule.
        pairing: ``"halves"`` (paper) or ``"permute"``.
        per_sample_lambda: One lambda per mixed row instead of per batch.
        noise_std: Relative std of ``augmentation="noise"``.
        loss: ``"contrastive"`` (InfoNCE, paper) or ``"siglip"`` (SigLIP's
            own initialisation; ``temperature_init`` does not apply).
        temperature_init: Initial temperature of the contrastive loss (paper: 0.07).
        temperature_parameterization: ``"temperature"`` (authors' code) or
            ``"logit_scale"`` (CLIP).
        grad_clip: Max global gradient norm, or ``None`` for no clipping (paper).
        device: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
        amp: ``"auto"`` (bf16 autocast on CUDA, off elsewhere), ``"off"``
            (fp32, the paper), ``"bf16"`` or ``"fp16"`` (CUDA only, with a
            gradient scaler).
        preload: Put all training latents on the device once (see
            :class:`~fusemix.data.LatentBatcher`); ``True``, ``False`` or ``"auto"``.
        threads: Torch intra-op CPU threads for the run
            (``torch.set_num_threads`` while :func:`fit` runs, restored
            afterwards, even on error); ``None`` leaves torch's setting. On
            a busy machine one thread can be many times faster for small
            adapters. Results are bitwise reproducible for the same thread
            count, device and seed; another count changes float rounding.
            The count a run used is recorded in the checkpoint's
            ``state.json`` (``"threads"``).
        seed: Seeds the initialisation, the shuffling, the augmentation and dropout.
        eval_every: Evaluate every this many epochs (0: only at the end).
        selection: Which weights :func:`fit` returns: ``"last"`` (after the
            last step) or ``"best"`` (those of the evaluation with the
            highest ``selection_metric`` on ``val``; on a tie the earliest).
        selection_metric: The validation metric ``selection="best"``
            maximises: ``"mean"``, or a key such as ``"i2t_mean"`` (the
            authors' choice) or ``"t2i_R@1"``, named after the first letters
            of the ``val_pair`` modalities (``"a2t_mean"`` for audio-text).
        patience: Early stopping (``selection="best"`` only): stop after
            this many evaluations in a row without a strictly higher
            ``selection_metric``; ``None`` trains every epoch. The learning
            rate schedule keeps the shape it has for ``epochs``.
        checkpoint_every: Checkpoint every this many epochs (0: only at the
            end); with ``out_dir`` a checkpoint is always written at the end.
        log_every: Log the mean training loss every this many steps.
        eval_chunk_size: Queries scored at once during evaluation (``None``:
            automatic).
        local_loss: Under several processes, each rank scores only its own
            ``batch_size / N`` rows against the ``batch_size`` gathered
            columns (``B/N x B`` logits per rank), instead of every rank
            computing the full ``B x B`` loss: the same gradients for about
            ``3N/4`` times less logit memory and ``N/2`` times less
            similarity compute. No effect on one process.
        dist_timeout_s: Under several processes, seconds a collective may
            wait (for a rank that died or stalled) before it fails with an
            error instead of hanging; applies to process groups that
            :func:`fit` initialises (default 600).
        structure_weight: Weight of a :class:`~fusemix.StructureLoss` added
            to the loss, keeping each modality's neighbourhood structure in
            the shared space (0: off, the paper).
        structure_temperature: Temperature of the structure term's
            similarity distributions.
        structure_divergence: ``"js"`` (Jensen-Shannon) or ``"kl"``.
        warm_start: ``"none"`` (the paper), ``"cca"`` or ``"procrustes"``:
            before the first step, fit that closed-form aligner on the
            training pairs of the first two modalities (those pairs that
            have both) and set the adapters
            so that the model embeds exactly like it (see
            :func:`~fusemix.warm_start`); training then continues from there.
        warm_start_regularization: The aligner's ``regularization``.
        warm_start_max_pairs: The aligner is fitted on at most this many
            training pairs (a fixed seeded subset, gathered in memory).

    Raises:
        TypeError: If a field has the wrong type.
        ValueError: If a field is out of range or inconsistent; the message
            starts with the field's name.

    Example:
        >>> config = TrainConfig(epochs=20, batch_size=256, shared_dim=64)
        >>> TrainConfig.from_dict(config.to_dict()) == config
        True
        >>> TrainConfig(batch_size=255)
        Traceback (most recent call last):
        ...
        ValueError: batch_size: must be even with pairing='halves' (FuseMix mixes the two halves), got 255

    """

    epochs: int = 500
    batch_size: int = 40960
    lr: float = 1e-3
    warmup_steps: int = 100
    warmup_start_lr: float = 1e-6
    min_lr: float = 1e-6
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    shared_dim: int = 512
    adapter: str = "fusion"
    depth: int = 4
    expansion: int = 4
    hidden_dim: int | None = None
    dropout: float = 0.6
    augmentation: str = "fusemix"
    alpha: float = 1.0
    alpha_schedule: str | None = None
    alpha_end: float | None = None
    pairing: str = "halves"
    per_sample_lambda: bool = False
    noise_std: float = 0.1
    loss: str = "contrastive"
    temperature_init: float = 0.07
    temperature_parameterization: str = "temperature"
    grad_clip: float | None = None
    device: str = "auto"
    amp: str = "auto"
    preload: bool | str = "auto"
    threads: int | None = None
    seed: int = 0
    eval_every: int = 10
    selection: str = "last"
    selection_metric: str = "mean"
    patience: int | None = None
    checkpoint_every: int = 10
    log_every: int = 50
    eval_chunk_size: int | None = None
    local_loss: bool = True
    dist_timeout_s: float = 600.0
    structure_weight: float = 0.0
    structure_temperature: float = 0.1
    structure_divergence: str = "js"
    warm_start: str = "none"
    warm_start_regularization: float = 0.1
    warm_start_max_pairs: int = 200_000

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        _check_int("batch_size", self.batch_size, 2)
        check_positive("lr", self.lr)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if _check_nonnegative("warmup_start_lr", self.warmup_start_lr) > self.lr:
            raise ValueError(f"warmup_start_lr: must not exceed lr={self.lr}, got {self.warmup_start_lr}")
        if _check_nonnegative("min_lr", self.min_lr) > self.lr:
            raise ValueError(f"min_lr: must not exceed lr={self.lr}, got {self.min_lr}")
        _check_nonnegative("weight_decay", self.weight_decay)
        self.betas = self._check_betas(self.betas)
        check_positive("eps", self.eps)
        check_positive_int("shared_dim", self.shared_dim)
        check_choice("adapter", self.adapter, ("fusion", "linear"))
        _check_int("depth", self.depth, 0)
        check_positive_int("expansion", self.expansion)
        if self.hidden_dim is not None:
            check_positive_int("hidden_dim", self.hidden_dim)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        check_positive("alpha", self.alpha)
        if self.alpha_schedule is not None:
            check_choice("alpha_schedule", self.alpha_schedule, ("cosine", "exponential"))
            if self.alpha_end is None:
                raise ValueError(f"alpha_end: alpha_schedule={self.alpha_schedule!r} needs the final alpha")
            check_positive("alpha_end", self.alpha_end)
        elif self.alpha_end is not None:
            raise ValueError("alpha_end: only used with alpha_schedule='cosine' or 'exponential'; leave it None")
        check_choice("pairing", self.pairing, PAIRINGS)
        _check_bool("per_sample_lambda", self.per_sample_lambda)
        check_positive("noise_std", self.noise_std)
        check_choice("loss", self.loss, ("contrastive", "siglip"))
        check_positive("temperature_init", self.temperature_init)
        check_choice("temperature_parameterization", self.temperature_parameterization, ("temperature", "logit_scale"))
        if self.loss == "contrastive" and self.temperature_parameterization == "temperature":
            if not 0.001 <= self.temperature_init <= 0.5:
                raise ValueError(
                    f"temperature_init: must lie in the clamp range [0.001, 0.5], got {self.temperature_init}"
                )
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        self._check_device()
        check_choice("amp", self.amp, AMP_MODES)
        if not (isinstance(self.preload, bool) or self.preload == "auto"):
            raise ValueError(f"preload: expected True, False or 'auto', got {self.preload!r}")
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        _check_int("seed", self.seed, 0)
        _check_int("eval_every", self.eval_every, 0)
        self._check_selection()
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        check_positive_int("log_every", self.log_every)
        if self.eval_chunk_size is not None:
            check_positive_int("eval_chunk_size", self.eval_chunk_size)
        _check_bool("local_loss", self.local_loss)
        check_positive("dist_timeout_s", self.dist_timeout_s)
        _check_nonnegative("structure_weight", self.structure_weight)
        check_positive("structure_temperature", self.structure_temperature)
        check_choice("structure_divergence", self.structure_divergence, ("js", "kl"))
        check_choice("warm_start", self.warm_start, WARM_STARTS)
        _check_nonnegative("warm_start_regularization", self.warm_start_regularization)
        _check_int("warm_start_max_pairs", self.warm_start_max_pairs, 2)
        mixing = self.augmentation in ("fusemix", "fusemix-independent")
        if mixing and self.pairing == "halves" and self.batch_size % 2:
            raise ValueError(
                f"batch_size: must be even with pairing='halves' (FuseMix mixes the two halves), got {self.batch_size}"
            )

    def _check_selection(self) -> None:
        check_choice("selection", self.selection, SELECTIONS)
        if not isinstance(self.selection_metric, str):
            raise TypeError(f"selection_metric: expected a string, got {type(self.selection_metric).__name__}")
        if not self.selection_metric:
            raise ValueError("selection_metric: expected a validation metric name such as 'mean' or 'i2t_mean'")
        if self.patience is None:
            return
        _check_int("patience", self.patience, 1)
        if self.selection != "best":
            raise ValueError(
                f"patience: early stopping returns the best evaluation's weights, so it needs selection='best', "
                f"got selection={self.selection!r}"
            )

    @staticmethod
    def _check_betas(betas: object) -> tuple[float, float]:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected two numbers (beta1, beta2), got {betas!r}")
        for b in betas:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
                raise ValueError(f"betas: each must lie in [0, 1), got {betas!r}")
        return (float(betas[0]), float(betas[1]))

    def _check_device(self) -> None:
        if not isinstance(self.device, str):
            raise TypeError(f"device: expected a string such as 'auto', 'cpu' or 'cuda:0', got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"device: {self.device!r} is not a torch device ({err})") from err

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-safe dict (``betas`` as a list)."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output (missing keys take their defaults).

        Raises:
            TypeError: If ``values`` is not a mapping.
            ValueError: If it has keys that are not config fields, or a
                field is invalid.

        """
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a mapping of config fields, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise ValueError(f"values: unknown TrainConfig keys {unknown}")
        kwargs = dict(values)
        if "betas" in kwargs and isinstance(kwargs["betas"], list):
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)


def lr_at(step: int, epoch: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based), taken in epoch ``epoch``, as in the authors' code.

    Linear warm-up over the first ``warmup_steps`` steps, from
    ``warmup_start_lr`` (at step 0) towards ``lr``; then a cosine **per
    epoch** from ``lr`` (epoch 0) to ``min_lr``::

        cosine(e) = min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2
        lr(step, e) = min(warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps, cosine(e))
                          while step < warmup_steps
                    = cosine(e) afterwards

    The rate is constant within an epoch after the warm-up (the authors'
    LAVIS scheduler sets it from the epoch, not the step). When the warm-up
    fits in the first epoch (the paper: 100 warm-up steps, ~122 steps per
    epoch) this is their schedule exactly; when it does not, their code cuts
    the warm-up short at the end of epoch 0, while here it continues by step,
    capped by the cosine.

    Args:
        step: Global index of the optimizer step (>= 0).
        epoch: Epoch the step belongs to, ``0 <= epoch < config.epochs``.
        steps_per_epoch: Optimizer steps per epoch; ``step`` must lie in
            ``[epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)``.
        config: The run's config.

    Returns:
        The learning rate.

    Example:
        >>> config = TrainConfig(epochs=4, lr=1e-3, warmup_steps=2, warmup_start_lr=0.0, min_lr=0.0)
        >>> [round(lr_at(s, s // 3, 3, config), 6) for s in range(12)]
        [0.0, 0.0005, 0.001, 0.000854, 0.000854, 0.000854, 0.0005, 0.0005, 0.0005, 0.000146, 0.000146, 0.000146]

    """
    check_positive_int("steps_per_epoch", steps_per_epoch)
    _check_int("step", step, 0)
    _check_int("epoch", epoch, 0)
    if epoch >= config.epochs:
        raise ValueError(f"epoch: expected an epoch in [0, {config.epochs}), got {epoch}")
    if not epoch * steps_per_epoch <= step < (epoch + 1) * steps_per_epoch:
        raise ValueError(f"step: {step} does not belong to epoch {epoch} of {steps_per_epoch} steps")
    cosine = config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if step < config.warmup_steps:
        warm = config.warmup_start_lr + (config.lr - config.warmup_start_lr) * step / config.warmup_steps
        return min(warm, cosine)
    return cosine


def alpha_at(epoch: int, config: TrainConfig) -> float:
    """Mixing alpha of epoch ``epoch``: ``config.alpha``, or its per-epoch schedule to ``alpha_end``.

    Example:
        >>> config = TrainConfig(epochs=10, alpha=0.1, alpha_schedule="cosine", alpha_end=1.0)
        >>> [round(alpha_at(e, config), 3) for e in (0, 5, 10)]
        [0.1, 0.55, 1.0]

    """
    if config.alpha_schedule is None:
        return config.alpha
    kind = CosineAlphaSchedule if config.alpha_schedule == "cosine" else ExponentialAlphaSchedule
    return kind(config.alpha, config.alpha_end, config.epochs)(epoch)  # type: ignore[arg-type]


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into AdamW groups: decay on ``nn.Linear`` weights only.

    Biases, normalisation weights, temperatures, logit scales and biases,
    and every other parameter get no decay. Empty groups are left out.

    Args:
        model: The model to optimise.
        weight_decay: Decay of the linear weights.

    Returns:
        Parameter groups ``[{"params": [...], "weight_decay": weight_decay},
        {"params": [...], "weight_decay": 0.0}]``.

    Example:
        >>> groups = weight_decay_groups(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), 0.1)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.1), (3, 0.0)]

    """
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if id(p) in linear_weights else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`weight_decay_groups` with the config's betas and eps.

    The fused implementation runs on CUDA and, from torch 2.4, on the CPU
    (about 3x faster than the per-tensor loop for the small adapters of a
    CPU run, the same update to float rounding).
    """
    device = next(model.parameters()).device
    fused = device.type == "cuda" or (device.type == "cpu" and torch.__version__ >= (2, 4))
    return torch.optim.AdamW(
        weight_decay_groups(model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=fused or None,
    )


def model_from_config(dims: Mapping[str, int], config: TrainConfig) -> FusionModel:
    """The :class:`~fusemix.FusionModel` a config describes, for latents of ``dims``.

    Its loss gathers negatives across ``torch.distributed`` ranks
    (``gather_distributed=True``, ``local_loss=config.local_loss``), which
    changes nothing in a single process.

    Example:
        >>> model = model_from_config({"image": 12, "text": 8}, TrainConfig(shared_dim=4, depth=1))
        >>> model.modalities, model.embed("text", torch.randn(3, 8)).shape
        (['image', 'text'], torch.Size([3, 4]))

    """
    loss: nn.Module
    if config.loss == "contrastive":
        loss = ContrastiveLoss(
            temperature_init=config.temperature_init,
            parameterization=config.temperature_parameterization,  # type: ignore[arg-type]
            gather_distributed=True,
            local_loss=config.local_loss,
        )
    else:
        loss = SigLIPLoss(gather_distributed=True, local_loss=config.local_loss)
    structure = None
    if config.structure_weight > 0:
        structure = StructureLoss(config.structure_temperature, divergence=config.structure_divergence)
    return FusionModel.from_dims(
        dims,
        shared_dim=config.shared_dim,
        adapter=config.adapter,
        depth=config.depth,
        expansion=config.expansion,
        hidden_dim=config.hidden_dim,
        dropout=config.dropout,
        loss=loss,
        structure=structure,
        structure_weight=config.structure_weight,
    )


def warm_start_from_config(model: FusionModel, train: PairedLatents, config: TrainConfig) -> FusionModel:
    """Fit ``config.warm_start``'s aligner on ``train`` and set ``model``'s adapters from it (in place).

    The aligner sees the first two modalities of ``train``, on at most
    ``config.warm_start_max_pairs`` of the pairs that have both (a subset
    seeded by ``config.seed``), with the input normalisation the adapters need
    (:func:`~fusemix.aligner_input_norm`) and ``dim = config.shared_dim``.

    Returns:
        ``model`` itself; unchanged when ``config.warm_start == "none"``.

    Raises:
        ValueError: If ``train`` has fewer than two modalities, or too few
            pairs (with both modalities) for a ``shared_dim``-dimensional
            aligner (CCA needs more than ``shared_dim`` pairs).
    """
    if config.warm_start == "none":
        return model
    if len(train.modalities) < 2:
        raise ValueError(f"warm_start: needs two modalities to align, the training data has {train.modalities}")
    pair = train.modalities[:2]
    candidates = np.arange(len(train))
    if not train.complete:
        candidates = np.flatnonzero((train.row_index(pair[0]) >= 0) & (train.row_index(pair[1]) >= 0))
    count = min(len(candidates), config.warm_start_max_pairs)
    rows = candidates
    if count < len(candidates):
        rng = np.random.default_rng(_derived_seed(config.seed, 3))
        rows = candidates[np.sort(rng.choice(len(candidates), count, replace=False))]
    latents = {m: x for m, x in train.gather(rows).items() if m in pair}
    norm = aligner_input_norm(model)
    reg = config.warm_start_regularization
    if config.warm_start == "cca":
        aligner: CCAAligner | ProcrustesAligner = CCAAligner(config.shared_dim, regularization=reg, input_norm=norm)
    else:
        aligner = ProcrustesAligner(config.shared_dim, regularization=reg, input_norm=norm)
    try:
        aligner.fit(latents)
    except ValueError as err:
        raise ValueError(f"warm_start: cannot fit a {config.warm_start} aligner on {count} pairs: {err}") from err
    return warm_start(model, aligner.to(next(model.parameters()).device), modalities=pair)


def augmentation_from_config(config: TrainConfig, generator: torch.Generator | None) -> nn.Module | None:
    """The augmentation a config describes (``None`` for ``"none"``), drawing from ``generator``."""
    if config.augmentation == "none":
        return None
    if config.augmentation == "noise":
        return LatentNoise(config.noise_std, generator=generator)
    return FuseMix(
        config.alpha,
        pairing=config.pairing,  # type: ignore[arg-type]
        per_sample=config.per_sample_lambda,
        share_lambda=config.augmentation == "fusemix",
        generator=generator,
    )


def _metric_names(query: str, key: str) -> tuple[str, str]:
    return (query[0], key[0]) if query[0] != key[0] else (query, key)


@torch.no_grad()
def _embed(model: FusionModel, modality: str, latents: Tensor, batch_size: int, device: torch.device) -> Tensor:
    chunks = [model.embed(modality, latents[s : s + batch_size].to(device)) for s in range(0, len(latents), batch_size)]
    return torch.cat(chunks).float()


def evaluate_retrieval(
    model: FusionModel,
    data: PairedLatents,
    pair: tuple[str, str] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 8192,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K in both directions between two modalities of ``data``.

    The model embeds the latents in batches under ``torch.no_grad()`` in
    eval mode (its mode is restored afterwards); ranks follow
    :func:`fusemix.retrieval_metrics`.

    Args:
        model: The trained model.
        data: Paired latents; see :meth:`~fusemix.data.PairedLatents.retrieval_task`.
        pair: ``(query, key)`` modalities, e.g. ``("image", "text")``; the
            first two modalities of ``data`` when ``None``.
        ks: Recall cut-offs.
        batch_size: Rows embedded at once.
        chunk_size: Queries scored at once (``None``: automatic).
        device: Where to embed; the model's device (CPU for a model
            without parameters) when ``None``.

    Returns:
        Metrics such as ``{"i2t_R@1": ..., "t2i_R@10": ..., "mean": ...}``, in percent.

    Example:
        >>> data = PairedLatents({"image": np.random.randn(20, 6), "text": np.random.randn(20, 4)})
        >>> model = model_from_config(data.dims, TrainConfig(shared_dim=3, depth=1))
        >>> metrics = evaluate_retrieval(model, data, ("image", "text"))
        >>> sorted(k for k in metrics if k.endswith("R@1"))
        ['i2t_R@1', 't2i_R@1']

    """
    query, key = _check_pair(data, pair, "pair")
    return _evaluate(model, data.retrieval_task(query, key), (query, key), batch_size, chunk_size, device, ks)


def _check_pair(data: PairedLatents, pair: tuple[str, str] | None, name: str) -> tuple[str, str]:
    if pair is None:
        return data.modalities[0], data.modalities[1]
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"{name}: expected two different modality names (query, key), got {pair!r}")
    for m in pair:
        if m not in data.modalities:
            raise ValueError(f"{name}: {m!r} is not one of {data.modalities}")
    return pair[0], pair[1]


def _evaluate(
    model: FusionModel,
    task: tuple[Tensor, Tensor, Tensor],
    pair: tuple[str, str],
    batch_size: int,
    chunk_size: int | None,
    device: str | torch.device | None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        query = _embed(model, pair[0], task[0], batch_size, device)
        key = _embed(model, pair[1], task[1], batch_size, device)
    finally:
        model.train(was_training)
    return retrieval_metrics(query, key, task[2], ks, chunk_size=chunk_size, names=_metric_names(*pair))


@dataclass(frozen=True)
class TrainState:
    """What a callback sees after each optimizer step.

    Attributes:
        epoch: Epoch of the step (0-based).
        step: Optimizer steps done so far, this one included.
        loss: The step's loss, a detached 0-d tensor on the training device
            (``float(state.loss)`` reads it, at the cost of a device sync).
        lr: The step's learning rate.

    """

    epoch: int
    step: int
    loss: Tensor
    lr: float


@dataclass(frozen=True)
class Selection:
    """The evaluation whose weights :func:`fit` returned with ``selection="best"``.

    Attributes:
        epoch: Epoch at whose end the evaluation ran (0-based).
        step: Optimizer steps done when it ran.
        metric: The ``selection_metric``.
        value: That metric's value there (percent).
        metrics: Every validation metric of that evaluation.

    """

    epoch: int
    step: int
    metric: str
    value: float
    metrics: dict[str, float]


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
        stopped_early: Whether ``patience`` ended training before ``epochs``.
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
    if _halves(config) and (config.batch_size // world_size) % 2:
        raise ValueError(
            f"batch_size: {config.batch_size} over world size {world_size} gives {config.batch_size // world_size} "
            "rows per rank, but pairing='halves' mixes the two halves of each rank's rows and needs an even "
            f"number; use a multiple of {2 * world_size}"
        )


def _halves(config: TrainConfig) -> bool:
    """Whether FuseMix mixes the two halves of every batch (of every rank's slice), which must then be even."""
    return config.augmentation in ("fusemix", "fusemix-independent") and config.pairing == "halves"


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
    multiple = world_size * (2 if _halves(config) else 1)
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


def _metric_keys(pair: tuple[str, str]) -> list[str]:
    """The keys of the validation metrics :func:`fit` computes for ``pair`` (query, key)."""
    ranks = torch.zeros(1, dtype=torch.long)
    return list(metrics_from_ranks(ranks, ranks, names=_metric_names(*pair)))


def _check_selection_target(config: TrainConfig, val: PairedLatents | None, val_pair: tuple[str, str] | None) -> None:
    """Refuse, before training, ``selection="best"`` without ``val`` or with a metric its evaluation lacks."""
    if config.selection != "best":
        return
    if val is None:
        raise ValueError(
            "val: selection='best' keeps the weights of the best evaluation on the validation pairs; pass val= or "
            "use selection='last'"
        )
    pair = _check_pair(val, val_pair, "val_pair")
    keys = _metric_keys(pair)
    if config.selection_metric not in keys:
        raise ValueError(
            f"selection_metric: {config.selection_metric!r} is not a validation metric of val_pair {pair}; "
            f"expected one of {keys}"
        )


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


def _resolve_amp(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp: 'fp16' needs a CUDA device, got {device}; use 'bf16' or 'off'")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]


def _derived_seed(seed: int, stream: int, rank: int = 0) -> int:
    """An independent 63-bit seed for random stream ``stream`` of rank ``rank`` of a run seeded by ``seed``.

    Rank 0's streams are those of a single-process run.
    """
    key = (2**32 + stream,) if rank == 0 else (2**32 + stream, rank)
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0] >> 1)


def _seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's CPU generator and, for a CUDA run, that device's generator (and no other)."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _temperature(model: nn.Module) -> float | None:
    loss = getattr(model, "loss", None)
    if isinstance(loss, ContrastiveLoss):
        return float(loss.current_temperature())
    if isinstance(loss, SigLIPLoss):
        return float(torch.exp(-loss.logit_scale.detach()))
    return None


class _RunLog:
    """History in memory, mirrored to ``log.jsonl`` (appended) and ``log.csv`` (rewritten)."""

    COLUMNS = ("kind", "epoch", "step", "loss", "lr", "temperature", "alpha", "epoch_seconds")
    SELECTION_COLUMNS = ("metric", "value", "stopped_early")
    """Columns added after ``COLUMNS`` once the history holds a ``"selection"`` record."""

    def __init__(self, out_dir: Path | None, history: list[dict[str, Any]]) -> None:
        self.out_dir = out_dir
        self.history = history
        self._jsonl = None
        if out_dir is not None:
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in history)
            write_text_atomic(out_dir / "log.jsonl", text)
            self._jsonl = open(out_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self.write_csv()

    def append(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()

    def write_csv(self) -> None:
        if self.out_dir is None:
            return
        metric_keys = sorted({k for r in self.history for k in r.get("metrics", {})})
        columns = self.COLUMNS
        if any(r.get("kind") == "selection" for r in self.history):
            columns += self.SELECTION_COLUMNS
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*columns, *metric_keys])
        for r in self.history:
            metrics = r.get("metrics", {})
            writer.writerow([_csv_value(r.get(c)) for c in columns] + [_csv_value(metrics.get(k)) for k in metric_keys])
        write_text_atomic(self.out_dir / "log.csv", buf.getvalue())

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _csv_value(value: object) -> object:
    return "" if value is None else value


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> bool:
    """Plot the epoch loss and the recall metrics of ``history`` against epochs into a PNG.

    A ``"selection"`` record (``selection="best"``) is marked on the recall
    panel: a dashed line at the selected epoch and a star at the selected
    metric's value.

    Args:
        history: Log records as in ``FitResult.history``.
        path: The PNG to write (atomically).

    Returns:
        ``True`` when written, ``False`` (with a warning) when matplotlib is
        not installed.

    """
    try:
        figure = _curves_figure(history)
    except ImportError:
        warnings.warn(f"fit: {Path(path).name} skipped because matplotlib is not installed", stacklevel=2)
        return False
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
    return True


def _curves_figure(history: Sequence[Mapping[str, Any]]) -> Any:
    """The matplotlib ``Figure`` of :func:`plot_curves`: loss (left) and validation recall (right) per epoch.

    Raises:
        ImportError: If matplotlib is not installed.

    """
    from matplotlib.figure import Figure

    epochs = [r for r in history if r.get("kind") == "epoch"]
    evals = [r for r in epochs if r.get("metrics")]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, recall_ax = fig.subplots(1, 2)
    loss_ax.plot([r["epoch"] + 1 for r in epochs], [r["loss"] for r in epochs], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="loss")
    keys = sorted({k for r in evals for k in r["metrics"] if k.endswith("_R@1")}) + ["mean"]
    for k in keys:
        points = [(r["epoch"] + 1, r["metrics"][k]) for r in evals if k in r["metrics"]]
        if points:
            recall_ax.plot(*zip(*points), marker="o", label=k)
    selection = next((r for r in history if r.get("kind") == "selection"), None)
    if selection is not None:
        x = selection["epoch"] + 1
        recall_ax.axvline(x, color="0.5", linestyle="--", linewidth=1)
        label = f"selected: {selection['metric']} at epoch {x}"
        recall_ax.plot([x], [selection["value"]], marker="*", markersize=14, linestyle="none", color="k", label=label)
    recall_ax.set(xlabel="epoch", ylabel="recall (%)", title="validation retrieval")
    if evals:
        recall_ax.legend()
    return fig


def _pairing_fingerprint(data: PairedLatents) -> str:
    """SHA-256 of which rows form each pair (modality names and row indices, ``-1`` for absent rows).

    A resumed run compares it with the checkpoint's, so that resuming on other
    pairs of the same size (another pairs file, another pattern of missing
    rows) is refused instead of silently training on different data.
    """
    digest = hashlib.sha256()
    for modality in data.modalities:
        digest.update(modality.encode() + b"\0")
        digest.update(np.ascontiguousarray(data.row_index(modality), dtype="<i8").tobytes())
    return digest.hexdigest()


def _data_identity(data: PairedLatents) -> dict[str, Any]:
    """What a checkpoint records to recognise its training or validation data: size, dims, pairing fingerprint.

    :func:`_check_same_data` compares it on resume; extend the two together
    (a hash of the latent values, say).
    """
    return {"num_pairs": len(data), "dims": data.dims, "pairing": _pairing_fingerprint(data)}


def _check_same_data(name: str, saved: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    """Refuse to resume with ``name`` data (``"train"`` or ``"val"``) other than the checkpoint's.

    Args:
        name: The argument of :func:`fit` the data came in.
        saved: Its :func:`_data_identity` in the checkpoint.
        current: Its :func:`_data_identity` now.
        where: The checkpoint directory, for the message.

    """
    if saved["num_pairs"] != current["num_pairs"] or saved["dims"] != current["dims"]:
        raise ValueError(
            f"{name}: has {current['num_pairs']} pairs with dims {current['dims']}, but the checkpoint in {where} "
            f"was made with {saved['num_pairs']} pairs with dims {saved['dims']} as {name}; resume with the same "
            f"{name}, or train in another out_dir"
        )
    if "pairing" in saved and saved["pairing"] != current["pairing"]:
        raise ValueError(
            f"{name}: pairs its rows differently from the {name} data the checkpoint in {where} was made with (same "
            "number of pairs and dims, other row indices or missing rows); resume with the same pairs, or "
            "train in another out_dir"
        )


def _resume_neutral_fields(config: TrainConfig) -> frozenset[str]:
    """The fields a resume may change: ``RESULT_NEUTRAL_FIELDS``, less ``eval_every`` with ``selection="best"``."""
    return RESULT_NEUTRAL_FIELDS - {"eval_every"} if config.selection == "best" else RESULT_NEUTRAL_FIELDS


def _compare_config(saved: Mapping[str, Any], config: TrainConfig, where: Path) -> None:
    current = config.to_dict()
    saved_config = TrainConfig.from_dict(saved).to_dict()
    neutral = _resume_neutral_fields(config)
    differ = [
        f"{k}={current[k]!r} (checkpoint: {saved_config[k]!r})"
        for k in current
        if k not in neutral and current[k] != saved_config[k]
    ]
    if differ:
        raise ValueError(
            f"config: differs from the checkpoint in {where}: {', '.join(differ)}; resume with the checkpoint's "
            "config (TrainConfig.from_dict of its state.json 'config'), or train in another out_dir"
        )


class _Selector:
    """``selection="best"``: the best evaluation so far, a CPU copy of its weights, and early stopping."""

    def __init__(self, metric: str, patience: int | None) -> None:
        self.metric, self.patience = metric, patience
        self.best: Selection | None = None
        self.weights: dict[str, Tensor] | None = None
        self.since_best = 0
        self.stopped_early = False

    def update(self, epoch: int, step: int, metrics: Mapping[str, float], model: nn.Module) -> None:
        """Take one evaluation: keep the weights on a strictly higher value, else count it towards ``patience``."""
        value = float(metrics[self.metric])
        if self.best is None or value > self.best.value:
            self.best = Selection(epoch=epoch, step=step, metric=self.metric, value=value, metrics=dict(metrics))
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.since_best = 0
            return
        self.since_best += 1
        self.stopped_early = self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The JSON-safe selection state; the weights are saved apart."""
        return {
            "metric": self.metric,
            "best": None if self.best is None else asdict(self.best),
            "evaluations_since_best": self.since_best,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: Mapping[str, Any], weights: dict[str, Tensor] | None, where: Path) -> None:
        """Restore :meth:`state_dict` output and the best weights saved with it (CPU tensors, not shared)."""
        best = state["best"]
        if best is not None and weights is None:
            raise ValueError(f"checkpoint: {where} records a best evaluation but has no {BEST_WEIGHTS}")
        self.best = None if best is None else Selection(**best)
        self.weights = weights
        self.since_best = int(state["evaluations_since_best"])
        self.stopped_early = bool(state["stopped_early"])


class _Run:
    """One call of :func:`fit`: the pieces of the run and the loop over epochs."""

    def __init__(
        self,
        train: PairedLatents,
        config: TrainConfig,
        val: PairedLatents | None,
        val_pair: tuple[str, str] | None,
        out_dir: Path | None,
        model: FusionModel | None,
        callbacks: Sequence[Callable[[TrainState], None]],
        place: ProcessPlace,
        device: torch.device,
    ) -> None:
        self.train_data, self.config, self.out_dir, self.callbacks = train, config, out_dir, tuple(callbacks)
        self.train_identity = _data_identity(train) if out_dir is not None else None  # checked on resume
        self.place, self.device = place, device
        self.threads = torch.get_num_threads()
        self.amp_dtype = _resolve_amp(config, self.device)
        self.model = (model if model is not None else model_from_config(train.dims, config)).to(self.device)
        missing = [m for m in train.modalities if m not in self.model.modalities]
        if missing:
            raise ValueError(f"model: has no adapter for the training modalities {missing}")
        if not train.complete and not loss_accepts_masks(self.model.loss):
            raise ValueError(
                f"model: its loss ({type(self.model.loss).__name__}) does not take masks, but some training pairs "
                "lack a modality (-1 in rows); use ContrastiveLoss or SigLIPLoss, or train on complete pairs "
                "(PairedLatents.subset)"
            )
        # Deterministic, so a resumed run computes it again before loading the checkpoint over it.
        warm_start_from_config(self.model, train, config)
        self.forward_model: nn.Module = self.model
        if place.world_size > 1:
            self.forward_model = self._data_parallel()
            if place.rank > 0:  # every rank starts from the same weights, then draws its own dropout masks
                _seed_torch(_derived_seed(config.seed, 0, place.rank), device)
        self.eval_pair = None if val is None else _check_pair(val, val_pair, "val_pair")
        if self.eval_pair is not None and any(m not in self.model.modalities for m in self.eval_pair):
            raise ValueError(f"val_pair: the model has no adapter for one of {self.eval_pair}")
        self.eval_task = None if val is None else val.retrieval_task(*self.eval_pair)  # type: ignore[misc]
        self.selector = _Selector(config.selection_metric, config.patience) if config.selection == "best" else None
        self.val_identity = None
        if self.selector is not None and out_dir is not None:
            self.val_identity = {**_data_identity(val), "pair": list(self.eval_pair)}  # type: ignore[arg-type]
        aug_device = self.device if config.augmentation == "noise" else torch.device("cpu")
        self.generator = torch.Generator(device=aug_device).manual_seed(_derived_seed(config.seed, 1, place.rank))
        self.augment = augmentation_from_config(config, self.generator)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.batcher = LatentBatcher(
            train,
            config.batch_size,
            shuffle=True,
            drop_last=True,
            seed=config.seed,
            device=self.device,
            preload=config.preload,  # type: ignore[arg-type]
            num_replicas=place.world_size,
            rank=place.rank,
            reuse_buffers=True,  # a step (backward included) is done with its batch before the next is read
        )
        self.steps_per_epoch = len(self.batcher)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, Any]] = []

    def _data_parallel(self) -> DistributedDataParallel:
        """The model wrapped for data parallelism; its loss must gather the other ranks' negatives."""
        loss = self.model.loss
        if isinstance(loss, PairwiseContrastiveLoss) and not loss.gather_distributed:
            raise ValueError(
                f"model: its {type(loss).__name__} has gather_distributed=False, so on {self.place.world_size} "
                "processes each rank would contrast its own rows only; build the loss with gather_distributed=True "
                "(as model_from_config does)"
            )
        unused = any(m not in self.train_data.modalities for m in self.model.modalities)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=unused)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"torch_cpu": torch.get_rng_state(), "torch_cuda": cuda, "augmentation": self.generator.get_state()}

    def _all_rng_states(self) -> dict[str, Any]:
        """This rank's random states; under several processes (a collective) also every rank's, as ``per_rank``."""
        mine = self._rng_state()
        if self.place.world_size == 1:
            return mine
        gathered = {k: None if v is None else all_gather_tensors(v, self.device) for k, v in mine.items()}
        per_rank = [{k: None if v is None else v[r] for k, v in gathered.items()} for r in range(self.place.world_size)]
        return {**mine, "per_rank": per_rank}

    def save_checkpoint(self) -> None:
        """Write the checkpoint from rank 0, with every rank's random states; all ranks wait for it."""
        assert self.out_dir is not None
        rng_state = self._all_rng_states()
        if not self.place.is_main:
            barrier(self.device)
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "fusemix_version": fusemix_version(),
            "epoch": self.epoch,
            "step": self.step,
            "batcher": self.batcher.state_dict(),
            "config": self.config.to_dict(),
            "device_type": self.device.type,
            "world_size": self.place.world_size,
            "threads": self.threads,
            "train": self.train_identity,
            "history": self.history,
        }
        if self.selector is not None:
            state["val"] = self.val_identity
            state["selection"] = self.selector.state_dict()
        optimizer = {
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }
        save_training_checkpoint(
            self.out_dir / CHECKPOINT_DIR,
            model=self.model,
            optimizer_state=optimizer,
            rng_state=rng_state,
            state=state,
            best_state=None if self.selector is None else self.selector.weights,
        )
        barrier(self.device)

    def restore(self, resume: bool) -> None:
        """Load the checkpoint of ``out_dir`` if there is one (and ``resume``), else start afresh.

        Under several processes rank 0 first settles an interrupted checkpoint
        write, then every rank loads the checkpoint and the ranks check that
        they all saw the same one.
        """
        ckpt = None
        if self.out_dir is not None and self.place.is_main:
            recover_directory(self.out_dir / CHECKPOINT_DIR)
        barrier(self.device)
        if self.out_dir is not None:
            ckpt = load_training_checkpoint(self.out_dir / CHECKPOINT_DIR)
        self._check_ranks_agree(ckpt)
        if ckpt is None:
            return
        assert self.out_dir is not None
        where = self.out_dir / CHECKPOINT_DIR
        state = ckpt.state
        if not resume:
            raise FileExistsError(
                f"out_dir: {self.out_dir} holds a checkpoint (epoch {state.get('epoch')} of "
                f"{state.get('config', {}).get('epochs')}); pass resume=True to continue it, or use another out_dir"
            )
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint: {where} is not a fusemix training checkpoint")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.place.world_size:
            raise ValueError(
                f"out_dir: the checkpoint in {where} was saved by a run on {saved_world} process(es), but this run "
                f"has {self.place.world_size}; every rank's slice of the batch and its mixing and dropout streams "
                f"depend on the world size, so resume it on {saved_world} process(es) (torchrun "
                f"--nproc_per_node={saved_world}) or train in another out_dir"
            )
        _compare_config(state["config"], self.config, where)
        _check_same_data("train", state["train"], self.train_identity, where)  # type: ignore[arg-type]
        if self.selector is not None:
            self._restore_selection(ckpt, where)
        self._warn_threads(state.get("threads"))
        try:
            self.model.load_state_dict(ckpt.model_state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"model: does not fit the checkpoint in {where}: {err}") from err
        self.optimizer.load_state_dict(ckpt.optimizer_state["optimizer"])
        if self.scaler is not None and ckpt.optimizer_state.get("grad_scaler") is not None:
            self.scaler.load_state_dict(ckpt.optimizer_state["grad_scaler"])
        rng = ckpt.rng_state if self.place.world_size == 1 else ckpt.rng_state["per_rank"][self.place.rank]
        self._restore_rng(rng, state.get("device_type"))
        self.batcher.load_state_dict(state["batcher"])
        self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state["history"])

    def _restore_selection(self, ckpt: TrainingCheckpoint, where: Path) -> None:
        """Check that ``val`` is the checkpoint's validation data, then restore the selection state."""
        assert self.selector is not None and self.val_identity is not None
        saved = ckpt.state["val"]
        _check_same_data("val", saved, self.val_identity, where)
        if saved["pair"] != self.val_identity["pair"]:
            raise ValueError(
                f"val_pair: {tuple(self.val_identity['pair'])} differs from {tuple(saved['pair'])}, which the "
                f"checkpoint in {where} selected on; resume with the same val_pair, or train in another out_dir"
            )
        self.selector.load_state_dict(ckpt.state["selection"], ckpt.best_state, where)

    def _warn_threads(self, saved: int | None) -> None:
        if saved is not None and saved != self.threads:
            warnings.warn(
                f"fit: resuming a run saved with {saved} torch thread(s) on {self.threads} (threads); the weights "
                "continue, but float rounding changes with the thread count, so results differ in the last bits "
                "from an uninterrupted run",
                stacklevel=5,
            )

    def _check_ranks_agree(self, ckpt: TrainingCheckpoint | None) -> None:
        """Refuse (on every rank) to go on when the ranks got different ``out_dir`` or saw different checkpoints."""
        if self.place.world_size == 1:
            return
        view = [-1, -1] if ckpt is None else [int(ckpt.state.get("epoch", -1)), int(ckpt.state.get("step", -1))]
        mine = torch.tensor([int(self.out_dir is not None), *view], dtype=torch.int64)
        views = [v.tolist() for v in all_gather_tensors(mine, self.device)]
        if all(v == views[0] for v in views):
            return
        if len({v[0] for v in views}) > 1:
            given = [r for r, v in enumerate(views) if v[0]]
            raise ValueError(
                f"out_dir: given on ranks {given} only; pass the same out_dir on every rank (only rank 0 writes to it)"
            )
        seen = ", ".join(
            f"rank {r}: " + ("no checkpoint" if v[1] < 0 else f"epoch {v[1]}, step {v[2]}") for r, v in enumerate(views)
        )
        raise ValueError(
            f"out_dir: the ranks see different checkpoints in {self.out_dir / CHECKPOINT_DIR} ({seen}); out_dir must "
            "be on a filesystem that every rank reads (one machine, or a shared filesystem)"
        )

    def _restore_rng(self, rng: Mapping[str, Any], saved_device_type: str | None) -> None:
        torch.set_rng_state(rng["torch_cpu"])
        same_device = saved_device_type == self.device.type
        if not same_device:
            warnings.warn(
                f"fit: resuming a run saved on {saved_device_type} on {self.device.type}; weights, optimizer and CPU "
                "random state continue, device random streams restart, so results differ from an uninterrupted run",
                stacklevel=3,
            )
        if same_device and self.device.type == "cuda" and rng.get("torch_cuda") is not None:
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        if same_device or self.generator.device.type == "cpu":
            self.generator.set_state(rng["augmentation"])

    # -- training ------------------------------------------------------------------------------------------------

    def _due(self, every: int, epoch: int) -> bool:
        return epoch + 1 == self.config.epochs or (every > 0 and (epoch + 1) % every == 0)

    @property
    def finished(self) -> bool:
        """Whether every epoch ran, or ``patience`` stopped the run."""
        return self.epoch >= self.config.epochs or (self.selector is not None and self.selector.stopped_early)

    def _record(self, kind: str, epoch: int, loss: float, lr: float, alpha: float | None) -> dict[str, Any]:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss: became {loss} at step {self.step} (epoch {epoch}); lower lr, set grad_clip or use amp='off'"
            )
        temperature = _temperature(self.model)
        return dict(kind=kind, epoch=epoch, step=self.step, loss=loss, lr=lr, temperature=temperature, alpha=alpha)

    def _loss(self, batch: LatentBatch) -> Tensor:
        """The loss of one batch: augmented (masks and all) when configured, then the model."""
        masks = batch.masks
        if masks is None:
            return self.forward_model(self.augment(batch) if self.augment is not None else batch)
        latents: Mapping[str, Tensor] = batch
        if self.augment is not None:
            latents, masks = self.augment(batch, masks=masks)
        return self.forward_model(latents, masks=masks)

    def _train_step(self, batch: LatentBatch, lr: float) -> Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        return loss.detach()

    def run_epoch(self, log: _RunLog, bar: Any) -> None:
        epoch, config = self.epoch, self.config
        alpha = alpha_at(epoch, config) if isinstance(self.augment, FuseMix) else None
        if alpha is not None:
            self.augment.alpha = alpha  # type: ignore[union-attr]
        self.model.train()
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        started = time.perf_counter()
        epoch_sum = torch.zeros((), device=self.device)
        window_sum = torch.zeros((), device=self.device)
        window, lr = 0, config.lr
        first_batch = self.batcher.batch_index
        for batch in self.batcher:
            lr = lr_at(self.step, epoch, self.steps_per_epoch, config)
            loss = self._train_step(batch, lr)
            self.step += 1
            epoch_sum += loss.float()
            window_sum += loss.float()
            window += 1
            if self.step % config.log_every == 0:
                window_loss = float(all_reduce_sum(window_sum)) / (window * self.place.world_size)
                log.append(self._record("step", epoch, window_loss, lr, alpha))
                window_sum.zero_()
                window = 0
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{log.history[-1]['loss']:.4f}", lr=f"{lr:.2e}", temp=log.history[-1]["temperature"]
                    )
            if bar is not None:
                bar.update(1)
            if self.callbacks:
                state = TrainState(epoch=epoch, step=self.step, loss=loss, lr=lr)
                for callback in self.callbacks:
                    callback(state)
        steps = (self.steps_per_epoch - first_batch) * self.place.world_size
        record = self._record("epoch", epoch, float(all_reduce_sum(epoch_sum)) / steps, lr, alpha)
        if self.eval_task is not None and self._due(config.eval_every, epoch):
            record["metrics"] = self.evaluate()
            if self.selector is not None:
                self.selector.update(epoch, self.step, record["metrics"], self.model)
        record["epoch_seconds"] = time.perf_counter() - started
        log.append(record)
        self.epoch = epoch + 1
        if self.out_dir is not None and (self._due(config.checkpoint_every, epoch) or self.finished):
            self.save_checkpoint()
        log.write_csv()

    def conclude(self, log: _RunLog) -> None:
        """With ``selection="best"``: put the selected weights in the model and log the ``"selection"`` record."""
        if self.selector is None:
            return
        best = self.selector.best
        assert best is not None and self.selector.weights is not None  # the run's last epoch is always evaluated
        self.model.load_state_dict(self.selector.weights)
        log.append(
            {
                "kind": "selection",
                "epoch": best.epoch,
                "step": best.step,
                "metric": best.metric,
                "value": best.value,
                "stopped_early": self.selector.stopped_early,
                "metrics": dict(best.metrics),
            }
        )
        log.write_csv()

    def result(self) -> FitResult:
        """What :func:`fit` returns, once the run is concluded."""
        selected = None if self.selector is None else self.selector.best
        if selected is not None:
            metrics: dict[str, float] | None = dict(selected.metrics)
        else:
            evaluated = [r["metrics"] for r in self.history if r.get("kind") == "epoch" and "metrics" in r]
            metrics = evaluated[-1] if evaluated else None
        return FitResult(
            model=self.model,
            history=self.history,
            metrics=metrics,
            out_dir=self.out_dir,
            config=self.config,
            selected=selected,
            stopped_early=self.selector is not None and self.selector.stopped_early,
            steps=self.step,
        )

    def evaluate(self) -> dict[str, float]:
        assert self.eval_task is not None and self.eval_pair is not None
        return _evaluate(
            self.model, self.eval_task, self.eval_pair, self.config.batch_size, self.config.eval_chunk_size, self.device
        )


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

    Returns:
        A :class:`FitResult`.

    Raises:
        ImportError: If ``out_dir`` is given and safetensors is not installed.
        ValueError: If the config, the data or a checkpoint do not fit: in
            particular ``selection="best"`` without ``val`` or with a
            ``selection_metric`` that ``val_pair``'s evaluation lacks (before
            any step), a checkpoint saved with another config (fields in
            ``RESULT_NEUTRAL_FIELDS`` may change, except ``eval_every`` with
            ``selection="best"``), or other ``train`` or ``val`` data.
        FileExistsError: If ``resume=False`` and ``out_dir`` holds a checkpoint.
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
    with _torch_threads(config.threads):
        return _fit(train, config, val, val_pair, out_dir, model, resume, progress, callbacks)


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
) -> FitResult:
    """:func:`fit` once its arguments' types are checked and its thread count is set."""
    place = launch_environment()
    _check_world(config, place.world_size)
    config = _fit_batch_to_data(config, len(train), place.world_size)
    _check_selection_target(config, val, val_pair)
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
    run: _Run | None = None
    try:
        cuda_devices = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
            _seed_torch(_derived_seed(config.seed, 0), device)
            run = _Run(train, config, val, val_pair, run_dir, model, callbacks, place, device)
            run.restore(resume)
            log = _RunLog(run_dir if place.is_main else None, run.history)
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
            save_model(run.model, run_dir / MODEL_DIR, config=config)
            plot_curves(run.history, run_dir / "curves.png")
        barrier(device)
    except Exception as err:
        if place.world_size > 1:
            _note_rank(err, place, config, run)
        raise
    return run.result()


def _destroy_process_group() -> None:
    """At exit: destroy the process group :func:`fit` created, if it is still there."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _note_rank(err: Exception, place: ProcessPlace, config: TrainConfig, run: _Run | None) -> None:
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
