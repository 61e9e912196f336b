"""Reading batches of pairs out of latent sources: one vectorised read per modality, into reusable tensors.

What :class:`~fusemix.data.PairedLatents` and :class:`~fusemix.data.LatentBatcher`
share: the contract of a latent source (:class:`LatentArray`), the batch they
return (:class:`LatentBatch`), the tensors a read writes into (new ones, or
ones kept across batches), the reads themselves (:func:`read_rows`,
:func:`gather_pairs`) and the check that what they read is finite
(:func:`check_finite_rows`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol, Union

import numpy as np
import torch
from torch import Tensor

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


MISSING = -1
"""Row index marking a pair that lacks a modality (in the rows of :class:`~fusemix.data.PairedLatents`)."""


Role = tuple[str, ...]
"""What a batch tensor is for, e.g. ``("image", "staged")``: the key of a reused buffer."""


class NewTensors:
    """Hands out a new tensor for every request: :meth:`PairedLatents.gather` and ``reuse_buffers=False``."""

    reuses = False

    def take(
        self, role: Role, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pinned: bool = False
    ) -> Tensor:
        """An uninitialised tensor of ``shape`` for ``role``; ``pinned`` asks for page-locked host memory."""
        return torch.empty(shape, dtype=dtype, device=device, pin_memory=pinned)

    def copied_out(self, role: Role, device: torch.device) -> None:
        """Note that an asynchronous copy out of the pinned tensor of ``role`` was queued on ``device``.

        Nothing to do here: torch's pinned-memory allocator keeps a freed
        pinned tensor until the copies queued from it have run.
        """


class ReusedTensors(NewTensors):
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
        self._copies: dict[Role, torch.cuda.Event] = {}

    def take(
        self, role: Role, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pinned: bool = False
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

    def copied_out(self, role: Role, device: torch.device) -> None:
        """Record, on ``device``'s current stream, the end of the copy just queued out of ``role``'s tensor."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._copies[role] = event


NEW_TENSORS = NewTensors()


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


