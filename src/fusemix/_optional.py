"""Optional dependencies: imported when first needed, with one way of saying how to install them.

- :func:`require` imports a module of an extra (``safetensors``,
  ``transformers``, ``soundfile``...) or raises an ``ImportError`` that names
  who needs it and the ``pip install "fusemix[<extra>]"`` that provides it.
- :func:`progress_bar` is a tqdm bar when one is asked for. **Policy when
  tqdm is missing:** the work goes on without a bar and a ``UserWarning``
  says so (``"<user>: no progress bar because tqdm is not installed ..."``);
  Python's default warning filter shows it once per place that asks.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any


def install_hint(extra: str) -> str:
    """The command that installs a fusemix extra.

    Example:
        >>> install_hint("train")
        'pip install "fusemix[train]"'

    """
    return f'pip install "fusemix[{extra}]"'


def require(module: str, *, extra: str, user: str) -> ModuleType:
    """Import an optional dependency or raise an ``ImportError`` that says how to install it.

    Args:
        module: Module to import, e.g. ``"transformers"`` or ``"safetensors.torch"``.
        extra: The fusemix extra that provides it, e.g. ``"hf"``.
        user: Who needs it, for the message (a class, a function, or what is
            being done, e.g. ``"reading audio files"``).

    Returns:
        The imported module.

    Raises:
        ImportError: If the module cannot be imported, or its import fails
            with an ``OSError`` (e.g. soundfile without libsndfile).

    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as err:
        raise ImportError(
            f"{user} needs the optional dependency {module!r} ({err}); install it with: {install_hint(extra)}"
        ) from err


@contextmanager
def progress_bar(enabled: bool, *, user: str, **options: Any) -> Iterator[Any]:
    """A ``tqdm.auto`` bar for the block, closed at its end; ``None`` when disabled or tqdm is missing.

    Args:
        enabled: Whether a bar is wanted.
        user: Who shows the bar, for the warning when tqdm is missing.
        **options: Passed to ``tqdm`` (``total``, ``desc``, ``unit``, ...).

    Yields:
        The bar, or ``None``.

    Example:
        >>> with progress_bar(False, user="example", total=3) as bar:
        ...     print(bar)
        None

    """
    bar = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            warnings.warn(
                f"{user}: no progress bar because tqdm is not installed ({install_hint('train')})", stacklevel=3
            )
        else:
            bar = tqdm(**options)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
