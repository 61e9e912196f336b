"""The encoder interface and the micro-batching base shared by fusemix's adapters.

An *encoder* is anything that maps a list of raw items (texts, images,
waveforms, arrays...) to one latent per item: a ``(B, D)`` floating tensor.
The extraction code calls ``encoder(items)`` inside
``torch.inference_mode()`` and, when the encoder has an ``identity``
attribute (a JSON-serialisable dict), records it in the latent store so that
a later run can check it is reading latents from the same encoder.

Every adapter in :mod:`fusemix.encoders` derives from :class:`BatchEncoder`:
it splits a long list into micro-batches of at most ``max_batch_size`` items,
runs them without autograd and checks every output (2-D, one row per item,
floating, finite, the advertised width) before returning one CPU ``float32``
tensor. Returning on the CPU keeps a long list from piling up on the
accelerator and is what the latent store writes anyway.
"""

from __future__ import annotations

import json
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from fusemix._checks import check_items, check_positive_int

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@runtime_checkable
class Encoder(Protocol):
    """Anything that maps a list of raw items to one latent per item.

    An encoder may also carry two optional attributes, which the extraction
    code reads when they are present (see :class:`IdentifiedEncoder`):
    ``identity``, a JSON-serialisable dict describing everything that changes
    the latents, and ``dim``, the latent width (``None`` if unknown).

    Shape:
        - Input: a sequence of ``B`` raw items.
        - Output: ``(B, D)``, a floating tensor (or NumPy array: what
          :func:`~fusemix.extract.extract_latents` also takes).

    Example:
        >>> def encode(items):
        ...     return torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in items])
        >>> isinstance(encode, Encoder)
        True

    """

    def __call__(self, items: Sequence[Any]) -> Tensor | np.ndarray: ...


@runtime_checkable
class IdentifiedEncoder(Encoder, Protocol):
    """An :class:`Encoder` that also describes itself: every adapter in :mod:`fusemix.encoders`.

    Attributes:
        identity: JSON-serialisable dict that changes whenever the latents
            would (model, weights, preprocessing, pooling, dtype), and does
            not change with the device or the batch size.
        dim: Width ``D`` of the latents, or ``None`` when only a call reveals it.

    Example:
        >>> from fusemix.encoders import CallableEncoder
        >>> isinstance(CallableEncoder(lambda x: x, identity="identity-map"), IdentifiedEncoder)
        True

    """

    @property
    def identity(self) -> Mapping[str, Any]: ...

    @property
    def dim(self) -> int | None: ...


class BatchEncoder(ABC):
    """Base of fusemix's encoders: micro-batching, no autograd, output checks.

    Subclasses implement :meth:`_encode_batch` for one micro-batch and set
    ``identity``, ``dim`` and ``max_batch_size``.

    Attributes:
        identity: JSON-serialisable description of everything that changes the latents.
        dim: Width of the latents, or ``None`` when unknown before a call.
        max_batch_size: Largest number of items given to the model at once;
            ``None`` sends the whole list in one call.

    Shape:
        - Input: a sequence of ``B >= 1`` items.
        - Output: ``(B, dim)``, ``float32``, on the CPU.

    """

    identity: dict[str, Any]
    dim: int | None
    max_batch_size: int | None

    def __call__(self, items: Sequence[Any]) -> Tensor:
        """Encode ``items`` into one latent per item.

        Args:
            items: Raw items of the kind the encoder expects.

        Returns:
            Latents, shape ``(len(items), dim)``, ``float32`` on the CPU.

        Raises:
            TypeError: If ``items`` is not a sequence or an item has the wrong type.
            ValueError: If ``items`` is empty, an item is malformed or the
                model returns a malformed output.

        """
        batch_items = check_items(items)
        step = self.max_batch_size or len(batch_items)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(batch_items), step):
                batch = batch_items[start : start + step]
                outputs.append(self._check_output(self._encode_batch(batch, start), len(batch), start))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    @abstractmethod
    def _encode_batch(self, batch: list[Any], offset: int) -> Tensor | np.ndarray:
        """Encode one micro-batch; ``offset`` is the index of ``batch[0]`` in the caller's list."""

    def _check_output(self, output: object, rows: int, offset: int) -> Tensor:
        """The output of the micro-batch of items ``[offset, offset + rows)`` as float32 on the CPU, checked."""
        if isinstance(output, np.ndarray):
            if not np.issubdtype(output.dtype, np.floating):
                raise TypeError(f"{self!r} output: expected floating values, got numpy dtype {output.dtype}")
            output = torch.from_numpy(output)
        if not isinstance(output, Tensor):
            raise TypeError(f"{self!r} output: expected a torch.Tensor or numpy array, got {type(output).__name__}")
        if not output.is_floating_point():
            raise TypeError(f"{self!r} output: expected floating values, got dtype {output.dtype}")
        if output.ndim != 2 or output.shape[0] != rows:
            raise ValueError(
                f"{self!r} output: expected shape ({rows}, D) for {rows} item(s), got {tuple(output.shape)}"
            )
        if self.dim is not None and output.shape[1] != self.dim:
            raise ValueError(f"{self!r} output: expected {self.dim} features, got {output.shape[1]}")
        output = output.detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(output).all()):
            bad = (~torch.isfinite(output)).any(dim=1).nonzero().flatten()
            raise ValueError(
                f"{self!r} output: {len(bad)} of {rows} row(s) contain NaN or Inf (first: item {offset + int(bad[0])} "
                "of the call)"
            )
        return output


