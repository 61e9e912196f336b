"""Writing a latent store: :class:`LatentStoreWriter` (shard by shard, resumable) and :func:`write_store`.

See :mod:`fusemix.store` for the layout and how a write stays whole when the
writer is killed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import Tensor

from fusemix._checks import check_json_object, check_positive_int
from fusemix._fileio import atomic_write, os_error, write_json_atomic
from fusemix._store_format import (
    FORMAT,
    MANIFEST,
    SHA256_HEX,
    SHARD_DIR,
    VERSION,
    StoreError,
    as_numpy,
    check_shard,
    convert_latents,
    file_sha256,
    is_int,
    open_shard,
    remove_quietly,
    shard_file,
    shard_indices,
    storage_dtype,
)
from fusemix._store_reader import LatentStore


class LatentStoreWriter:
    """Write a store shard by shard, atomically and resumably; :meth:`finalize` makes it complete.

    Every shard is written to a temporary file, fsync'ed and renamed into
    place, so a shard file on disk is always whole; its manifest entry goes to
    a sidecar ``shards/<index>.json`` right after (see the module docstring).
    To resume after a crash, create a writer with the same arguments on the
    same directory, skip the shards for which :meth:`shard_entry` returns an
    entry, write the rest and call :meth:`finalize`.

    Args:
        path: Store directory (created if needed). Must not hold a complete
            store already.
        modality: Name of the modality, e.g. ``"image"``.
        dim: Latent dimension ``D`` of every shard.
        dtype: Storage dtype, ``"float16"`` (default; refuses values that
            overflow it: float16 tops out at 65504, ``|x| >= 65520`` becomes
            inf; and rows it would flush toward zero: a row whose largest
            ``|x|`` is nonzero but below 6.1035e-05, float16's smallest normal
            number) or ``"float32"``.
        encoder: JSON identity of the encoder that made the latents.
        metadata: Free JSON metadata to record in the manifest.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     writer = LatentStoreWriter(tmp, modality="text", dim=3, encoder={"name": "toy"})
        ...     entry = writer.write_shard(0, np.ones((4, 3), dtype=np.float32))
        ...     _ = writer.write_shard(1, np.zeros((2, 3), dtype=np.float32))
        ...     store = writer.finalize(2)
        ...     print(entry["file"], entry["rows"], len(store), store[3:5].sum(axis=1))
        shards/00000.npy 4 6 [3. 0.]

    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        modality: str,
        dim: int,
        dtype: str = "float16",
        encoder: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(modality, str) or not modality:
            raise ValueError(f"modality: expected a non-empty string, got {modality!r}")
        self.path = Path(path)
        self.modality = modality
        self.dim = check_positive_int("dim", dim)
        self.dtype = storage_dtype(dtype)
        self.encoder = check_json_object("encoder", encoder)
        self.metadata = check_json_object("metadata", {} if metadata is None else metadata)
        if (self.path / MANIFEST).exists():
            raise StoreError(
                f"{self.path}: already holds a complete store ({MANIFEST} exists); open it with LatentStore.open "
                "or write to another directory"
            )
        try:
            (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, self.path / SHARD_DIR, "create the store directory") from err

    def _shard_path(self, index: int) -> Path:
        return self.path / shard_file(index)

    def _sidecar_path(self, index: int) -> Path:
        return self._shard_path(index).with_suffix(".json")

    def _check_index(self, index: int) -> int:
        if not is_int(index) or index < 0:
            raise ValueError(f"index: expected an int >= 0, got {index!r}")
        return int(index)

    def write_shard(self, index: int, array: np.ndarray | Tensor, *, items: str | None = None) -> dict[str, Any]:
        """Convert ``array`` to the storage dtype and write it as shard ``index``, atomically.

        Args:
            index: Shard number; the file is ``shards/{index:05d}.npy``. An
                existing shard of that number is replaced.
            array: Floating latents. Shape: ``(rows, dim)``, ``rows >= 1``.
            items: Fingerprint of the items the rows were computed from
                (:mod:`fusemix.extract` records one), kept in the entry.

        Returns:
            The shard's manifest entry: ``{"file", "rows", "sha256", "bytes"}``
            and ``"items"`` when given.

        Raises:
            TypeError: If ``array`` is not a floating array/tensor.
            ValueError: If its shape is wrong, or it holds NaN/Inf or values
                that overflow the storage dtype (become inf; float16:
                ``|x| >= 65520``, as float16 tops out at 65504), or, stored as
                float16, a row whose largest ``|x|`` is nonzero but below
                6.1035e-05 (float16 would keep it as subnormals or zeros; tiny
                values in a row of normal scale are fine, and float16 input is
                stored as it is). The message names the first such row.
            OSError: If the file cannot be written (message names the path);
                no partial shard is left behind.

        """
        index = self._check_index(index)
        if items is not None and (not isinstance(items, str) or not items):
            raise ValueError(f"items: expected a non-empty fingerprint string or None, got {items!r}")
        data = convert_latents(f"array (shard {index})", array, self.dtype)
        if data.shape[0] < 1 or data.shape[1] != self.dim:
            raise ValueError(f"array (shard {index}): expected shape (rows >= 1, {self.dim}), got {tuple(data.shape)}")
        target = self._shard_path(index)
        sidecar = self._sidecar_path(index)
        remove_quietly(target.parent.glob(f".{target.name}.*.tmp"))
        remove_quietly([sidecar])
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(data))
        body = memoryview(data).cast("B")
        digest = hashlib.sha256(header.getvalue())
        digest.update(body)
        entry = {
            "file": shard_file(index),
            "rows": int(data.shape[0]),
            "sha256": digest.hexdigest(),
            "bytes": len(header.getvalue()) + body.nbytes,
            **({} if items is None else {"items": items}),
        }
        # The sidecar lands before the shard: once the shard is in place nothing of this
        # write is pending, so a worker that finalizes the store at that moment (and
        # cleans up temporary files) cannot break it. A sidecar without its shard is ignored.
        write_json_atomic(sidecar, entry, f"write the sidecar of shard {index}")

        def write(file: BinaryIO) -> None:
            file.write(header.getvalue())
            file.write(body)

        try:
            atomic_write(target, write, f"write shard {index}")
        except BaseException:
            remove_quietly([sidecar])
            raise
        return entry

    def shard_entry(self, index: int) -> dict[str, Any] | None:
        """The manifest entry of finished shard ``index``, or ``None`` if it is not on disk (or unreadable).

        A shard file that reads cleanly counts as finished (files are only
        ever renamed into place whole). Its sha256 (and items fingerprint)
        comes from the sidecar; without a matching sidecar the sha256 is
        recomputed from the file and the entry has no ``"items"``.

        Raises:
            StoreError: If the shard exists but was written with another
                ``dim`` or ``dtype`` (a different run wrote it).

        """
        index = self._check_index(index)
        path = self._shard_path(index)
        try:
            size = path.stat().st_size
            array = open_shard(path)
        except (FileNotFoundError, StoreError):
            return None
        if array.ndim == 2 and (array.shape[1] != self.dim or array.dtype != self.dtype):
            raise StoreError(
                f"{path}: shard holds {array.dtype} rows of dim {array.shape[1]}, but this writer stores "
                f"{self.dtype.name} rows of dim {self.dim}; it was written by a different run"
            )
        try:
            check_shard(path, array, dim=self.dim, dtype=self.dtype, rows=None, size=size)
        except StoreError:
            return None
        rows = int(array.shape[0])
        del array
        entry = self._read_sidecar(index)
        if entry is None or (entry["file"], entry["rows"], entry["bytes"]) != (shard_file(index), rows, size):
            entry = {"file": shard_file(index), "rows": rows, "sha256": file_sha256(path), "bytes": size}
        return entry

    def _read_sidecar(self, index: int) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._sidecar_path(index).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or set(entry) - {"items"} != {"file", "rows", "sha256", "bytes"}:
            return None
        if "items" in entry and (not isinstance(entry["items"], str) or not entry["items"]):
            return None
        if not isinstance(entry["sha256"], str) or not SHA256_HEX.match(entry["sha256"]):
            return None
        return entry

    def finalize(self, num_shards: int) -> LatentStore:
        """Check shards ``0 .. num_shards - 1`` and write ``manifest.json``, making the store complete.

        Args:
            num_shards: Number of shards the store consists of.

        Returns:
            The complete store, opened.

        Raises:
            StoreError: If a shard is missing or unreadable, or a shard file
                numbered ``num_shards`` or higher exists.
            OSError: If the manifest cannot be written (message names the path).

        """
        check_positive_int("num_shards", num_shards)
        entries = [self.shard_entry(index) for index in range(num_shards)]
        missing = [index for index, entry in enumerate(entries) if entry is None]
        if missing:
            raise StoreError(
                f"{self.path}: cannot finalize: {len(missing)} of {num_shards} shard(s) are missing or unreadable "
                f"(first: {[shard_file(i) for i in missing[:5]]}); write them first"
            )
        extra = [index for index in shard_indices(self.path) if index >= num_shards]
        if extra:
            raise StoreError(
                f"{self.path}: cannot finalize with num_shards={num_shards}: {shard_file(extra[0])} also exists; "
                "pass the right num_shards or remove shard files that do not belong to this store"
            )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "modality": self.modality,
            "dim": self.dim,
            "dtype": self.dtype.name,
            "count": sum(entry["rows"] for entry in entries if entry is not None),
            "encoder": self.encoder,
            "metadata": self.metadata,
            "shards": entries,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(self.path / MANIFEST, manifest, "write the manifest")
        remove_quietly([self._sidecar_path(index) for index in range(num_shards)])
        remove_quietly(list((self.path / SHARD_DIR).glob(".*.tmp")))
        return LatentStore.open(self.path)


