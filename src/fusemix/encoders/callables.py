"""Wrap any function or ``nn.Module`` as a fusemix encoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusemix._checks import check_positive_int
from fusemix.encoders.base import (
    BatchEncoder,
    check_max_batch_size,
    dtype_name,
    freeze,
    json_identity,
    resolve_device,
    resolve_dtype,
)


class CallableEncoder(BatchEncoder):
    """Turn a function or ``nn.Module`` into an encoder with an identity, micro-batching and output checks.

    How a micro-batch of items reaches ``fn``:

    - ``numpy=True``: the items (arrays, tensors or nested lists of numbers)
      are stacked into one numpy array of shape ``(B, ...)``; for functions
      written over numpy.
    - otherwise, when every item is a tensor or numpy array and ``stack=True``
      (default): they are stacked into one tensor ``(B, ...)``, moved to
      ``device`` (or the module's device) and, if floating, cast to ``dtype``
      (or the module's dtype).
    - otherwise (strings, PIL images, dicts..., or any items with
      ``stack=False``): the list itself, items unchanged. ``stack=False`` is
      for arrays that cannot be stacked, such as audio clips of different
      lengths; ``fn`` then moves and casts them itself.

    An ``nn.Module`` is put in eval mode with its parameters frozen and moved
    to ``device`` / ``dtype`` when given. ``fn`` may return a tensor or a
    numpy array of shape ``(B, D)``; it is checked (2-D, one row per item,
    floating, finite, ``dim`` columns when ``dim`` is given) and returned as
    ``float32`` on the CPU; a bad output raises an error naming the encoder.

    Args:
        fn: Function or module mapping a batch to ``(B, D)`` latents.
        identity: What ``fn`` is, recorded in the latent store and compared
            when it is reopened: a non-empty name or a JSON-serialisable
            mapping (e.g. model name and a :func:`fingerprint_path` of its
            weights). Give everything that changes the latents.
        dim: Latent width ``D`` if known; ``None`` leaves it unchecked.
        max_batch_size: Items per call of ``fn`` (``None``: the whole list at once).
        device: Device for a module and for stacked tensor inputs; ``None`` leaves them where they are.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for a module and
            floating stacked inputs; ``None`` keeps the module's own dtype.
        numpy: Pass items to ``fn`` as one stacked numpy array.
        stack: Stack tensor and array items into one tensor; ``False`` passes
            the list of items as it is (``device`` and ``dtype`` then apply
            to a module's weights only). Not with ``numpy=True``.

    Attributes:
        identity: ``{"encoder": "CallableEncoder", "id": identity, "dtype": dtype or None}``.
        dim: As given.

    Shape:
        - Input: a sequence of ``B`` items.
        - Output: ``(B, D)``, ``float32`` on the CPU.

    Example:
        >>> import numpy as np
        >>> weights = np.random.default_rng(0).standard_normal((4, 3))
        >>> project = CallableEncoder(lambda x: x @ weights, identity={"name": "projection", "seed": 0}, numpy=True)
        >>> project([np.ones(4), np.zeros(4)]).shape
        torch.Size([2, 3])
        >>> probe = CallableEncoder(torch.nn.Linear(4, 2), identity="linear-probe-v1", dim=2, max_batch_size=2)
        >>> probe([torch.ones(4)] * 3).shape
        torch.Size([3, 2])
        >>> def clip_stats(clips):  # a list of 1-D waveforms of any lengths -> (B, 2)
        ...     return torch.tensor([[float(clip.mean()), float(clip.std())] for clip in clips])
        >>> stats = CallableEncoder(clip_stats, identity="clip-stats", dim=2, stack=False)
        >>> stats([np.zeros(16000), np.ones(8000)]).shape
        torch.Size([2, 2])

    """

    def __init__(
        self,
        fn: Callable[[Any], Tensor | np.ndarray],
        *,
        identity: Mapping[str, Any] | str,
        dim: int | None = None,
        max_batch_size: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        numpy: bool = False,
        stack: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable or nn.Module, got {type(fn).__name__}")
        if isinstance(identity, str):
            if not identity:
                raise ValueError("identity: expected a non-empty name or a mapping, got an empty string")
            user_identity: str | dict[str, Any] = identity
        else:
            user_identity = json_identity("identity", identity)
        if not isinstance(numpy, bool):
            raise TypeError(f"numpy: expected a bool, got {type(numpy).__name__}")
        if numpy and isinstance(fn, nn.Module):
            raise ValueError("numpy: an nn.Module takes tensors; leave numpy=False")
        if not isinstance(stack, bool):
            raise TypeError(f"stack: expected a bool, got {type(stack).__name__}")
        if numpy and not stack:
            raise ValueError("stack: numpy=True stacks the items into one array; pass stack=False without numpy=True")
        self.fn = fn
        self.dim: int | None = None if dim is None else check_positive_int("dim", dim)
        self.max_batch_size = check_max_batch_size(max_batch_size)
        self.numpy = numpy
        self.stack = stack
        self.device = None if device is None else resolve_device(device)
        self.dtype = None if dtype is None else resolve_dtype(dtype)
        self.input_device, self.input_dtype = self.device, self.dtype
        if isinstance(fn, nn.Module):
            if self.device is not None:
                fn.to(device=self.device)
            if self.dtype is not None:
                fn.to(dtype=self.dtype)
            freeze(fn)
            first = next(iter(fn.parameters()), None)
            if first is not None:
                if self.input_device is None:
                    self.input_device = first.device
                if self.input_dtype is None and first.is_floating_point():
                    self.input_dtype = first.dtype
        self._name = identity if isinstance(identity, str) else getattr(fn, "__name__", type(fn).__name__)
        self.identity: dict[str, Any] = {
            "encoder": type(self).__name__,
            "id": user_identity,
            "dtype": None if self.dtype is None else dtype_name(self.dtype),
        }

    def _encode_batch(self, batch: list[Any], offset: int) -> Tensor | np.ndarray:
        if self.numpy:
            return self.fn(_stack_numpy(batch, offset))
        if self.stack and all(isinstance(item, (Tensor, np.ndarray)) for item in batch):
            return self.fn(self._stack_tensors(batch))
        return self.fn(batch)

    def _stack_tensors(self, batch: list[Tensor | np.ndarray]) -> Tensor:
        tensors = [torch.as_tensor(item) for item in batch]
        shapes = {tuple(tensor.shape) for tensor in tensors}
        if len(shapes) > 1:
            raise ValueError(
                f"items: cannot stack items of different shapes {sorted(shapes)} into one batch; "
                "pass stack=False to give fn the list of items as it is"
            )
        stacked = torch.stack(tensors)
        if self.input_device is not None:
            stacked = stacked.to(self.input_device)
        if self.input_dtype is not None and stacked.is_floating_point():
            stacked = stacked.to(self.input_dtype)
        return stacked

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"


def _stack_numpy(batch: list[Any], offset: int) -> np.ndarray:
    arrays = []
    for index, item in enumerate(batch, start=offset):
        try:
            array = item.detach().cpu().numpy() if isinstance(item, Tensor) else np.asarray(item)
        except ValueError as err:
            raise ValueError(f"items[{index}]: cannot convert to a numpy array: {err}") from err
        if array.dtype == object:
            raise TypeError(f"items[{index}]: cannot convert a {type(item).__name__} to a numeric numpy array")
        arrays.append(array)
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        raise ValueError(f"items: cannot stack items of different shapes {sorted(shapes)} into one batch")
    return np.stack(arrays)
