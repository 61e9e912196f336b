"""Text encoder over a Hugging Face ``transformers`` model (BGE, E5, MiniLM, any BERT-style encoder)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fusemix._checks import check_choice, check_positive_int
from fusemix.encoders._hf import HFEncoder
from fusemix.encoders.base import callable_identity, check_bool, preprocessed_texts

TextPooling = Literal["cls", "mean", "pooler"]
TEXT_POOLINGS: tuple[str, ...] = ("cls", "mean", "pooler")


class HFTextEncoder(HFEncoder):
    """Frozen ``transformers`` text encoder with the model's own tokenizer.

    Texts are cleaned by ``preprocess`` when one is given (e.g. the FuseMix
    authors' :func:`fusemix.preprocess.blip_caption`), prefixed with
    ``prefix``, tokenized (padded to the longest text
    of the micro-batch, truncated to ``max_length`` tokens), run through
    ``AutoModel`` and pooled from ``last_hidden_state``:

    - ``"cls"``: the first token's state (BGE's recipe). Right padding is
      enforced so that the first token is always the classifier token.
    - ``"mean"``: the mean over the tokens the attention mask marks as real,
      prefix included (E5's and sentence-transformers' recipe); padding never
      changes a text's latent.
    - ``"pooler"``: the model's ``pooler_output`` (BERT's tanh-dense layer on
      the first token), for models that have one.

    Recipes: BGE-large-en-v1.5: ``pooling="cls"``, queries prefixed with
    ``"Represent this sentence for searching relevant passages: "``;
    E5: ``pooling="mean"``, ``prefix="query: "`` or ``"passage: "``; both
    usually with ``normalize=True``.

    Args:
        name_or_path: Hugging Face Hub id or local directory written by ``save_pretrained``.
        pooling: ``"cls"``, ``"mean"`` or ``"pooler"``.
        prefix: Text prepended to every item before tokenization.
        max_length: Truncate to this many tokens (special tokens included);
            ``None`` truncates nothing and a text longer than the model
            accepts makes the model raise.
        normalize: L2-normalise every latent.
        device: Where the model runs; ``None`` picks CUDA when available, else the CPU.
        dtype: Weights' dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``;
            pooling runs in float32 either way.
        max_batch_size: Texts per forward pass (``None``: the whole list at once).
        preprocess: Applied to every text before ``prefix`` and tokenization,
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
            revision), pooling, prefix, max_length, normalize and dtype; and
            ``preprocess``'s identity when one is given.
        preprocess: As given.
        dim: The model's ``hidden_size``.

    Shape:
        - Input: a sequence of ``B`` strings.
        - Output: ``(B, hidden_size)``, ``float32`` on the CPU.

    Example:
        >>> bge = HFTextEncoder("BAAI/bge-large-en-v1.5", pooling="cls", normalize=True)  # doctest: +SKIP
        >>> bge(["a dog on a beach", "a spreadsheet"]).shape  # doctest: +SKIP
        torch.Size([2, 1024])
        >>> from fusemix.preprocess import blip_caption
        >>> e5 = HFTextEncoder(  # doctest: +SKIP
        ...     "intfloat/e5-large-v2", pooling="mean", prefix="query: ", preprocess=blip_caption
        ... )

    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        pooling: TextPooling = "cls",
        prefix: str = "",
        max_length: int | None = 512,
        normalize: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int | None = 32,
        preprocess: Callable[[str], str] | None = None,
        progress: bool = True,
    ) -> None:
        check_choice("pooling", pooling, TEXT_POOLINGS)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
        if max_length is not None:
            check_positive_int("max_length", max_length)
        check_bool("normalize", normalize)
        preprocess_identity = None if preprocess is None else callable_identity("preprocess", preprocess)
        super().__init__(name_or_path, device=device, dtype=dtype, max_batch_size=max_batch_size, progress=progress)
        self.pooling = pooling
        self.prefix = prefix
        self.max_length = max_length
        self.normalize = normalize
        self.preprocess = preprocess
        self.tokenizer = self._from_pretrained(self.transformers.AutoTokenizer)
        self.model = self._prepare_model(self._from_pretrained(self.transformers.AutoModel))
        self.tokenizer.padding_side = "right"
        self.dim: int | None = int(self.model.config.hidden_size)
        self.identity: dict[str, Any] = {
            **self._base_identity(),
            "pooling": pooling,
            "prefix": prefix,
            "max_length": max_length,
            "normalize": normalize,
        }
        if preprocess_identity is not None:
            self.identity["preprocess"] = preprocess_identity

    def _encode_batch(self, batch: list[Any], offset: int) -> Tensor:
        texts = preprocessed_texts(batch, offset, self.preprocess)
        tokens = self.tokenizer(
            [self.prefix + text for text in texts],
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        )
        output = self.model(**self._to_model(tokens))
        if self.pooling == "pooler":
            if getattr(output, "pooler_output", None) is None:
                raise ValueError(f"pooling: {self!r} has no pooler output; use 'cls' or 'mean'")
            pooled = output.pooler_output.float()
        else:
            hidden = output.last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = tokens["attention_mask"].to(hidden.device, torch.float32).unsqueeze(-1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