def torch_dtype_of(array: ArrayLike) -> torch.dtype:
    """The torch dtype of a latent source's values (its NumPy dtype converted)."""
    dtype = getattr(array, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype  # type: ignore[arg-type]


_FLOAT_BITS: dict[torch.dtype, tuple[type, type, int]] = {
    torch.float16: (np.int16, np.uint16, 0x7C00),
    torch.float32: (np.int32, np.uint32, 0x7F800000),
    torch.float64: (np.int64, np.uint64, 0x7FF0000000000000),
}
"""Per float dtype: the signed and unsigned integer views of its bits, and its exponent mask (all ones: NaN or Inf)."""


def all_finite(values: Tensor) -> bool:
    """Whether every value of a floating tensor is finite (no NaN, no Inf).

    On the CPU this is two integer maxima over the values' bits, without a
    mask as large as the tensor: a value is NaN or Inf when its exponent bits
    are all ones, i.e. its bits as a signed integer reach the exponent mask
    (positive values) or as an unsigned integer reach sign bit plus mask
    (negative values). Elsewhere, and for dtypes NumPy lacks (bfloat16), it is
    ``torch.isfinite(values).all()``.

    Example:
        >>> all_finite(torch.tensor([[1.0, -2.0]], dtype=torch.float16))
        True
        >>> all_finite(torch.tensor([[1.0, float("-inf")]])), all_finite(torch.tensor([float("nan")]))
        (False, False)

    """
    if values.device.type != "cpu" or values.dtype not in _FLOAT_BITS or values.numel() == 0:
        return values.numel() == 0 or bool(torch.isfinite(values).all())
    signed, unsigned, exponent = _FLOAT_BITS[values.dtype]
    bits = values.detach().contiguous().numpy()
    sign = 1 << (8 * bits.itemsize - 1)
    return int(bits.view(signed).max()) < exponent and int(bits.view(unsigned).max()) < sign | exponent


def check_finite_rows(values: Tensor, source: ArrayLike, rows: np.ndarray | None, modality: str | None) -> Tensor:
    """Return ``values`` if they are finite; else raise ``ValueError`` naming the source, modality and first bad row.

    Args:
        values: Rows just read from ``source``. Shape: ``(B, D)``.
        source: Where they were read from (a store or a memory map is named by its path).
        rows: The source row of every row of ``values`` (``None``: row ``i`` is source row ``i``). Shape: ``(B,)``.
        modality: The modality of ``source``, for the message.

    Raises:
        ValueError: If a value is NaN or Inf; the message gives the lowest
            such row of ``source`` among those read.

    """
    if all_finite(values):
        return values
    bad = torch.nonzero(~torch.isfinite(values).all(dim=1)).flatten().cpu().numpy()
    row = int(bad.min() if rows is None else np.asarray(rows)[bad].min())
    if isinstance(source, LatentStore):
        where = f"the latent store {source.path}"
    elif isinstance(source, np.memmap) and source.filename is not None:
        where = f"the memory map {source.filename}"
    else:
        where = f"the {type(source).__name__}"
    name = "latents" if modality is None else f"latents[{modality!r}]"
    raise ValueError(
        f"{name}: row {row} of {where} holds NaN or Inf; latents must be finite: re-extract that row, or leave "
        "it out of the pairs"
    )


def read_rows(
    source: ArrayLike,
    rows: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    tensors: NewTensors = NEW_TENSORS,
    role: Role = (),
    checked: np.ndarray | None = None,
) -> Tensor:
    """Read ``source[rows]`` as one tensor with one vectorised fancy index.

    Array and store sources are read at sorted, de-duplicated rows (for
    locality on a memory map; one-to-many pairs read each row once) and put
    back in order with one ``index_select``. For a CUDA ``device`` the rows
    are staged in pinned memory and copied with ``non_blocking=True``.
    Every tensor on the way (gathered rows, staging, device copy, cast) is
    one that ``tensors`` hands out for a role under ``role``. The rows read
    are checked to be finite as they are read (:func:`check_finite_rows`),
    unless ``checked`` says every one of them was checked before.

    Args:
        source: Latent source. Shape: ``(N, D)``.
        rows: Rows to read, int64. Shape: ``(B,)``.
        dtype: Floating dtype of the result.
        device: Device of the result.
        tensors: Where the tensors come from: new ones, or buffers reused across batches.
        role: Prefix of the roles of those tensors: the modality first (it names the modality in errors).
        checked: Flags of the source rows already found finite, updated by
            the read (``None``: check every read). Shape: ``(N,)``, bool.

    Returns:
        The rows, in the order of ``rows``. Shape: ``(B, D)``.

    Raises:
        ValueError: If a row read holds NaN or Inf (the message names the
            source, the modality and the row).

    """
    modality = role[0] if role else None
    pin = device.type == "cuda"
    shape, cpu = (len(rows), source.shape[1]), torch.device("cpu")
    if isinstance(source, Tensor):
        source = source.detach()
        host_to_cuda = pin and source.device.type == "cpu"
        where = cpu if host_to_cuda else source.device
        staged = tensors.take((*role, "staged"), shape, source.dtype, where, pinned=host_to_cuda)
        torch.index_select(source, 0, torch.from_numpy(rows).to(source.device), out=staged)
        return place(_finite(staged, source, rows, modality, checked), dtype, device, tensors, role)
    stored = torch_dtype_of(source)
    unique, inverse = np.unique(rows, return_inverse=True)
    # np.take (LatentStore.read_rows for a store) writes the rows straight into a kept tensor.
    into_kept = tensors.reuses and isinstance(source, (np.ndarray, LatentStore))
    if len(unique) == len(rows) and bool((unique == rows).all()):
        is_result = stored == dtype  # no cast follows: with reuse_buffers the staged tensor must be a kept one
        keep = pin or into_kept or (tensors.reuses and is_result)
        into = tensors.take((*role, "staged"), shape, stored, cpu, pinned=pin) if keep else None
        fetched = _finite(_fetch(source, unique, into), source, unique, modality, checked)
        return place(fetched, dtype, device, tensors, role)
    into = tensors.take((*role, "fetched"), (len(unique), shape[1]), stored, cpu) if into_kept else None
    fetched = _finite(_fetch(source, unique, into), source, unique, modality, checked)
    staged = tensors.take((*role, "staged"), shape, stored, cpu, pinned=pin)
    torch.index_select(fetched, 0, torch.from_numpy(inverse.reshape(-1)), out=staged)
    return place(staged, dtype, device, tensors, role)


def _finite(
    values: Tensor, source: ArrayLike, rows: np.ndarray, modality: str | None, checked: np.ndarray | None
) -> Tensor:
    """:func:`check_finite_rows`, skipped when ``checked`` flags every row read, which it flags once checked."""
    if checked is not None and checked[rows].all():
        return values
    check_finite_rows(values, source, rows, modality)
    if checked is not None:
        checked[rows] = True
    return values


def _fetch(source: ArrayLike, unique: np.ndarray, into: Tensor | None) -> Tensor:
    """``source[unique]`` (sorted, in-range rows) as a host tensor: ``into`` when given, else a new one."""
    if into is None:
        return torch.from_numpy(writable(np.ascontiguousarray(source[unique])))
    if isinstance(source, np.ndarray):
        np.take(source, unique, axis=0, out=into.numpy(), mode="clip")  # rows are in range; "raise" would buffer
    elif isinstance(source, LatentStore):
        source.read_rows(unique, out=into.numpy())
    else:
        into.numpy()[...] = source[unique]
    return into


def place(staged: Tensor, dtype: torch.dtype, device: torch.device, tensors: NewTensors, role: Role) -> Tensor:
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


def writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied if read-only (``torch.from_numpy`` needs writable memory)."""
    return array if array.flags.writeable else array.copy()


def source_rows(rows: np.ndarray | None, pairs: np.ndarray) -> np.ndarray:
    """The source rows of ``pairs`` (``rows`` ``None``: paired by identity, the pair indices themselves)."""
    return pairs if rows is None else rows[pairs]


def pair_masks(
    rows: Mapping[str, np.ndarray | None], pairs: np.ndarray, device: torch.device, tensors: NewTensors = NEW_TENSORS
) -> dict[str, Tensor]:
    """Presence flags of ``pairs`` for every modality of ``rows``. Shape of each: ``(len(pairs),)``, bool."""
    return {
        m: tensors.take((m, "mask"), (len(pairs),), torch.bool, device).copy_(
            torch.from_numpy(source_rows(r, pairs) != MISSING)
        )
        for m, r in rows.items()
    }


def gather_pairs(
    sources: Mapping[str, ArrayLike],
    rows: Mapping[str, np.ndarray | None],
    lacking: Collection[str],
    pairs: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    tensors: NewTensors = NEW_TENSORS,
    checked: Mapping[str, np.ndarray] | None = None,
) -> LatentBatch:
    """The latents of ``pairs``, one vectorised read per modality, with presence masks when some pairs lack one.

    Args:
        sources: Modality name to latent source. Shape of each: ``(N_m, D_m)``.
        rows: Modality name to the source row of every pair (-1: the pair lacks
            it), ``None`` for a modality paired by identity. Shape of each: ``(P,)``.
        lacking: The modalities some pair lacks (a -1 in their rows).
        pairs: Checked pair indices, int64. Shape: ``(B,)``.
        dtype: Floating dtype of the latents.
        device: Device of the latents and masks.
        tensors: Where the tensors come from: new ones, or buffers reused across batches.
        checked: Per modality, the flags of its source rows already found
            finite (see :func:`read_rows`); ``None`` checks every read.

    Returns:
        The batch; latents are zeros (and no row is read) where a pair lacks
        the modality, and ``masks`` is ``None`` when ``lacking`` is empty.
        Shape of each: ``(B, D_m)``.

    """
    latents = {
        m: _read_modality(
            m,
            source,
            source_rows(rows[m], pairs),
            m in lacking,
            dtype,
            device,
            tensors,
            None if checked is None else checked[m],
        )
        for m, source in sources.items()
    }
    return LatentBatch(latents, pair_masks(rows, pairs, device, tensors) if lacking else None)


def _read_modality(
    modality: str,
    source: ArrayLike,
    rows: np.ndarray,
    lacking: bool,
    dtype: torch.dtype,
    device: torch.device,
    tensors: NewTensors,
    checked: np.ndarray | None,
) -> Tensor:
    """``source[rows]``, with zeros (and no read) where ``rows`` is -1.

    A modality that some pairs lack is always built in the same tensor
    (zeros, then the present rows), even for a batch where none lacks it.
    """
    if not lacking:
        return read_rows(source, rows, dtype, device, tensors, (modality,), checked)
    present = np.flatnonzero(rows != MISSING)
    out = tensors.take((modality, "with absent rows"), (len(rows), source.shape[1]), dtype, device)
    out.index_fill_(0, torch.from_numpy(np.flatnonzero(rows == MISSING)).to(device), 0)
    if len(present):
        read = read_rows(source, rows[present], dtype, device, tensors, (modality,), checked)
        out.index_copy_(0, torch.from_numpy(present).to(device), read)
    return out
