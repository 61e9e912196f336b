"""One worker's pass over the items of an extraction: check the finished shards' items, encode and write the others.

:func:`fusemix.extract.extract_latents` makes one :class:`ExtractionPass` per
call (two when ``overwrite=True`` starts over): over an indexable sequence
(:meth:`ExtractionPass.run_sequence`) or an iterable read in order
(:meth:`ExtractionPass.run_iterable`), it hashes the items of each finished
shard of this worker and compares them with the fingerprint the shard records
(:class:`ItemsChanged` when they differ), encodes the items of each missing
shard batch by batch and writes the shard whole. The settings file, the
checks against what ``out_dir`` holds and the finalization are
:mod:`fusemix.extract`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusemix._items import ItemsDigest, describe, named_items
from fusemix._store_format import convert_latents, open_shard, shard_indices, storage_dtype
from fusemix.encoders.base import Encoder
from fusemix.store import LatentStoreWriter, StoreError, shard_file


def existing_dim(root: Path) -> int | None:
    """Latent dim of the first readable shard already in ``root``, if any."""
    for index in shard_indices(root):
        try:
            shard = open_shard(root / shard_file(index))
        except StoreError:
            continue
        if shard.ndim == 2:
            return int(shard.shape[1])
    return None


def shard_writer(root: Path, spec: Mapping[str, Any], dim: int) -> LatentStoreWriter:
    """The writer of ``root``'s shards for the run settings ``spec`` (modality, dtype, encoder, metadata)."""
    return LatentStoreWriter(
        root,
        modality=spec["modality"],
        dim=dim,
        dtype=spec["dtype"],
        encoder=spec["encoder"],
        metadata=spec["metadata"],
    )


def _advance(iterator: Iterator[Any], n: int) -> int:
    """Consume up to ``n`` items of ``iterator``; returns how many there were."""
    seen = 0
    for _ in islice(iterator, n):
        seen += 1
    return seen


class Progress:
    """Counts items on a tqdm bar (``None``: no bar) with a rows/s postfix for the encoded ones."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._encoded = 0
        self._start = time.perf_counter()

    def skipped(self, rows: int) -> None:
        """Count ``rows`` items of finished shards (checked, not encoded)."""
        if self._bar is not None and rows:
            self._bar.update(rows)

    def encoded(self, rows: int) -> None:
        """Count ``rows`` encoded items and update the rate."""
        if self._bar is not None:
            self._encoded += rows
            rate = self._encoded / max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{rate:,.0f} rows/s", refresh=False)
            self._bar.update(rows)


@dataclass(frozen=True)
class Share:
    """One worker's part of an extraction: its batch size, its place among the workers, the caller's ``items_id``."""

    batch_size: int
    num_workers: int
    worker_index: int
    items_id: str | None


class ItemsChanged(Exception):
    """A finished shard was computed from other items than these (turned into a ``ValueError``, or a fresh start)."""

    def __init__(self, shard: int, first: int, stop: int, there: str, now: str) -> None:
        super().__init__(shard)
        self.shard, self.first, self.stop, self.there, self.now = shard, first, stop, there, now

    def message(self, root: Path) -> str:
        """The ``ValueError`` message for the store in ``root``: which shard, which items, both fingerprints."""
        kinds = {self.there.partition(":")[0], self.now.partition(":")[0]}
        note = (
            "; a store of hashed items is not reused under an items_id, nor the other way round"
            if len(kinds) > 1
            else ""
        )
        return (
            f"items: differ from those the latents in out_dir {root} were computed from: shard {self.shard} "
            f"(items [{self.first}, {self.stop})) records {describe(self.there)}, these items give "
            f"{describe(self.now)}{note}; pass overwrite=True to replace them, or use another out_dir"
        )


def same_items(shard: int, entry: Mapping[str, Any], first: int, now: str | None) -> bool:
    """Whether a finished shard records the fingerprint ``now``; ``False`` when it records none.

    Raises:
        ItemsChanged: If it records another one.

    """
    there = entry.get("items")
    if there is None or now is None:  # written by an earlier fusemix (or not by extract_latents)
        return False
    if there != now:
        raise ItemsChanged(shard, first, first + int(entry["rows"]), there, now)
    return True


class ShardFingerprint:
    """The fingerprint of one shard's items: hashed batch by batch as they come, or named by ``items_id``."""

    def __init__(self, items_id: str | None) -> None:
        self.items_id = items_id
        self.digest = ItemsDigest() if items_id is None else None

    def update(self, batch: list[Any], first: int) -> None:
        """Hash the items ``[first, first + len(batch))`` (nothing under an ``items_id``)."""
        if self.digest is not None:
            self.digest.update(batch, first=first)

    def value(self) -> str:
        """The fingerprint the shard records."""
        return self.digest.value() if self.digest is not None else named_items(str(self.items_id))


