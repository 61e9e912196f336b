"""On-disk latent store: ``.npy`` shards plus a JSON manifest, read through memory maps.

FuseMix encodes every example once with a frozen encoder and trains on the
stored latents only. Stores can be far larger than RAM (5M rows x 1536 dims in
float16 is 15 GB), so :class:`LatentStore` memory-maps its shards and reads
only the rows that are asked for.

Layout of a store directory::

    <store>/manifest.json        written last, atomically; its presence marks a complete store
    <store>/shards/00000.npy     (rows_0, dim) float16 or float32, plain .npy (no pickle)
    <store>/shards/00001.npy     (rows_1, dim) ...

``manifest.json``::

    {"format": "fusemix.latents", "version": 1, "modality": "image", "dim": 1536,
     "dtype": "float16", "count": 5000000,
     "encoder": {...JSON identity of the encoder...}, "metadata": {...free JSON...},
     "shards": [{"file": "shards/00000.npy", "rows": 65536, "sha256": "<hex>", "bytes": 201326720}, ...],
     "created": "2024-01-01T00:00:00+00:00"}

``sha256`` and ``bytes`` are those of the whole ``.npy`` file, header included.

While a store is being written (by :class:`LatentStoreWriter`), every file is
written atomically: to a temporary file ``shards/.<name>.<random>.tmp`` in the
same directory, fsync'ed, then renamed into place. A shard file on disk is
therefore always complete. Right after a shard, its manifest entry is written
to a sidecar ``shards/<index>.json``, so finalizing need not re-read the
shards to hash them; a shard whose sidecar is missing (the writer was killed
between the two renames) is hashed again from disk. :meth:`LatentStoreWriter.finalize`
writes ``manifest.json`` last and then deletes the sidecars and any temporary
files a killed writer left behind.

Verification when opening (:meth:`LatentStore.open`):

- ``verify="quick"`` (default, costs a ``stat`` and a header read per shard)
  checks the manifest schema, that every shard exists with exactly the
  recorded byte size, and that its header says shape ``(rows, dim)`` and the
  store's dtype. It catches missing, truncated, extended and mismatched
  shards, but not a change of content that keeps the size.
- ``verify="full"`` also recomputes the sha256 of every shard (reads the
  whole store), which catches any change of content.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_choice, check_positive_int

FORMAT = "fusemix.latents"
"""Value of the manifest's ``format`` field."""
VERSION = 1
"""Manifest version written by this code."""
DTYPES: tuple[str, ...] = ("float16", "float32")
"""Storage dtypes a store may use."""
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

