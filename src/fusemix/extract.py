"""Run a frozen encoder over a dataset once and keep its latents in a store, resumably.

:func:`extract_latents` feeds ``items`` to ``encoder`` in batches and writes
the outputs to a :class:`~fusemix.store.LatentStore` directory, one shard at a
time: shard ``k`` holds the latents of items ``[k * shard_size, (k + 1) *
shard_size)``. Batches never cross a shard boundary, so every shard is computed
from the same batches however the work is split or interrupted.

Files in ``out_dir`` while an extraction is unfinished (on top of the store
layout described in :mod:`fusemix.store`)::

    <out_dir>/extraction.json    the run's settings: modality, dtype, encoder identity, shard_size,
                                 count (null for an iterable not yet fully read), metadata;
                                 written before the first shard, removed once the store is complete
    <out_dir>/shards/00000.npy   finished shards (each renamed into place whole), with .json sidecars

**Resuming.** A shard file on disk is always complete, so after a crash or a
SIGKILL, rerunning the same call skips every shard whose file reads cleanly
and computes the rest; the final store is byte-identical to an uninterrupted
run (same shard files, same manifest except ``created``), given a
deterministic encoder. A rerun with a different encoder identity, modality,
dtype, shard size or item count is refused instead of mixing two runs' shards
(pass ``overwrite=True`` to discard the old run). ``metadata`` is descriptive
and not compared: the manifest records that of the call that finalizes.

**Items.** Every shard records a fingerprint of the items it was computed
from: a sha256 of their content, hashed batch by batch as they are encoded
(str, bytes, paths by name, numbers, NumPy arrays, tensors, PIL images, and
lists, tuples and dicts of them; see ``fusemix._items``), or the caller's
``items_id``. A rerun hashes the items of every finished shard (no encoding)
and refuses (``ValueError`` naming the shard and its item range; with
``overwrite=True``, starts over) when they differ, whether the store is
complete or the run was interrupted: an edited dataset never returns the old
latents nor mixes rows of both. Items of other types raise a ``TypeError``
asking for ``items_id``, a name the caller changes whenever the items change;
then nothing is hashed and a rerun must give the same name. Stores made
before fingerprints were recorded are reused unchecked, with a warning.

**Several workers.** With ``num_workers=n`` and ``worker_index=w`` (e.g. one
per GPU or node, all writing to one shared ``out_dir``), worker ``w`` computes
the shards ``k`` with ``k % n == w``. Each worker, once done with its own
shards, finalizes the store (writes the manifest) if every shard is present
and returns it; otherwise it returns ``None``. A launcher that starts the
workers concurrently can instead call :func:`finalize_store` after all have
exited. The result is byte-identical to a single-worker run.

**Iterables.** ``items`` may be a plain iterable (a generator, an
``IterableDataset``); it is then consumed in order and, on a rerun, finished
shards are skipped by reading their items off the iterator (and hashing
them), so it must yield the same items in the same order every time. With
several workers, each worker reads the whole iterable. A rerun on a complete
store reads the iterable too, to check its items and their number (with
``items_id`` it is not read). When the items changed and ``overwrite=True``
asks to start over, a re-iterable ``items`` is read again from the start; a
one-shot iterator cannot be, so the call raises after clearing ``out_dir``
and a second call extracts afresh.

With several workers, each checks the items of the shards it computes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from fusemix._checks import check_json_object, check_positive_int
from fusemix._extraction_pass import (
    ExtractionPass,
    ItemsChanged,
    Progress,
    Share,
    existing_dim,
    same_items,
    shard_writer,
)
from fusemix._fileio import directory_lock, os_error, write_json_atomic
from fusemix._items import named_items
from fusemix._optional import progress_bar
from fusemix._store_format import read_manifest, shard_indices, storage_dtype
from fusemix.encoders.base import Encoder
from fusemix.store import MANIFEST, SHARD_DIR, LatentStore, StoreError, shard_file

SPEC = "extraction.json"
"""Name of the file holding an unfinished extraction's settings."""
SPEC_FORMAT = "fusemix.extraction"
_SPEC_VERSION = 1
_COMPARED = ("modality", "dtype", "encoder", "shard_size", "count")


