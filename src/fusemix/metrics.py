"""Cross-modal retrieval metrics: ranks and Recall@K, computed in chunks.

Conventions (the same as LAVIS's ``_report_metrics`` for COCO / Flickr30K):

- An image may have several captions; ``text_to_image[t]`` is the index of the
  image of caption ``t``.
- **image→text** (``i2t``): each image queries all captions; its rank is the
  best (smallest) rank among its own captions.
- **text→image** (``t2i``): each caption queries all images; its rank is the
  rank of its image.
- Ranks are 0-based; ``R@K`` is the percentage of queries with rank ``< K``.
- **Ties count against the query**: a query's rank is the number of
  *negative* candidates scoring ``>=`` its best positive. A model that gives
  every candidate the same score therefore gets the worst rank, not the best;
  a negative tied with the positive is counted as ahead of it, while another
  positive tied with it is not. Without ties the ranks equal LAVIS's exactly
  (LAVIS breaks ties by the order ``argsort`` happens to return).

Nothing here builds the full similarity matrix: queries are processed in
chunks of ``chunk_size`` rows against all candidates, so memory is
``chunk_size * num_candidates`` scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_features, check_finite, check_positive_int

DEFAULT_CHUNK_ELEMENTS = 2**25
"""Scores held at once when ``chunk_size`` is not given (128 MiB in float32)."""


def _as_index(text_to_image: Tensor | Sequence[int] | np.ndarray, num_texts: int, num_images: int) -> Tensor:
    index = torch.as_tensor(np.asarray(text_to_image) if not isinstance(text_to_image, Tensor) else text_to_image)
    if index.ndim != 1:
        raise ValueError(f"text_to_image: expected a 1-D sequence of image indices, got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.dtype.is_complex:
        raise TypeError(f"text_to_image: expected integer image indices, got dtype {index.dtype}")
    if index.numel() != num_texts:
        raise ValueError(
            f"text_to_image: has {index.numel()} entries but there are {num_texts} texts; need one image index per text"
        )
    index = index.to(torch.int64)
    if num_texts and (int(index.min()) < 0 or int(index.max()) >= num_images):
        bad = index[(index < 0) | (index >= num_images)][:5].tolist()
        raise ValueError(f"text_to_image: indices must lie in [0, {num_images}), found {bad}")
    counts = torch.bincount(index, minlength=num_images)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(
            f"text_to_image: {int((counts == 0).sum())} image(s) have no caption (first: {missing}); "
            "every image needs at least one caption to be ranked"
        )
    return index


def _chunk_rows(chunk_size: int | None, num_candidates: int) -> int:
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, num_candidates))


def _count_at_least(scores: Tensor, positive: Tensor) -> Tensor:
    """Per row, the number of entries of ``scores`` that are ``>= positive``."""
    return (scores >= positive[:, None]).sum(dim=1)


def _texts_by_image(text_to_image: Tensor, num_images: int) -> tuple[Tensor, Tensor]:
    """Caption indices grouped by image, and the start of each image's group (CSR layout).

    Captions of image ``i`` are ``order[starts[i]:starts[i + 1]]``.
    """
    order = torch.argsort(text_to_image, stable=True)
    starts = torch.searchsorted(text_to_image[order], torch.arange(num_images + 1))
    return order, starts


def _i2t_chunk(sim: Tensor, first_image: int, text_to_image: Tensor, order: Tensor, starts: Tensor) -> Tensor:
    """Best ranks of a chunk of image rows ``sim`` (shape ``(c, T)``) among their captions."""
    rows = sim.shape[0]
    lo, hi = int(starts[first_image]), int(starts[first_image + rows])
    texts = order[lo:hi]
    owner = (text_to_image[texts] - first_image).to(sim.device)
    texts = texts.to(sim.device)
    positive = sim[owner, texts]
    best = torch.full((rows,), float("-inf"), dtype=sim.dtype, device=sim.device)
    best = best.scatter_reduce(0, owner, positive, reduce="amax")
    tied_positives = torch.zeros(rows, dtype=torch.int64, device=sim.device)
    tied_positives = tied_positives.scatter_add(0, owner, (positive >= best[owner]).to(torch.int64))
    return _count_at_least(sim, best) - tied_positives


def _check_ranks_inputs(image_emb: Tensor, text_emb: Tensor) -> None:
    check_features("image_emb", image_emb)
    check_features("text_emb", text_emb)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"text_emb: has dim {text_emb.shape[1]} but image_emb has dim {image_emb.shape[1]}; "
            "both must be in one space"
        )
    check_finite("image_emb", image_emb)
    check_finite("text_emb", text_emb)


@torch.no_grad()
def retrieval_ranks(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor | Sequence[int] | np.ndarray,
    *,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Ranks of the positives for image→text and text→image retrieval.

    Similarity is the dot product of the given embeddings (pass normalised
    embeddings for cosine similarity). See the module docstring for the rank
    conventions, including ties.

    Args:
        image_emb: Image embeddings. Shape: ``(I, D)``.
        text_emb: Text embeddings. Shape: ``(T, D)``.
        text_to_image: Image index of each text. Shape: ``(T,)``; every image
            needs at least one text.
        chunk_size: Queries scored at once; by default as many as fit in
            ``2**25`` scores.

    Returns:
        ``(i2t_ranks, t2i_ranks)``: 0-based ranks, int64, on the embeddings'
        device. Shapes: ``(I,)`` and ``(T,)``.

    Example:
        >>> img = torch.eye(3)
        >>> txt = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0, 0.1]])
        >>> i2t, t2i = retrieval_ranks(img, txt, [0, 1, 2, 2])
        >>> i2t.tolist(), t2i.tolist()
        ([0, 0, 0], [0, 0, 0, 1])

    """
    _check_ranks_inputs(image_emb, text_emb)
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    index = _as_index(text_to_image, num_texts, num_images)
    order, starts = _texts_by_image(index, num_images)
    text_emb = text_emb.to(image_emb.dtype)

    i2t = torch.empty(num_images, dtype=torch.int64, device=image_emb.device)
    step = _chunk_rows(chunk_size, num_texts)
    for s in range(0, num_images, step):
        sim = image_emb[s : s + step] @ text_emb.T
        i2t[s : s + step] = _i2t_chunk(sim, s, index, order, starts)

    t2i = torch.empty(num_texts, dtype=torch.int64, device=image_emb.device)
    step = _chunk_rows(chunk_size, num_images)
    dev_index = index.to(image_emb.device)
    for s in range(0, num_texts, step):
        sim = text_emb[s : s + step] @ image_emb.T
        positive = sim.gather(1, dev_index[s : s + step, None]).squeeze(1)
        t2i[s : s + step] = _count_at_least(sim, positive) - 1
    return i2t, t2i


