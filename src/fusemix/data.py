"""Fast batching of paired latents: whole batches by one vectorised gather, no per-sample work.

Training never touches raw data: every modality is a matrix of frozen-encoder
latents, held in memory (``np.ndarray`` / ``torch.Tensor``) or on disk (an
``np.memmap`` or a latent store: any read-only object with ``shape``,
``dtype`` and fancy ``__getitem__`` by an int64 index array). A
:class:`PairedLatents` says which rows of each modality form a pair, so one
image can pair with several captions without copying it, and a row index of
``-1`` marks a pair that lacks that modality. A :class:`LatentBatcher` yields
batches of pairs as a :class:`LatentBatch` (a ``dict`` of tensors, plus the
rows' presence masks when some pairs lack a modality), one fancy index per
modality per batch; with ``preload`` every modality lives on the training
device as one tensor and a batch is one ``index_select`` there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, Union

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_positive_int
from fusemix.store import LatentStore


class LatentArray(Protocol):
    """What a latent source must offer: an ``(N, D)`` shape, a dtype and fancy row indexing.

    ``np.ndarray``, ``np.memmap`` and ``torch.Tensor`` qualify, as does any
    on-disk store whose ``__getitem__`` takes a 1-D int64 array and returns
    an ``np.ndarray`` of shape ``(len(index), D)``.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: Any) -> Any: ...


ArrayLike = Union[np.ndarray, Tensor, LatentArray]  # noqa: UP007 (runtime alias, Python 3.10)
Preload = Union[bool, Literal["auto"]]  # noqa: UP007 (runtime alias, Python 3.10)

PRELOAD_DEVICE_FRACTION = 0.5
"""Share of free accelerator memory ``preload="auto"`` may fill with latents."""

LOAD_BLOCK_BYTES = 64 * 2**20
"""Bytes read at a time when a memory map or store is preloaded."""


def _is_floating(dtype: object) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    try:
        return np.dtype(dtype).kind == "f"  # type: ignore[arg-type]
    except TypeError:
        return False


def _check_latents(name: str, array: object) -> tuple[int, int]:
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
    if not _is_floating(dtype):
        raise TypeError(f"{name}: expected floating-point latents, got dtype {dtype}")
    return int(shape[0]), int(shape[1])


def _as_index_array(name: str, values: object) -> np.ndarray:
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


_MISSING = -1  # row index marking a pair that lacks a modality (in PairedLatents rows)


def _check_in_range(name: str, index: np.ndarray, size: int, what: str) -> None:
    if index.size and (int(index.min()) < 0 or int(index.max()) >= size):
        bad = index[(index < 0) | (index >= size)][:5].tolist()
        raise ValueError(f"{name}: indices must lie in [0, {size}) ({what}), found {bad}")


def _check_rows(name: str, index: np.ndarray, size: int, what: str) -> None:
    """Like :func:`_check_in_range`, but ``_MISSING`` (-1) is allowed: the pair lacks this modality."""
    outside = (index < 0) | (index >= size)
    if not index.size or not outside.any():
        return
    invalid = outside & (index != _MISSING)
    if not invalid.any():
        return
    found = index[outside][:5].tolist()
    also = "" if found == index[invalid][:5].tolist() else f" (invalid: {index[invalid][:5].tolist()})"
    raise ValueError(
        f"{name}: indices must lie in [0, {size}) ({what}), or be -1 for a pair that lacks the modality; "
        f"found {found}{also}"
    )


_Role = tuple[str, ...]
"""What a batch tensor is for, e.g. ``("image", "staged")``: the key of a reused buffer."""


class _NewTensors:
    """Hands out a new tensor for every request: :meth:`PairedLatents.gather` and ``reuse_buffers=False``."""

    reuses = False

    def take(
        self, role: _Role, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pinned: bool = False
    ) -> Tensor:
        """An uninitialised tensor of ``shape`` for ``role``; ``pinned`` asks for page-locked host memory."""
        return torch.empty(shape, dtype=dtype, device=device, pin_memory=pinned)

    def copied_out(self, role: _Role, device: torch.device) -> None:
        """Note that an asynchronous copy out of the pinned tensor of ``role`` was queued on ``device``.

        Nothing to do here: torch's pinned-memory allocator keeps a freed
        pinned tensor until the copies queued from it have run.
        """


