"""Zero-shot classification in the aligned space: class names through the text side, the CLIP recipe.

Every class name is put into each prompt template (``"an emoji of {}"``),
the prompts are embedded by the text side of the aligned space and
L2-normalised, and each class's embeddings are averaged and normalised again
(the prompt ensembling of CLIP). An input of another modality is then
classified by the cosine similarity of its shared-space embedding with every
class embedding.

Example::

    classifier = ZeroShotClassifier.from_class_names(aligned["text"], ["cat", "dog"], templates=["a photo of a {}"])
    labels = classifier.predict(aligned["image"].encode(images))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fusemix._checks import check_features, check_positive, check_positive_int
from fusemix.aligned import AlignedEncoder

Template = str | Callable[[str], str]


def _prompt(template: Template, class_name: str) -> str:
    if callable(template):
        text = template(class_name)
        if not isinstance(text, str):
            raise TypeError(f"templates: a callable template returned {type(text).__name__}, expected a str")
        return text
    return template.replace("{}", class_name)


def _check_templates(templates: Sequence[Template]) -> list[Template]:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise TypeError("templates: expected a non-empty sequence of strings with '{}' or of callables")
    for index, template in enumerate(templates):
        if isinstance(template, str):
            if template.count("{}") != 1:
                raise ValueError(f"templates[{index}]: {template!r} must hold exactly one '{{}}' for the class name")
        elif not callable(template):
            raise TypeError(f"templates[{index}]: expected a str or a callable, got {type(template).__name__}")
    return list(templates)


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
        raise TypeError("class_names: expected a non-empty sequence of strings")
    names = list(class_names)
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class_names[{index}]: expected a non-empty string, got {name!r}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names: {duplicates} appear more than once")
    return names


def _encode_texts(text_encoder: Any, texts: list[str], batch_size: int) -> Tensor:
    if isinstance(text_encoder, AlignedEncoder):
        out = text_encoder.encode(texts, batch_size=batch_size, progress=False)
    elif callable(text_encoder):
        out = text_encoder(texts)
    else:
        raise TypeError(
            f"text_encoder: expected an AlignedEncoder or a callable list[str] -> (N, D), got {type(text_encoder)}"
        )
    if not isinstance(out, Tensor):
        out = torch.as_tensor(out)
    return check_features("text_encoder output", out).float()


class ZeroShotClassifier:
    """Classify shared-space embeddings by their cosine similarity with embedded class names.

    Args:
        class_embeddings: One unit-norm embedding per class (normalised here
            if it is not). Shape: ``(C, D)``.
        class_names: The classes' names, in the order of the rows.
        logit_scale: Multiplier of the cosine similarities in :meth:`logits`
            (1 keeps cosines; use ``1 / temperature`` of the trained loss, or
            CLIP's 100, for calibrated softmax probabilities). Predictions do
            not depend on it.

    Attributes:
        class_embeddings: ``(C, D)``, unit norm, float32.
        class_names: As given.
        logit_scale: As given.

    Example:
        >>> classifier = ZeroShotClassifier(torch.eye(3), ["red", "green", "blue"])
        >>> classifier.predict(torch.tensor([[0.1, 0.9, 0.0], [1.0, 0.0, 0.2]])).tolist()
        [1, 0]
        >>> classifier.predict(torch.tensor([[0.1, 0.9, 0.3]]), k=2).tolist()
        [[1, 2]]

    """

    def __init__(self, class_embeddings: Tensor, class_names: Sequence[str], *, logit_scale: float = 1.0) -> None:
        embeddings = check_features("class_embeddings", class_embeddings)
        names = _check_class_names(class_names)
        if len(names) != embeddings.shape[0]:
            raise ValueError(
                f"class_names: {len(names)} names for {embeddings.shape[0]} class embeddings; give one name per row"
            )
        if not bool(torch.isfinite(embeddings).all()):
            raise ValueError("class_embeddings: contain NaN or Inf")
        self.class_embeddings = F.normalize(embeddings.detach().float(), dim=-1)
        self.class_names = names
        self.logit_scale = check_positive("logit_scale", logit_scale)

    @classmethod
    def from_class_names(
        cls,
        text_encoder: Any,
        class_names: Sequence[str],
        templates: Sequence[Template] = ("{}",),
        *,
        logit_scale: float = 1.0,
        batch_size: int = 256,
    ) -> ZeroShotClassifier:
        """Embed every class name in every template and average per class (CLIP's prompt ensembling).

        Args:
            text_encoder: The text side of the aligned space: an
                :class:`~fusemix.aligned.AlignedEncoder` (its ``encode`` is
                used), or any callable mapping a list of strings to ``(N, D)``
                shared-space embeddings.
            class_names: One name per class, e.g. ``["cat", "dog"]``.
            templates: Prompts with one ``"{}"`` for the class name, or
                callables ``name -> prompt``; ``("{}",)`` uses the bare names.
            logit_scale: See the class.
            batch_size: Prompts per encoder call.

        Returns:
            The classifier.

        Raises:
            TypeError, ValueError: On empty, duplicate or non-string class
                names, templates without exactly one ``"{}"``, or an encoder
                output that is not one row per prompt.

        Example:
            >>> letters = lambda texts: torch.tensor([[t.count("a"), t.count("b")] for t in texts], dtype=torch.float32)
            >>> classifier = ZeroShotClassifier.from_class_names(letters, ["aa", "bb"], ["{} x", "{}"])
            >>> classifier.class_embeddings.tolist()
            [[1.0, 0.0], [0.0, 1.0]]

        """
        names = _check_class_names(class_names)
        prompts_of = _check_templates(templates)
        check_positive_int("batch_size", batch_size)
        prompts = [_prompt(template, name) for name in names for template in prompts_of]
        embedded = _encode_texts(text_encoder, prompts, batch_size)
        if embedded.shape[0] != len(prompts):
            raise ValueError(f"text_encoder output: {embedded.shape[0]} rows for {len(prompts)} prompts")
        per_class = F.normalize(embedded, dim=-1).view(len(names), len(prompts_of), -1).mean(dim=1)
        return cls(per_class, names, logit_scale=logit_scale)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_names)

    def logits(self, embeddings: Tensor) -> Tensor:
        """``logit_scale`` times the cosine similarity of every input with every class.

        Args:
            embeddings: Shared-space embeddings of the inputs (normalised
                here). Shape: ``(N, D)``.

        Returns:
            Shape: ``(N, C)``, float32, on the embeddings' device.

        """
        inputs = check_features("embeddings", embeddings)
        if inputs.shape[1] != self.class_embeddings.shape[1]:
            raise ValueError(
                f"embeddings: have dim {inputs.shape[1]}, but the class embeddings have dim "
                f"{self.class_embeddings.shape[1]}"
            )
        classes = self.class_embeddings.to(inputs.device)
        return self.logit_scale * (F.normalize(inputs.float(), dim=-1) @ classes.T)

    def predict(self, embeddings: Tensor, *, k: int = 1) -> Tensor:
        """The best class per input, or the ``k`` best (best first).

        Args:
            embeddings: Shared-space embeddings. Shape: ``(N, D)``.
            k: Classes per input; ``min(k, C)`` are returned.

        Returns:
            Class indices, int64: shape ``(N,)`` for ``k=1``, ``(N, min(k, C))`` otherwise.

        """
        check_positive_int("k", k)
        logits = self.logits(embeddings)
        if k == 1:
            return logits.argmax(dim=1)
        return logits.topk(min(k, self.num_classes), dim=1).indices

    def __repr__(self) -> str:
        shown = ", ".join(repr(n) for n in self.class_names[:3]) + (", ..." if self.num_classes > 3 else "")
        return f"ZeroShotClassifier({self.num_classes} classes: {shown})"


def _check_labels(labels: Tensor | Sequence[int], rows: int, num_classes: int) -> Tensor:
    target = torch.as_tensor(labels)
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.ndim != 1:
        raise TypeError(f"labels: expected a 1-D sequence of integer class indices, got {target.dtype} {target.shape}")
    if target.numel() != rows:
        raise ValueError(f"labels: {target.numel()} labels for {rows} inputs")
    if rows and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"labels: class indices must lie in [0, {num_classes})")
    return target.to(torch.int64)


def top_k_accuracy(logits: Tensor, labels: Tensor | Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Percentage of inputs whose true class is among the ``k`` highest logits, for every ``k``.

    A class tied with the true class counts as ahead of it (as in
    :mod:`fusemix.metrics`), so constant logits score 0, not 100.

    Args:
        logits: Scores. Shape: ``(N, C)``.
        labels: True class per input. Shape: ``(N,)``.
        ks: Cut-offs.

    Returns:
        ``{k: accuracy in percent}``.

    Example:
        >>> logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
        >>> top_k_accuracy(logits, [0, 1, 1], ks=(1, 2))
        {1: 33.33333333333333, 2: 100.0}

    """
    scores = check_features("logits", logits)
    target = _check_labels(labels, scores.shape[0], scores.shape[1]).to(scores.device)
    true = scores.gather(1, target[:, None])
    ahead = (scores >= true).sum(dim=1) - 1
    return {check_positive_int("ks", k): 100.0 * float((ahead < k).double().mean()) for k in ks}


def confusion_matrix(predictions: Tensor | Sequence[int], labels: Tensor | Sequence[int], num_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs.

    Args:
        predictions: Predicted class per input. Shape: ``(N,)``.
        labels: True class per input. Shape: ``(N,)``.
        num_classes: ``C``.

    Returns:
        ``(C, C)`` int64: row = true class, column = predicted class.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
        [[1, 1], [0, 1]]

    """
    check_positive_int("num_classes", num_classes)
    target = _check_labels(labels, len(labels), num_classes)
    predicted = torch.as_tensor(predictions)
    if predicted.shape != target.shape:
        raise ValueError(f"predictions: shape {tuple(predicted.shape)} differs from labels' {tuple(target.shape)}")
    predicted = _check_labels(predicted, len(target), num_classes)
    flat = target * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


__all__ = ["ZeroShotClassifier", "confusion_matrix", "top_k_accuracy"]