@torch.no_grad()
def similarity_ranks(
    similarity: Tensor,
    text_to_image: Tensor | Sequence[int] | np.ndarray,
    *,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Ranks from a precomputed image-by-text similarity matrix.

    Same conventions as :func:`retrieval_ranks`; use it to score a matrix that
    did not come from dot products (e.g. a re-ranker) or to compare against
    another implementation on the very same numbers.

    Args:
        similarity: Scores, image rows and text columns. Shape: ``(I, T)``.
        text_to_image: Image index of each text. Shape: ``(T,)``.
        chunk_size: Rows (and columns) compared at once.

    Returns:
        ``(i2t_ranks, t2i_ranks)`` of shapes ``(I,)`` and ``(T,)``.

    """
    check_features("similarity", similarity)
    check_finite("similarity", similarity)
    num_images, num_texts = similarity.shape
    index = _as_index(text_to_image, num_texts, num_images)
    order, starts = _texts_by_image(index, num_images)
    i2t = torch.empty(num_images, dtype=torch.int64, device=similarity.device)
    step = _chunk_rows(chunk_size, num_texts)
    for s in range(0, num_images, step):
        i2t[s : s + step] = _i2t_chunk(similarity[s : s + step], s, index, order, starts)
    t2i = torch.empty(num_texts, dtype=torch.int64, device=similarity.device)
    step = _chunk_rows(chunk_size, num_images)
    dev_index = index.to(similarity.device)
    for s in range(0, num_texts, step):
        cols = similarity[:, s : s + step].T
        positive = cols.gather(1, dev_index[s : s + step, None]).squeeze(1)
        t2i[s : s + step] = _count_at_least(cols, positive) - 1
    return i2t, t2i


def recall_at_k(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Percentage of queries whose positive ranks within the top ``k``.

    Args:
        ranks: 0-based ranks. Shape: ``(N,)``, ``N >= 1``.
        ks: Cut-offs, each >= 1.

    Returns:
        ``{k: 100 * mean(ranks < k)}``.

    Example:
        >>> recall_at_k(torch.tensor([0, 1, 4, 9]), ks=(1, 5))
        {1: 25.0, 5: 75.0}

    """
    if ranks.ndim != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks: expected a non-empty 1-D tensor, got shape {tuple(ranks.shape)}")
    ks = _check_ks(ks)
    return {k: 100.0 * float((ranks < k).double().mean()) for k in ks}


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks: expected at least one cut-off")
    for k in ks:
        check_positive_int("ks", k)
    return ks


def metrics_from_ranks(
    i2t_ranks: Tensor, t2i_ranks: Tensor, ks: Sequence[int] = (1, 5, 10), *, names: tuple[str, str] = ("i", "t")
) -> dict[str, float]:
    """Recall@K table from both directions' ranks.

    Args:
        i2t_ranks: Ranks of the first modality's queries. Shape: ``(I,)``.
        t2i_ranks: Ranks of the second modality's queries. Shape: ``(T,)``.
        ks: Cut-offs.
        names: Short names of the two modalities for the keys, e.g.
            ``("a", "t")`` gives ``a2t_R@1`` and ``t2a_R@1``.

    Returns:
        ``{"i2t_R@1": ..., "i2t_R@5": ..., "t2i_R@1": ..., "i2t_mean": ...,
        "t2i_mean": ..., "mean": ...}`` in percent; ``*_mean`` averages a
        direction's ``R@K`` and ``mean`` averages the two directions.

    """
    ks = _check_ks(ks)
    a, b = names
    out: dict[str, float] = {}
    means = []
    for direction, ranks in ((f"{a}2{b}", i2t_ranks), (f"{b}2{a}", t2i_ranks)):
        recalls = recall_at_k(ranks, ks)
        out.update({f"{direction}_R@{k}": v for k, v in recalls.items()})
        out[f"{direction}_mean"] = sum(recalls.values()) / len(recalls)
        means.append(out[f"{direction}_mean"])
    out["mean"] = sum(means) / 2
    return out


def retrieval_metrics(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor | Sequence[int] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int | None = None,
    names: tuple[str, str] = ("i", "t"),
) -> dict[str, float]:
    """Recall@K in both directions for multi-caption retrieval (COCO / Flickr30K protocol).

    ``i2t_R@K`` is image→text: the share of images (queries) with one of
    their captions in the top ``K`` texts. ``t2i_R@K`` is text→image: the
    share of captions whose image is in the top ``K`` images. The numbers
    equal LAVIS's ``_report_metrics`` on the same similarity matrix (ties
    count against the query; see the module docstring).

    Args:
        image_emb: Image (or other first-modality) embeddings. Shape: ``(I, D)``.
        text_emb: Text embeddings. Shape: ``(T, D)``.
        text_to_image: Image index of each text. Shape: ``(T,)``.
        ks: Cut-offs.
        chunk_size: Queries scored at once (see :func:`retrieval_ranks`).
        names: Short modality names used in the keys.

    Returns:
        ``{"i2t_R@1", ..., "t2i_R@10", "i2t_mean", "t2i_mean", "mean"}``, in
        percent.

    Example:
        >>> img = torch.eye(2)
        >>> txt = torch.tensor([[1.0, 0], [0.2, 1], [0, 1]])
        >>> m = retrieval_metrics(img, txt, [0, 1, 1], ks=(1,))
        >>> m["i2t_R@1"], m["t2i_R@1"]
        (100.0, 100.0)

    """
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_to_image, chunk_size=chunk_size)
    return metrics_from_ranks(i2t, t2i, ks, names=names)
