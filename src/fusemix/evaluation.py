"""Retrieval evaluation: Recall@K in both directions between two modalities, with any embedder.

:func:`evaluate_retrieval` embeds the latents of two modalities of a
:class:`~fusemix.data.PairedLatents` with an :class:`Embedder` (a trained
:class:`~fusemix.FusionModel`, a fitted :class:`~fusemix.CCAAligner` or
:class:`~fusemix.ProcrustesAligner`, or anything with an ``embed(modality,
latents)`` method) and scores retrieval with :func:`fusemix.retrieval_metrics`.
:func:`fusemix.train.fit` scores its validation data through the same code, and
``fusemix evaluate`` calls it without importing the trainer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from fusemix._paired import PairedLatents
from fusemix.metrics import metrics_from_ranks, retrieval_metrics


class Embedder(Protocol):
    """What :func:`evaluate_retrieval` embeds with: anything that maps one modality's latents into a shared space.

    A :class:`~fusemix.FusionModel`, a fitted :class:`~fusemix.CCAAligner` or
    :class:`~fusemix.ProcrustesAligner` qualify. An ``nn.Module`` embedder is
    put in eval mode while it embeds (its mode is restored afterwards) and,
    when no device is given, embeds on the device of its first parameter or
    buffer; any other embedder embeds on the CPU unless told otherwise.
    """

    def embed(self, modality: str, latents: Tensor) -> Tensor:
        """Embeddings of ``latents`` of ``modality``. Shape: ``(N, D_m)`` in, ``(N, D_shared)`` out."""
        ...


def metric_names(query: str, key: str) -> tuple[str, str]:
    """The short names of two modalities in metric keys: first letters (``i2t``), whole names when those clash.

    Example:
        >>> metric_names("image", "text"), metric_names("text", "tabular")
        (('i', 't'), ('text', 'tabular'))

    """
    return (query[0], key[0]) if query[0] != key[0] else (query, key)


def retrieval_metric_keys(pair: tuple[str, str]) -> list[str]:
    """The metric keys :func:`evaluate_retrieval` returns for ``pair`` (query, key) with the default ``ks``.

    Example:
        >>> retrieval_metric_keys(("image", "text"))[:3], retrieval_metric_keys(("image", "text"))[-1]
        (['i2t_R@1', 'i2t_R@5', 'i2t_R@10'], 'mean')

    """
    ranks = torch.zeros(1, dtype=torch.long)
    return list(metrics_from_ranks(ranks, ranks, names=metric_names(*pair)))


def retrieval_pair(data: PairedLatents, pair: tuple[str, str] | None, name: str = "pair") -> tuple[str, str]:
    """The ``(query, key)`` modalities of ``data`` to score: ``pair`` checked, or its first two when ``None``.

    Raises:
        ValueError: If ``pair`` is not two different modalities of ``data``
            (the message starts with ``name``).

    """
    if pair is None:
        return data.modalities[0], data.modalities[1]
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"{name}: expected two different modality names (query, key), got {pair!r}")
    for m in pair:
        if m not in data.modalities:
            raise ValueError(f"{name}: {m!r} is not one of {data.modalities}")
    return pair[0], pair[1]


def _default_device(model: Embedder) -> torch.device:
    """The device of a module's first parameter (else buffer), the CPU for anything else."""
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _embed(model: Embedder, modality: str, latents: Tensor, batch_size: int, device: torch.device) -> Tensor:
    chunks = [model.embed(modality, latents[s : s + batch_size].to(device)) for s in range(0, len(latents), batch_size)]
    return torch.cat(chunks).float()


def score_retrieval_task(
    model: Embedder,
    task: tuple[Tensor, Tensor, Tensor],
    pair: tuple[str, str],
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 8192,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K of a retrieval task already read: :func:`evaluate_retrieval` once the latents are in memory.

    Args:
        model: The embedder.
        task: ``(query_latents, key_latents, key_to_query)`` as
            :meth:`~fusemix.data.PairedLatents.retrieval_task` returns them.
            Shapes: ``(Q, D_query)``, ``(K, D_key)``, ``(K,)``.
        pair: The ``(query, key)`` modalities of the task.
        ks: Recall cut-offs.
        batch_size: Rows embedded at once.
        chunk_size: Queries scored at once (``None``: automatic).
        device: Where to embed (see :class:`Embedder` for ``None``).

    Returns:
        The metrics, in percent.

    """
    device = _default_device(model) if device is None else torch.device(device)
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        query = _embed(model, pair[0], task[0], batch_size, device)
        key = _embed(model, pair[1], task[1], batch_size, device)
    finally:
        if module is not None:
            module.train(was_training)
    return retrieval_metrics(query, key, task[2], ks, chunk_size=chunk_size, names=metric_names(*pair))


def evaluate_retrieval(
    model: Embedder,
    data: PairedLatents,
    pair: tuple[str, str] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 8192,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K in both directions between two modalities of ``data``.

    The model embeds the latents in batches under ``torch.no_grad()``, in
    eval mode when it is an ``nn.Module`` (its mode is restored afterwards);
    ranks follow :func:`fusemix.retrieval_metrics`.

    Args:
        model: What embeds: a trained :class:`~fusemix.FusionModel`, a fitted
            :class:`~fusemix.CCAAligner` or :class:`~fusemix.ProcrustesAligner`,
            or anything with ``embed(modality, latents)`` (an :class:`Embedder`).
        data: Paired latents; see :meth:`~fusemix.data.PairedLatents.retrieval_task`.
        pair: ``(query, key)`` modalities, e.g. ``("image", "text")``; the
            first two modalities of ``data`` when ``None``.
        ks: Recall cut-offs.
        batch_size: Rows embedded at once.
        chunk_size: Queries scored at once (``None``: automatic).
        device: Where to embed; when ``None``, the device of the model's first
            parameter or buffer (the CPU for an embedder that is not an
            ``nn.Module``, or a module without either).

    Returns:
        Metrics such as ``{"i2t_R@1": ..., "t2i_R@10": ..., "mean": ...}``, in percent.

    Raises:
        ValueError: If ``pair`` is not two different modalities of ``data``.

    Example:
        >>> import numpy as np
        >>> from fusemix import CCAAligner, FusionModel
        >>> data = PairedLatents({"image": np.random.randn(20, 6), "text": np.random.randn(20, 4)})
        >>> model = FusionModel.from_dims(data.dims, shared_dim=3, depth=1)
        >>> metrics = evaluate_retrieval(model, data, ("image", "text"))
        >>> sorted(k for k in metrics if k.endswith("R@1"))
        ['i2t_R@1', 't2i_R@1']
        >>> aligner = CCAAligner(2).fit({m: data.gather(np.arange(20))[m] for m in data.modalities})
        >>> sorted(evaluate_retrieval(aligner, data)) == sorted(metrics)
        True

    """
    query, key = retrieval_pair(data, pair)
    task = data.retrieval_task(query, key)
    return score_retrieval_task(
        model, task, (query, key), ks=ks, batch_size=batch_size, chunk_size=chunk_size, device=device
    )


__all__ = ["Embedder", "evaluate_retrieval", "retrieval_metric_keys", "retrieval_pair", "score_retrieval_task"]