class _ReusedTensors(_NewTensors):
    """Hands out, for every batch, views of the same tensors: ``LatentBatcher(reuse_buffers=True)``.

    Each ``(role, dtype, device, pinned, row shape)`` has one tensor of
    ``capacity`` rows, allocated on first use; a request for ``B`` rows gets
    its first ``B`` rows (a view, so a smaller last batch allocates nothing).
    A pinned host tensor may still be read by the asynchronous host-to-device
    copy the previous batch queued: :meth:`copied_out` records a CUDA event
    after that copy and :meth:`take` waits for it before handing the tensor
    out to be written again.
    """

    reuses = True

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._kept: dict[tuple[object, ...], Tensor] = {}
        self._copies: dict[_Role, torch.cuda.Event] = {}

    def take(
        self, role: _Role, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pinned: bool = False
    ) -> Tensor:
        """The first ``shape[0]`` rows of the tensor kept for ``role``, once no queued copy still reads it."""
        key = (role, dtype, device, pinned, shape[1:])
        kept = self._kept.get(key)
        if kept is None or len(kept) < shape[0]:
            kept = torch.empty(
                (max(shape[0], self.capacity), *shape[1:]), dtype=dtype, device=device, pin_memory=pinned
            )
            self._kept[key] = kept
        copy = self._copies.pop(role, None)
        if copy is not None:
            copy.synchronize()
        return kept[: shape[0]]

    def copied_out(self, role: _Role, device: torch.device) -> None:
        """Record, on ``device``'s current stream, the end of the copy just queued out of ``role``'s tensor."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._copies[role] = event


_NEW = _NewTensors()


class LatentBatch(dict[str, Tensor]):
    """A batch of pairs: a ``dict`` of modality name to latents, plus the presence masks of its rows.

    It is a plain ``dict`` (``batch["image"]``, ``batch.items()``, passing it
    to :class:`~fusemix.FuseMix` or :class:`~fusemix.FusionModel`) with one
    attribute more, ``masks``: ``None`` when the data it came from has
    every modality in every pair, else a boolean presence flag per row for
    every modality. Absent rows hold zeros. So one training loop fits both::

        for batch in batcher:
            loss = model(batch, masks=batch.masks)

    Args:
        latents: Modality name to latents. Shape of each: ``(B, D_m)``.
        masks: ``None``, or modality name to presence flags. Shape of each: ``(B,)``, bool.

    Attributes:
        masks: ``None`` (complete data) or modality name to presence flags
            (every modality). Shape of each: ``(B,)``, bool, on the batch's device.

    Example:
        >>> batch = LatentBatch({"image": torch.ones(2, 3)}, masks={"image": torch.tensor([True, False])})
        >>> list(batch), batch["image"].shape, batch.masks["image"].tolist()
        (['image'], torch.Size([2, 3]), [True, False])
        >>> isinstance(batch, dict), LatentBatch({"image": torch.ones(2, 3)}).masks is None
        (True, True)

    """

    def __init__(self, latents: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(latents)
        self.masks: dict[str, Tensor] | None = None if masks is None else dict(masks)


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
            sizes[name] = _check_latents(f"latents[{name!r}]", array)
        rows = {} if rows is None else rows
        if not isinstance(rows, Mapping):
            raise TypeError(f"rows: expected a mapping of modality name to row indices, got {type(rows).__name__}")
        unknown = [k for k in rows if k not in latents]
        if unknown:
            raise ValueError(f"rows: modalities {unknown} are not in latents {list(latents)}")
        index: dict[str, np.ndarray] = {name: _as_index_array(f"rows[{name!r}]", v) for name, v in rows.items()}
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
                _check_rows(f"rows[{name!r}]", index[name], n, f"latents[{name!r}] has {n} rows")
            elif n != num_pairs:
                reason = f"P={num_pairs}" if index else f"latents[{first!r}] has {num_pairs} rows"
                raise ValueError(
                    f"latents[{name!r}]: has {n} rows but no rows mapping and {reason}; "
                    f"give rows[{name!r}] to pair its rows explicitly"
                )
        absent = {name: idx == _MISSING for name, idx in index.items() if idx.size and int(idx.min()) == _MISSING}
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
    def complete(self) -> bool:
        """Whether every pair has every modality (no ``-1`` in ``rows``)."""
        return self._complete

    def __repr__(self) -> str:
        dims = ", ".join(f"{m}: {d}" for m, d in self._dims.items())
        if self._complete:
            return f"PairedLatents({self._num_pairs} pairs; {dims})"
        lacking = int(np.any([r == _MISSING for r in self._rows.values() if r is not None], axis=0).sum())
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
        index = _as_index_array("pair_indices", pair_indices)
        _check_in_range("pair_indices", index, self._num_pairs, f"there are {self._num_pairs} pairs")
        return index

    def _source_rows(self, modality: str, pairs: np.ndarray) -> np.ndarray:
        rows = self._rows[modality]
        return pairs if rows is None else rows[pairs]

    def subset(self, pair_indices: np.ndarray | Sequence[int] | Tensor) -> PairedLatents:
        """The pairs ``pair_indices``, in that order, sharing the latents (nothing is copied).

        Args:
            pair_indices: Indices of pairs to keep. Shape: ``(K,)``, ``K >= 1``.

        Returns:
            A :class:`PairedLatents` of ``K`` pairs over the same latent
            sources, keeping which modalities each pair lacks.

        """
        pairs = self._pair_index(pair_indices)
        return PairedLatents(self._latents, {m: self._source_rows(m, pairs) for m in self._latents})

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
        return self._masks(self._pair_index(pair_indices), torch.device(device))

    def _masks(self, pairs: np.ndarray, device: torch.device, tensors: _NewTensors = _NEW) -> dict[str, Tensor] | None:
        if self._complete:
            return None
        return {
            m: tensors.take((m, "mask"), (len(pairs),), torch.bool, device).copy_(
                torch.from_numpy(self._source_rows(m, pairs) != _MISSING)
            )
            for m in self._latents
        }

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
        return self._gather(self._pair_index(pair_indices), dtype, torch.device(device))

    def _gather(
        self, pairs: np.ndarray, dtype: torch.dtype, device: torch.device, tensors: _NewTensors = _NEW
    ) -> LatentBatch:
        """:meth:`gather` of checked int64 ``pairs``, writing into the tensors ``tensors`` hands out."""
        latents = {m: self._read(m, self._source_rows(m, pairs), dtype, device, tensors) for m in self._latents}
        return LatentBatch(latents, self._masks(pairs, device, tensors))

    def _read(
        self, modality: str, rows: np.ndarray, dtype: torch.dtype, device: torch.device, tensors: _NewTensors
    ) -> Tensor:
        """``latents[modality][rows]``, with zeros (and no read) where ``rows`` is -1.

        A modality that some pairs lack is always built in the same tensor
        (zeros, then the present rows), even for a batch where none lacks it.
        """
        source = self._latents[modality]
        if modality not in self._lacking:
            return _read_rows(source, rows, dtype, device, tensors, (modality,))
        present = np.flatnonzero(rows != _MISSING)
        out = tensors.take((modality, "with absent rows"), (len(rows), self._dims[modality]), dtype, device)
        out.index_fill_(0, torch.from_numpy(np.flatnonzero(rows == _MISSING)).to(device), 0)
        if len(present):
            read = _read_rows(source, rows[present], dtype, device, tensors, (modality,))
            out.index_copy_(0, torch.from_numpy(present).to(device), read)
        return out

    def retrieval_task(
        self, query: str, key: str, *, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The inputs of :func:`fusemix.retrieval_metrics` for the pairs of two modalities.

        Each distinct row of ``query`` used by the pairs is one query item
        (e.g. an image) and each distinct row of ``key`` one key item (e.g. a
        caption); both are sorted by row. Every key item must belong to one
        query item, so the result reads as ``(image_latents, text_latents,
        text_to_image)``. Only the pairs that have both modalities take part.

        Args:
            query: Modality with one item per group (e.g. ``"image"``).
            key: Modality with one or more items per query item (e.g. ``"text"``).
            dtype: Floating dtype of the returned latents.

        Returns:
            ``(query_latents, key_latents, key_to_query)`` with shapes
            ``(Q, D_query)``, ``(K, D_key)`` and ``(K,)`` (int64 indices into
            the query latents).

        Raises:
            KeyError: If a modality is unknown.
            ValueError: If ``query == key``, no pair has both modalities,
                or a key row is paired with two different query rows.

        Example:
            >>> img, txt = np.eye(2, dtype=np.float32), np.ones((4, 3), np.float32)
            >>> data = PairedLatents({"image": img, "text": txt}, rows={"image": [1, 0, 1, 0]})
            >>> q, k, k2q = data.retrieval_task("image", "text")
            >>> q.shape, k.shape, k2q.tolist()
            (torch.Size([2, 2]), torch.Size([4, 3]), [1, 0, 1, 0])

        """
        self._modality(query, "query")
        self._modality(key, "key")
        if query == key:
            raise ValueError(f"key: must differ from query, got {key!r} for both")
        query_rows, key_rows = self.row_index(query), self.row_index(key)
        both = (query_rows != _MISSING) & (key_rows != _MISSING)
        if not both.any():
            raise ValueError(f"key: no pair has both {query!r} and {key!r}, so there is nothing to retrieve")
        query_rows, key_rows = query_rows[both], key_rows[both]
        unique_query, query_item = np.unique(query_rows, return_inverse=True)
        unique_key, key_item = np.unique(key_rows, return_inverse=True)
        key_to_query = np.full(len(unique_key), -1, dtype=np.int64)
        key_to_query[key_item] = query_item
        conflict = np.flatnonzero(key_to_query[key_item] != query_item)
        if conflict.size:
            row = int(key_rows[conflict[0]])
            owners = sorted({int(r) for r in query_rows[key_rows == row]})[:5]
            raise ValueError(
                f"key: row {row} of {key!r} is paired with several rows of {query!r} ({owners}); each {key!r} item "
                f"must belong to one {query!r} item for retrieval, e.g. swap query and key"
            )
        cpu = torch.device("cpu")
        return (
            _read_rows(self._latents[query], unique_query, dtype, cpu),
            _read_rows(self._latents[key], unique_key, dtype, cpu),
            torch.from_numpy(key_to_query),
        )


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


