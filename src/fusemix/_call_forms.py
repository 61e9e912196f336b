"""The call forms of the latent augmentations (:class:`~fusemix.FuseMix`, :class:`~fusemix.LatentNoise`).

An augmentation takes one tensor, several tensors, one tuple/list of tensors
or one dict of modality name to tensor, all sharing a leading batch
dimension, and returns its output in the structure it got; presence masks
come in that structure too. :func:`unpack_inputs` and :func:`unpack_masks`
turn any of these forms into flat lists, and rebuild the caller's structure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch
from torch import Tensor

from fusemix._checks import check_floating, check_mask, check_same_rows

LatentInputs = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias, Python 3.10)
MaskInputs = Union[Tensor, Sequence[Union[Tensor, None]], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias)
Mixed = Union[LatentInputs, tuple[LatentInputs, LatentInputs]]  # noqa: UP007 (runtime alias, Python 3.10)
"""What an augmentation returns: the latents in their input structure, or ``(latents, masks)`` with masks."""


def check_batch(named: Sequence[tuple[str, Tensor]]) -> int:
    """Return the shared, non-empty batch size of ``named`` tensors or raise ``ValueError``."""
    if not named:
        raise ValueError("inputs: expected at least one tensor, got none")
    for name, x in named:
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(
                f"{name}: expected a non-empty batch with a leading batch dimension, got shape {tuple(x.shape)}"
            )
    return check_same_rows(named)


def unpack_inputs(
    inputs: tuple[LatentInputs, ...],
) -> tuple[list[tuple[str, Tensor]], Callable[[list[Tensor]], LatentInputs]]:
    """Turn the call forms ``f(x)``, ``f(x, y)``, ``f((x, y))`` and ``f({...})`` into a flat list.

    Returns the named tensors and a function that rebuilds the caller's
    structure (tensor, tuple or dict) from a list of outputs.
    """
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        mapping = inputs[0]
        keys = list(mapping.keys())
        named = [(f"inputs[{k!r}]", check_floating(f"inputs[{k!r}]", mapping[k])) for k in keys]
        return named, lambda outs: dict(zip(keys, outs))
    if len(inputs) == 1 and isinstance(inputs[0], Tensor):
        return [("inputs[0]", check_floating("inputs[0]", inputs[0]))], lambda outs: outs[0]
    seq = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) else inputs
    named = [(f"inputs[{i}]", check_floating(f"inputs[{i}]", x)) for i, x in enumerate(seq)]
    return named, tuple


def unpack_masks(masks: object, inputs: tuple[LatentInputs, ...], named: Sequence[tuple[str, Tensor]]) -> list[Tensor]:
    """Masks in the structure of ``inputs`` as one ``(B,)`` bool tensor per input; a missing one is all present."""
    batch = check_batch(named)
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: dict inputs take a dict of modality name to mask, got {type(masks).__name__}")
        keys = list(inputs[0].keys())
        unknown = [k for k in masks if k not in inputs[0]]
        if unknown:
            raise ValueError(f"masks: modalities {unknown} are not among the inputs {keys}")
        given: list[object] = [masks.get(k) for k in keys]
        labels = [f"masks[{k!r}]" for k in keys]
    elif len(inputs) == 1 and isinstance(inputs[0], Tensor) and isinstance(masks, Tensor):
        given, labels = [masks], ["masks"]
    else:
        if not isinstance(masks, (tuple, list)):
            raise TypeError(
                f"masks: inputs given as tensors take a tuple or list of masks (one per input, None for all "
                f"present), got {type(masks).__name__}"
            )
        if len(masks) != len(named):
            raise ValueError(f"masks: expected one mask per input ({len(named)}), got {len(masks)}")
        given, labels = list(masks), [f"masks[{i}]" for i in range(len(masks))]
    return [
        torch.ones(batch, dtype=torch.bool, device=x.device) if m is None else check_mask(label, m, batch)
        for m, label, (_, x) in zip(given, labels, named)
    ]


__all__ = ["LatentInputs", "MaskInputs", "Mixed", "check_batch", "unpack_inputs", "unpack_masks"]