def encoder_identity_of(
    encoder: Callable[..., Any], encoder_identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON identity :func:`extract_latents` records for ``encoder``.

    ``encoder_identity`` if given, else ``encoder.identity`` if that attribute
    is a dict, else ``{"name": "<module>.<qualified name>"}`` of the
    encoder's class (of the function itself for plain functions). The last is
    only as specific as the class: two checkpoints loaded into the same class
    look alike, so give real encoders an ``identity`` (model name, revision,
    pooling, ...).

    Example:
        >>> encoder_identity_of(torch.nn.Linear(2, 3))
        {'name': 'torch.nn.modules.linear.Linear'}
        >>> encoder_identity_of(len, {"model": "bge-large-en-v1.5"})
        {'model': 'bge-large-en-v1.5'}

    """
    if encoder_identity is not None:
        return check_json_object("encoder_identity", encoder_identity)
    identity = getattr(encoder, "identity", None)
    if isinstance(identity, Mapping):
        return check_json_object("encoder.identity", identity)
    named = encoder if inspect.isroutine(encoder) else type(encoder)
    return {"name": f"{named.__module__}.{named.__qualname__}"}


# ---------------------------------------------------------------------------------------------------------------------
# Settings of a run (extraction.json) and the checks against what is already in out_dir
# ---------------------------------------------------------------------------------------------------------------------


def _read_spec(root: Path) -> dict[str, Any] | None:
    file = root / SPEC
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise StoreError(
            f"{file}: unreadable extraction settings ({reason}); pass overwrite=True to start over"
        ) from err
    if (
        not isinstance(spec, dict)
        or spec.get("format") != SPEC_FORMAT
        or spec.get("version") != _SPEC_VERSION
        or not {*_COMPARED, "metadata"} <= spec.keys()
    ):
        raise StoreError(f"{file}: not a fusemix extraction settings file; pass overwrite=True to start over")
    return spec


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str] = _COMPARED) -> list[str]:
    """Settings among ``keys`` that differ between two runs; a ``None`` count (not yet known) matches any count."""
    problems = []
    for key in keys:
        if key == "count" and (old[key] is None or new[key] is None):
            continue
        if old[key] != new[key]:
            problems.append(f"{key} {json.dumps(old[key])} there, {json.dumps(new[key])} now")
    return problems


def _shard_layout(count: int, shard_size: int) -> list[int]:
    full, rest = divmod(count, shard_size)
    return [shard_size] * full + ([rest] if rest else [])


def _clear(root: Path) -> None:
    """Remove what a store or an extraction keeps in ``root`` (manifest first, so it stops counting as complete)."""
    try:
        for name in (MANIFEST, SPEC):
            with contextlib.suppress(FileNotFoundError):
                (root / name).unlink()
        if (root / SHARD_DIR).exists():
            shutil.rmtree(root / SHARD_DIR)
    except OSError as err:
        raise os_error(err, root, "remove the previous store for overwrite=True") from err


def _existing_store(root: Path, settings: Mapping[str, Any], overwrite: bool) -> LatentStore | None:
    """The complete store in ``root`` if it matches ``settings``; ``None`` if there is none (or it was cleared)."""
    if not (root / MANIFEST).exists():
        return None
    try:
        store = LatentStore.open(root)
    except StoreError as err:
        if overwrite:
            _clear(root)
            return None
        raise StoreError(f"{err}; pick another out_dir or pass overwrite=True to replace it") from err
    found = {"modality": store.modality, "dtype": store.dtype.name, "encoder": store.encoder, "count": len(store)}
    problems = _differences(found, settings, ("modality", "dtype", "encoder", "count"))
    layout = [shard.shape[0] for shard in store.shards]
    if not problems and layout != _shard_layout(len(store), settings["shard_size"]):
        problems.append(f"shard rows {layout} there, shard_size {settings['shard_size']} now")
    if not problems:
        return store
    if overwrite:
        _clear(root)
        return None
    raise ValueError(
        f"out_dir: {root} already holds a complete store made with other settings ({'; '.join(problems)}); "
        "pick another directory or pass overwrite=True to replace it"
    )


def _claim(root: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """Check ``root`` for an unfinished run with other settings, then record ``settings``; returns the record."""
    try:
        old = _read_spec(root)
    except StoreError:
        if not overwrite:
            raise
        _clear(root)
        old = None
    if old is None and shard_indices(root):
        if not overwrite:
            raise ValueError(
                f"out_dir: {root} holds shard files but no {SPEC}, so their settings are unknown; "
                "pick another directory or pass overwrite=True to discard them"
            )
        _clear(root)
    if old is not None and _differences(old, settings):
        if not overwrite and shard_indices(root):  # with no shard yet, a failed start's settings hold nothing
            raise ValueError(
                f"out_dir: {root} holds an unfinished extraction with other settings "
                f"({'; '.join(_differences(old, settings))}); pick another directory, rerun with the same settings "
                "to resume it, or pass overwrite=True to discard it"
            )
        _clear(root)
        old = None
    spec = {"format": SPEC_FORMAT, "version": _SPEC_VERSION, **settings}
    if spec["count"] is None and old is not None:
        spec["count"] = old["count"]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, root, "create the output directory") from err
    if spec != old:
        write_json_atomic(root / SPEC, spec, "write the extraction settings")
    return spec


def _try_finalize(root: Path, spec: Mapping[str, Any]) -> tuple[LatentStore | None, list[int]]:
    """Finalize the store if every shard is present; returns ``(store or None, missing shard indices)``."""
    if (root / MANIFEST).exists():
        return LatentStore.open(root), []
    count = spec["count"]
    layout = _shard_layout(count, spec["shard_size"])
    dim = existing_dim(root)
    if dim is None:
        return None, list(range(len(layout)))
    try:
        writer = shard_writer(root, spec, dim)
    except StoreError:
        if (root / MANIFEST).exists():  # another worker finalized it meanwhile
            return LatentStore.open(root), []
        raise
    entries = [writer.shard_entry(index) for index in range(len(layout))]
    missing = [index for index, entry in enumerate(entries) if entry is None]
    if missing:
        return None, missing
    for index, (entry, rows) in enumerate(zip(entries, layout)):
        if entry is not None and entry["rows"] != rows:
            raise StoreError(
                f"{root / shard_file(index)}: shard holds {entry['rows']} rows, expected {rows} for "
                f"{count} items in shards of {spec['shard_size']}; it was written by a different run"
            )
    store = writer.finalize(len(layout))
    with contextlib.suppress(FileNotFoundError):
        (root / SPEC).unlink()
    return store, []


def finalize_store(out_dir: str | os.PathLike[str]) -> LatentStore:
    """Finalize a store whose shards were written by several :func:`extract_latents` workers.

    Call it once all workers have exited; it is idempotent (a complete store
    is just opened).

    Args:
        out_dir: The workers' shared output directory.

    Returns:
        The complete store.

    Raises:
        FileNotFoundError: If ``out_dir`` holds neither a store nor an extraction.
        StoreError: If shards are still missing (names them), or the item
            count is not known yet (no worker has read a whole iterable).

    """
    root = Path(out_dir)
    if (root / MANIFEST).exists():
        return LatentStore.open(root)
    spec = _read_spec(root)
    if spec is None:
        raise FileNotFoundError(f"{root}: no {MANIFEST} and no {SPEC}; not a fusemix store or extraction directory")
    if spec["count"] is None:
        raise StoreError(
            f"{root}: the number of items is not known yet (no worker has read the whole iterable); "
            "rerun extract_latents to finish the extraction"
        )
    store, missing = _try_finalize(root, spec)
    if store is None:
        raise StoreError(
            f"{root}: cannot finalize: {len(missing)} shard(s) not written yet "
            f"(first: {[shard_file(i) for i in missing[:5]]}); run the remaining workers (or rerun "
            "extract_latents) first"
        )
    return store


def _is_sequence(items: object) -> bool:
    return hasattr(items, "__len__") and hasattr(items, "__getitem__") and not isinstance(items, IterableDataset)


class _Run:
    """One call of :func:`extract_latents` once its arguments are checked: reuse, check, resume or encode."""

    def __init__(
        self, encoder: Encoder, root: Path, settings: dict[str, Any], share: Share, *, progress: bool, overwrite: bool
    ) -> None:
        self.encoder = encoder
        self.root = root
        self.settings = settings
        self.share = share
        self.progress = progress
        self.overwrite = overwrite
        self.unchecked: list[int] = []

    def extract(self, items: Sequence[Any] | Iterable[Any]) -> LatentStore | None:
        """The complete store for ``items``: reused after checking its items, or resumed, or made.

        Raises:
            ItemsChanged: If a finished shard was computed from other items.

        """
        store = _existing_store(self.root, self.settings, self.overwrite)
        if store is not None:
            self._check_store(store, items)
            return store
        spec = _claim(self.root, self.settings, self.overwrite)
        count = self.settings["count"]
        with self._pass(spec, self._own_rows(count), "extract") as run:
            if count is not None:
                run.run_sequence(items, count)  # type: ignore[arg-type]
            else:
                count = run.run_iterable(items)
        self.unchecked += run.unchecked
        if count == 0:
            raise ValueError("items: is empty; nothing to extract")
        if spec["count"] is None:
            spec = {**spec, "count": count}
            write_json_atomic(self.root / SPEC, spec, "write the extraction settings")
        elif spec["count"] != count:
            raise ValueError(
                f"items: yielded {count} items, but an earlier run over the same out_dir saw {spec['count']}; "
                "the iterable must yield the same items on every run"
            )
        store, _ = _try_finalize(self.root, spec)
        return store

    def _own_rows(self, count: int | None) -> int | None:
        """How many of ``count`` items fall in this worker's shards (``None`` for an unknown count)."""
        if count is None:
            return None
        size, share = self.settings["shard_size"], self.share
        shards = range(share.worker_index, math.ceil(count / size), share.num_workers)
        return sum(min(size, count - k * size) for k in shards)

    @contextlib.contextmanager
    def _pass(
        self,
        spec: Mapping[str, Any],
        total: int | None,
        verb: str,
        complete: Sequence[Mapping[str, Any]] | None = None,
    ) -> Iterator[ExtractionPass]:
        """An :class:`ExtractionPass` of this worker's shards, with its progress bar of ``total`` items."""
        share = self.share
        worker = "" if share.num_workers == 1 else f" [{share.worker_index}/{share.num_workers}]"
        description = f"{verb} {spec['modality']}{worker}"
        with progress_bar(self.progress, user="extract_latents", total=total, unit="item", desc=description) as bar:
            yield ExtractionPass(self.encoder, self.root, spec, share, Progress(bar), complete)

    def _check_store(self, store: LatentStore, items: Sequence[Any] | Iterable[Any]) -> None:
        """Check ``items`` against the fingerprints a complete store records (this worker's shards; no encoding).

        Raises:
            ItemsChanged: If a shard records other items.
            ValueError: If an iterable yields another number of items.

        """
        entries = read_manifest(self.root)["shards"]
        items_id = self.share.items_id
        if items_id is not None or not any("items" in entry for entry in entries):  # nothing to read
            now = named_items(items_id) if items_id is not None else None
            size = self.settings["shard_size"]
            self.unchecked += [k for k, entry in enumerate(entries) if not same_items(k, entry, k * size, now)]
            return
        count = self.settings["count"]
        with self._pass(self.settings, self._own_rows(count), "check", entries) as run:
            if count is not None:
                run.run_sequence(items, count)  # type: ignore[arg-type]
            elif run.run_iterable(items) != len(store):
                raise ValueError(
                    f"items: yields fewer items than the {len(store)} of the complete store in out_dir {self.root}; "
                    "the iterable must yield the same items on a rerun, or use another out_dir"
                )
        self.unchecked += run.unchecked

    def warning(self) -> str | None:
        """What to warn about the shards whose items could not be checked (they record no fingerprint), if any."""
        if not self.unchecked:
            return None
        return (
            f"out_dir: {self.root}: {len(self.unchecked)} shard(s) (first: {shard_file(self.unchecked[0])}) record no "
            "fingerprint of their items (written by an earlier fusemix, or not by extract_latents), so these items "
            "could not be checked against them; pass overwrite=True to extract them again if the items changed"
        )


def _worker_lock(
    root: Path, num_workers: int, worker_index: int, overwrite: bool
) -> contextlib.AbstractContextManager[Any]:
    """This worker's lock on ``root`` while it may write there; none for a complete store that is only read.

    Workers of one extraction each hold their own lock file (``.fusemix-extract.lock``, or
    ``.fusemix-extract-<w>-of-<n>.lock``), so they share the directory while a second run as the same worker is
    refused. A complete store is not locked, so stores on read-only disks are reused.
    """
    if not overwrite and (root / MANIFEST).exists():
        return contextlib.nullcontext()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, root, "create the output directory") from err
    name = ".fusemix-extract.lock" if num_workers == 1 else f".fusemix-extract-{worker_index}-of-{num_workers}.lock"
    return directory_lock(root, name, argument="out_dir", activity="extraction")


