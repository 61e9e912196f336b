"""Set-up shared by the Hugging Face ``transformers`` adapters."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fusemix._optional import require
from fusemix.encoders._loading import model_loading
from fusemix.encoders._source import resolve_source
from fusemix.encoders.base import (
    BatchEncoder,
    check_bool,
    check_max_batch_size,
    dtype_name,
    freeze,
    resolve_device,
    resolve_dtype,
)


class HFEncoder(BatchEncoder):
    """Base of the ``transformers`` adapters: optional import, model source, device and dtype.

    Args:
        name_or_path: Hugging Face Hub id or local directory written by ``save_pretrained``.
        device: Where the model runs; ``None`` picks CUDA when available, else the CPU.
        dtype: Weights' dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        max_batch_size: Items per forward pass (``None``: the whole list at once).
        progress: Show the libraries' progress bars and INFO logs while
            :meth:`_from_pretrained` loads; ``False`` silences them.

    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device | None,
        dtype: str | torch.dtype,
        max_batch_size: int | None,
        progress: bool,
    ) -> None:
        self.progress = check_bool("progress", progress)
        self.transformers = require("transformers", extra="hf", user=type(self).__name__)
        self.source = resolve_source(name_or_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.max_batch_size = check_max_batch_size(max_batch_size)

    def _from_pretrained(self, factory: Any) -> Any:
        """Load the model's part ``factory`` makes (e.g. ``transformers.AutoModel``); quiet unless ``progress``."""
        with model_loading(self.progress):
            return factory.from_pretrained(self.source.location)

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        return freeze(model.to(device=self.device, dtype=self.dtype))

    def _to_model(self, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Move tensor inputs to the model's device, floating ones to its dtype."""
        return {
            key: value.to(self.device, dtype=self.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in inputs.items()
            if isinstance(value, Tensor)
        }

    def _base_identity(self) -> dict[str, Any]:
        return {"encoder": type(self).__name__, **self.source.identity(), "dtype": dtype_name(self.dtype)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source.location!r})"