class ExtractionPass:
    """One worker's pass over the items: check its finished shards' items, encode the others and write them.

    With ``complete`` (the manifest entries of a complete store) every shard
    is finished: the pass only checks the items against the store.
    """

    def __init__(
        self,
        encoder: Encoder,
        root: Path,
        spec: Mapping[str, Any],
        share: Share,
        progress: Progress,
        complete: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.encoder = encoder
        self.root = root
        self.spec = spec
        self.shard_size: int = spec["shard_size"]
        self.dtype = storage_dtype(spec["dtype"])
        self.batch_size = share.batch_size
        self.num_workers = share.num_workers
        self.worker_index = share.worker_index
        self.items_id = share.items_id
        self.progress = progress
        self.complete = complete
        self.unchecked: list[int] = []
        dim = existing_dim(root) if complete is None else None
        self.dim = dim
        self.writer = shard_writer(root, spec, dim) if dim is not None else None

    def _mine(self, shard: int) -> bool:
        return shard % self.num_workers == self.worker_index

    def _finished(self, shard: int) -> Mapping[str, Any] | None:
        if self.complete is not None:
            return self.complete[shard] if shard < len(self.complete) else None
        return self.writer.shard_entry(shard) if self.writer is not None else None

    def _hashes(self, entry: Mapping[str, Any]) -> bool:
        """Whether a finished shard's items must be hashed: it records a content fingerprint and no id is given."""
        return self.items_id is None and "items" in entry

    def check_items(self, shard: int, entry: Mapping[str, Any], first: int, fingerprint: ShardFingerprint) -> None:
        """Raise :class:`ItemsChanged` unless a finished shard records the fingerprint of these items."""
        if not same_items(shard, entry, first, fingerprint.value() if "items" in entry else None):
            self.unchecked.append(shard)

    def encode(self, batch: list[Any], first: int) -> np.ndarray:
        """Encode one batch of items ``[first, first + len(batch))`` and return it in the storage dtype."""
        what = f"encoder output for items [{first}, {first + len(batch)})"
        with torch.inference_mode():
            out = self.encoder(batch)
        if not isinstance(out, (Tensor, np.ndarray)):
            raise TypeError(f"{what}: expected a torch.Tensor or numpy array of shape (batch, dim), got {type(out)}")
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(
                f"{what}: expected shape (batch, dim) with batch = {len(batch)} items given, got {tuple(out.shape)}"
            )
        is_float = out.is_floating_point() if isinstance(out, Tensor) else out.dtype.kind == "f"
        if not is_float:
            raise TypeError(f"{what}: expected floating-point latents, got dtype {out.dtype}")
        if self.dim is None:
            self.dim = int(out.shape[1])
            self.writer = shard_writer(self.root, self.spec, self.dim)
        elif out.shape[1] != self.dim:
            raise ValueError(
                f"{what}: latent dim is {out.shape[1]}, but earlier batches (or shards already in out_dir) "
                f"have dim {self.dim}; the encoder must return the same dim for every batch"
            )
        latents = convert_latents(what, out, self.dtype, first_row=first, row_word="item")
        self.progress.encoded(len(batch))
        return latents

    def write(self, shard: int, parts: list[np.ndarray], fingerprint: ShardFingerprint) -> None:
        assert self.writer is not None  # set by the first encoded batch
        array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.writer.write_shard(shard, array, items=fingerprint.value())

    def check_rows(self, shard: int, entry: Mapping[str, Any], rows: int) -> None:
        if entry["rows"] != rows:
            raise StoreError(
                f"{self.root / shard_file(shard)}: finished shard holds {entry['rows']} rows, expected {rows}; "
                "it was written from different items; pass overwrite=True to start over"
            )

    def _sequence_batches(self, items: Sequence[Any], start: int, stop: int) -> Iterator[tuple[int, list[Any]]]:
        """``(first, batch)`` for the batches of items ``[start, stop)`` (never crossing ``stop``)."""
        slicing = isinstance(items, (list, tuple))
        for first in range(start, stop, self.batch_size):
            last = min(first + self.batch_size, stop)
            yield first, list(items[first:last]) if slicing else [items[i] for i in range(first, last)]

    def run_sequence(self, items: Sequence[Any], count: int) -> None:
        """Check the worker's finished shards of an indexable ``items`` and encode the others."""
        for shard in range(self.worker_index, math.ceil(count / self.shard_size), self.num_workers):
            start, stop = shard * self.shard_size, min(count, (shard + 1) * self.shard_size)
            fingerprint = ShardFingerprint(self.items_id)
            entry = self._finished(shard)
            if entry is not None:
                self.check_rows(shard, entry, stop - start)
                if self._hashes(entry):
                    for first, batch in self._sequence_batches(items, start, stop):
                        fingerprint.update(batch, first)
                self.check_items(shard, entry, start, fingerprint)
                self.progress.skipped(stop - start)
                continue
            parts = []
            for first, batch in self._sequence_batches(items, start, stop):
                fingerprint.update(batch, first)
                parts.append(self.encode(batch, first))
            self.write(shard, parts, fingerprint)

    def _take(self, iterator: Iterator[Any], rows: int, first: int, fingerprint: ShardFingerprint | None) -> int:
        """Consume up to ``rows`` items in batches, fed to ``fingerprint`` when given; returns how many there were."""
        if fingerprint is None:
            return _advance(iterator, rows)
        taken = 0
        while taken < rows and (batch := list(islice(iterator, min(self.batch_size, rows - taken)))):
            fingerprint.update(batch, first + taken)
            taken += len(batch)
        return taken

    def _skip_finished(self, iterator: Iterator[Any], shard: int, entry: Mapping[str, Any], consumed: int) -> int:
        """Read a finished shard's items off ``iterator`` and check them; returns how many there were."""
        fingerprint = ShardFingerprint(self.items_id)
        rows = int(entry["rows"])
        skipped = self._take(iterator, rows, consumed, fingerprint if self._hashes(entry) else None)
        if skipped < rows:
            raise ValueError(
                f"items: yielded {consumed + skipped} items, but finished shard {shard} covers items "
                f"[{consumed}, {consumed + rows}); the iterable must yield the same items on a rerun"
            )
        self.check_items(shard, entry, consumed, fingerprint)
        self.progress.skipped(skipped)
        return skipped

    def run_iterable(self, items: Iterable[Any]) -> int:
        """Check the worker's finished shards of an iterable ``items`` and encode the others; returns the count."""
        iterator: Iterator[Any] = iter(items)
        consumed = 0
        shard = 0
        while True:
            if self.complete is not None and shard == len(self.complete):
                if _advance(iterator, 1):
                    raise ValueError(
                        f"items: yields more than the {consumed} items of the complete store in out_dir; the "
                        "iterable must yield the same items on a rerun, or use another out_dir"
                    )
                return consumed
            entry = self._finished(shard) if self._mine(shard) else None
            if entry is not None:
                skipped = self._skip_finished(iterator, shard, entry, consumed)
                consumed += skipped
                if skipped < self.shard_size:
                    if _advance(iterator, 1):
                        raise ValueError(
                            f"items: yields more than the {consumed} items it had when the last shard ({shard}) was "
                            "written; the iterable must yield the same items on a rerun, or use another out_dir"
                        )
                    return consumed
            elif not self._mine(shard):
                skipped = _advance(iterator, self.shard_size)
                consumed += skipped
                if skipped < self.shard_size:
                    return consumed
            else:
                fingerprint = ShardFingerprint(self.items_id)
                parts: list[np.ndarray] = []
                rows = 0
                while rows < self.shard_size:
                    batch = list(islice(iterator, min(self.batch_size, self.shard_size - rows)))
                    if not batch:
                        break
                    fingerprint.update(batch, consumed + rows)
                    parts.append(self.encode(batch, consumed + rows))
                    rows += len(batch)
                if rows:
                    self.write(shard, parts, fingerprint)
                consumed += rows
                if rows < self.shard_size:
                    return consumed
            shard += 1


__all__ = [
    "ExtractionPass",
    "ItemsChanged",
    "Progress",
    "ShardFingerprint",
    "Share",
    "existing_dim",
    "same_items",
    "shard_writer",
]