def extract_latents(
    encoder: Encoder,
    items: Sequence[Any] | Iterable[Any],
    out_dir: str | os.PathLike[str],
    *,
    modality: str,
    batch_size: int = 256,
    shard_size: int = 65536,
    dtype: str = "float16",
    encoder_identity: Mapping[str, Any] | None = None,
    items_id: str | None = None,
    num_workers: int = 1,
    worker_index: int = 0,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> LatentStore | None:
    """Encode every item once with a frozen encoder and store the latents, resumably.

    See the module docstring for resuming, several workers and iterables.

    Args:
        encoder: Callable mapping a list of raw items to their latents, a
            floating torch tensor or numpy array. Shape: ``(len(batch), D)``.
            Called under ``torch.inference_mode()``; put it in eval mode and
            on its device yourself.
        items: A sized, indexable sequence (list, torch ``Dataset`` with
            ``__len__``) or a plain iterable yielding the same order on
            every run.
        out_dir: Store directory (created if needed).
        modality: Name of the modality, e.g. ``"image"``.
        batch_size: Items per encoder call (the last batch of a shard may be
            smaller).
        shard_size: Items per shard file. An opened store keeps one file
            descriptor per shard, so keep ``count / shard_size`` in the
            hundreds at most.
        dtype: Storage dtype, ``"float16"`` (default; refuses values that
            overflow it: float16 tops out at 65504, ``|x| >= 65520`` becomes
            inf; and rows it would flush toward zero: a row whose largest
            ``|x|`` is nonzero but below 6.1035e-05, float16's smallest normal
            number) or ``"float32"``.
        encoder_identity: JSON identity to record for the encoder; see
            :func:`encoder_identity_of` for the default.
        items_id: A name for these exact items (e.g. ``"coco-train2017-v2"``),
            recorded instead of a fingerprint of their content: the items
            are then not hashed, and a store or unfinished run is reused
            only under the same name, so change it whenever the items
            change. Needed for items fusemix cannot fingerprint (see the
            module docstring); ``None`` (default) hashes the items.
        num_workers: Number of workers sharing the extraction.
        worker_index: This worker's index in ``[0, num_workers)``.
        progress: Show a tqdm progress bar (without tqdm installed: a warning and no bar).
        metadata: Free JSON metadata to record in the manifest.
        overwrite: Discard a store or unfinished extraction in ``out_dir``
            made with other settings or from other items instead of raising.
            One made with the same settings and items is still reused or
            resumed.

    Returns:
        The complete store, or ``None`` for a worker that finished its share
        while other workers' shards are still missing.

    Raises:
        TypeError: If ``encoder`` is not callable, it returns something
            other than a floating tensor/array, or an item cannot be
            fingerprinted and no ``items_id`` is given (the message names
            the item and asks for ``items_id``).
        ValueError: If the arguments are invalid, ``items`` is empty,
            ``out_dir`` holds a store or unfinished run with other settings
            or computed from other items (the message names the first such
            shard and its item range), or an encoder output has the wrong
            shape, changes dim, holds NaN/Inf, or holds values float16
            storage cannot keep (see ``dtype``; the message names the item
            range and the first such item). Nothing is finalized.
        FileExistsError: If another process is extracting into ``out_dir`` as
            the same worker: each worker holds a lock file in ``out_dir``
            (``.fusemix-extract.lock``, or ``.fusemix-extract-<w>-of-<n>.lock``
            with several workers) while it runs. A complete store is only
            read (its items checked), under no lock.
        OSError: If a file cannot be written (the message names the path).

    Warns:
        UserWarning: If a store or run in ``out_dir`` records no item
            fingerprints (made by an earlier fusemix, or by
            :class:`~fusemix.store.LatentStoreWriter`): it is reused as
            before, unchecked.

    Example:
        >>> import tempfile
        >>> def encode(batch):  # any callable: a list of items in, (len(batch), D) latents out
        ...     return torch.tensor([[len(text), text.count(" ")] for text in batch], dtype=torch.float32)
        >>> texts = ["a dog", "a cat on a mat", "birds", "two red kites", "rain"]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = extract_latents(encode, texts, tmp, modality="text", batch_size=2, shard_size=3, progress=False)
        ...     print(store.shape, store.encoder["name"], store[[1, 4]].tolist())
        (5, 2) fusemix.extract.encode [[14.0, 4.0], [4.0, 0.0]]

    """
    if not callable(encoder):
        raise TypeError(
            f"encoder: expected a callable mapping a list of items to latents, got {type(encoder).__name__}"
        )
    if not isinstance(modality, str) or not modality:
        raise ValueError(f"modality: expected a non-empty string, got {modality!r}")
    if items_id is not None and (not isinstance(items_id, str) or not items_id):
        raise ValueError(f"items_id: expected a non-empty string naming the items, got {items_id!r}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("shard_size", shard_size)
    dtype_name = storage_dtype(dtype).name
    check_positive_int("num_workers", num_workers)
    if isinstance(worker_index, bool) or not isinstance(worker_index, int) or not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index: expected an int in [0, num_workers={num_workers}), got {worker_index!r}")
    if isinstance(items, (str, bytes, Mapping)):
        raise TypeError(f"items: expected a sequence or iterable of items, got {type(items).__name__}")
    sequence = _is_sequence(items)
    if not sequence and not isinstance(items, Iterable):
        raise TypeError(f"items: expected a sequence or iterable of items, got {type(items).__name__}")
    count = len(items) if sequence else None  # type: ignore[arg-type]
    if count == 0:
        raise ValueError("items: is empty; nothing to extract")
    settings = {
        "modality": modality,
        "dtype": dtype_name,
        "encoder": encoder_identity_of(encoder, encoder_identity),
        "shard_size": shard_size,
        "count": count,
        "metadata": check_json_object("metadata", {} if metadata is None else metadata),
    }
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"out_dir: {root} exists and is not a directory")
    share = Share(batch_size=batch_size, num_workers=num_workers, worker_index=worker_index, items_id=items_id)
    run = _Run(encoder, root, settings, share, progress=progress, overwrite=overwrite)
    with _worker_lock(root, num_workers, worker_index, overwrite):
        try:
            store = run.extract(items)
        except ItemsChanged as change:
            if not overwrite:
                raise ValueError(change.message(root)) from None
            _clear(root)
            if not sequence and iter(items) is items:
                raise ValueError(
                    f"{change.message(root)}. out_dir was cleared, as overwrite=True asks, but items is a one-shot "
                    "iterator that is partly read already: call extract_latents again with the items"
                ) from None
            store = run.extract(items)
    if (warning := run.warning()) is not None:
        warnings.warn(warning, UserWarning, stacklevel=2)
    return store


__all__ = ["SPEC", "encoder_identity_of", "extract_latents", "finalize_store"]
