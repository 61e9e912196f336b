"""Aligning one modality into another model's *fixed* space, e.g. audio into a text-to-image model's conditioning.

The FuseMix paper's audio-to-image result aligns audio latents into the text
conditioning space of a pre-trained text-to-image model, whose own text space
stays as it is. Here that is a :class:`~fusemix.FusionModel` with two sides:

- the **source** side (e.g. ``"audio"``) learns a
  :class:`~fusemix.FusionAdapter` from its latents of width ``d_src`` to the
  target width ``d_tgt``;
- the **target** side (e.g. ``"text"``) is an
  :class:`~fusemix.IdentityAdapter`: no parameters, its "shared space" *is* the
  target space (e.g. each caption's conditioning tensor as the pipeline
  computes it, flattened to a vector).

:func:`fixed_target_model` builds that model with a :class:`FixedTargetLoss`:
the paper's contrastive loss between the two sides plus a
:class:`TargetRegressionLoss` that pulls the source adapter's raw,
un-normalised output onto the paired target. The contrastive loss compares
directions only (it L2-normalises both sides), so on its own it leaves the
output's norm, and any offset shared by all targets, free; a text-to-image
pipeline consumes the raw vector (cross-attention keys and values are linear
in ``prompt_embeds``, so a wrong scale changes both the attention weights and
the values), so the regression term supplies scale and offset. It trains with
:func:`fusemix.train.fit` unchanged (pass the model as ``fit(..., model=...)``):
FuseMix mixes the source latents and the fixed target latents with the same
lambda and pairing, and the identity target side passes the mixed target
through, so a mixed pair is a valid (input, target) pair for both terms.

Targets are best handed to training through a :class:`TargetStandardizer`
(centre every dimension, divide by one global scale): CLIP-style conditioning
has large offsets that an adapter trained with Adam at ``lr=1e-3`` would need
thousands of steps to reach (each step moves a weight by about ``lr``), and
centring also stops one shared direction from dominating the contrastive
cosines. Predictions go back with :meth:`TargetStandardizer.inverse`.

A target that is a token *sequence* (Stable Diffusion's ``prompt_embeds`` of
shape ``(77, d)``) becomes a vector through a :class:`SequenceTemplate`: a
window of positions is flattened into the target, and a prediction is written
back into a fixed template sequence (the pipeline's encoding of the empty
prompt), which supplies the positions outside the window. A
:class:`ConditioningLayout` concatenates several such parts, e.g. SDXL's
``prompt_embeds`` and ``pooled_prompt_embeds``, into one target vector and
splits a prediction back into the keyword arguments the pipeline takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusemix._checks import (
    check_choice,
    check_features,
    check_floating,
    check_nonnegative,
    check_positive_int,
    check_same_rows,
)
from fusemix._registry import build_part, describe_part, register_part
from fusemix.adapters import FusionAdapter, IdentityAdapter, LinearAdapter
from fusemix.losses import ContrastiveLoss, PairwiseContrastiveLoss
from fusemix.model import FusionModel


@register_part("regression", "target-regression")
class TargetRegressionLoss(nn.Module):
    """Share of the target's variance that the prediction leaves unexplained (a normalised squared error).

    For predictions ``p`` and targets ``t`` of shape ``(B, D)``::

        loss = sum_i ||p_i - t_i||^2 / sum_i ||t_i - mean_j(t_j)||^2

    0 is a perfect prediction, 1 is what predicting the batch mean of the
    targets scores. The denominator is detached (a constant per batch): the
    gradient is that of a plain squared error, scaled so that one weight
    suits target spaces of any width and scale (a 768-d CLIP token sequence
    or a unit-norm 384-d sentence embedding). A squared error fits both the
    direction and the norm of each target, and its minimiser is the
    conditional mean of the target given the input, the best single vector
    to hand to a model that consumes it; where the input does not determine
    the target, that mean is pulled towards the average target.

    Args:
        eps: Floor of the denominator, relative to the targets' mean squared
            norm, so a batch of identical targets does not divide by zero.

    Shape:
        - Input: ``prediction`` and ``target`` of shape ``(B, D)``, ``B >= 1``.
        - Output: scalar.

    Example:
        >>> loss_fn = TargetRegressionLoss()
        >>> t = torch.randn(8, 5)
        >>> float(loss_fn(t, t)), round(float(loss_fn(t.mean(0).expand(8, 5), t)), 4)
        (0.0, 1.0)

    """

    def __init__(self, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = check_nonnegative("eps", eps)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        prediction = check_features("prediction", prediction)
        target = check_features("target", target)
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction: shape {tuple(prediction.shape)} differs from the target's {tuple(target.shape)}"
            )
        error = (prediction - target).pow(2).sum()
        with torch.no_grad():
            t = target.float()
            spread = (t - t.mean(dim=0)).pow(2).sum()
            floor = self.eps * t.pow(2).sum() + torch.finfo(torch.float32).tiny
            denominator = torch.maximum(spread, floor)
        return error / denominator.to(error.dtype)

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this loss: ``eps``."""
        return {"eps": self.eps}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TargetRegressionLoss:
        """The loss :meth:`to_config`'s settings describe."""
        return cls(eps=config["eps"])

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


