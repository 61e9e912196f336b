"""Warm starts: initialise a FusionModel's adapters from a fitted closed-form aligner.

On small paired data a well-regularised :class:`~fusemix.CCAAligner` already
retrieves about as well as trained adapters. :func:`~fusemix.warm_start` makes it the
starting point of training: afterwards ``model.embed(m, x)`` equals
``aligner.embed(m, x)`` (up to float rounding) for every warm-started
modality, and training with FuseMix continues from there.

How each adapter is set:

- :class:`~fusemix.LinearAdapter` ``x -> W_p x + b_p``: ``W_p = P^T`` and
  ``b_p = -P^T mu`` for the aligner's projection ``P`` (``(D, k)``) and mean
  ``mu``, so the adapter computes ``(x - mu) P`` exactly.
- :class:`~fusemix.FusionAdapter` ``x -> proj(LN(blocks(x)))``: every residual
  block's output layer (``fc2``, weight and bias) is set to zero, so each
  block is exactly the identity (also in train mode: dropout comes before
  ``fc2``); the final LayerNorm gets weight 1 and bias 0; ``proj`` is set as
  above. The adapter then computes ``(layer_norm(x) - mu) P``, which is the
  aligner's map only if the aligner was fitted on layer-normalised latents:
  fit it with ``input_norm="layer_norm"`` for that modality
  (:func:`~fusemix.aligner_input_norm` gives the right setting for every modality).
  A LayerNorm divides each row by its own standard deviation, which no
  affine map can undo, so a plain aligner cannot be reproduced and is
  refused. The zeroed ``fc2`` layers get gradients from the first step on
  (``fc1`` from the second), as in zero-initialised residual networks.

Dimensions: CCA finds at most ``min(d_x, d_y, N - 1)`` directions, so an
aligner fitted with ``dim=shared_dim`` can have fewer (``CCAAligner(dim=512)``
on 384-d text latents keeps 384, with a warning). When the aligner's
``out_dim`` ``k`` is smaller than the model's shared dimension, its ``k``
directions become the first ``k`` outputs of every warm-started adapter, and
the other outputs start at **zero** (zero rows of the last ``nn.Linear``,
weight and bias), with a ``UserWarning`` that names both numbers. Those rows
then stay zero in training: the loss compares the embeddings only through
dot products, so as long as every modality an output is compared with is
zero there too (all the warm-started ones), its gradient is exactly zero.
The model trains a ``k``-dimensional space, with the aligner's embeddings at
step 0. When ``k`` is the smaller latent dimension, that gives up little: an
adapter maps into at most as many directions as its input has (its
embeddings span at most ``d`` of the shared dimensions), so the wider
modality's further directions could only scale its embeddings, never match
the narrower one's. Random rows instead would add noise the aligner does not
have. For the same model with fewer weights, use ``shared_dim = k``. An
aligner with more dimensions than the model is refused (cutting a Procrustes
map would change its rotation).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fusemix.adapters import FusionAdapter, LinearAdapter
from fusemix.aligners import ClosedFormAligner
from fusemix.model import FusionModel


def aligner_input_norm(model: FusionModel) -> dict[str, str | None]:
    """The ``input_norm`` an aligner needs so that it can warm-start ``model``.

    Args:
        model: The model to warm-start.

    Returns:
        Modality name to ``"layer_norm"`` for a
        :class:`~fusemix.FusionAdapter`, ``None`` for any other adapter; pass
        it as ``CCAAligner(..., input_norm=...)`` (extra modalities are
        ignored by ``fit``).

    Example:
        >>> model = FusionModel.from_dims({"image": 12, "text": 8}, shared_dim=4, depth=1)
        >>> aligner_input_norm(model)
        {'image': 'layer_norm', 'text': 'layer_norm'}

    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"model: expected a FusionModel, got {type(model).__name__}")
    return {name: "layer_norm" if isinstance(a, FusionAdapter) else None for name, a in model.adapters.items()}


def _set_linear(layer: nn.Linear, mean: Tensor, projection: Tensor) -> None:
    """Make ``layer(x)[..., :k] == (x - mean) @ projection`` and the other outputs zero (bias in float64 first)."""
    dtype, device, k = layer.weight.dtype, layer.weight.device, projection.shape[1]
    layer.weight.zero_()
    layer.weight[:k].copy_(projection.T.to(device=device, dtype=dtype))
    if layer.bias is not None:
        layer.bias.zero_()
        layer.bias[:k].copy_((-(mean.double() @ projection.double())).to(device=device, dtype=dtype))


def _warm_start_adapter(name: str, adapter: nn.Module, mean: Tensor, projection: Tensor, eps: float | None) -> None:
    where = f"aligner: modality {name!r}"
    if isinstance(adapter, LinearAdapter):
        if eps is not None:
            raise ValueError(
                f"{where} was fitted on layer-normalised latents, which a LinearAdapter cannot reproduce; fit the "
                f"aligner with input_norm=None for {name!r} (see aligner_input_norm(model))"
            )
        if adapter.proj.bias is None and bool(mean.abs().max() > 0):
            raise ValueError(
                f"{where} subtracts a mean, which model.adapters[{name!r}] (a LinearAdapter with bias=False) cannot"
            )
        _set_linear(adapter.proj, mean, projection)
        return
    if isinstance(adapter, FusionAdapter):
        if eps is None:
            raise ValueError(
                f"{where} was fitted on raw latents, but a FusionAdapter layer-normalises its input before its "
                f"final linear map (no affine map can undo that); fit the aligner with input_norm='layer_norm' "
                f"for {name!r} (see aligner_input_norm(model))"
            )
        if eps != adapter.norm.eps:
            raise ValueError(
                f"{where} used a LayerNorm eps of {eps}, but model.adapters[{name!r}].norm has eps={adapter.norm.eps}"
            )
        for block in adapter.blocks:
            block.fc2.weight.zero_()
            block.fc2.bias.zero_()
        if adapter.norm.weight is not None:
            adapter.norm.weight.fill_(1.0)
        if adapter.norm.bias is not None:
            adapter.norm.bias.zero_()
        _set_linear(adapter.proj, mean, projection)
        return
    raise TypeError(
        f"model: adapters[{name!r}] is a {type(adapter).__name__}; only FusionAdapter and LinearAdapter can be "
        "warm-started (leave the modality out with modalities=)"
    )


