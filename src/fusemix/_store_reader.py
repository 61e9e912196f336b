"""Reading a latent store: :class:`LatentStore`, an array-like view of the shards through memory maps.

See :mod:`fusemix.store` for the layout and the checks :meth:`LatentStore.open` makes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_choice
from fusemix._store_format import (
    TORCH_TO_NUMPY,
    Verify,
    check_identity,
    is_int,
    load_shard,
    read_manifest,
    storage_dtype,
)

IndexKey = int | slice | list[int] | np.ndarray | Tensor
"""What :class:`LatentStore` indexing takes: a row, a slice, or row indices (or a boolean mask)."""


def _reopen(path: str) -> LatentStore:
    return LatentStore.open(path)


class LatentStore:
    """A complete on-disk latent store, read-only and array-like, backed by memory maps.

    Open one with ``LatentStore(path)`` (or :meth:`LatentStore.open`, the
    same), or get one from :class:`LatentStoreWriter`, :func:`write_store`,
    :func:`fusemix.extract.extract_latents`. Indexing reads only the rows
    asked for and always returns a new in-memory ``np.ndarray``. Pickling a
    store pickles its path only (it is re-opened on load), so handing it to
    DataLoader worker processes copies no data. Every shard's memory map
    keeps one file descriptor open, so keep the shard count well below the
    open-file limit (``ulimit -n``, often 1024): 65536-row shards make 77
    shards of 5M rows.

    Indexing (``n = len(store)``, ``D = store.dim``):

    - ``store[i]`` -> row ``i``, shape ``(D,)``; negative ``i`` counts from the end.
    - ``store[a:b:s]`` -> rows of the slice, shape ``(rows, D)``; step 1 reads
      contiguous ranges (across shard boundaries).
    - ``store[idx]`` with a 1-D integer list / ``np.ndarray`` / torch tensor
      -> rows ``idx`` in the given order, shape ``(len(idx), D)``
      (duplicates and negative indices allowed, like numpy); a boolean mask
      of length ``n`` selects rows like numpy.

    Args:
        path: The store directory (the one holding ``manifest.json``).
        verify: ``"quick"`` checks the manifest and every shard's existence,
            byte size, shape and dtype; ``"full"`` also recomputes every
            shard's sha256 (reads the whole store).
        expected_encoder: If given, the encoder identity the store must have
            been written with.
        expected_modality: If given, the modality the store must hold.

    Raises:
        FileNotFoundError: If ``path`` is not a directory.
        StoreError: If the store is incomplete (no manifest), a shard is
            missing, truncated, of the wrong shape/dtype or (with
            ``verify="full"``) altered, the manifest is invalid, or the
            encoder/modality differ from the expected ones.

    Example:
        >>> import tempfile, numpy as np
        >>> from fusemix.store import write_store
        >>> rows = np.arange(12, dtype=np.float32).reshape(6, 2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_store(tmp, rows, modality="text", encoder={"name": "toy"}, shard_size=4)
        ...     store = LatentStore(tmp, expected_encoder={"name": "toy"})
        ...     print(store.shape, store.dtype, store[[5, 0, -1]][:, 0], store[3:5][:, 1])
        (6, 2) float16 [10.  0. 10.] [7. 9.]

    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        verify: Verify = "quick",
        expected_encoder: Mapping[str, Any] | None = None,
        expected_modality: str | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected the store directory as a str or path, got {type(path).__name__}")
        check_choice("verify", verify, ("quick", "full"))
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory; expected a fusemix latent store")
        manifest = read_manifest(root)
        check_identity(root, manifest, expected_encoder, expected_modality)
        dtype = storage_dtype(manifest["dtype"])
        self._path = root
        self._manifest = dict(manifest)
        self._shards = tuple(
            load_shard(root, entry, dim=manifest["dim"], dtype=dtype, verify=verify) for entry in manifest["shards"]
        )
        rows = np.array([shard.shape[0] for shard in self._shards], dtype=np.int64)
        self._offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(rows)])
        self._dtype = np.dtype(self._manifest["dtype"])

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        verify: Verify = "quick",
        expected_encoder: Mapping[str, Any] | None = None,
        expected_modality: str | None = None,
    ) -> LatentStore:
        """Open a complete store, memory-mapping its shards (no data is copied): the same as ``LatentStore(path)``.

        Args:
            path: The store directory (the one holding ``manifest.json``).
            verify: ``"quick"`` or ``"full"`` (see the class).
            expected_encoder: If given, the encoder identity the store must
                have been written with.
            expected_modality: If given, the modality the store must hold.

        Returns:
            The opened store.

        Raises:
            FileNotFoundError: If ``path`` is not a directory.
            StoreError: If the store is incomplete or invalid, or not the
                expected one (see the class).

        """
        return cls(path, verify=verify, expected_encoder=expected_encoder, expected_modality=expected_modality)

    # -- description ---------------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The store directory."""
        return self._path

    @property
    def modality(self) -> str:
        """Name of the modality the latents belong to, e.g. ``"image"``."""
        return self._manifest["modality"]

    @property
    def dim(self) -> int:
        """Latent dimension ``D``."""
        return self._manifest["dim"]

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype (float16 or float32)."""
        return self._dtype

    @property
    def encoder(self) -> dict[str, Any]:
        """JSON identity of the encoder that wrote the store (a copy)."""
        return copy.deepcopy(self._manifest["encoder"])

    @property
    def metadata(self) -> dict[str, Any]:
        """Free JSON metadata recorded with the store (a copy)."""
        return copy.deepcopy(self._manifest["metadata"])

    @property
    def created(self) -> str:
        """ISO 8601 time the manifest was written."""
        return self._manifest["created"]

    @property
    def shape(self) -> tuple[int, int]:
        """``(count, dim)``."""
        return (len(self), self.dim)

    @property
    def nbytes(self) -> int:
        """Bytes of latent data (``count * dim * itemsize``; headers excluded)."""
        return len(self) * self.dim * self._dtype.itemsize

    @property
    def shards(self) -> tuple[np.memmap, ...]:
        """The read-only memory-mapped shards, in order. Shape of each: ``(rows_k, dim)``."""
        return self._shards

    @property
    def offsets(self) -> np.ndarray:
        """First global row of every shard, then ``count``. Shape: ``(num_shards + 1,)``, int64."""
        return self._offsets.copy()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (
            f"LatentStore({str(self._path)!r}, modality={self.modality!r}, count={len(self)}, dim={self.dim}, "
            f"dtype={self._dtype.name}, shards={len(self._shards)})"
        )

    def __reduce__(self) -> tuple[Callable[[str], LatentStore], tuple[str]]:
        return (_reopen, (str(self._path),))

    # -- reading ---------------------------------------------------------------------------------------------------

    def __getitem__(self, key: IndexKey) -> np.ndarray:
        """Rows of the store as a new array; see the class docstring for the accepted keys."""
        if isinstance(key, Tensor):
            if key.ndim == 0 and not key.is_floating_point() and key.dtype != torch.bool:
                return self._row(int(key))
            key = key.detach().cpu().numpy()
        if isinstance(key, np.ndarray) and key.ndim == 0 and key.dtype.kind in "iu":
            key = key.item()
        if is_int(key):
            return self._row(int(key))
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, max(start, stop))
            return self._take(np.arange(start, stop, step, dtype=np.int64))
        if isinstance(key, (list, np.ndarray)):
            return self._take(self._indices(key))
        raise TypeError(
            "key: expected an int, a slice, or a 1-D integer list/array/tensor of row indices, "
            f"got {type(key).__name__}"
        )

    def read_rows(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Read sorted, unique rows straight into ``out`` (or a new array): one ``np.take`` per shard.

        Unlike indexing, no intermediate array is built: every shard's rows
        are gathered from its memory map directly into their slice of
        ``out``, so a caller that keeps one buffer across batches reads
        without allocating.

        Args:
            rows: Global row indices, strictly increasing, in ``[0, len(store))``.
                Shape: ``(B,)``, integer.
            out: Where to write the rows: a writeable C-contiguous array of
                exactly shape ``(B, dim)`` and the store's dtype. A new array
                when ``None``.

        Returns:
            ``out`` (or the new array), holding ``store[rows]``. Shape: ``(B, dim)``.

        Raises:
            TypeError: If ``rows`` is not integer, or ``out`` is not an ``np.ndarray``.
            ValueError: If ``rows`` is not 1-D, not strictly increasing or out
                of range, or ``out`` has the wrong shape or dtype, is
                read-only or not C-contiguous.

        Example:
            >>> import tempfile, numpy as np
            >>> from fusemix.store import write_store
            >>> rows = np.arange(12, dtype=np.float32).reshape(6, 2)
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     store = write_store(tmp, rows, modality="text", encoder={"name": "toy"}, shard_size=4)
            ...     out = np.empty((3, 2), dtype=store.dtype)
            ...     print(store.read_rows(np.array([1, 3, 4]), out=out)[:, 0], store.read_rows([5]).shape)
            [2. 6. 8.] (1, 2)

        """
        index = np.asarray(rows)
        if index.ndim != 1:
            raise ValueError(f"rows: expected a 1-D array of row indices, got shape {index.shape}")
        if index.size and index.dtype.kind not in "iu":
            raise TypeError(f"rows: expected integer row indices, got dtype {index.dtype}")
        count = len(self)
        if index.size:
            if int(index[0]) < 0 or int(index[-1]) >= count:
                raise ValueError(f"rows: indices must lie in [0, {count}), got {int(index[0])} .. {int(index[-1])}")
            steps = np.diff(index)
            if bool((steps <= 0).any()):
                at = int(np.flatnonzero(steps <= 0)[0])
                raise ValueError(
                    f"rows: expected strictly increasing (sorted, unique) indices; rows[{at}] = {int(index[at])} "
                    f"is followed by {int(index[at + 1])}"
                )
        shape = (index.shape[0], self.dim)
        if out is None:
            out = np.empty(shape, dtype=self._dtype)
        elif not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected an np.ndarray, got {type(out).__name__}")
        elif out.shape != shape or out.dtype != self._dtype:
            raise ValueError(
                f"out: expected shape {shape} and dtype {self._dtype.name}, got shape {out.shape} and dtype {out.dtype}"
            )
        elif not out.flags.writeable or not out.flags.c_contiguous:
            raise ValueError("out: expected a writeable, C-contiguous array")
        if index.size == 0:
            return out
        index = index.astype(np.int64, copy=False)
        for shard, lo, hi in self._shard_runs(index):
            # rows are checked in range, and mode="raise" would gather into a temporary array first
            np.take(self._shards[shard], index[lo:hi] - self._offsets[shard], axis=0, out=out[lo:hi], mode="clip")
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("copy: a LatentStore cannot be turned into one array without copying")
        return self.to_numpy(dtype)

    def to_numpy(self, dtype: np.dtype | str | type | None = None) -> np.ndarray:
        """Load every row into RAM.

        Args:
            dtype: Result dtype; the storage dtype when ``None``.

        Returns:
            The latents. Shape: ``(count, dim)``.

        """
        out = np.empty(self.shape, dtype=self._dtype if dtype is None else np.dtype(dtype))
        for index, shard in enumerate(self._shards):
            out[self._offsets[index] : self._offsets[index + 1]] = shard
        return out

    def to_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Load every row into a tensor.

        Args:
            dtype: Floating tensor dtype (float32 by default; the store keeps
                float16 on disk).
            device: Target device; CPU when ``None``.

        Returns:
            The latents. Shape: ``(count, dim)``.

        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        if dtype in TORCH_TO_NUMPY:
            tensor = torch.from_numpy(self.to_numpy(TORCH_TO_NUMPY[dtype]))
        else:
            tensor = torch.from_numpy(self.to_numpy(np.float32)).to(dtype)
        return tensor if device is None else tensor.to(device)

    def _check_row(self, index: int) -> int:
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"index {index} is out of range for a store of {count} rows")
        return index + count if index < 0 else index

    def _row(self, index: int) -> np.ndarray:
        index = self._check_row(index)
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return np.array(self._shards[shard][index - self._offsets[shard]])

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, self.dim), dtype=self._dtype)
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        last = int(np.searchsorted(self._offsets, stop, side="left"))
        pieces = []
        for shard in range(first, last):
            base = int(self._offsets[shard])
            lo = max(start, base) - base
            hi = min(stop, int(self._offsets[shard + 1])) - base
            pieces.append(self._shards[shard][lo:hi])
        return np.concatenate(pieces) if len(pieces) > 1 else np.array(pieces[0])

    def _indices(self, key: Sequence[int] | np.ndarray) -> np.ndarray:
        index = np.asarray(key)
        if index.ndim != 1:
            raise IndexError(f"key: expected a 1-D array of row indices, got shape {index.shape}")
        count = len(self)
        if index.dtype == np.bool_:
            if index.shape[0] != count:
                raise IndexError(f"key: boolean mask has {index.shape[0]} entries, but the store has {count} rows")
            return np.flatnonzero(index)
        if index.size == 0:
            return np.empty(0, dtype=np.int64)
        if index.dtype.kind not in "iu":
            raise TypeError(f"key: expected integer row indices, got dtype {index.dtype}")
        bad = index >= count if index.dtype.kind == "u" else (index < -count) | (index >= count)
        if bool(bad.any()):
            raise IndexError(f"index {index[bad][0]} is out of range for a store of {count} rows")
        index = index.astype(np.int64, copy=False)
        return np.where(index < 0, index + count, index)

    def _take(self, index: np.ndarray) -> np.ndarray:
        """Gather rows ``index`` (non-negative, in range): one sorted gather per shard, scattered back in order."""
        out = np.empty((index.shape[0], self.dim), dtype=self._dtype)
        if index.shape[0] == 0:
            return out
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        for shard, lo, hi in self._shard_runs(ordered):
            out[order[lo:hi]] = self._shards[shard][ordered[lo:hi] - self._offsets[shard]]
        return out

    def _shard_runs(self, ordered: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """``(shard, lo, hi)`` for every shard holding rows of ``ordered`` (sorted): ``ordered[lo:hi]`` are its rows."""
        bounds = np.searchsorted(ordered, self._offsets, side="left")
        for shard in np.flatnonzero(np.diff(bounds)):
            yield int(shard), int(bounds[shard]), int(bounds[shard + 1])