@register_part("loss", "fixed-target")
class FixedTargetLoss(nn.Module):
    """Contrastive loss between a source and a fixed target, plus a regression of the source onto the target.

    ``loss = contrastive_weight * contrastive(source, target)
    + regression_weight * TargetRegressionLoss(source, target)``, where
    ``source`` and ``target`` are the two sides' (un-normalised) features.
    The regression is only meaningful when the target side is fixed (an
    :class:`~fusemix.IdentityAdapter`): with a trainable target side both
    sides could drift together. Use it as ``FusionModel(..., loss=...)``;
    :func:`fixed_target_model` does.

    Args:
        source: Name of the modality that learns an adapter.
        target: Name of the fixed modality.
        regression_weight: Weight of :class:`TargetRegressionLoss` (0 gives the
            plain contrastive objective).
        contrastive_weight: Weight of the contrastive term (0 gives plain
            regression).
        contrastive: The contrastive loss; a :class:`~fusemix.ContrastiveLoss`
            with the paper's settings (learnable temperature from 0.07) when
            ``None``.
        regression: The regression loss; :class:`TargetRegressionLoss` when ``None``.

    Shape:
        - Input: a dict with ``source`` and ``target`` features, each ``(B, D)``.
        - Output: scalar, or with ``return_dict=True`` a dict with ``"loss"``,
          ``"contrastive"`` and ``"regression"`` (the unweighted terms).

    Example:
        >>> loss_fn = FixedTargetLoss("audio", "text", regression_weight=1.0)
        >>> t = torch.randn(8, 6)
        >>> parts = loss_fn({"audio": t + 0.1 * torch.randn(8, 6), "text": t}, return_dict=True)
        >>> sorted(parts)
        ['contrastive', 'loss', 'regression']

    """

    def __init__(
        self,
        source: str = "audio",
        target: str = "text",
        *,
        regression_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        contrastive: PairwiseContrastiveLoss | None = None,
        regression: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("source", source), ("target", target)):
            if not isinstance(value, str) or not value or "." in value:
                raise ValueError(f"{name}: expected a non-empty modality name without '.', got {value!r}")
        if source == target:
            raise ValueError(f"target: must differ from source, both are {source!r}")
        self.source, self.target = source, target
        self.regression_weight = check_nonnegative("regression_weight", regression_weight)
        self.contrastive_weight = check_nonnegative("contrastive_weight", contrastive_weight)
        if self.regression_weight == 0 and self.contrastive_weight == 0:
            raise ValueError("regression_weight, contrastive_weight: at least one must be > 0")
        if contrastive is not None and not isinstance(contrastive, PairwiseContrastiveLoss):
            raise TypeError(f"contrastive: expected a ContrastiveLoss or SigLIPLoss, got {type(contrastive).__name__}")
        if regression is not None and not isinstance(regression, nn.Module):
            raise TypeError(f"regression: expected an nn.Module, got {type(regression).__name__}")
        self.contrastive = contrastive if contrastive is not None else ContrastiveLoss()
        self.regression = regression if regression is not None else TargetRegressionLoss()

    def forward(self, features: Mapping[str, Tensor], *, return_dict: bool = False) -> Tensor | dict[str, Tensor]:
        """Compute the loss.

        Args:
            features: Modality name to features; must hold exactly the
                source and the target. Shape of each: ``(B, D)``, ``B >= 2``.
            return_dict: Return ``{"loss", "contrastive", "regression"}``.

        Returns:
            The weighted sum, or the dict.

        """
        if not isinstance(features, Mapping):
            raise TypeError(f"features: expected a dict of modality name to features, got {type(features).__name__}")
        if set(features) != {self.source, self.target}:
            raise ValueError(
                f"features: expected exactly the modalities {[self.source, self.target]}, got {list(features)}"
            )
        src = check_features(f"features[{self.source!r}]", features[self.source], min_rows=2)
        tgt = check_features(f"features[{self.target!r}]", features[self.target], min_rows=2)
        check_same_rows([(f"features[{self.source!r}]", src), (f"features[{self.target!r}]", tgt)])
        contrastive = self.contrastive({self.source: src, self.target: tgt})
        regression = self.regression(src, tgt)
        total = self.contrastive_weight * contrastive + self.regression_weight * regression
        if return_dict:
            return {"loss": total, "contrastive": contrastive, "regression": regression}
        return total

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this loss, its two terms described in turn.

        Returns:
            ``{"source", "target", "regression_weight", "contrastive_weight",
            "contrastive", "regression"}``, the last two as
            ``{"type": ..., **settings}``.

        Raises:
            TypeError: If a term is a custom module (not a registered part).

        """
        return {
            "source": self.source,
            "target": self.target,
            "regression_weight": self.regression_weight,
            "contrastive_weight": self.contrastive_weight,
            "contrastive": describe_part("loss", self.contrastive, where="FixedTargetLoss: contrastive"),
            "regression": describe_part("regression", self.regression, where="FixedTargetLoss: regression"),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FixedTargetLoss:
        """The loss :meth:`to_config`'s settings describe, terms included."""
        return cls(
            config["source"],
            config["target"],
            regression_weight=config["regression_weight"],
            contrastive_weight=config["contrastive_weight"],
            contrastive=build_part("loss", config["contrastive"], where="contrastive"),
            regression=build_part("regression", config["regression"], where="regression"),
        )

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, target={self.target!r}, regression_weight={self.regression_weight}, "
            f"contrastive_weight={self.contrastive_weight}"
        )


