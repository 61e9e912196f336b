"""Argument checks shared by the public API.

Every check raises a ``TypeError`` or ``ValueError`` whose message starts with
the name of the offending argument, so users see at once what to fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def check_floating(name: str, tensor: object) -> Tensor:
    """Return ``tensor`` if it is a floating-point tensor, else raise ``TypeError``."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def check_features(name: str, tensor: object, *, min_rows: int = 1) -> Tensor:
    """Return ``tensor`` if it is a floating ``(N, D)`` tensor with ``N >= min_rows``, ``D >= 1``."""
    tensor = check_floating(name, tensor)
    if tensor.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D tensor of shape (N, D), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} row(s), got {tensor.shape[0]}")
    if tensor.shape[1] < 1:
        raise ValueError(f"{name}: expected a feature dimension of at least 1, got shape {tuple(tensor.shape)}")
    return tensor


def check_same_rows(named: Sequence[tuple[str, Tensor]]) -> int:
    """Return the shared leading dimension of ``named`` tensors or raise ``ValueError``."""
    sizes = {name: t.shape[0] for name, t in named}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise ValueError(f"inputs: batch sizes differ ({listed}); every modality needs the same rows")
    return next(iter(sizes.values()))


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and strictly positive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite number >= 0 (``TypeError`` if not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)


def check_int(name: str, value: int, minimum: int = 0) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) >= ``minimum``.

    Example:
        >>> check_int("warmup_steps", 0)
        0
        >>> check_int("batch_size", 1, minimum=2)
        Traceback (most recent call last):
        ...
        ValueError: batch_size: expected an int >= 2, got 1

    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an ``int`` >= 1."""
    return check_int(name, value, 1)


def check_bool(name: str, value: bool) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_finite(name: str, tensor: Tensor, *, block_elements: int = 2**22) -> Tensor:
    """Return ``tensor`` if every value is finite, else raise ``ValueError``.

    Checks ``block_elements`` values at a time, so the check itself never
    holds a mask as large as the tensor.
    """
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 1 else tensor.reshape(-1, 1)
    step = max(1, block_elements // max(1, rows.shape[1]))
    bad = sum(int((~torch.isfinite(rows[s : s + step])).sum()) for s in range(0, rows.shape[0], step))
    if bad:
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or Inf)")
    return tensor


def check_mask(name: str, mask: object, rows: int) -> Tensor:
    """Return ``mask`` if it is a boolean tensor of shape ``(rows,)``: one presence flag per row."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a boolean torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected a boolean tensor, got dtype {mask.dtype}")
    if mask.shape != (rows,):
        raise ValueError(f"{name}: expected shape ({rows},) (one flag per row), got {tuple(mask.shape)}")
    return mask


def check_json_object(name: str, value: object) -> dict[str, Any]:
    """Return ``value`` as a plain JSON object (a dict after a JSON round trip), or raise ``TypeError``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a JSON-serialisable dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a JSON-serialisable dict ({err})") from err


def check_items(items: object) -> list[Any]:
    """``items`` as a non-empty list: a sequence of raw items for an encoder (a lone string is refused)."""
    if isinstance(items, (str, bytes)):
        raise TypeError(f"items: expected a sequence of items, got a single {type(items).__name__}; wrap it in a list")
    if not isinstance(items, Iterable):
        raise TypeError(f"items: expected a sequence of items, got {type(items).__name__}")
    batch = list(items)
    if not batch:
        raise ValueError("items: expected at least one item, got an empty sequence")
    return batch
