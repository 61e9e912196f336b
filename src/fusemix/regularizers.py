"""Regularisers that keep each frozen encoder's neighbourhood structure while adapters learn to align.

With few paired examples, a contrastive loss alone lets each adapter bend its
encoder's latent space wherever that helps the training pairs, and the
neighbourhoods the encoder learned from far more (unimodal) data get lost.
STRUCTURE (Gröger et al., NeurIPS 2025, "With Limited Data for Multimodal
Alignment, Let the STRUCTURE Guide You") adds a term that keeps them: for
every modality, the distribution of each example's similarities to the other
examples of the batch should be the same before the adapter (the frozen
latents) and after it (the adapter's outputs). :class:`~fusemix.StructureLoss` is that
term, for one neighbourhood scale (the paper also compares powers of the
similarity matrix, i.e. multi-step random walks, which cost ``O(B^3)`` per
batch and are left out here).

Used with :class:`~fusemix.FusionModel` (``structure=StructureLoss(),
structure_weight=w``), the model's loss becomes ``alignment + w * structure``.
Under FuseMix the model sees the *mixed* latents, so the term compares the
mixed latents with their projections: a mixed latent is as much a point of the
encoder's space as an unmixed one, and the adapter should keep the
neighbourhoods of both. Under ``torch.distributed`` each rank computes the
term on its own rows (neighbourhoods within the local batch); with
``DistributedDataParallel`` the gradient is that of the mean over ranks.

Cost: per modality, ``O(n^2 (d + k))`` time and a few ``n x n`` float32
matrices for ``n`` rows; ``max_rows`` caps ``n`` for very large batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusemix._checks import check_choice, check_floating, check_mask, check_positive, check_positive_int
from fusemix._registry import register_part

Divergence = Literal["js", "kl"]
DIVERGENCES: tuple[str, ...] = ("js", "kl")


def _off_diagonal(matrix: Tensor) -> Tensor:
    """The entries of a square matrix off its diagonal, row by row. Shape: ``(n, n)`` -> ``(n, n - 1)``."""
    n = matrix.shape[0]
    return matrix.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def neighbour_log_probs(x: Tensor, temperature: float, *, center: bool = True) -> Tensor:
    """Log of each row's softmax distribution over its cosine similarities to the other rows.

    Row ``i`` of the result is ``log_softmax_j(cos(x_i, x_j) / temperature)``
    over ``j != i`` (the diagonal is left out, not masked, so every entry is
    finite).

    Args:
        x: Points, one per row (trailing dimensions are flattened). Shape:
            ``(n, *)`` with ``n >= 2``.
        temperature: Softmax temperature (> 0).
        center: Subtract the mean of the rows first, so that a direction every
            point shares (common in encoder latents) does not make all cosine
            similarities alike.

    Returns:
        Log-probabilities in float32, or float64 for float64 input. Shape:
        ``(n, n - 1)``; column ``j`` of row ``i`` is neighbour ``j`` if
        ``j < i``, else ``j + 1``.

    Example:
        >>> logp = neighbour_log_probs(torch.randn(5, 3), 0.1)
        >>> logp.shape, bool(logp.exp().sum(1).allclose(torch.ones(5)))
        (torch.Size([5, 4]), True)

    """
    x = x.flatten(1)
    x = x if x.dtype == torch.float64 else x.float()
    if center:
        x = x - x.mean(0, keepdim=True)
    z = F.normalize(x, dim=1)
    return _off_diagonal(z @ z.T / temperature).log_softmax(dim=1)


def _divergence(log_p: Tensor, log_q: Tensor, kind: str) -> Tensor:
    """Row-wise divergence of ``q`` from the reference ``p`` (both given as log-probabilities). Shape: ``(n,)``."""
    if kind == "kl":
        return (log_p.exp() * (log_p - log_q)).sum(1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(1) + (log_q.exp() * (log_q - log_m)).sum(1))


@register_part("structure", "structure")
class StructureLoss(nn.Module):
    """Divergence between each modality's neighbourhood distributions before and after its adapter.

    For a modality with frozen latents ``x`` and adapter outputs ``y`` (rows
    ``i = 1..n`` of one batch), let ``P_i`` be the softmax over ``j != i`` of
    ``cos(x_i, x_j) / temperature`` and ``Q_i`` the same of ``y``. The loss of
    the modality is the mean over rows of ``D(P_i, Q_i)``; the loss is the
    mean over modalities. The latents' side is a fixed target (no gradient
    flows into ``x``).

    Divergence: ``"js"`` (default) is the Jensen-Shannon divergence
    ``(KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2``, the choice of
    STRUCTURE. It is symmetric and bounded by ``log 2`` per row, so one
    badly-matched row, or a batch early in training when the adapter is far
    from the encoder, cannot dominate the contrastive term, and its weight
    means the same at every batch size. ``"kl"`` is ``KL(P || Q)``, the
    soft-target cross-entropy of distillation (minus the constant entropy of
    ``P``): it penalises neighbours of ``x`` that ``y`` fails to keep close
    without bound, and lets ``y`` add close neighbours more freely.

    Both are exactly 0 when ``y_i = s R (x_i - c) + b`` for any scale
    ``s > 0``, orthogonal ``R`` (cosine similarities are kept) and shift (with
    ``center=True``, which removes any shift ``b`` and ``c``), and positive
    when some row's similarities change other than by a constant.

    Args:
        temperature: Softmax temperature applied to cosine similarities
            (> 0). Smaller values focus on the nearest neighbours.
        divergence: ``"js"`` or ``"kl"`` (see above).
        center: Centre each side on the mean of the batch rows (of the rows
            present, with masks) before the cosine similarities.
        max_rows: Use at most this many rows of each modality (the first
            present ones; batches come shuffled, so they are a random
            subset), bounding the quadratic cost; all rows when ``None``.

    Shape:
        - Input: ``latents[m]`` of shape ``(B, *)`` and ``features[m]`` of
          shape ``(B, *)`` for each modality ``m``; masks of shape ``(B,)``.
        - Output: scalar.

    Example:
        >>> structure = StructureLoss(temperature=0.1)
        >>> x = torch.randn(16, 8)
        >>> q = torch.linalg.qr(torch.randn(8, 8)).Q
        >>> bool(structure({"image": x}, {"image": 3.0 * x @ q + 1.0}).abs() < 1e-6)  # a rotation keeps it
        True
        >>> bool(structure({"image": x}, {"image": x * torch.arange(1.0, 9.0)}) > 0)  # a stretch does not
        True

    """

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        divergence: Divergence = "js",
        center: bool = True,
        max_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.divergence = check_choice("divergence", divergence, DIVERGENCES)
        if not isinstance(center, bool):
            raise TypeError(f"center: expected a bool, got {type(center).__name__}")
        self.center = center
        if max_rows is not None and check_positive_int("max_rows", max_rows) < 3:
            raise ValueError(f"max_rows: expected at least 3 (two neighbours per row), got {max_rows}")
        self.max_rows = max_rows

    def modality_loss(self, latents: Tensor, features: Tensor) -> Tensor:
        """Mean divergence over the rows of one modality.

        Args:
            latents: Frozen latents (no gradient is taken). Shape: ``(n, *)``.
            features: The adapter's outputs for the same rows. Shape:
                ``(n, *)``, ``n >= 2``.

        Returns:
            Scalar, in float32 (float64 when an input is float64).

        """
        log_p = neighbour_log_probs(latents.detach(), self.temperature, center=self.center)
        log_q = neighbour_log_probs(features, self.temperature, center=self.center)
        if log_p.dtype != log_q.dtype:
            log_p, log_q = log_p.double(), log_q.double()
        return _divergence(log_p, log_q, self.divergence).mean()

    def forward(
        self,
        latents: Mapping[str, Tensor],
        features: Mapping[str, Tensor],
        *,
        masks: Mapping[str, Tensor] | None = None,
        return_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Compute the loss over every modality of ``features``.

        Args:
            latents: Modality name to frozen latents, for every modality of
                ``features`` (extra modalities are ignored). Shape of each:
                ``(B, *)``.
            features: Modality name to the adapter's outputs. Shape of each:
                ``(B, *)``, the same ``B`` as the modality's latents.
            masks: Optional modality name to a boolean presence flag per row
                (``(B,)``); only present rows count, and a modality without a
                mask is present in every row. A modality with fewer than 3
                present rows is left out of the mean (with 2 rows each row
                has a single neighbour, so the distributions always agree).
            return_dict: Return ``{"loss": mean, "<modality>": loss, ...}``
                (modalities left out have no entry).

        Returns:
            The mean over the modalities that have at least 3 present rows,
            or the dict. With no such modality it is a zero that still
            depends on ``features``, so ``backward`` works.

        Raises:
            TypeError: If inputs are not mappings of floating tensors, or a
                mask is not boolean.
            ValueError: If a modality has no latents, row counts differ, or a
                mask has the wrong shape.

        """
        for name, value in (("latents", latents), ("features", features)):
            if not isinstance(value, Mapping):
                raise TypeError(f"{name}: expected a dict of modality name to tensor, got {type(value).__name__}")
        if not features:
            raise ValueError("features: expected at least one modality, got none")
        masks = {} if masks is None else masks
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected a dict of modality name to boolean tensor, got {type(masks).__name__}")
        parts: dict[str, Tensor] = {}
        anchor: Tensor | None = None
        for name, y in features.items():
            y = check_floating(f"features[{name!r}]", y)
            if name not in latents:
                raise ValueError(f"latents: has no entry for modality {name!r} of features")
            x = check_floating(f"latents[{name!r}]", latents[name])
            if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"features[{name!r}]: expected the rows of latents[{name!r}] ({tuple(x.shape)}), "
                    f"got shape {tuple(y.shape)}"
                )
            anchor = y if anchor is None else anchor
            if name in masks:
                keep = check_mask(f"masks[{name!r}]", masks[name], x.shape[0]).to(x.device)
                if not bool(keep.all()):
                    x, y = x[keep], y[keep.to(y.device)]
            if self.max_rows is not None:
                x, y = x[: self.max_rows], y[: self.max_rows]
            if x.shape[0] >= 3:
                parts[name] = self.modality_loss(x, y)
        if parts:
            total = torch.stack(list(parts.values())).mean()
        else:
            assert anchor is not None
            total = anchor.sum() * 0.0
        return {"loss": total, **parts} if return_dict else total

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this term: ``temperature``, ``divergence``, ``center``, ``max_rows``."""
        return {
            "temperature": self.temperature,
            "divergence": self.divergence,
            "center": self.center,
            "max_rows": self.max_rows,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StructureLoss:
        """The term :meth:`to_config`'s settings describe."""
        return cls(
            config["temperature"], divergence=config["divergence"], center=config["center"], max_rows=config["max_rows"]
        )

    def extra_repr(self) -> str:
        rows = f", max_rows={self.max_rows}" if self.max_rows is not None else ""
        return f"temperature={self.temperature}, divergence={self.divergence!r}, center={self.center}{rows}"