_SHARD_FILE = re.compile(r"^(\d{5,})\.npy$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1 << 23
_TORCH_TO_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

Verify = Literal["quick", "full"]
IndexKey = int | slice | list[int] | np.ndarray | Tensor


class StoreError(ValueError):
    """A latent store on disk is incomplete, corrupt, or not the one that was asked for."""


def shard_file(index: int) -> str:
    """Path of shard ``index`` relative to the store directory, e.g. ``"shards/00003.npy"``."""
    return f"{SHARD_DIR}/{index:05d}.npy"


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers shared with fusemix.extract
# ---------------------------------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _json_object(name: str, value: object) -> dict[str, Any]:
    """Return ``value`` as a plain JSON object (a dict after a JSON round trip), or raise ``TypeError``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a JSON-serialisable dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a JSON-serialisable dict ({err})") from err


def _storage_dtype(dtype: str | np.dtype) -> np.dtype:
    """The little-endian numpy dtype of a storage dtype name (``"float16"`` or ``"float32"``)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    check_choice("dtype", name, DTYPES)
    return np.dtype(name).newbyteorder("<")


def _as_numpy(name: str, array: object) -> np.ndarray:
    """Return a floating ``(N, D)`` tensor or array as a numpy array (no copy when possible)."""
    if isinstance(array, Tensor):
        if not array.is_floating_point():
            raise TypeError(f"{name}: expected floating-point latents, got dtype {array.dtype}")
        tensor = array.detach()
        array = (tensor if tensor.dtype in _TORCH_TO_NUMPY else tensor.float()).cpu().numpy()
    elif not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")
    if array.dtype.kind != "f":
        raise TypeError(f"{name}: expected floating-point latents, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (rows, dim), got shape {tuple(array.shape)}")
    return array


def _fits(source: np.ndarray, dtype: np.dtype) -> bool:
    """Whether every value of ``source`` is finite and within the range of ``dtype`` (cheap reductions only)."""
    if source.size == 0:
        return True
    if source.dtype.itemsize == 2:  # float16 fits float16 and float32 unless all its exponent bits are set (Inf/NaN)
        return int(np.bitwise_and(source.view(np.uint16), 0x7FFF).max()) < 0x7C00
    low, high = source.min(), source.max()  # NaN and Inf propagate to min/max
    return bool(np.isfinite(low) and np.isfinite(high) and max(-low, high) <= np.finfo(dtype).max)


def _convert_latents(
    name: str, array: object, dtype: np.dtype, *, first_row: int = 0, row_word: str = "row"
) -> np.ndarray:
    """Return ``array`` as a C-contiguous ``(N, D)`` array of ``dtype``, refusing values it cannot hold.

    Raises ``ValueError`` naming the first offending row (``first_row + r``, called ``row_word``) when the
    input holds NaN/Inf or a value outside the range of ``dtype`` (values that become inf:
    float16 tops out at 65504, so ``|x| >= 65520`` overflows; smaller excesses round to 65504 like any rounding).
    """
    source = _as_numpy(name, array)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(source, dtype=dtype)
    if _fits(source, dtype):
        return converted
    row_ok = np.isfinite(converted).all(axis=1)  # values just above the dtype's max may round down to it
    if bool(row_ok.all()):
        return converted
    bad_rows = np.flatnonzero(~row_ok)
    source_bad = bad_rows[~np.isfinite(source[bad_rows]).all(axis=1)]
    if source_bad.size:
        raise ValueError(
            f"{name}: {source_bad.size} row(s) contain NaN or Inf "
            f"(first: {row_word} {first_row + int(source_bad[0])}); refusing to store non-finite latents"
        )
    limit = float(np.finfo(dtype).max)
    peak = float(np.abs(source[bad_rows].astype(np.float64)).max())
    raise ValueError(
        f"{name}: {bad_rows.size} row(s) hold values outside the {dtype.name} range |x| <= {limit:.6g} "
        f"(first: {row_word} {first_row + int(bad_rows[0])}, max |x| = {peak:.6g}); "
        "store as dtype='float32' or rescale the latents"
    )


def _os_error(err: OSError, path: Path, doing: str) -> OSError:
    """A copy of ``err`` (same errno, so the same ``OSError`` subclass) whose message starts with ``path``."""
    reason = err.strerror or str(err) or type(err).__name__
    message = f"{path}: could not {doing} ({reason})"
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(target: Path, write: Callable[[BinaryIO], None], doing: str) -> None:
    """Write ``target`` through ``write(file)`` atomically: temp file in the same dir, fsync, ``os.replace``.

    On failure the temporary file is removed and an ``OSError`` naming ``target`` is raised; ``target`` is
    either untouched or completely replaced.
    """
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise _os_error(err, target, doing) from err
        raise
    _fsync_dir(target.parent)


def _write_json(target: Path, data: Mapping[str, Any], doing: str) -> None:
    payload = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    _atomic_write(target, lambda file: file.write(payload), doing)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open_shard(path: Path) -> np.memmap:
    """Memory-map a shard file read-only; ``StoreError`` if it is not a readable plain ``.npy`` file."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise StoreError(f"{path}: shard is missing") from err
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(f"{path}: not a readable .npy shard ({err})") from err
    if not isinstance(array, np.memmap):
        raise StoreError(f"{path}: not a memory-mappable .npy array")
    return array


def _check_shard(path: Path, array: np.memmap, *, dim: int, dtype: np.dtype, rows: int | None, size: int) -> None:
    """Raise ``StoreError`` unless the mapped shard has shape ``(rows, dim)``, ``dtype`` and no extra bytes."""
    if array.dtype != dtype:
        raise StoreError(f"{path}: shard has dtype {array.dtype}, expected {dtype.name}")
    if array.ndim != 2 or array.shape[1] != dim or (rows is not None and array.shape[0] != rows):
        wanted = f"({'rows' if rows is None else rows}, {dim})"
        raise StoreError(f"{path}: shard has shape {tuple(array.shape)}, expected {wanted}")
    if not array.flags.c_contiguous:
        raise StoreError(f"{path}: shard is stored in Fortran order, expected C order")
    if array.offset + array.nbytes != size:
        raise StoreError(f"{path}: file is {size} bytes, but its header describes {array.offset + array.nbytes} bytes")


def _shard_indices(root: Path) -> list[int]:
    """Indices of the shard files present in ``root/shards``, sorted."""
    try:
        names = os.listdir(root / SHARD_DIR)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SHARD_FILE.match, names) if m)


def _remove_quietly(paths: Iterator[Path] | Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---------------------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------------------


def _read_manifest(root: Path) -> dict[str, Any]:
    """Read and validate ``root/manifest.json``; ``StoreError`` naming the problem otherwise."""
    file = root / MANIFEST
    if not file.is_file():
        raise StoreError(
            f"{root}: incomplete or not a fusemix store: {MANIFEST} is missing (it is written last, when every "
            "shard is done); rerun extraction to finish it"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise StoreError(f"{file}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise StoreError(f"{file}: format is {data.get('format')!r}, expected {FORMAT!r}; not a fusemix latent store")
    version = data.get("version")
    if not _is_int(version) or version != VERSION:
        newer = " (written by a newer fusemix; upgrade fusemix)" if _is_int(version) and version > VERSION else ""
        raise StoreError(f"{file}: unsupported manifest version {version!r}, expected {VERSION}{newer}")
    expected_types = {
        "modality": str,
        "dim": int,
        "dtype": str,
        "count": int,
        "encoder": dict,
        "metadata": dict,
        "shards": list,
        "created": str,
    }
    for key, kind in expected_types.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StoreError(f"{file}: field {key!r} must be a {kind.__name__}, got {value!r}")
    if not data["modality"]:
        raise StoreError(f"{file}: field 'modality' is empty")
    if data["dtype"] not in DTYPES:
        raise StoreError(f"{file}: field 'dtype' is {data['dtype']!r}, expected one of {list(DTYPES)}")
    if data["dim"] < 1 or data["count"] < 1 or not data["shards"]:
        raise StoreError(f"{file}: dim, count and the shard list must be positive / non-empty")
    for index, entry in enumerate(data["shards"]):
        _check_entry(file, index, entry)
    total = sum(entry["rows"] for entry in data["shards"])
    if total != data["count"]:
        raise StoreError(
            f"{file}: the shards hold {total} rows in all, but count is {data['count']}; the manifest was altered"
        )
    return data


def _check_entry(file: Path, index: int, entry: object) -> None:
    if not isinstance(entry, dict):
        raise StoreError(f"{file}: shards[{index}] must be an object, got {entry!r}")
    if entry.get("file") != shard_file(index):
        raise StoreError(f"{file}: shards[{index}].file is {entry.get('file')!r}, expected {shard_file(index)!r}")
    for key in ("rows", "bytes"):
        value = entry.get(key)
        if not _is_int(value) or value < 1:
            raise StoreError(f"{file}: shards[{index}].{key} must be an int >= 1, got {value!r}")
    if not isinstance(entry.get("sha256"), str) or not _SHA256_HEX.match(entry["sha256"]):
        raise StoreError(f"{file}: shards[{index}].sha256 must be 64 lowercase hex digits, got {entry.get('sha256')!r}")


def _check_identity(
    root: Path, manifest: Mapping[str, Any], expected_encoder: Mapping[str, Any] | None, expected_modality: str | None
) -> None:
    if expected_modality is not None and manifest["modality"] != expected_modality:
        raise StoreError(f"{root}: store holds modality {manifest['modality']!r}, but {expected_modality!r} was named")
    if expected_encoder is not None:
        wanted = _json_object("expected_encoder", expected_encoder)
        if manifest["encoder"] != wanted:
            raise StoreError(
                f"{root}: store written by encoder {json.dumps(manifest['encoder'])}, "
                f"but {json.dumps(wanted)} was named"
            )


def _load_shard(root: Path, entry: Mapping[str, Any], *, dim: int, dtype: np.dtype, verify: Verify) -> np.memmap:
    path = root / entry["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise StoreError(f"{path}: shard listed in {MANIFEST} is missing") from err
    if size != entry["bytes"]:
        raise StoreError(
            f"{path}: shard is {size} bytes, but {MANIFEST} records {entry['bytes']} (truncated or altered)"
        )
    array = _open_shard(path)
    _check_shard(path, array, dim=dim, dtype=dtype, rows=entry["rows"], size=size)
    if verify == "full" and _file_sha256(path) != entry["sha256"]:
        raise StoreError(f"{path}: sha256 does not match {MANIFEST}; the shard was altered (tampered or corrupted)")
    return array


def _reopen(path: str) -> LatentStore:
    return LatentStore.open(path)


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


class LatentStore:
    """A complete on-disk latent store, read-only and array-like, backed by memory maps.

    Create one with :meth:`LatentStore.open` (or get one from
    :class:`LatentStoreWriter`, :func:`write_store`,
    :func:`fusemix.extract.extract_latents`). Indexing reads only the rows
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

    Example:
        >>> import tempfile, numpy as np
        >>> rows = np.arange(12, dtype=np.float32).reshape(6, 2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_store(tmp, rows, modality="text", encoder={"name": "toy"}, shard_size=4)
        ...     store = LatentStore.open(tmp, expected_encoder={"name": "toy"})
        ...     print(store.shape, store.dtype, store[[5, 0, -1]][:, 0], store[3:5][:, 1])
        (6, 2) float16 [10.  0. 10.] [7. 9.]

    """

    def __init__(self, path: Path, manifest: Mapping[str, Any], shards: Sequence[np.memmap]) -> None:
        """Wrap already-validated parts; use :meth:`open` instead."""
        self._path = path
        self._manifest = dict(manifest)
        self._shards = tuple(shards)
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
        """Open a complete store, memory-mapping its shards (no data is copied).

        Args:
            path: The store directory (the one holding ``manifest.json``).
            verify: ``"quick"`` checks the manifest and every shard's
                existence, byte size, shape and dtype; ``"full"`` also
                recomputes every shard's sha256 (reads the whole store).
            expected_encoder: If given, the encoder identity the store must
                have been written with.
            expected_modality: If given, the modality the store must hold.

        Returns:
            The opened store.

        Raises:
            FileNotFoundError: If ``path`` is not a directory.
            StoreError: If the store is incomplete (no manifest), a shard is
                missing, truncated, of the wrong shape/dtype or (with
                ``verify="full"``) altered, the manifest is invalid, or the
                encoder/modality differ from the expected ones.

        """
        check_choice("verify", verify, ("quick", "full"))
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory; expected a fusemix latent store")
        manifest = _read_manifest(root)
        _check_identity(root, manifest, expected_encoder, expected_modality)
        dtype = _storage_dtype(manifest["dtype"])
        shards = [
            _load_shard(root, entry, dim=manifest["dim"], dtype=dtype, verify=verify) for entry in manifest["shards"]
        ]
        return cls(root, manifest, shards)

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
        if _is_int(key):
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
        if dtype in _TORCH_TO_NUMPY:
            tensor = torch.from_numpy(self.to_numpy(_TORCH_TO_NUMPY[dtype]))
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


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


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
            inf) or ``"float32"``.
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
        self.dtype = _storage_dtype(dtype)
        self.encoder = _json_object("encoder", encoder)
        self.metadata = _json_object("metadata", {} if metadata is None else metadata)
        if (self.path / MANIFEST).exists():
            raise StoreError(
                f"{self.path}: already holds a complete store ({MANIFEST} exists); open it with LatentStore.open "
                "or write to another directory"
            )
        try:
            (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _os_error(err, self.path / SHARD_DIR, "create the store directory") from err

    def _shard_path(self, index: int) -> Path:
        return self.path / shard_file(index)

    def _sidecar_path(self, index: int) -> Path:
        return self._shard_path(index).with_suffix(".json")

    def _check_index(self, index: int) -> int:
        if not _is_int(index) or index < 0:
            raise ValueError(f"index: expected an int >= 0, got {index!r}")
        return int(index)

    def write_shard(self, index: int, array: np.ndarray | Tensor) -> dict[str, Any]:
        """Convert ``array`` to the storage dtype and write it as shard ``index``, atomically.

        Args:
            index: Shard number; the file is ``shards/{index:05d}.npy``. An
                existing shard of that number is replaced.
            array: Floating latents. Shape: ``(rows, dim)``, ``rows >= 1``.

        Returns:
            The shard's manifest entry: ``{"file", "rows", "sha256", "bytes"}``.

        Raises:
            TypeError: If ``array`` is not a floating array/tensor.
            ValueError: If its shape is wrong, or it holds NaN/Inf or values
                that overflow the storage dtype (become inf; float16:
                ``|x| >= 65520``, as float16 tops out at 65504).
            OSError: If the file cannot be written (message names the path);
                no partial shard is left behind.

        """
        index = self._check_index(index)
        data = _convert_latents(f"array (shard {index})", array, self.dtype)
        if data.shape[0] < 1 or data.shape[1] != self.dim:
            raise ValueError(f"array (shard {index}): expected shape (rows >= 1, {self.dim}), got {tuple(data.shape)}")
        target = self._shard_path(index)
        sidecar = self._sidecar_path(index)
        _remove_quietly(target.parent.glob(f".{target.name}.*.tmp"))
        _remove_quietly([sidecar])
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
        }
        # The sidecar lands before the shard: once the shard is in place nothing of this
        # write is pending, so a worker that finalizes the store at that moment (and
        # cleans up temporary files) cannot break it. A sidecar without its shard is ignored.
        _write_json(sidecar, entry, f"write the sidecar of shard {index}")

        def write(file: BinaryIO) -> None:
            file.write(header.getvalue())
            file.write(body)

        try:
            _atomic_write(target, write, f"write shard {index}")
        except BaseException:
            _remove_quietly([sidecar])
            raise
        return entry

    def shard_entry(self, index: int) -> dict[str, Any] | None:
        """The manifest entry of finished shard ``index``, or ``None`` if it is not on disk (or unreadable).

        A shard file that reads cleanly counts as finished (files are only
        ever renamed into place whole). Its sha256 comes from the sidecar,
        or is recomputed from the file when the sidecar is missing or stale.

        Raises:
            StoreError: If the shard exists but was written with another
                ``dim`` or ``dtype`` (a different run wrote it).

        """
        index = self._check_index(index)
        path = self._shard_path(index)
        try:
            size = path.stat().st_size
            array = _open_shard(path)
        except (FileNotFoundError, StoreError):
            return None
        if array.ndim == 2 and (array.shape[1] != self.dim or array.dtype != self.dtype):
            raise StoreError(
                f"{path}: shard holds {array.dtype} rows of dim {array.shape[1]}, but this writer stores "
                f"{self.dtype.name} rows of dim {self.dim}; it was written by a different run"
            )
        try:
            _check_shard(path, array, dim=self.dim, dtype=self.dtype, rows=None, size=size)
        except StoreError:
            return None
        rows = int(array.shape[0])
        del array
        entry = self._read_sidecar(index)
        if entry is None or (entry["file"], entry["rows"], entry["bytes"]) != (shard_file(index), rows, size):
            entry = {"file": shard_file(index), "rows": rows, "sha256": _file_sha256(path), "bytes": size}
        return entry

    def _read_sidecar(self, index: int) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._sidecar_path(index).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or set(entry) != {"file", "rows", "sha256", "bytes"}:
            return None
        if not isinstance(entry["sha256"], str) or not _SHA256_HEX.match(entry["sha256"]):
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
        extra = [index for index in _shard_indices(self.path) if index >= num_shards]
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
        _write_json(self.path / MANIFEST, manifest, "write the manifest")
        _remove_quietly([self._sidecar_path(index) for index in range(num_shards)])
        _remove_quietly(list((self.path / SHARD_DIR).glob(".*.tmp")))
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
    data = _as_numpy("array", array)
    if data.shape[0] < 1:
        raise ValueError(f"array: expected at least one row, got shape {tuple(data.shape)}")
    writer = LatentStoreWriter(
        root, modality=modality, dim=data.shape[1], dtype=dtype, encoder=encoder, metadata=metadata
    )
    starts = range(0, data.shape[0], shard_size)
    for index, start in enumerate(starts):
        writer.write_shard(index, data[start : start + shard_size])
    return writer.finalize(len(starts))
