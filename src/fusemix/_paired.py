"""Latents of several modalities, paired by index: :class:`PairedLatents` (see :mod:`fusemix.data`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from fusemix._batch_reads import (
    MISSING,
    ArrayLike,
    LatentBatch,
    gather_pairs,
    pair_masks,
    read_rows,
    source_rows,
)
from fusemix._checks import check_choice

KeyGroups = str | np.ndarray | Tensor | Sequence[Hashable]
"""``key_groups`` of :meth:`PairedLatents.retrieval_task`: ``"row"``, ``"value"`` or one label per key row."""

KEY_GROUPINGS: tuple[str, ...] = ("row", "value")


def is_floating(dtype: object) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    try:
        return np.dtype(dtype).kind == "f"  # type: ignore[arg-type]
    except TypeError:
        return False


def check_latents(name: str, array: object) -> tuple[int, int]:
    shape = getattr(array, "shape", None)
    if shape is None or not callable(getattr(array, "__getitem__", None)):
        raise TypeError(
            f"{name}: expected an array-like with .shape and row indexing (ndarray, memmap, tensor or latent store), "
            f"got {type(array).__name__}"
        )
    if len(shape) != 2:
        raise ValueError(f"{name}: expected shape (N, D), got {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name}: expected at least one row and one column, got shape {tuple(shape)}")
    dtype = getattr(array, "dtype", None)
    if not is_floating(dtype):
        raise TypeError(f"{name}: expected floating-point latents, got dtype {dtype}")
    return int(shape[0]), int(shape[1])


def as_index_array(name: str, values: object) -> np.ndarray:
    """``values`` as a 1-D int64 numpy array, refusing floats and booleans."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of row indices, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        if array.size == 0 and array.dtype.kind == "f":
            return array.astype(np.int64)
        raise TypeError(f"{name}: expected integer row indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def check_in_range(name: str, index: np.ndarray, size: int, what: str) -> None:
    if index.size and (int(index.min()) < 0 or int(index.max()) >= size):
        bad = index[(index < 0) | (index >= size)][:5].tolist()
        raise ValueError(f"{name}: indices must lie in [0, {size}) ({what}), found {bad}")


def check_rows(name: str, index: np.ndarray, size: int, what: str) -> None:
    """Like :func:`check_in_range`, but ``MISSING`` (-1) is allowed: the pair lacks this modality."""
    outside = (index < 0) | (index >= size)
    if not index.size or not outside.any():
        return
    invalid = outside & (index != MISSING)
    if not invalid.any():
        return
    found = index[outside][:5].tolist()
    also = "" if found == index[invalid][:5].tolist() else f" (invalid: {index[invalid][:5].tolist()})"
    raise ValueError(
        f"{name}: indices must lie in [0, {size}) ({what}), or be -1 for a pair that lacks the modality; "
        f"found {found}{also}"
    )


class PairedLatents:
    """Latents of several modalities, paired by index.

    Pair ``p`` is made of row ``rows[m][p]`` of every modality ``m``. A
    modality missing from ``rows`` is paired by identity (pair ``p`` is its
    row ``p``), which needs exactly ``P`` rows. One-to-many data is written
    without copies: for COCO (one image, five captions) the captions are the
    identity and ``rows["image"][p]`` is the image of caption ``p``.

    **Missing modalities.** ``rows[m][p] = -1`` says that pair ``p`` lacks
    modality ``m`` (an image-text pair in data that also has audio, say).
    Every pair needs at least two modalities; a modality paired by identity
    is present in every pair. :meth:`gather` returns zeros for the absent
    rows (it never reads row -1) and, like :class:`LatentBatcher`, the
    presence flags as ``masks`` (:meth:`masks`), which
    :class:`~fusemix.FuseMix`, the losses and :func:`fusemix.train.fit` take.

    Nothing is loaded or copied: the latents stay where they are (memory,
    ``np.memmap``, latent store) until :meth:`gather` reads rows.

    Args:
        latents: Modality name to latents. Shape of each: ``(N_m, D_m)``;
            ``np.ndarray``, ``np.memmap``, ``torch.Tensor`` or a latent store.
            At least two modalities.
        rows: Modality name to the row of that modality used by each pair,
            or -1 where the pair lacks it. Shape of each: ``(P,)``, integer.
            ``None`` pairs every modality by identity.

    Raises:
        TypeError: If latents are not floating point or rows not integer.
        ValueError: If shapes, lengths or indices are inconsistent (the
            message names the modality), or a pair has fewer than two
            modalities (the message names the rows and the first such pair).

    Example:
        >>> images = np.random.randn(2, 4).astype(np.float32)
        >>> captions = np.random.randn(5, 3).astype(np.float32)
        >>> data = PairedLatents({"image": images, "text": captions}, rows={"image": [0, 0, 0, 1, 1]})
        >>> len(data), data.dims
        (5, {'image': 4, 'text': 3})
        >>> batch = data.gather(np.array([3, 0]))
        >>> torch.equal(batch["image"][0], torch.from_numpy(images[1]))
        True

        Three modalities, pair 1 without audio and pair 2 without an image:

        >>> audio = np.random.randn(2, 6).astype(np.float32)
        >>> data = PairedLatents({"image": images, "text": captions[:3], "audio": audio},
        ...                      rows={"image": [0, 1, -1], "audio": [0, -1, 1]})
        >>> data.complete, data.masks([0, 1, 2])["audio"].tolist()
        (False, [True, False, True])
        >>> batch = data.gather([1, 2])
        >>> batch["audio"][0].abs().sum().item(), batch.masks["image"].tolist()
        (0.0, [True, False])

    """

    def __init__(self, latents: Mapping[str, ArrayLike], rows: Mapping[str, Any] | None = None) -> None:
        if not isinstance(latents, Mapping):
            raise TypeError(f"latents: expected a mapping of modality name to latents, got {type(latents).__name__}")
        if len(latents) < 2:
            raise ValueError(f"latents: pairing needs at least 2 modalities, got {len(latents)}")
        sizes: dict[str, tuple[int, int]] = {}
        for name, array in latents.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"latents: modality names must be non-empty strings, got {name!r}")
            sizes[name] = check_latents(f"latents[{name!r}]", array)
        rows = {} if rows is None else rows
        if not isinstance(rows, Mapping):
            raise TypeError(f"rows: expected a mapping of modality name to row indices, got {type(rows).__name__}")
        unknown = [k for k in rows if k not in latents]
        if unknown:
            raise ValueError(f"rows: modalities {unknown} are not in latents {list(latents)}")
        index: dict[str, np.ndarray] = {name: as_index_array(f"rows[{name!r}]", v) for name, v in rows.items()}
        if index:
            first = next(iter(index))
            num_pairs = len(index[first])
            for name, idx in index.items():
                if len(idx) != num_pairs:
                    raise ValueError(
                        f"rows[{name!r}]: has {len(idx)} entries but rows[{first!r}] has {num_pairs}; "
                        "every rows array needs one entry per pair"
                    )
        else:
            first = next(iter(latents))
            num_pairs = sizes[first][0]
        if num_pairs < 1:
            raise ValueError("rows: expected at least one pair, got 0")
        for name, (n, _) in sizes.items():
            if name in index:
                check_rows(f"rows[{name!r}]", index[name], n, f"latents[{name!r}] has {n} rows")
            elif n != num_pairs:
                reason = f"P={num_pairs}" if index else f"latents[{first!r}] has {num_pairs} rows"
                raise ValueError(
                    f"latents[{name!r}]: has {n} rows but no rows mapping and {reason}; "
                    f"give rows[{name!r}] to pair its rows explicitly"
                )
        absent = {name: idx == MISSING for name, idx in index.items() if idx.size and int(idx.min()) == MISSING}
        _check_two_present(absent, list(latents), num_pairs)
        self._latents: dict[str, ArrayLike] = dict(latents)
        self._rows: dict[str, np.ndarray | None] = {name: index.get(name) for name in latents}
        self._num_pairs = num_pairs
        self._dims = {name: d for name, (_, d) in sizes.items()}
        self._complete = not absent
        self._lacking = frozenset(absent)

    @property
    def modalities(self) -> list[str]:
        """Names of the modalities, in the order given."""
        return list(self._latents)

    @property
    def dims(self) -> dict[str, int]:
        """Latent dimension ``D_m`` of every modality."""
        return dict(self._dims)

    @property
    def latents(self) -> dict[str, ArrayLike]:
        """The latent sources, as given (not copied)."""
        return dict(self._latents)

    def __len__(self) -> int:
        """Number of pairs ``P``."""
        return self._num_pairs

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """Copies of the rows of the modalities not paired by identity, as given (-1: the pair lacks it).

        ``PairedLatents(data.latents, data.rows)`` pairs the same rows. Shape of
        each: ``(P,)``, int64.
        """
        return {m: r.copy() for m, r in self._rows.items() if r is not None}

    @property
    def complete(self) -> bool:
        """Whether every pair has every modality (no ``-1`` in ``rows``)."""
        return self._complete

    def __repr__(self) -> str:
        dims = ", ".join(f"{m}: {d}" for m, d in self._dims.items())
        if self._complete:
            return f"PairedLatents({self._num_pairs} pairs; {dims})"
        lacking = int(np.any([r == MISSING for r in self._rows.values() if r is not None], axis=0).sum())
        return f"PairedLatents({self._num_pairs} pairs, {lacking} lacking a modality; {dims})"

    def _modality(self, name: str, argument: str = "modality") -> str:
        if name not in self._latents:
            raise KeyError(f"{argument}: {name!r} is not one of {self.modalities}")
        return name

    def row_index(self, modality: str) -> np.ndarray:
        """The row of ``modality`` used by every pair.

        Args:
            modality: A modality name.

        Returns:
            Row indices, int64, with -1 for the pairs that lack
            ``modality``. Shape: ``(P,)``.

        """
        rows = self._rows[self._modality(modality)]
        return np.arange(self._num_pairs, dtype=np.int64) if rows is None else rows.copy()

    def _pair_index(self, pair_indices: object) -> np.ndarray:
        index = as_index_array("pair_indices", pair_indices)
        check_in_range("pair_indices", index, self._num_pairs, f"there are {self._num_pairs} pairs")
        return index

    def subset(self, pair_indices: np.ndarray | Sequence[int] | Tensor) -> PairedLatents:
        """The pairs ``pair_indices``, in that order, sharing the latents (nothing is copied).

        Args:
            pair_indices: Indices of pairs to keep. Shape: ``(K,)``, ``K >= 1``.

        Returns:
            A :class:`PairedLatents` of ``K`` pairs over the same latent
            sources, keeping which modalities each pair lacks.

        """
        pairs = self._pair_index(pair_indices)
        return PairedLatents(self._latents, {m: source_rows(r, pairs) for m, r in self._rows.items()})

    def masks(
        self, pair_indices: np.ndarray | Sequence[int] | Tensor, *, device: str | torch.device = "cpu"
    ) -> dict[str, Tensor] | None:
        """Which modalities some pairs have.

        Args:
            pair_indices: Pairs to look at. Shape: ``(B,)``.
            device: Device of the returned masks.

        Returns:
            ``None`` when the data is :attr:`complete`; else modality name
            to presence flags (every modality), entry ``i`` for pair
            ``pair_indices[i]``. Shape of each: ``(B,)``, bool.

        """
        if self._complete:
            return None
        return pair_masks(self._rows, self._pair_index(pair_indices), torch.device(device))

    def gather(
        self,
        pair_indices: np.ndarray | Sequence[int] | Tensor,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> LatentBatch:
        """Read the latents of some pairs, one vectorised read per modality.

        Args:
            pair_indices: Pairs to read. Shape: ``(B,)``.
            dtype: Floating dtype of the returned tensors.
            device: Device of the returned tensors.

        Returns:
            Modality name to latents, as a :class:`LatentBatch` whose
            ``masks`` are :meth:`masks` of the pairs; row ``i`` of every
            tensor belongs to pair ``pair_indices[i]``, and is zeros where
            that pair lacks the modality (no row is read for it). Shape of
            each: ``(B, D_m)``.

        """
        pairs = self._pair_index(pair_indices)
        return gather_pairs(self._latents, self._rows, self._lacking, pairs, dtype, torch.device(device))

    @overload
    def retrieval_task(
        self, query: str, key: str, *, dtype: torch.dtype = torch.float32, key_groups: None = None
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    @overload
    def retrieval_task(
        self, query: str, key: str, *, dtype: torch.dtype = torch.float32, key_groups: KeyGroups
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...

    def retrieval_task(
        self, query: str, key: str, *, dtype: torch.dtype = torch.float32, key_groups: KeyGroups | None = None
    ) -> tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
        """The inputs of :func:`fusemix.retrieval_metrics` for the pairs of two modalities.

        Each distinct row of ``query`` used by the pairs is one query item
        (e.g. an image) and each distinct row of ``key`` one key item (e.g. a
        caption); both are sorted by row. Every key item must belong to one
        query item, so the result reads as ``(image_latents, text_latents,
        text_to_image)``. Only the pairs that have both modalities take part.

        **Identical keys** (one caption for several images): with
        ``key_groups``, a key row paired with several query rows is allowed
        and gives one key item per query row it belongs to (the same latent,
        repeated; items sorted by key row, then query item), and a fourth
        tensor gives each key item's group, for
        ``retrieval_metrics(..., text_groups=groups)``: the key items of a
        group count as hits for each other's query items. ``key_groups`` says
        which keys are the same:

        - ``"row"``: the same row of the key latents (a caption stored once
          and paired with several images);
        - ``"value"``: exactly equal key latents as returned (a caption
          encoded once per pair; an encoder that gave two copies slightly
          different values keeps them apart, so prefer labels then);
        - labels, one per row of the key latents (e.g. the caption strings):
          rows with equal labels. Shape: ``(N_key,)``.

        Args:
            query: Modality with one item per group (e.g. ``"image"``).
            key: Modality with one or more items per query item (e.g. ``"text"``).
            dtype: Floating dtype of the returned latents.
            key_groups: ``None`` (each key row its own item; a key row paired
                with several query rows is refused), ``"row"``, ``"value"``
                or labels; see above.

        Returns:
            ``(query_latents, key_latents, key_to_query)`` with shapes
            ``(Q, D_query)``, ``(K, D_key)`` and ``(K,)`` (int64 indices into
            the query latents); with ``key_groups`` also ``groups``, the group
            of each key item, shape ``(K,)``, int64.

        Raises:
            KeyError: If a modality is unknown.
            ValueError: If ``query == key``, no pair has both modalities, a
                key row is paired with two different query rows and
                ``key_groups`` is ``None``, the labels do not fit, or a row
                read holds NaN or Inf (the message names the source and row).

        Example:
            >>> img, txt = np.eye(2, dtype=np.float32), np.ones((4, 3), np.float32)
            >>> data = PairedLatents({"image": img, "text": txt}, rows={"image": [1, 0, 1, 0]})
            >>> q, k, k2q = data.retrieval_task("image", "text")
            >>> q.shape, k.shape, k2q.tolist()
            (torch.Size([2, 2]), torch.Size([4, 3]), [1, 0, 1, 0])

            Three images, one caption stored once and shared by images 0 and 2:

            >>> shared = PairedLatents({"image": np.eye(3), "text": np.eye(2)}, rows={"text": [0, 1, 0]})
            >>> q, k, k2q, groups = shared.retrieval_task("image", "text", key_groups="row")
            >>> k.shape, k2q.tolist(), groups.tolist()
            (torch.Size([3, 2]), [0, 2, 1], [0, 0, 1])

        """
        self._modality(query, "query")
        self._modality(key, "key")
        if query == key:
            raise ValueError(f"key: must differ from query, got {key!r} for both")
        query_rows, key_rows = self.row_index(query), self.row_index(key)
        both = (query_rows != MISSING) & (key_rows != MISSING)
        if not both.any():
            raise ValueError(f"key: no pair has both {query!r} and {key!r}, so there is nothing to retrieve")
        query_rows, key_rows = query_rows[both], key_rows[both]
        unique_query, query_item = np.unique(query_rows, return_inverse=True)
        if key_groups is None:
            key_item_rows, key_to_query = _one_query_per_key(query_rows, key_rows, query_item, query, key)
        else:
            items = np.unique(np.stack([key_rows, query_item.reshape(-1)], axis=1), axis=0)  # by key row, then query
            key_item_rows, key_to_query = items[:, 0], items[:, 1]
        cpu = torch.device("cpu")
        query_latents = read_rows(self._latents[query], unique_query, dtype, cpu, role=(query,))
        key_latents = read_rows(self._latents[key], key_item_rows, dtype, cpu, role=(key,))
        task = (query_latents, key_latents, torch.from_numpy(key_to_query))
        if key_groups is None:
            return task
        return (*task, _key_group_ids(key_groups, key_item_rows, key_latents, self._latents[key].shape[0]))


def _one_query_per_key(
    query_rows: np.ndarray, key_rows: np.ndarray, query_item: np.ndarray, query: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct key rows, sorted, and the query item of each; refuses a key row paired with two query rows."""
    unique_key, key_item = np.unique(key_rows, return_inverse=True)
    key_to_query = np.full(len(unique_key), -1, dtype=np.int64)
    key_to_query[key_item] = query_item
    conflict = np.flatnonzero(key_to_query[key_item] != query_item)
    if conflict.size:
        row = int(key_rows[conflict[0]])
        owners = sorted({int(r) for r in query_rows[key_rows == row]})[:5]
        raise ValueError(
            f"key: row {row} of {key!r} is paired with several rows of {query!r} ({owners}); each {key!r} item "
            f"must belong to one {query!r} item for retrieval. For one {key!r} shared by several {query!r} items "
            f"(identical captions), pass key_groups='row' and score with retrieval_metrics(..., text_groups=groups), "
            "or swap query and key"
        )
    return unique_key, key_to_query


def _key_group_ids(key_groups: KeyGroups, key_rows: np.ndarray, key_latents: Tensor, num_rows: int) -> Tensor:
    """The group of every key item: by key row, by equal latents, or by the labels of the key rows. Shape: ``(K,)``."""
    if isinstance(key_groups, str):
        check_choice("key_groups", key_groups, KEY_GROUPINGS)
        if key_groups == "value":
            return torch.unique(key_latents, dim=0, return_inverse=True)[1]
        labels = key_rows
    else:
        every_row = np.asarray(key_groups.detach().cpu() if isinstance(key_groups, Tensor) else key_groups)
        if every_row.ndim != 1 or every_row.shape[0] != num_rows:
            raise ValueError(
                f"key_groups: expected 'row', 'value' or one label per row of the key latents (shape ({num_rows},)), "
                f"got shape {every_row.shape}"
            )
        labels = every_row[key_rows]
    return torch.from_numpy(np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64))


def _check_two_present(absent: Mapping[str, np.ndarray], modalities: list[str], num_pairs: int) -> None:
    """Refuse pairs with fewer than two modalities; ``absent[m]`` flags the pairs lacking ``m`` (-1 rows)."""
    if not absent:
        return
    present = len(modalities) - np.sum(list(absent.values()), axis=0)
    bad = np.flatnonzero(present < 2)
    if not bad.size:
        return
    first = int(bad[0])
    lacking = [m for m, flags in absent.items() if flags[first]]
    has = [m for m in modalities if m not in lacking]
    where = ", ".join(f"rows[{m!r}]" for m in lacking)
    raise ValueError(
        f"rows: every pair needs at least two modalities, but {bad.size} pair(s) have fewer (pairs "
        f"{bad[:5].tolist()}{', ...' if bad.size > 5 else ''}); pair {first} has only {has} (-1 in {where})"
    )
