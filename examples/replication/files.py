"""Files and folders a replication reader needs: read them, raise when one is missing, list what is missing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def require_file(path: Path, what: str, source: str) -> Path:
    """Return ``path`` if it is a file, else raise ``FileNotFoundError`` saying what it is and where to get it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found (get it from {source})")
    return path


def require_dir(path: Path, what: str, source: str) -> Path:
    """Return ``path`` if it is a folder, else raise ``FileNotFoundError`` saying what it is and where to get it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found (get it from {source})")
    return path


def is_nonempty_dir(path: Path) -> bool:
    """Whether ``path`` is a folder holding at least one entry (read without listing it all)."""
    if not path.is_dir():
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is not None


def missing_file(component: str, path: Path, what: str, source: str) -> list[str]:
    """One line of a missing-data report (what, where, where to get it) when ``path`` is not a file, else nothing.

    Example:
        >>> missing_file("coco", Path("/nowhere/dataset_coco.json"), "Karpathy split file", "karpathy.zip")
        ['coco: /nowhere/dataset_coco.json (Karpathy split file) is missing; get it from karpathy.zip']
    """
    return [] if path.is_file() else [f"{component}: {path} ({what}) is missing; get it from {source}"]


def missing_dir(component: str, path: Path, what: str, source: str) -> list[str]:
    """One line when ``path`` is not a folder or is empty, else nothing."""
    if is_nonempty_dir(path):
        return []
    state = "is empty" if path.is_dir() else "is missing"
    return [f"{component}: {path}/ ({what}) {state}; get it from {source}"]


def file_progress(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """Wrap ``items`` in a tqdm bar when tqdm is installed (shown on terminals only)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, disable=None, unit="file")


def read_json(path: Path, what: str, source: str) -> Any:
    """The JSON value in ``path`` (``FileNotFoundError`` saying where to get it; ``ValueError`` for bad JSON)."""
    require_file(path, what, source)
    with path.open(encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def json_field(record: Any, key: str, where: str) -> Any:
    """``record[key]`` of a JSON object, else a ``ValueError`` starting with ``where``."""
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: expected an object with a {key!r} field, got {str(record)[:80]}")
    return record[key]


def list_files(folder: Path) -> set[str]:
    """Names of the plain files directly inside ``folder`` (empty if it does not exist)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries if entry.is_file()}