def fixed_target_model(
    source_dim: int,
    target_dim: int,
    *,
    source: str = "audio",
    target: str = "text",
    regression_weight: float = 1.0,
    contrastive_weight: float = 1.0,
    adapter: str = "fusion",
    depth: int = 4,
    expansion: int = 4,
    dropout: float = 0.6,
    contrastive: PairwiseContrastiveLoss | None = None,
) -> FusionModel:
    """A :class:`~fusemix.FusionModel` that maps ``source`` latents into the fixed space of ``target``.

    The source side is a :class:`~fusemix.FusionAdapter` (or
    :class:`~fusemix.LinearAdapter`) from ``source_dim`` to ``target_dim``;
    the target side is an :class:`~fusemix.IdentityAdapter` with no
    parameters; the loss is a :class:`FixedTargetLoss`. Train it with
    ``fusemix.train.fit(train, config, model=model)`` (the config's adapter
    and loss fields are then unused); predict target vectors with
    ``model.project(source, latents)``.

    Args:
        source_dim: Width of the source latents.
        target_dim: Width of the target vectors (e.g. a
            :class:`ConditioningLayout`'s ``dim``).
        source: Name of the source modality.
        target: Name of the target modality.
        regression_weight: Weight of the regression term (see :class:`FixedTargetLoss`).
        contrastive_weight: Weight of the contrastive term.
        adapter: ``"fusion"`` (the paper's) or ``"linear"``.
        depth: Residual blocks of the fusion adapter (paper: 4).
        expansion: Hidden width multiplier of each block (paper: 4).
        dropout: Dropout inside each block (paper: 0.6).
        contrastive: The contrastive loss; the paper's InfoNCE when ``None``.

    Returns:
        The model, with modalities ``[source, target]``.

    Example:
        >>> model = fixed_target_model(256, 384, source="audio", target="text", depth=1)
        >>> [name for name, _ in model.named_parameters() if name.startswith("adapters.text")]
        []
        >>> model.project("audio", torch.randn(4, 256)).shape
        torch.Size([4, 384])

    """
    check_positive_int("source_dim", source_dim)
    check_positive_int("target_dim", target_dim)
    check_choice("adapter", adapter, ("fusion", "linear"))
    loss = FixedTargetLoss(
        source,
        target,
        regression_weight=regression_weight,
        contrastive_weight=contrastive_weight,
        contrastive=contrastive,
    )
    source_adapter: nn.Module
    if adapter == "fusion":
        source_adapter = FusionAdapter(source_dim, target_dim, depth=depth, expansion=expansion, dropout=dropout)
    else:
        source_adapter = LinearAdapter(source_dim, target_dim)
    return FusionModel({source: source_adapter, target: IdentityAdapter(target_dim)}, loss=loss)


