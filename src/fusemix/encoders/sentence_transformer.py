"""Text encoder over a ``sentence-transformers`` model (its own tokenizer, pooling and normalisation modules)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fusemix._optional import require
from fusemix.encoders._loading import model_loading
from fusemix.encoders._source import resolve_source
from fusemix.encoders.base import (
    BatchEncoder,
    callable_identity,
    check_bool,
    check_max_batch_size,
    dtype_name,
    freeze,
    preprocessed_texts,
    resolve_device,
    resolve_dtype,
)


class SentenceTransformerEncoder(BatchEncoder):
    """Frozen ``sentence_transformers.SentenceTransformer`` text encoder.

    The model's own modules decide tokenization, truncation
    (``max_seq_length``) and pooling; ``prefix`` is passed as
    sentence-transformers' ``prompt``, so a pooling module configured to
    exclude the prompt (``include_prompt=False``) leaves it out of the mean.
    ``preprocess`` (e.g. the FuseMix authors'
    :func:`fusemix.preprocess.blip_caption`) cleans every text first.

    Args:
        name_or_path: Hugging Face Hub id or local sentence-transformers directory.
        normalize: L2-normalise every latent (a no-op for models that end in a ``Normalize`` module).
        prefix: Prompt prepended to every text (e.g. ``"query: "`` for E5).
        device: Where the model runs; ``None`` picks CUDA when available, else the CPU.
        dtype: Weights' dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        max_batch_size: Texts per forward pass (``None``: the whole list at once).
        preprocess: Applied to every text before the prompt and tokenization,
            ``str -> str``, e.g. :func:`fusemix.preprocess.blip_caption`;
            ``None``: texts as given. It enters the identity: a function
            defined at the top level of a module by its qualified name,
            anything else by its ``identity`` attribute (a str or a JSON
            dict); a lambda, nested function or ``functools.partial``
            without one is refused.
        progress: Show the libraries' progress bars and INFO logs while the
            model loads; ``False`` silences them.

    Attributes:
        identity: Class, model (directory name and fingerprint, or Hub id and
            revision), prefix, normalize, max_seq_length and dtype; and
            ``preprocess``'s identity when one is given.
        preprocess: As given.
        dim: The model's sentence-embedding dimension.

    Shape:
        - Input: a sequence of ``B`` strings.
        - Output: ``(B, dim)``, ``float32`` on the CPU.

    Example:
        >>> minilm = SentenceTransformerEncoder("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> minilm(["a dog", "a cat"]).shape  # doctest: +SKIP
        torch.Size([2, 384])

    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        normalize: bool = False,
        prefix: str = "",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int | None = 32,
        preprocess: Callable[[str], str] | None = None,
        progress: bool = True,
    ) -> None:
        check_bool("normalize", normalize)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
        check_bool("progress", progress)
        preprocess_identity = None if preprocess is None else callable_identity("preprocess", preprocess)
        sentence_transformers = require(
            "sentence_transformers", extra="sentence-transformers", user=type(self).__name__
        )
        self.source = resolve_source(name_or_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.max_batch_size = check_max_batch_size(max_batch_size)
        self.normalize = normalize
        self.prefix = prefix
        self.preprocess = preprocess
        with model_loading(progress):
            model = sentence_transformers.SentenceTransformer(self.source.location, device=str(self.device))
        self.model = freeze(model.to(device=self.device, dtype=self.dtype))
        embedding_dimension = getattr(self.model, "get_embedding_dimension", None)
        if embedding_dimension is None:
            embedding_dimension = self.model.get_sentence_embedding_dimension
        dim = embedding_dimension()
        self.dim: int | None = None if dim is None else int(dim)
        self.identity: dict[str, Any] = {
            "encoder": type(self).__name__,
            **self.source.identity(),
            "prefix": prefix,
            "normalize": normalize,
            "max_seq_length": self.model.max_seq_length,
            "dtype": dtype_name(self.dtype),
        }
        if preprocess_identity is not None:
            self.identity["preprocess"] = preprocess_identity

    def _encode_batch(self, batch: list[Any], offset: int) -> Tensor:
        return self.model.encode(
            preprocessed_texts(batch, offset, self.preprocess),
            prompt=self.prefix or None,
            batch_size=len(batch),
            convert_to_tensor=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source.location!r})"
