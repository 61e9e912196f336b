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

from collections.abc import Iterator, Mapping
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor

from fusemix._batch_reads import (
    MISSING,
    NEW_TENSORS,
    ArrayLike,
    LatentArray,
    LatentBatch,
    ReusedTensors,
    check_finite_rows,
    gather_pairs,
    place,
    torch_dtype_of,
    writable,
)
from fusemix._checks import check_positive_int
from fusemix._paired import PairedLatents

Preload = Union[bool, Literal["auto"]]  # noqa: UP007 (runtime alias, Python 3.10)

PRELOAD_DEVICE_FRACTION = 0.5
"""Share of free accelerator memory ``preload="auto"`` may fill with latents."""

LOAD_BLOCK_BYTES = 64 * 2**20
"""Bytes read at a time when a memory map or store is preloaded."""


def _in_memory(source: ArrayLike) -> bool:
    return isinstance(source, Tensor) or (isinstance(source, np.ndarray) and not isinstance(source, np.memmap))


def _preload_dtype(source: ArrayLike, dtype: torch.dtype) -> torch.dtype:
    """Keep a narrower source dtype on the device (convert per batch); never widen storage."""
    stored = torch_dtype_of(source)
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
    step = max(1, LOAD_BLOCK_BYTES // (d * torch_dtype_of(source).itemsize))
    for start in range(0, n, step):
        stop = min(start + step, n)
        if isinstance(source, np.ndarray):
            block = np.array(source[start:stop], copy=True, order="C")
        else:
            block = writable(np.ascontiguousarray(source[np.arange(start, stop, dtype=np.int64)]))
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

    **Finite latents.** What is read is checked for NaN and Inf once: a
    preload as it is loaded, a streamed batch as it is read, until every row
    it reads was checked by an earlier batch (so after the first epoch or two
    streaming checks nothing). On the CPU the check is two integer maxima over
    the values' bits. A non-finite value raises a ``ValueError`` naming the
    modality, the store (or memory map) and the row, instead of surfacing
    later as a NaN loss.

    Raises:
        ValueError: If ``batch_size`` is not a positive int, with
            ``drop_last=True`` exceeds the number of pairs, or is not
            divisible by ``num_replicas``; or if ``num_replicas > 1`` without
            ``drop_last=True``, or ``rank`` is out of range; if a preloaded
            latent (or, when iterating, a streamed one) is NaN or Inf.

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
        self._tensors = ReusedTensors(self.local_batch_size) if self.reuse_buffers else NEW_TENSORS
        self._sources = paired.latents
        given = paired.rows
        self._rows = {m: given.get(m) for m in self._sources}
        self._lacking = frozenset(m for m, rows in self._rows.items() if rows is not None and (rows == MISSING).any())
        self.preloaded = self._decide_preload(preload)
        self._device_latents: dict[str, Tensor] = {}
        self._device_rows: dict[str, Tensor | None] = {}
        self._device_present: dict[str, Tensor | None] = {}
        if self.preloaded:
            for m, source in self._sources.items():
                loaded = _load_whole(source, _preload_dtype(source, dtype), self.device).detach()
                self._device_latents[m] = check_finite_rows(loaded, source, None, m)
                rows = self._rows[m]
                present = None if m not in self._lacking else rows != MISSING
                self._device_present[m] = None if present is None else torch.from_numpy(present).to(self.device)
                if present is not None:  # read row 0 for absent rows, then overwrite them with zeros
                    rows = np.where(present, rows, 0)
                self._device_rows[m] = None if rows is None else torch.from_numpy(rows).to(self.device)
        # Streaming checks each source row for NaN and Inf the first time a batch reads it.
        self._checked = (
            None if self.preloaded else {m: np.zeros(s.shape[0], dtype=bool) for m, s in self._sources.items()}
        )
        self._epoch = 0
        self._batch_index = 0

    def _decide_preload(self, preload: Preload) -> bool:
        if preload != "auto":
            return bool(preload)
        sources = list(self._sources.values())
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
                batch = gather_pairs(
                    self._sources,
                    self._rows,
                    self._lacking,
                    order[lo:hi],
                    self.dtype,
                    self.device,
                    self._tensors,
                    self._checked,
                )
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
            out[m] = place(gathered, self.dtype, self.device, tensors, (m,))
        if not self._lacking:
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


__all__ = [
    "LOAD_BLOCK_BYTES",
    "PRELOAD_DEVICE_FRACTION",
    "ArrayLike",
    "LatentArray",
    "LatentBatch",
    "LatentBatcher",
    "PairedLatents",
    "Preload",
]
