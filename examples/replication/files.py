"""Files and folders a replication reader needs: raise when one is missing, or list what is missing up front."""

from __future__ import annotations

import os
from pathlib import Path


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