def json_identity(name: str, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``identity`` as a plain JSON dict (tuples become lists), or raise ``TypeError``.

    Args:
        name: Argument name used in the error message.
        identity: Mapping with string keys and JSON values.

    Returns:
        A deep copy that survives a JSON round trip unchanged.

    Example:
        >>> json_identity("identity", {"model": "m", "size": (2, 3)})
        {'model': 'm', 'size': [2, 3]}

    """
    if not isinstance(identity, Mapping):
        raise TypeError(f"{name}: expected a mapping, got {type(identity).__name__}")
    try:
        return json.loads(json.dumps(dict(identity), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name}: must be JSON-serialisable (str keys; str, number, bool, None, list, dict values): {err}"
        ) from err


def callable_identity(name: str, fn: object) -> str | dict[str, Any]:
    """What a preprocessing callable is, stably, for an encoder's identity.

    - An ``identity`` attribute (a non-empty ``str`` or a JSON-serialisable
      mapping, e.g. :attr:`fusemix.preprocess.ResizeCenterCrop.identity`)
      is the answer; give one to anything whose output depends on settings.
    - Otherwise a function defined at the top level of a module (or in a
      class body) is named ``"module.qualname"``. The name stands for the
      code: rename the function (or give it an ``identity``) when what it
      returns changes.
    - Anything else (a lambda, a nested function, a ``functools.partial``, a
      bound method or another callable object without ``identity``) has no
      stable name, and is refused.

    Args:
        name: Argument name used in error messages.
        fn: The callable.

    Returns:
        Its ``identity`` (a str, or a JSON dict), or ``"module.qualname"``.

    Raises:
        TypeError: If ``fn`` is not callable, or its ``identity`` is neither a
            non-empty str nor a JSON-serialisable mapping.
        ValueError: If ``fn`` has no ``identity`` and no stable name.

    Example:
        >>> from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, blip_caption
        >>> callable_identity("preprocess", blip_caption)
        'fusemix.preprocess.blip_caption'
        >>> callable_identity("transform", DINOV2_EVAL_TRANSFORM)["resize"]
        224

    """
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    described = getattr(fn, "identity", None)
    if isinstance(described, str) and described:
        return described
    if isinstance(described, Mapping):
        return json_identity(f"{name}.identity", described)
    if described is not None:
        raise TypeError(f"{name}.identity: expected a non-empty str or a mapping, got {described!r}")
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)) and "<" not in fn.__qualname__:
        return f"{fn.__module__}.{fn.__qualname__}"
    raise ValueError(
        f"{name}: {fn!r} has no stable name (a lambda, nested function, partial or callable object); define it as a "
        "function at the top level of a module, or give it an `identity` attribute (a str or a JSON dict naming "
        "everything that changes its output)"
    )


def preprocessed_texts(batch: list[Any], offset: int, preprocess: Callable[[str], str] | None) -> list[str]:
    """Check that every item of ``batch`` is a ``str`` and pass it through ``preprocess`` (when given).

    Args:
        batch: One micro-batch of items.
        offset: Index of ``batch[0]`` in the caller's list, for error messages.
        preprocess: ``str -> str`` applied to every text, or ``None``.

    Returns:
        The texts the tokenizer gets.

    Raises:
        TypeError: If an item, or what ``preprocess`` returns for it, is not a ``str``.

    Example:
        >>> preprocessed_texts(["A Dog.", "Two cats"], 0, str.lower)
        ['a dog.', 'two cats']

    """
    texts = []
    for index, item in enumerate(batch, start=offset):
        if not isinstance(item, str):
            raise TypeError(f"items[{index}]: expected a str, got {type(item).__name__}")
        text = item if preprocess is None else preprocess(item)
        if not isinstance(text, str):
            raise TypeError(f"preprocess: returned a {type(text).__name__} for items[{index}]; expected a str")
        texts.append(text)
    return texts


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def check_max_batch_size(max_batch_size: int | None) -> int | None:
    """Return ``max_batch_size`` if it is ``None`` or an int >= 1."""
    return None if max_batch_size is None else check_positive_int("max_batch_size", max_batch_size)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device`` as a ``torch.device``; ``None`` picks CUDA when available, else the CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')

    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: not a valid torch device: {device!r}") from err


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Return the torch dtype for ``"float32"``, ``"float16"`` or ``"bfloat16"`` (or the dtype itself).

    Example:
        >>> resolve_dtype("bfloat16")
        torch.bfloat16

    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """Return the short name of a floating dtype, e.g. ``"float16"`` (as recorded in identities)."""
    return str(dtype).removeprefix("torch.")


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with every parameter frozen, and return it."""
    module.eval()
    module.requires_grad_(False)
    return module
