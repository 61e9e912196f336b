"""The settings of a training run: :class:`TrainConfig`, whose defaults are the authors' image-text recipe.

AdamW (betas 0.9/0.999, weight decay 0.1 on the weights of linear layers
only), learning rate 1e-3 with 100 linear warm-up steps from 1e-6 and a
per-epoch cosine to 1e-6, 500 epochs of batches of 40,960 pairs mixed in
halves with one ``lam ~ Beta(1, 1)`` per batch, fusion adapters of depth 4,
expansion 4, dropout 0.6 into a 512-d space, InfoNCE with a learnable
temperature initialised at 0.07. One default departs from it: ``amp="auto"``
trains under bf16 autocast on CUDA, where the authors used fp32
(``amp="off"``).

A config is plain data, checked when built (every message starts with the
field's name) and round-tripped through JSON by :meth:`TrainConfig.to_dict` /
:meth:`TrainConfig.from_dict`; :mod:`fusemix.recipe` builds the objects it
describes and :func:`fusemix.train.fit` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from fusemix._checks import check_bool, check_choice, check_int, check_nonnegative, check_positive, check_positive_int
from fusemix.mixing import PAIRINGS

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
        check_int("batch_size", self.batch_size, 2)
        check_positive("lr", self.lr)
        check_int("warmup_steps", self.warmup_steps, 0)
        if check_nonnegative("warmup_start_lr", self.warmup_start_lr) > self.lr:
            raise ValueError(f"warmup_start_lr: must not exceed lr={self.lr}, got {self.warmup_start_lr}")
        if check_nonnegative("min_lr", self.min_lr) > self.lr:
            raise ValueError(f"min_lr: must not exceed lr={self.lr}, got {self.min_lr}")
        check_nonnegative("weight_decay", self.weight_decay)
        self.betas = self._check_betas(self.betas)
        check_positive("eps", self.eps)
        check_positive_int("shared_dim", self.shared_dim)
        check_choice("adapter", self.adapter, ("fusion", "linear"))
        check_int("depth", self.depth, 0)
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
        check_bool("per_sample_lambda", self.per_sample_lambda)
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
            check_int("threads", self.threads, 1)
        check_int("seed", self.seed, 0)
        check_int("eval_every", self.eval_every, 0)
        self._check_selection()
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_positive_int("log_every", self.log_every)
        if self.eval_chunk_size is not None:
            check_positive_int("eval_chunk_size", self.eval_chunk_size)
        check_bool("local_loss", self.local_loss)
        check_positive("dist_timeout_s", self.dist_timeout_s)
        check_nonnegative("structure_weight", self.structure_weight)
        check_positive("structure_temperature", self.structure_temperature)
        check_choice("structure_divergence", self.structure_divergence, ("js", "kl"))
        check_choice("warm_start", self.warm_start, WARM_STARTS)
        check_nonnegative("warm_start_regularization", self.warm_start_regularization)
        check_int("warm_start_max_pairs", self.warm_start_max_pairs, 2)
        if self.mixes_halves and self.batch_size % 2:
            raise ValueError(
                f"batch_size: must be even with pairing='halves' (FuseMix mixes the two halves), got {self.batch_size}"
            )

    @property
    def mixes_halves(self) -> bool:
        """Whether FuseMix mixes the two halves of every batch (of every rank's slice), which must then be even."""
        return self.augmentation in ("fusemix", "fusemix-independent") and self.pairing == "halves"

    def _check_selection(self) -> None:
        check_choice("selection", self.selection, SELECTIONS)
        if not isinstance(self.selection_metric, str):
            raise TypeError(f"selection_metric: expected a string, got {type(self.selection_metric).__name__}")
        if not self.selection_metric:
            raise ValueError("selection_metric: expected a validation metric name such as 'mean' or 'i2t_mean'")
        if self.patience is None:
            return
        check_int("patience", self.patience, 1)
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