def write_store(
    path: str | os.PathLike[str],
    array: np.ndarray | Tensor,
    *,
    modality: str,
    encoder: Mapping[str, Any],
    dtype: str = "float16",
    shard_size: int = 65536,
    metadata: Mapping[str, Any] | None = None,
) -> LatentStore:
    """Write in-memory latents to a new store.

    Args:
        path: A new or empty directory.
        array: Floating latents. Shape: ``(count, dim)``, ``count >= 1``.
        modality: Name of the modality, e.g. ``"text"``.
        encoder: JSON identity of the encoder that made the latents.
        dtype: Storage dtype, ``"float16"`` (default) or ``"float32"``.
        shard_size: Rows per shard (the last may hold fewer).
        metadata: Free JSON metadata to record in the manifest.

    Returns:
        The complete store, opened.

    Raises:
        FileExistsError: If ``path`` exists and is not an empty directory.
        TypeError, ValueError: As :meth:`LatentStoreWriter.write_shard`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = write_store(tmp, torch.ones(5, 3), modality="text", encoder={"name": "toy"}, shard_size=2)
        ...     print(len(store.shards), store.to_tensor().sum().item())
        3 15.0

    """
    check_positive_int("shard_size", shard_size)
    root = Path(path)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty directory; write_store needs a new or empty one")
    data = as_numpy("array", array)
    if data.shape[0] < 1:
        raise ValueError(f"array: expected at least one row, got shape {tuple(data.shape)}")
    writer = LatentStoreWriter(
        root, modality=modality, dim=data.shape[1], dtype=dtype, encoder=encoder, metadata=metadata
    )
    starts = range(0, data.shape[0], shard_size)
    for index, start in enumerate(starts):
        writer.write_shard(index, data[start : start + shard_size])
    return writer.finalize(len(starts))
