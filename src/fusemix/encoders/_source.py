"""Where a pretrained model comes from, and a cheap fingerprint of its files.

A model named by a local directory is identified by the directory's name and a
fingerprint of its files; a model named by a Hugging Face Hub id is identified
by the id and, when the download is in the local Hub cache, the commit it
resolved to. Neither depends on where the directory lives, so moving a
checkpoint does not invalidate latents extracted with it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Files that change what a checkpoint computes: configs, tokenizer vocabularies, PyTorch weights.
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".pt", ".pth", ".tiktoken")
_CHUNK = 1 << 20


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """Return a cheap, deterministic fingerprint of a weight file or a model directory.

    Files up to 2 MiB are hashed whole; larger files contribute their size and
    their first and last MiB (for safetensors the first MiB holds the tensor
    index and the first weights). So the fingerprint changes with any edit of
    a config or tokenizer file and with any fine-tune, at a cost independent
    of the model's size. It is not a cryptographic digest of every weight.

    A directory is walked recursively; only configuration, vocabulary and
    PyTorch weight files (``.json .txt .model .safetensors .bin .pt .pth
    .tiktoken``) count, hidden entries and ``__pycache__`` are skipped, and the
    relative paths enter the hash, so the fingerprint does not depend on where
    the directory lives. A single file counts whatever its suffix.

    Args:
        path: A weight file or a model directory.

    Returns:
        A 64-character hex SHA-256 digest.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is a directory without any counted file.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (pathlib.Path(d) / "config.json").write_text('{"hidden_size": 8}')
        ...     len(fingerprint_path(d))
        64

    """
    root = Path(path)
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        files = [
            (file.relative_to(root).as_posix(), file)
            for file in sorted(root.rglob("*"))
            if file.is_file()
            and file.suffix in _FINGERPRINT_SUFFIXES
            and not any(part.startswith(".") or part == "__pycache__" for part in file.relative_to(root).parts)
        ]
        if not files:
            raise ValueError(f"path: {root} contains no config, vocabulary or weight file to fingerprint")
    else:
        raise FileNotFoundError(f"path: no file or directory at {root}")
    digest = hashlib.sha256()
    for relative, file in sorted(files):
        size = file.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= 2 * _CHUNK:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_CHUNK))
                handle.seek(size - _CHUNK)
                digest.update(handle.read(_CHUNK))
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """A pretrained model given as a local directory or a Hugging Face Hub id.

    Attributes:
        location: What to pass to ``from_pretrained``: an absolute directory or a Hub id.
        is_local: Whether ``location`` is a local directory.

    """

    location: str
    is_local: bool

    def identity(self) -> dict[str, Any]:
        """Describe the weights: ``{"model", "fingerprint"}`` locally, ``{"model", "revision"}`` on the Hub.

        Call it after loading, so that a Hub download is in the cache; the
        revision is ``None`` when the cache does not tell it.
        """
        if self.is_local:
            return {"model": Path(self.location).name, "fingerprint": fingerprint_path(self.location)}
        return {"model": self.location, "revision": _hub_revision(self.location)}


def resolve_source(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Classify ``name_or_path`` as a local model directory or a Hub id.

    Raises:
        TypeError: If it is neither a ``str`` nor a path.
        ValueError: If it is empty.
        FileNotFoundError: If it is written as a path (a path object, or a
            string starting with ``/``, ``./``, ``../`` or ``~``) but no such
            directory exists.

    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a Hub id or a directory, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if not text:
        raise ValueError("name_or_path: expected a Hub id or a directory, got an empty string")
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(location=str(path.resolve()), is_local=True)
    looks_like_path = isinstance(name_or_path, os.PathLike) or text.startswith(("/", "./", "../", "~", "\\"))
    if looks_like_path or path.exists():
        raise FileNotFoundError(f"name_or_path: no model directory at {path}")
    return ModelSource(location=text, is_local=False)


def _hub_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo_id, "config.json")
    return Path(cached).parent.name if isinstance(cached, str) else None
