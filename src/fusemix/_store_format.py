"""The on-disk format of a latent store: names, manifest, shard files, and the checks that read them.

:mod:`fusemix.store` describes the layout; this module holds what both the
reader (:class:`~fusemix.store.LatentStore`) and the writer
(:class:`~fusemix.store.LatentStoreWriter`, :mod:`fusemix.extract`) need:
the constants, :class:`StoreError`, the conversion of latents to a storage
dtype, reading and checking a shard file, listing the shards present, and
reading and validating ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_choice, check_json_object

FORMAT = "fusemix.latents"
"""Value of the manifest's ``format`` field."""
VERSION = 1
"""Manifest version written by this code."""
DTYPES: tuple[str, ...] = ("float16", "float32")
"""Storage dtypes a store may use."""
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

_SHARD_FILE = re.compile(r"^(\d{5,})\.npy$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1 << 23
TORCH_TO_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

Verify = Literal["quick", "full"]


class StoreError(ValueError):
    """A latent store on disk is incomplete, corrupt, or not the one that was asked for."""


def shard_file(index: int) -> str:
    """Path of shard ``index`` relative to the store directory, e.g. ``"shards/00003.npy"``."""
    return f"{SHARD_DIR}/{index:05d}.npy"


def is_int(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy integer (``bool`` is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def storage_dtype(dtype: str | np.dtype) -> np.dtype:
    """The little-endian numpy dtype of a storage dtype name (``"float16"`` or ``"float32"``)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    check_choice("dtype", name, DTYPES)
    return np.dtype(name).newbyteorder("<")


def as_numpy(name: str, array: object) -> np.ndarray:
    """Return a floating ``(N, D)`` tensor or array as a numpy array (no copy when possible)."""
    if isinstance(array, Tensor):
        if not array.is_floating_point():
            raise TypeError(f"{name}: expected floating-point latents, got dtype {array.dtype}")
        tensor = array.detach()
        array = (tensor if tensor.dtype in TORCH_TO_NUMPY else tensor.float()).cpu().numpy()
    elif not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")
    if array.dtype.kind != "f":
        raise TypeError(f"{name}: expected floating-point latents, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (rows, dim), got shape {tuple(array.shape)}")
    return array


def _fits(source: np.ndarray, dtype: np.dtype) -> tuple[bool, np.ndarray | None]:
    """Whether every value of ``source`` is finite and within the range of ``dtype`` (cheap reductions only).

    Also returns each row's largest magnitude (``max |x|``; NaN where the row holds NaN), from the same
    per-row min/max reductions, or ``None`` for float16 input (read from its bits, and exact in either dtype).
    """
    if source.dtype.itemsize == 2:  # float16 fits float16 and float32 unless all its exponent bits are set (Inf/NaN)
        return int(np.bitwise_and(source.view(np.uint16), 0x7FFF).max()) < 0x7C00, None
    row_low, row_high = source.min(axis=1), source.max(axis=1)  # NaN and Inf propagate to min/max
    low, high = row_low.min(), row_high.max()
    fits = bool(np.isfinite(low) and np.isfinite(high) and max(-low, high) <= np.finfo(dtype).max)
    return fits, np.maximum(-row_low, row_high)


def _refuse_underflow(name: str, peaks: np.ndarray, dtype: np.dtype, *, first_row: int, row_word: str) -> None:
    """Raise ``ValueError`` naming the first row whose ``max |x|`` (``peaks[r]``) is nonzero but subnormal in ``dtype``.

    Such a row would be stored as subnormals, keeping little of its value, or as zeros.
    """
    tiny = float(np.finfo(dtype).smallest_normal)
    small = (peaks < tiny) & (peaks > 0)
    if not bool(small.any()):
        return
    bad_rows = np.flatnonzero(small)
    peak = float(peaks[bad_rows[0]])
    raise ValueError(
        f"{name}: {bad_rows.size} row(s) lie entirely below the {dtype.name} normal range |x| >= {tiny:.6g} "
        f"(first: {row_word} {first_row + int(bad_rows[0])}, max |x| = {peak:.6g}), so {dtype.name} would keep "
        f"little or none of them (values below about {float(np.finfo(dtype).smallest_subnormal) / 2:.1g} become 0); "
        "store as dtype='float32' or rescale the latents"
    )


def convert_latents(
    name: str, array: object, dtype: np.dtype, *, first_row: int = 0, row_word: str = "row"
) -> np.ndarray:
    """Return ``array`` as a C-contiguous ``(N, D)`` array of ``dtype``, refusing values it cannot hold.

    Raises ``ValueError`` naming the first offending row (``first_row + r``, called ``row_word``) when the
    input holds NaN/Inf or a value outside the range of ``dtype`` (values that become inf:
    float16 tops out at 65504, so ``|x| >= 65520`` overflows; smaller excesses round to 65504 like any rounding),
    or when converting to float16 a row whose largest magnitude is nonzero but below float16's smallest normal
    number, 6.1035e-05 (``2**-14``): such a row would become subnormals that keep little of its value, or zeros
    (all of it below about 3e-08). The rule is per row, by its ``max |x|``: tiny elements in a row of normal scale
    lose a negligible part of it, and all-zero rows are stored as they are. Float16 input is stored exactly, so
    never refused for this.
    """
    source = as_numpy(name, array)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(source, dtype=dtype)
    if source.size == 0:
        return converted
    fits, peaks = _fits(source, dtype)
    if not fits:
        _refuse_out_of_range(name, source, converted, dtype, first_row=first_row, row_word=row_word)
    if peaks is not None and dtype.itemsize == 2:
        _refuse_underflow(name, peaks, dtype, first_row=first_row, row_word=row_word)
    return converted


def _refuse_out_of_range(
    name: str, source: np.ndarray, converted: np.ndarray, dtype: np.dtype, *, first_row: int, row_word: str
) -> None:
    """Raise ``ValueError`` for the first row of ``source`` that holds NaN/Inf or became inf in ``converted``."""
    row_ok = np.isfinite(converted).all(axis=1)  # values just above the dtype's max may round down to it
    if bool(row_ok.all()):
        return
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


def file_sha256(path: Path) -> str:
    """Hex sha256 of a whole file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_shard(path: Path) -> np.memmap:
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


def check_shard(path: Path, array: np.memmap, *, dim: int, dtype: np.dtype, rows: int | None, size: int) -> None:
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


def shard_indices(root: Path) -> list[int]:
    """Indices of the shard files present in ``root/shards``, sorted."""
    try:
        names = os.listdir(root / SHARD_DIR)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SHARD_FILE.match, names) if m)


def remove_quietly(paths: Iterator[Path] | Sequence[Path]) -> None:
    """Delete ``paths``; those already gone are no error."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_manifest(root: Path) -> dict[str, Any]:
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
    except RecursionError as err:
        raise StoreError(f"{file}: not valid JSON (nested too deeply to be a manifest)") from err
    if not isinstance(data, dict):
        raise StoreError(f"{file}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise StoreError(f"{file}: format is {data.get('format')!r}, expected {FORMAT!r}; not a fusemix latent store")
    version = data.get("version")
    if not is_int(version) or version != VERSION:
        newer = " (written by a newer fusemix; upgrade fusemix)" if is_int(version) and version > VERSION else ""
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
        if not is_int(value) or value < 1:
            raise StoreError(f"{file}: shards[{index}].{key} must be an int >= 1, got {value!r}")
    if not isinstance(entry.get("sha256"), str) or not SHA256_HEX.match(entry["sha256"]):
        raise StoreError(f"{file}: shards[{index}].sha256 must be 64 lowercase hex digits, got {entry.get('sha256')!r}")
    if "items" in entry and (not isinstance(entry["items"], str) or not entry["items"]):
        raise StoreError(f"{file}: shards[{index}].items must be a non-empty string, got {entry['items']!r}")


def check_identity(
    root: Path, manifest: Mapping[str, Any], expected_encoder: Mapping[str, Any] | None, expected_modality: str | None
) -> None:
    """Raise ``StoreError`` unless the manifest's modality and encoder are the expected ones (``None``: any)."""
    if expected_modality is not None and manifest["modality"] != expected_modality:
        raise StoreError(f"{root}: store holds modality {manifest['modality']!r}, but {expected_modality!r} was named")
    if expected_encoder is not None:
        wanted = check_json_object("expected_encoder", expected_encoder)
        if manifest["encoder"] != wanted:
            raise StoreError(
                f"{root}: store written by encoder {json.dumps(manifest['encoder'])}, "
                f"but {json.dumps(wanted)} was named"
            )


def load_shard(root: Path, entry: Mapping[str, Any], *, dim: int, dtype: np.dtype, verify: Verify) -> np.memmap:
    """Memory-map the shard of a manifest entry, checked against the entry (and its sha256 with ``verify="full"``)."""
    path = root / entry["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise StoreError(f"{path}: shard listed in {MANIFEST} is missing") from err
    if size != entry["bytes"]:
        raise StoreError(
            f"{path}: shard is {size} bytes, but {MANIFEST} records {entry['bytes']} (truncated or altered)"
        )
    array = open_shard(path)
    check_shard(path, array, dim=dim, dtype=dtype, rows=entry["rows"], size=size)
    if verify == "full" and file_sha256(path) != entry["sha256"]:
        raise StoreError(f"{path}: sha256 does not match {MANIFEST}; the shard was altered (tampered or corrupted)")
    return array