_FIT_CHUNK_ELEMENTS = 2**22
"""Values read at a time when :meth:`TargetStandardizer.fit` streams rows (32 MiB in float64)."""


class TargetStandardizer(nn.Module):
    """Centres target vectors per dimension and divides them by one global scale.

    ``forward(t) = (t - mean) / scale`` with ``mean`` the per-dimension mean
    of the training targets and ``scale`` the root mean square of the
    centred values (one number, so the relative weight of the dimensions,
    the geometry the pipeline sees, is kept); :meth:`inverse` undoes it.
    Train on standardised targets, then map predictions back with
    :meth:`inverse` before handing them to the target model. The regression
    loss is unchanged by the transform (:class:`TargetRegressionLoss` is
    invariant to a shift and a global scale of both sides).

    Args:
        mean: Per-dimension mean. Shape: ``(D,)``.
        scale: The global scale (> 0).

    Example:
        >>> targets = 3.0 * torch.randn(100, 4) + torch.tensor([10.0, -2.0, 0.0, 5.0])
        >>> standardizer = TargetStandardizer.fit(targets)
        >>> z = standardizer(targets)
        >>> z.mean(0).abs().max() < 1e-4, round(float(z.pow(2).mean()), 4)
        (tensor(True), 1.0)
        >>> torch.allclose(standardizer.inverse(z), targets, atol=1e-5)
        True

    """

    mean: Tensor
    scale: Tensor

    def __init__(self, mean: Tensor, scale: float | Tensor) -> None:
        super().__init__()
        mean = check_floating("mean", mean)
        if mean.ndim != 1 or mean.shape[0] < 1:
            raise ValueError(f"mean: expected shape (D,), got {tuple(mean.shape)}")
        value = float(scale)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"scale: expected a finite number > 0, got {value}")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError("mean: contains NaN or Inf")
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("scale", torch.tensor(value, dtype=torch.float32))

    @classmethod
    def fit(cls, targets: Tensor | np.ndarray | Any) -> TargetStandardizer:
        """Estimate the mean and the scale from training targets, in float64, streaming rows.

        Args:
            targets: Floating tensor, array, ``np.memmap`` or latent store
                (anything with ``shape``, ``dtype`` and row slicing); read in
                chunks of rows, never copied whole. Shape: ``(N, D)``, ``N >= 2``.

        Returns:
            The fitted standardizer.

        Raises:
            TypeError: If ``targets`` is not array-like or not floating point.
            ValueError: If the targets hold fewer than 2 rows, NaN or Inf, or
                all rows are equal (nothing to align to).

        """
        shape, dtype = getattr(targets, "shape", None), getattr(targets, "dtype", None)
        if shape is None or dtype is None or not callable(getattr(targets, "__getitem__", None)):
            raise TypeError(
                f"targets: expected a tensor or an array-like of shape (N, D), got {type(targets).__name__}"
            )
        try:
            floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind == "f"
        except TypeError:
            floating = False
        if not floating:
            raise TypeError(f"targets: expected floating-point values, got dtype {dtype}")
        if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
            raise ValueError(f"targets: expected shape (N, D) with N >= 2, got {tuple(shape)}")
        rows, dim = int(shape[0]), int(shape[1])
        step = max(1, _FIT_CHUNK_ELEMENTS // dim)
        total = torch.zeros(dim, dtype=torch.float64)
        squares = torch.zeros((), dtype=torch.float64)
        for begin in range(0, rows, step):
            chunk = targets[begin : begin + step]
            chunk = (
                chunk.detach().to("cpu", torch.float64)
                if isinstance(chunk, Tensor)
                else torch.from_numpy(np.asarray(chunk, dtype=np.float64))
            )
            if not bool(torch.isfinite(chunk).all()):
                raise ValueError(f"targets: rows {begin}..{begin + len(chunk) - 1} contain NaN or Inf")
            total += chunk.sum(dim=0)
            squares += chunk.pow(2).sum()
        mean = total / rows
        variance = float(squares / (rows * dim) - mean.pow(2).mean())
        if not variance > 1e-12 * max(float(mean.pow(2).mean()), 1e-30):
            raise ValueError("targets: all rows are (nearly) equal; there is nothing to align to")
        return cls(mean.to(torch.float32), math.sqrt(variance))

    @property
    def dim(self) -> int:
        """Width ``D`` of the target vectors."""
        return int(self.mean.shape[0])

    def _check(self, name: str, x: Tensor) -> Tensor:
        x = check_floating(name, x)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{name}: expected a last dimension of {self.dim}, got shape {tuple(x.shape)}")
        return x

    def forward(self, targets: Tensor) -> Tensor:
        """Standardise targets. Shape: ``(*, D)`` in and out, in the input's dtype."""
        targets = self._check("targets", targets)
        mean, scale = self.mean.to(targets.device, targets.dtype), self.scale.to(targets.device, targets.dtype)
        return (targets - mean) / scale

    def inverse(self, standardized: Tensor) -> Tensor:
        """Map standardised values (e.g. predictions) back to the target space. Shape: ``(*, D)`` in and out."""
        standardized = self._check("standardized", standardized)
        mean = self.mean.to(standardized.device, standardized.dtype)
        return standardized * self.scale.to(standardized.device, standardized.dtype) + mean

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={float(self.scale):.4g}"


class SequenceTemplate(nn.Module):
    """A window of a token sequence as a flat target vector, and a prediction written back into a template.

    ``pack`` keeps positions ``[start, start + num_tokens)`` of each
    sequence and flattens them; ``unpack`` writes a flat prediction into
    those positions of ``template`` and leaves every other position as the
    template has it. With the default window (every position from ``start``
    on) ``unpack(pack(x))`` returns ``x`` exactly wherever ``x`` agrees with
    the template before ``start``.

    For CLIP text encoders (Stable Diffusion 1.x/2.x, SDXL) the attention is
    causal, so position 0 (the start-of-text token) comes out the same for
    every prompt: ``start=1`` leaves it to the template at no loss.
    A shorter window (``num_tokens``) makes a smaller target but fills the
    positions after it from the template (the empty prompt's padding), which
    for a real caption carry information about the caption.

    Args:
        template: The sequence that supplies the positions outside the window,
            e.g. the pipeline's encoding of the empty prompt. Shape: ``(L, D)``.
        start: First position of the window.
        num_tokens: Length of the window; every position from ``start`` on
            when ``None``.

    Attributes:
        dim: Width of the flat vectors, ``num_tokens * D``.

    Example:
        >>> template = torch.randn(6, 4)
        >>> seq = template.expand(3, 6, 4).clone()
        >>> seq[:, 1:] += torch.randn(3, 5, 4)
        >>> window = SequenceTemplate(template, start=1)
        >>> window.dim, window.pack(seq).shape
        (20, torch.Size([3, 20]))
        >>> torch.equal(window.unpack(window.pack(seq)), seq)
        True

    """

    template: Tensor

    def __init__(self, template: Tensor, *, start: int = 1, num_tokens: int | None = None) -> None:
        super().__init__()
        template = check_floating("template", template)
        if template.ndim != 2 or template.shape[0] < 1 or template.shape[1] < 1:
            raise ValueError(f"template: expected one sequence of shape (L, D), got shape {tuple(template.shape)}")
        length = int(template.shape[0])
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < length:
            raise ValueError(
                f"start: expected an int in [0, {length}) for a template of {length} positions, got {start!r}"
            )
        if num_tokens is None:
            num_tokens = length - start
        check_positive_int("num_tokens", num_tokens)
        if start + num_tokens > length:
            raise ValueError(
                f"num_tokens: a window of {num_tokens} from position {start} passes the template's {length} positions"
            )
        self.start, self.num_tokens = start, num_tokens
        self.register_buffer("template", template.detach().clone())

    @property
    def length(self) -> int:
        """Positions ``L`` of the sequence."""
        return int(self.template.shape[0])

    @property
    def width(self) -> int:
        """Width ``D`` of each position."""
        return int(self.template.shape[1])

    @property
    def dim(self) -> int:
        """Width of the flat vectors: ``num_tokens * width``."""
        return self.num_tokens * self.width

    def pack(self, sequences: Tensor) -> Tensor:
        """Flatten the window of each sequence.

        Args:
            sequences: Shape: ``(N, L, D)``.

        Returns:
            Shape: ``(N, num_tokens * D)``, in the input's dtype.

        """
        sequences = check_floating("sequences", sequences)
        if sequences.ndim != 3 or tuple(sequences.shape[1:]) != (self.length, self.width):
            raise ValueError(
                f"sequences: expected shape (N, {self.length}, {self.width}), got {tuple(sequences.shape)}"
            )
        window = sequences[:, self.start : self.start + self.num_tokens]
        return window.reshape(sequences.shape[0], self.dim)

    def unpack(self, vectors: Tensor) -> Tensor:
        """Write flat predictions into copies of the template.

        Args:
            vectors: Shape: ``(N, num_tokens * D)``.

        Returns:
            Sequences in the dtype and on the device of ``vectors``. Shape: ``(N, L, D)``.

        """
        vectors = check_features("vectors", vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors: expected a width of {self.dim}, got shape {tuple(vectors.shape)}")
        template = self.template.to(device=vectors.device, dtype=vectors.dtype)
        out = template.expand(vectors.shape[0], self.length, self.width).clone()
        out[:, self.start : self.start + self.num_tokens] = vectors.reshape(-1, self.num_tokens, self.width)
        return out

    def extra_repr(self) -> str:
        return f"length={self.length}, width={self.width}, start={self.start}, num_tokens={self.num_tokens}"


class ConditioningLayout(nn.Module):
    """Several conditioning tensors concatenated into one target vector, and split back.

    Each part is a vector of a given width (e.g. SDXL's
    ``pooled_prompt_embeds``) or a sequence described by a
    :class:`SequenceTemplate` (e.g. ``prompt_embeds``). ``pack`` turns a dict
    of the pipeline's tensors into ``(N, dim)`` target vectors, ``unpack``
    turns predictions back into a dict to pass as keyword arguments.

    Args:
        parts: Part name (e.g. the pipeline's keyword) to an ``int`` width or a
            :class:`SequenceTemplate`, in the order they are concatenated.

    Attributes:
        dim: Width of the packed vectors (sum of the parts').

    Example:
        >>> layout = ConditioningLayout({"prompt_embeds": SequenceTemplate(torch.zeros(4, 3)),
        ...                              "pooled_prompt_embeds": 5})
        >>> layout.dim
        14
        >>> out = layout.unpack(torch.randn(2, 14))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'prompt_embeds': (2, 4, 3), 'pooled_prompt_embeds': (2, 5)}

    """

    def __init__(self, parts: Mapping[str, int | SequenceTemplate]) -> None:
        super().__init__()
        if not isinstance(parts, Mapping) or not parts:
            raise ValueError("parts: expected a non-empty mapping of part name to a width or a SequenceTemplate")
        self.sequences = nn.ModuleDict()
        self.widths: dict[str, int] = {}
        for name, part in parts.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"parts: names must be non-empty strings without '.', got {name!r}")
            if isinstance(part, SequenceTemplate):
                self.sequences[name] = part
                self.widths[name] = part.dim
            else:
                self.widths[name] = check_positive_int(f"parts[{name!r}]", part)  # type: ignore[arg-type]

    @property
    def names(self) -> list[str]:
        """Part names, in concatenation order."""
        return list(self.widths)

    @property
    def dim(self) -> int:
        """Width of the packed vectors."""
        return sum(self.widths.values())

    def pack(self, conditioning: Mapping[str, Tensor]) -> Tensor:
        """Concatenate every part into one vector per row.

        Args:
            conditioning: Part name to tensor: ``(N, width)`` for a vector
                part, ``(N, L, D)`` for a sequence part.

        Returns:
            Shape: ``(N, dim)``.

        """
        if not isinstance(conditioning, Mapping) or set(conditioning) != set(self.widths):
            got = list(conditioning) if isinstance(conditioning, Mapping) else type(conditioning).__name__
            raise ValueError(f"conditioning: expected exactly the parts {self.names}, got {got}")
        flat = []
        for name, width in self.widths.items():
            value = conditioning[name]
            if name in self.sequences:
                flat.append(self.sequences[name].pack(value))
                continue
            value = check_features(f"conditioning[{name!r}]", value)
            if value.shape[1] != width:
                raise ValueError(f"conditioning[{name!r}]: expected shape (N, {width}), got {tuple(value.shape)}")
            flat.append(value)
        check_same_rows([(f"conditioning[{n!r}]", f) for n, f in zip(self.names, flat)])
        return torch.cat(flat, dim=1)

    def unpack(self, vectors: Tensor) -> dict[str, Tensor]:
        """Split packed vectors into the parts (sequence parts written into their templates).

        Args:
            vectors: Shape: ``(N, dim)``.

        Returns:
            Part name to tensor, in the dtype and on the device of ``vectors``.

        """
        vectors = check_features("vectors", vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors: expected a width of {self.dim}, got shape {tuple(vectors.shape)}")
        out: dict[str, Tensor] = {}
        for name, chunk in zip(self.names, vectors.split(list(self.widths.values()), dim=1)):
            out[name] = self.sequences[name].unpack(chunk) if name in self.sequences else chunk
        return out

    def extra_repr(self) -> str:
        return f"widths={self.widths}"
