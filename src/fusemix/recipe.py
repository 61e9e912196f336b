"""What a :class:`~fusemix.train_config.TrainConfig` builds: model, warm start, augmentation, optimizer, schedules.

:func:`fusemix.train.fit` builds every piece of a run here, once, and so can
a training loop of your own (see :doc:`/guide/training`):

- :func:`model_from_config` and :func:`warm_start_from_config`: the
  :class:`~fusemix.FusionModel` and its closed-form warm start;
- :func:`augmentation_from_config`: :class:`~fusemix.FuseMix` (with its alpha
  schedule, :func:`alpha_schedule_from_config`, stepped by ``set_epoch``),
  :class:`~fusemix.LatentNoise` or nothing;
- :func:`build_optimizer` over :func:`weight_decay_groups`;
- :class:`LearningRateSchedule` (and :func:`lr_at`), :func:`alpha_at`;
- :func:`derived_seed`: the independent random streams of a seeded run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fusemix._checks import check_int, check_positive_int
from fusemix._paired import PairedLatents
from fusemix.aligners import CCAAligner, ProcrustesAligner
from fusemix.losses import ContrastiveLoss, SigLIPLoss
from fusemix.mixing import FuseMix, LatentNoise
from fusemix.model import FusionModel
from fusemix.regularizers import StructureLoss
from fusemix.schedules import AlphaSchedule, CosineAlphaSchedule, ExponentialAlphaSchedule
from fusemix.train_config import TrainConfig
from fusemix.warmstart import aligner_input_norm, warm_start

INIT_STREAM = 0
"""Random stream of the initialisation and of dropout (torch's generators)."""
AUGMENTATION_STREAM = 1
"""Random stream of the augmentation's generator."""
WARM_START_STREAM = 3
"""Random stream of the warm start's subset of pairs."""


def derived_seed(seed: int, stream: int, rank: int = 0) -> int:
    """An independent 63-bit seed for random stream ``stream`` of rank ``rank`` of a run seeded by ``seed``.

    Rank 0's streams are those of a single-process run.

    Example:
        >>> derived_seed(0, INIT_STREAM) == derived_seed(0, INIT_STREAM), derived_seed(0, 0) != derived_seed(0, 1)
        (True, True)

    """
    key = (2**32 + stream,) if rank == 0 else (2**32 + stream, rank)
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0] >> 1)


class LearningRateSchedule:
    """The learning rate of every optimizer step of a run, as in the authors' code.

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
        config: The run's config (``lr``, ``warmup_steps``,
            ``warmup_start_lr``, ``min_lr``, ``epochs``).
        steps_per_epoch: Optimizer steps per epoch.

    Example:
        >>> schedule = LearningRateSchedule(TrainConfig(epochs=2, warmup_steps=2, warmup_start_lr=0.0), 4)
        >>> [round(schedule(step, step // 4), 6) for step in range(8)]
        [0.0, 0.0005, 0.001, 0.001, 0.000501, 0.000501, 0.000501, 0.000501]

    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)

    def __call__(self, step: int, epoch: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based, over the run), taken in epoch ``epoch``.

        Raises:
            ValueError: If ``epoch`` is outside ``[0, epochs)`` or ``step``
                outside ``[epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)``.

        """
        config, steps_per_epoch = self.config, self.steps_per_epoch
        check_int("step", step, 0)
        check_int("epoch", epoch, 0)
        if epoch >= config.epochs:
            raise ValueError(f"epoch: expected an epoch in [0, {config.epochs}), got {epoch}")
        if not epoch * steps_per_epoch <= step < (epoch + 1) * steps_per_epoch:
            raise ValueError(f"step: {step} does not belong to epoch {epoch} of {steps_per_epoch} steps")
        cosine = config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
        if step < config.warmup_steps:
            warm = config.warmup_start_lr + (config.lr - config.warmup_start_lr) * step / config.warmup_steps
            return min(warm, cosine)
        return cosine


def lr_at(step: int, epoch: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based), taken in epoch ``epoch``: see :class:`LearningRateSchedule`.

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
    return LearningRateSchedule(config, steps_per_epoch)(step, epoch)


def alpha_schedule_from_config(config: TrainConfig) -> AlphaSchedule | None:
    """The per-epoch alpha schedule of ``config`` over its ``epochs``, or ``None`` for a constant ``alpha``.

    Example:
        >>> alpha_schedule_from_config(TrainConfig(epochs=10, alpha=0.1, alpha_schedule="cosine", alpha_end=1.0))
        CosineAlphaSchedule(start=0.1, end=1.0, total_steps=10)

    """
    if config.alpha_schedule is None:
        return None
    kind = CosineAlphaSchedule if config.alpha_schedule == "cosine" else ExponentialAlphaSchedule
    return kind(config.alpha, config.alpha_end, config.epochs)  # type: ignore[arg-type]


def alpha_at(epoch: int, config: TrainConfig) -> float:
    """Mixing alpha of epoch ``epoch``: ``config.alpha``, or its per-epoch schedule to ``alpha_end``.

    Example:
        >>> config = TrainConfig(epochs=10, alpha=0.1, alpha_schedule="cosine", alpha_end=1.0)
        >>> [round(alpha_at(e, config), 3) for e in (0, 5, 10)]
        [0.1, 0.55, 1.0]

    """
    schedule = alpha_schedule_from_config(config)
    return config.alpha if schedule is None else schedule(epoch)


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
        rng = np.random.default_rng(derived_seed(config.seed, WARM_START_STREAM))
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


def augmentation_from_config(config: TrainConfig, generator: torch.Generator | None) -> FuseMix | LatentNoise | None:
    """The augmentation a config describes (``None`` for ``"none"``), drawing from ``generator``.

    FuseMix carries the config's alpha schedule: call its ``set_epoch`` at the
    start of every epoch (``LatentNoise.set_epoch`` does nothing), as
    :func:`fusemix.train.fit` does.

    Example:
        >>> config = TrainConfig(epochs=10, alpha=0.1, alpha_schedule="cosine", alpha_end=1.0)
        >>> mix = augmentation_from_config(config, torch.Generator().manual_seed(0))
        >>> mix.set_epoch(5)
        >>> round(mix.alpha, 3) == round(alpha_at(5, config), 3) == 0.55
        True

    """
    if config.augmentation == "none":
        return None
    if config.augmentation == "noise":
        return LatentNoise(config.noise_std, generator=generator)
    schedule = alpha_schedule_from_config(config)
    return FuseMix(
        None if schedule is not None else config.alpha,
        pairing=config.pairing,  # type: ignore[arg-type]
        per_sample=config.per_sample_lambda,
        share_lambda=config.augmentation == "fusemix",
        generator=generator,
        schedule=schedule,
    )