@torch.no_grad()
def warm_start(
    model: FusionModel, aligner: ClosedFormAligner, *, modalities: Sequence[str] | None = None
) -> FusionModel:
    """Set the adapters of ``model`` so that it embeds like ``aligner``, in place.

    After the call, ``model.embed(m, x)`` equals ``aligner.embed(m, x)`` for
    every warm-started modality ``m`` (to float rounding: about ``1e-6`` in
    float32), in eval and in train mode; when the aligner has fewer
    dimensions ``k`` than the model, the first ``k`` outputs equal it and the
    others are zero. Other modalities and the loss (e.g. its temperature)
    are left as they are. See the module docstring for how each adapter is
    set and what the aligner must satisfy.

    Args:
        model: The model whose adapters to set; a
            :class:`~fusemix.FusionAdapter` or :class:`~fusemix.LinearAdapter`
            for each warm-started modality.
        aligner: A fitted :class:`~fusemix.CCAAligner` or
            :class:`~fusemix.ProcrustesAligner` whose ``out_dim`` is at most
            the model's shared dimension, fitted with
            ``input_norm=aligner_input_norm(model)`` (``"layer_norm"`` for the
            modalities with a FusionAdapter).
        modalities: Modalities to warm-start; every modality of the aligner
            when ``None``.

    Returns:
        ``model`` itself.

    Raises:
        TypeError: If ``model`` or ``aligner`` has the wrong type, or an
            adapter cannot be warm-started.
        ValueError: If the aligner is not fitted, a modality is missing from
            either side, the latent dimensions differ, the aligner has more
            dimensions than the model, or the aligner's input normalisation
            does not match the adapter.

    Warns:
        UserWarning: If the aligner has fewer dimensions than the model's
            shared dimension; the message names both and the zero outputs.

    Example:
        >>> from fusemix import CCAAligner
        >>> z = torch.randn(300, 4)
        >>> latents = {"image": z @ torch.randn(4, 12), "text": z @ torch.randn(4, 8) + 0.1 * torch.randn(300, 8)}
        >>> model = FusionModel.from_dims({"image": 12, "text": 8}, shared_dim=4, depth=2)
        >>> cca = CCAAligner(dim=4, input_norm=aligner_input_norm(model)).fit(latents)
        >>> _ = warm_start(model, cca)
        >>> torch.allclose(model.embed("text", latents["text"]), cca.embed("text", latents["text"]), atol=1e-5)
        True

    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"model: expected a FusionModel, got {type(model).__name__}")
    if not isinstance(aligner, ClosedFormAligner):
        raise TypeError(f"aligner: expected a fitted CCAAligner or ProcrustesAligner, got {type(aligner).__name__}")
    if not aligner.is_fitted:
        raise ValueError(f"aligner: the {type(aligner).__name__} is not fitted yet; call fit() first")
    if isinstance(modalities, str):
        raise TypeError("modalities: expected a sequence of modality names, got a single string")
    names = aligner.modalities if modalities is None else list(modalities)
    for name in names:
        if name not in aligner.modalities:
            raise ValueError(f"modalities: {name!r} is not a modality of the aligner ({aligner.modalities})")
        if name not in model.adapters:
            raise ValueError(f"aligner: modality {name!r} has no adapter in the model ({model.modalities})")
    means, projections, norms = aligner.means_, aligner.projections_, aligner.input_norms_
    widths = {name: _check_dims(name, model.adapters[name], projections[name]) for name in names}
    for name in names:
        _warm_start_adapter(name, model.adapters[name], means[name], projections[name], norms[name])
    wider = {width for width in widths.values() if width > aligner.out_dim}
    if wider:
        _warn_zero_outputs(aligner.out_dim, max(wider), names)
    return model


def _check_dims(name: str, adapter: nn.Module, projection: Tensor) -> int:
    """The adapter's output width, after checking that the aligner's map of ``name`` fits into the adapter."""
    d, k = projection.shape
    in_dim, out_dim = getattr(adapter, "in_dim", None), getattr(adapter, "out_dim", None)
    if out_dim is not None and out_dim < k:
        raise ValueError(
            f"aligner: maps {name!r} to {k} dims but the model's shared dimension is {out_dim}; fit the aligner "
            f"with dim={out_dim} or build the model with shared_dim={k}"
        )
    if in_dim is not None and in_dim != d:
        raise ValueError(f"aligner: expects {d}-d latents for {name!r}, but the model's adapter takes {in_dim}")
    return k if out_dim is None else out_dim


def _warn_zero_outputs(k: int, shared_dim: int, names: Sequence[str]) -> None:
    warnings.warn(
        f"shared_dim: the model's shared dimension is {shared_dim} but the aligner has {k} (CCA finds at most "
        f"min(d_x, d_y, N - 1)); outputs {k}..{shared_dim - 1} of the adapters of {list(names)} start at zero and "
        f"stay zero while every modality they are compared with is zero there too, so the model trains a {k}-d "
        f"space (shared_dim={k} gives the same model with fewer weights)",
        UserWarning,
        stacklevel=4,  # the caller of warm_start (under torch.no_grad's wrapper)
    )
