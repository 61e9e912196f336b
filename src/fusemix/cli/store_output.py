"""What ``fusemix extract`` and ``fusemix embed`` share about their output: a store in ``--out`` and ``items.jsonl``.

Both write a latent store to ``--out`` with ``items.jsonl`` next to it (line
``i``: the item of row ``i``, as a JSON string), refuse a rerun on other items
unless ``--overwrite`` (which clears the old store), record the items before
the first shard so that a changed input is caught even after an interruption,
and say when a rerun found the store already complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusemix._fileio import write_text_atomic
from fusemix.cli.common import ITEMS_FILE, CommandError, positive_int
from fusemix.extract import SPEC
from fusemix.store import MANIFEST, SHARD_DIR, LatentStore, shard_indices

LIBRARY_NAMES = {
    "items": "--input",
    "out_dir": "--out",
    "overwrite": "--overwrite",
    "shard_size": "--shard-size",
    "batch_size": "--batch-size",
    "dtype": "--dtype",
}
"""The arguments of :func:`~fusemix.extract.extract_latents` (which ``embed_store`` runs) that its errors name, and
the flags of ``fusemix extract`` and ``fusemix embed`` that set them."""


def add_output_arguments(group: argparse._ActionsContainer, *, what: str) -> None:
    """Add ``--out``, ``--batch-size``, ``--shard-size``, ``--dtype``, ``--overwrite`` and ``--no-progress``.

    Args:
        group: The parser's group of output options.
        what: What the store holds, for the help (``"latents"``, ``"embeddings"``).

    """
    group.add_argument("--out", type=Path, required=True, metavar="DIR", help="store folder (created if needed)")
    group.add_argument(
        "--batch-size", type=positive_int, default=256, metavar="N", help="items per encoder call (default: 256)"
    )
    group.add_argument(
        "--shard-size", type=positive_int, default=65536, metavar="N", help="rows per shard file (default: 65536)"
    )
    group.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help=f"storage dtype of the {what} (default: float16)",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store (or unfinished run) in --out made from other items or settings",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def items_text(items: Sequence[str]) -> str:
    r"""The content of ``items.jsonl``: one JSON string per line.

    Example:
        >>> items_text(["a dog", "images/1.png"])
        '"a dog"\n"images/1.png"\n'

    """
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _remove_store(root: Path) -> None:
    """Delete what a store or an extraction keeps in ``root`` (manifest first, so it stops counting as complete)."""
    for name in (MANIFEST, SPEC, ITEMS_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    shutil.rmtree(root / SHARD_DIR, ignore_errors=True)


def _check_items_file(root: Path, text: str, overwrite: bool, write_items: bool) -> None:
    """Refuse (or with ``overwrite`` clear) a store in ``root`` whose ``items.jsonl`` lists other items.

    ``items.jsonl`` alone, without a manifest or any shard (a run that failed
    before its first shard), holds no latents: the process that writes the
    items replaces it, the others (torchrun workers) leave it to that one.
    """
    file = root / ITEMS_FILE
    try:
        old = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    if old == text:
        return
    if overwrite or not ((root / MANIFEST).exists() or shard_indices(root)):
        if overwrite or write_items:
            _remove_store(root)
        return
    old_lines, new_lines = old.splitlines(), text.splitlines()
    row = next((i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b), min(len(old_lines), len(new_lines)))
    there = old_lines[row] if row < len(old_lines) else "(no row)"
    now = new_lines[row] if row < len(new_lines) else "(no row)"
    raise CommandError(
        f"--out: {root} holds latents of other items ({len(old_lines)} there, {len(new_lines)} now; row {row}: "
        f"{there} there, {now} now); pass --overwrite to replace them, or pick another --out"
    )


def _manifest_stamp(root: Path) -> tuple[int, int] | None:
    """Inode and modification time of ``root``'s manifest (a rewrite changes them), ``None`` without one."""
    try:
        info = (root / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


@dataclass(frozen=True)
class StoreOutput:
    """A store being written to ``root`` from ``items``, as found before writing.

    Attributes:
        root: The ``--out`` folder.
        text: The content of its ``items.jsonl``.
        stamp: The manifest's inode and modification time before the run;
            ``None`` when the store was not complete.
        write_items: Whether this process writes ``items.jsonl`` (under
            torchrun, only worker 0 does).

    """

    root: Path
    text: str
    stamp: tuple[int, int] | None
    write_items: bool

    @classmethod
    def start(cls, root: Path, items: Sequence[str], *, overwrite: bool, write_items: bool) -> StoreOutput:
        """Check ``root`` against ``items`` (clearing it with ``overwrite``) and record them before any shard.

        Raises:
            CommandError: If ``root`` holds a store of other items and ``overwrite`` is not set.

        """
        text = items_text(items)
        _check_items_file(root, text, overwrite, write_items)
        stamp = _manifest_stamp(root)
        # Record the items before the first shard, to catch changed inputs after an interruption. With shards
        # already there and no items.jsonl (lost), the shards' own item fingerprints decide, and the file is
        # written once the store is complete: a refused run must not record its items over the old ones.
        if write_items and stamp is None and not shard_indices(root):
            root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(root / ITEMS_FILE, text)
        return cls(root, text, stamp, write_items)

    def finish(self, store: LatentStore, what: str) -> None:
        """Write ``items.jsonl`` if it is still missing and print what the store holds, and where.

        Args:
            store: The complete store.
            what: What its rows are, e.g. ``"latents"``.

        """
        if self.write_items and not (self.root / ITEMS_FILE).is_file():
            write_text_atomic(self.root / ITEMS_FILE, self.text)
        unchanged = self.stamp is not None and self.stamp == _manifest_stamp(self.root)
        note = " (already complete: nothing to do)" if unchanged else ""
        print(f"{len(store)} {store.modality} {what} of dim {store.dim} ({store.dtype.name}) in {self.root}{note}")
        print(f"row i of the store is line i + 1 of {self.root / ITEMS_FILE}")