def _torch_dtype_of(array: ArrayLike) -> torch.dtype:
    dtype = getattr(array, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype  # type: ignore[arg-type]


def _read_rows(
    source: ArrayLike,
    rows: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    tensors: _NewTensors = _NEW,
    role: _Role = (),
) -> Tensor:
    """Read ``source[rows]`` as one tensor with one vectorised fancy index.

    Array and store sources are read at sorted, de-duplicated rows (for
    locality on a memory map; one-to-many pairs read each row once) and put
    back in order with one ``index_select``. For a CUDA ``device`` the rows
    are staged in pinned memory and copied with ``non_blocking=True``.
    Every tensor on the way (gathered rows, staging, device copy, cast) is
    one that ``tensors`` hands out for a role under ``role``.

    Args:
        source: Latent source. Shape: ``(N, D)``.
        rows: Rows to read, int64. Shape: ``(B,)``.
        dtype: Floating dtype of the result.
        device: Device of the result.
        tensors: Where the tensors come from: new ones, or buffers reused across batches.
        role: Prefix of the roles of those tensors (the modality).

    Returns:
        The rows, in the order of ``rows``. Shape: ``(B, D)``.

    """
    pin = device.type == "cuda"
    shape, cpu = (len(rows), source.shape[1]), torch.device("cpu")
    if isinstance(source, Tensor):
        source = source.detach()
        host_to_cuda = pin and source.device.type == "cpu"
        where = cpu if host_to_cuda else source.device
        staged = tensors.take((*role, "staged"), shape, source.dtype, where, pinned=host_to_cuda)
        torch.index_select(source, 0, torch.from_numpy(rows).to(source.device), out=staged)
        return _place(staged, dtype, device, tensors, role)
    stored = _torch_dtype_of(source)
    unique, inverse = np.unique(rows, return_inverse=True)
    # np.take (LatentStore.read_rows for a store) writes the rows straight into a kept tensor.
    into_kept = tensors.reuses and isinstance(source, (np.ndarray, LatentStore))
    if len(unique) == len(rows) and bool((unique == rows).all()):
        is_result = stored == dtype  # no cast follows: with reuse_buffers the staged tensor must be a kept one
        keep = pin or into_kept or (tensors.reuses and is_result)
        into = tensors.take((*role, "staged"), shape, stored, cpu, pinned=pin) if keep else None
        return _place(_fetch(source, unique, into), dtype, device, tensors, role)
    into = tensors.take((*role, "fetched"), (len(unique), shape[1]), stored, cpu) if into_kept else None
    fetched = _fetch(source, unique, into)
    staged = tensors.take((*role, "staged"), shape, stored, cpu, pinned=pin)
    torch.index_select(fetched, 0, torch.from_numpy(inverse.reshape(-1)), out=staged)
    return _place(staged, dtype, device, tensors, role)


def _fetch(source: ArrayLike, unique: np.ndarray, into: Tensor | None) -> Tensor:
    """``source[unique]`` (sorted, in-range rows) as a host tensor: ``into`` when given, else a new one."""
    if into is None:
        return torch.from_numpy(_writable(np.ascontiguousarray(source[unique])))
    if isinstance(source, np.ndarray):
        np.take(source, unique, axis=0, out=into.numpy(), mode="clip")  # rows are in range; "raise" would buffer
    elif isinstance(source, LatentStore):
        source.read_rows(unique, out=into.numpy())
    else:
        into.numpy()[...] = source[unique]
    return into


def _place(staged: Tensor, dtype: torch.dtype, device: torch.device, tensors: _NewTensors, role: _Role) -> Tensor:
    """``staged`` as ``dtype`` on ``device``: moved in its own (often narrower) dtype, then cast there.

    A host tensor bound for CUDA is the pinned ``(*role, "staged")`` tensor:
    it is copied asynchronously, and ``tensors`` is told so.
    """
    if staged.device != device:
        from_pinned = staged.device.type == "cpu" and device.type == "cuda"
        moved = tensors.take((*role, "moved"), tuple(staged.shape), staged.dtype, device)
        moved.copy_(staged, non_blocking=from_pinned)
        if from_pinned:
            tensors.copied_out((*role, "staged"), device)
        staged = moved
    if staged.dtype == dtype:
        return staged
    return tensors.take((*role, "cast"), tuple(staged.shape), dtype, device).copy_(staged)


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied if read-only (``torch.from_numpy`` needs writable memory)."""
    return array if array.flags.writeable else array.copy()


def _in_memory(source: ArrayLike) -> bool:
    return isinstance(source, Tensor) or (isinstance(source, np.ndarray) and not isinstance(source, np.memmap))


def _preload_dtype(source: ArrayLike, dtype: torch.dtype) -> torch.dtype:
    """Keep a narrower source dtype on the device (convert per batch); never widen storage."""
    stored = _torch_dtype_of(source)
    return stored if stored.itemsize <= dtype.itemsize else dtype


def _load_whole(source: ArrayLike, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The whole source as one tensor on ``device``, read in blocks (never a view of a memory map).

    A memory map or store is copied block by block, so loading one onto a
    GPU never needs host memory for the whole of it.
    """
    if isinstance(source, Tensor):
        return source.to(device=device, dtype=dtype)
    to_tensor = getattr(source, "to_tensor", None)
    if callable(to_tensor) and not isinstance(source, np.ndarray):
        return to_tensor(dtype, device)
    if _in_memory(source) and source.flags.c_contiguous and source.flags.writeable:  # type: ignore[union-attr]
        return torch.from_numpy(source).to(device=device, dtype=dtype)  # type: ignore[arg-type]
    n, d = source.shape
    out = torch.empty((n, d), dtype=dtype, device=device)
    step = max(1, LOAD_BLOCK_BYTES // (d * _torch_dtype_of(source).itemsize))
    for start in range(0, n, step):
        stop = min(start + step, n)
        if isinstance(source, np.ndarray):
            block = np.array(source[start:stop], copy=True, order="C")
        else:
            block = _writable(np.ascontiguousarray(source[np.arange(start, stop, dtype=np.int64)]))
        out[start:stop].copy_(torch.from_numpy(block))
    return out


def _free_cuda_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


class LatentBatcher:
    """Batches of paired latents for one epoch per ``iter()``, shuffled reproducibly per epoch.

    Epoch ``e`` visits the pairs in a permutation drawn from a NumPy
    generator seeded by ``(seed, e)``, so any epoch can be reproduced without
    replaying the earlier ones. A batch is a :class:`LatentBatch`: a ``dict``
    of modality name to a tensor of shape ``(B, D_m)`` on ``device``, row
    ``i`` of every tensor being one pair, whose ``masks`` are ``None`` when
    every pair has every modality, else the presence flags of its rows (on
    ``device``; absent rows are zeros), so ``model(batch, masks=batch.masks)``
    fits both cases.

    Two ways to build a batch, with identical results:

    - ``preload``: every modality is moved to ``device`` once as one tensor
      (kept in its own dtype when that is narrower than ``dtype``) and a
      batch is one ``index_select`` per modality on the device: no Python
      work per sample and no collation, for batches of 40,960+ rows.
    - streaming: each batch reads its rows from the array, memory map or
      store with one vectorised fancy index per modality (sorted for
      locality, then put back in order), converted once per batch and, for
      CUDA, staged in pinned memory and copied with ``non_blocking=True``.
      Memory maps larger than RAM work: nothing but the batch is loaded.

    ``preload="auto"`` preloads when the latents already sit in memory
    (arrays that are not memory maps, or tensors), or when they fit in half
    of the free memory of a CUDA device; a memory map or store on the CPU is
    streamed.

    Iteration keeps its place: the batcher records the epoch and the index
    of the next batch, so an interrupted ``for`` loop resumes where it
    stopped, :meth:`state_dict` / :meth:`load_state_dict` carry that place to
    a new process, and finishing an epoch moves to the next one.

    **Reused buffers** (``reuse_buffers=True``, as :func:`fusemix.train.fit`
    uses). By default every batch is a set of new tensors. With
    ``reuse_buffers=True`` the batcher keeps one set of tensors (latents,
    masks, and the gather, staging and cast tensors on the way) sized for a
    full batch and writes every batch into them; a smaller last batch is a
    view of their first rows. The batches are bit-identical to the default
    ones, without allocating (and, on the CPU, page-faulting in) hundreds of
    MiB per batch at large batch sizes. **The tensors of a yielded batch are
    overwritten by the next batch**: finish with a batch (backward included)
    before asking for the next one, and ``clone()`` whatever must outlive it
    (``list(batcher)`` would hold the last batch's values many times over).

    With ``drop_last=False`` the last batch of an epoch may be smaller and
    odd. FuseMix with ``pairing="halves"`` needs even batches: use
    ``drop_last=True`` with an even ``batch_size`` (as :func:`fusemix.train.fit` does).

    **Several processes.** With ``num_replicas=N`` and ``rank=r`` (one
    batcher per data-parallel process), ``batch_size`` stays the *global*
    batch: every rank draws the same permutation for an epoch and yields rows
    ``[r * B / N, (r + 1) * B / N)`` of each global batch, so the ranks'
    batches together are exactly the batches of ``num_replicas=1`` (masks
    included), and all ranks take the same number of steps. This needs ``drop_last=True`` and a
    ``batch_size`` divisible by ``N``; :meth:`state_dict` is the same on
    every rank.

    Args:
        paired: The pairs to batch.
        batch_size: Pairs per batch.
        shuffle: Visit pairs in a fresh random order every epoch; in order
            when false.
        drop_last: Drop the last, incomplete batch of an epoch.
        seed: Seed of the per-epoch permutations.
        device: Device of the batches.
        dtype: Floating dtype of the batches.
        preload: ``True``, ``False`` or ``"auto"`` (see above).
        num_replicas: Number of data-parallel processes sharing each batch.
        rank: This process's rank, in ``[0, num_replicas)``.
        reuse_buffers: Write every batch into the same tensors (see above):
            **each batch is overwritten by the next**; clone what you keep.

    Raises:
        ValueError: If ``batch_size`` is not a positive int, with
            ``drop_last=True`` exceeds the number of pairs, or is not
            divisible by ``num_replicas``; or if ``num_replicas > 1`` without
            ``drop_last=True``, or ``rank`` is out of range.

    Example:
        >>> data = PairedLatents({"a": np.random.randn(10, 4), "b": np.random.randn(10, 2)})
        >>> batcher = LatentBatcher(data, batch_size=4, seed=0)
        >>> len(batcher), [tuple(b["a"].shape) for b in batcher]
        (2, [(4, 4), (4, 4)])
        >>> batcher.epoch, batcher.batch_index
        (1, 0)
        >>> halves = [LatentBatcher(data, batch_size=4, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
        >>> whole = next(iter(LatentBatcher(data, batch_size=4, seed=0)))["a"]
        >>> torch.equal(torch.cat([next(iter(h))["a"] for h in halves]), whole)
        True
        >>> reused = iter(LatentBatcher(data, batch_size=4, seed=0, reuse_buffers=True))
        >>> first = next(reused)["a"]
        >>> kept = first.clone()  # the next batch overwrites first
        >>> second = next(reused)["a"]
        >>> second.data_ptr() == first.data_ptr(), torch.equal(first, second), torch.equal(kept, whole)
        (True, True, True)

    """

    def __init__(
        self,
        paired: PairedLatents,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        preload: Preload = "auto",
        num_replicas: int = 1,
        rank: int = 0,
        reuse_buffers: bool = False,
    ) -> None:
        if not isinstance(paired, PairedLatents):
            raise TypeError(f"paired: expected a PairedLatents, got {type(paired).__name__}")
        self.paired = paired
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        self.seed = seed
        self.device = torch.device(device)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        if not (isinstance(preload, bool) or preload == "auto"):
            raise ValueError(f"preload: expected True, False or 'auto', got {preload!r}")
        if self.drop_last and len(paired) < self.batch_size:
            raise ValueError(
                f"batch_size: {self.batch_size} exceeds the {len(paired)} pairs, so with drop_last=True an epoch "
                "has no batch; lower batch_size"
            )
        self.num_replicas = check_positive_int("num_replicas", num_replicas)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank: expected an int in [0, num_replicas={num_replicas}), got {rank!r}")
        self.rank = rank
        if num_replicas > 1:
            if not self.drop_last:
                raise ValueError(
                    f"drop_last: must be True with num_replicas={num_replicas}, so that every rank gets a full "
                    "slice of every batch"
                )
            if self.batch_size % num_replicas:
                raise ValueError(
                    f"batch_size: {self.batch_size} (the global batch) is not divisible by num_replicas="
                    f"{num_replicas}; every rank takes batch_size / num_replicas rows of each batch"
                )
        self.reuse_buffers = bool(reuse_buffers)
        self._tensors = _ReusedTensors(self.local_batch_size) if self.reuse_buffers else _NEW
        self.preloaded = self._decide_preload(preload)
        self._device_latents: dict[str, Tensor] = {}
        self._device_rows: dict[str, Tensor | None] = {}
        self._device_present: dict[str, Tensor | None] = {}
        if self.preloaded:
            for m, source in paired.latents.items():
                self._device_latents[m] = _load_whole(source, _preload_dtype(source, dtype), self.device).detach()
                rows = paired._rows[m]
                present = None if rows is None or not (rows == _MISSING).any() else rows != _MISSING
                self._device_present[m] = None if present is None else torch.from_numpy(present).to(self.device)
                if present is not None:  # read row 0 for absent rows, then overwrite them with zeros
                    rows = np.where(present, rows, 0)
                self._device_rows[m] = None if rows is None else torch.from_numpy(rows).to(self.device)
        self._epoch = 0
        self._batch_index = 0

    def _decide_preload(self, preload: Preload) -> bool:
        if preload != "auto":
            return bool(preload)
        sources = list(self.paired.latents.values())
        in_memory = all(_in_memory(s) for s in sources)
        if in_memory and self.device.type == "cpu":
            return True
        if self.device.type != "cuda":
            return False
        free = _free_cuda_bytes(self.device)
        needed = sum(s.shape[0] * s.shape[1] * _preload_dtype(s, self.dtype).itemsize for s in sources)
        return needed <= PRELOAD_DEVICE_FRACTION * free

    @property
    def local_batch_size(self) -> int:
        """Rows of each global batch this rank yields: ``batch_size // num_replicas``."""
        return self.batch_size // self.num_replicas

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        n = len(self.paired)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    @property
    def batch_index(self) -> int:
        """Index, within :attr:`epoch`, of the next batch."""
        return self._batch_index

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch on the next ``iter()``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        self._epoch = epoch
        self._batch_index = 0

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the pairs.

        Args:
            epoch: Epoch index (>= 0).

        Returns:
            Pair indices, int64. Shape: ``(P,)``; a random permutation seeded
            by ``(seed, epoch)`` when shuffling, else ``arange(P)``.

        """
        n = len(self.paired)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(epoch,))))
        return rng.permutation(n).astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[LatentBatch]:
        """Yield the remaining batches of the current epoch, then move to the next epoch."""
        self._normalise_position()
        epoch, start = self._epoch, self._batch_index
        order = self.permutation(epoch)
        n, size = len(self.paired), self.batch_size
        if self.preloaded:
            device_order = torch.from_numpy(order).to(self.device)
        local = self.local_batch_size
        for b in range(start, len(self)):
            lo, hi = b * size, min((b + 1) * size, n)
            if self.num_replicas > 1:
                lo = lo + self.rank * local
                hi = lo + local
            if self.preloaded:
                batch = self._device_batch(device_order[lo:hi])
            else:
                batch = self.paired._gather(order[lo:hi], self.dtype, self.device, self._tensors)
            self._batch_index = b + 1
            yield batch
        if self._epoch == epoch:
            self._epoch, self._batch_index = epoch + 1, 0

    def _device_batch(self, pairs: Tensor) -> LatentBatch:
        tensors, size = self._tensors, len(pairs)
        out = {}
        for m, latents in self._device_latents.items():
            rows = self._device_rows[m]
            index = pairs
            if rows is not None:
                index = torch.index_select(
                    rows, 0, pairs, out=tensors.take((m, "rows"), (size,), rows.dtype, rows.device)
                )
            gathered = tensors.take((m, "gathered"), (size, latents.shape[1]), latents.dtype, latents.device)
            torch.index_select(latents, 0, index, out=gathered)
            out[m] = _place(gathered, self.dtype, self.device, tensors, (m,))
        if self.paired.complete:
            return LatentBatch(out)
        masks = {}
        for m, present in self._device_present.items():
            masks[m] = tensors.take((m, "mask"), (size,), torch.bool, self.device)
            if present is None:
                masks[m].fill_(True)
            else:
                torch.index_select(present, 0, pairs, out=masks[m])
                out[m].masked_fill_(~masks[m][:, None], 0)
        return LatentBatch(out, masks)

    def _normalise_position(self) -> None:
        if self._batch_index >= len(self):
            self._epoch, self._batch_index = self._epoch + 1, 0

    def state_dict(self) -> dict[str, int | bool]:
        """The batcher's place and the settings that define its batches (JSON-safe).

        Returns:
            ``{"epoch", "batch_index", "seed", "batch_size", "num_pairs",
            "shuffle", "drop_last", "num_replicas"}``; the rank is left
            out, so every rank can load rank 0's state.

        """
        self._normalise_position()
        return {
            "epoch": self._epoch,
            "batch_index": self._batch_index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_pairs": len(self.paired),
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: Mapping[str, int | bool]) -> None:
        """Continue from a place saved by :meth:`state_dict`.

        Raises:
            KeyError: If ``state`` lacks ``epoch`` or ``batch_index``.
            ValueError: If ``state`` was saved by a batcher with other
                settings or other data (the batches would differ).

        """
        for key in ("epoch", "batch_index"):
            if key not in state:
                raise KeyError(f"state: missing {key!r}")
        mine = self.state_dict()
        settings = [k for k in mine if k not in ("epoch", "batch_index") and k in state]
        differ = [f"{k}={state[k]!r} (here {mine[k]!r})" for k in settings if state[k] != mine[k]]
        if differ:
            raise ValueError(f"state: saved by a batcher with other settings: {', '.join(differ)}")
        epoch, index = state["epoch"], state["batch_index"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"state: 'epoch' must be an int >= 0, got {epoch!r}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= len(self):
            raise ValueError(f"state: 'batch_index' must be an int in [0, {len(self)}], got {index!r}")
        self._epoch, self._batch_index = epoch, index
        self._normalise_position()
