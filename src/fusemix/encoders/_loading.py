"""Quiet model loading: what ``progress=False`` means while an adapter loads its model.

``transformers`` draws a "Loading weights" bar for every ``from_pretrained``
(local directories included), ``huggingface_hub`` draws download bars, and
the two and ``sentence-transformers`` log at INFO level when asked to. With
``progress=False`` an adapter loads its model inside
:func:`model_loading`, which turns all of that off for the block and puts
every switch back afterwards. Warnings and errors still show.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARY_LOGGERS: tuple[str, ...] = ("transformers", "sentence_transformers", "huggingface_hub")
"""The loggers raised to WARNING while a model loads quietly."""

# huggingface_hub warns when its environment variable HF_HUB_DISABLE_PROGRESS_BARS overrides a switch; the
# variable wins either way, so the warning says nothing the caller can act on here.
_OVERRIDDEN_SWITCH = r"Cannot (dis|en)able progress bars"


@contextmanager
def model_loading(progress: bool) -> Iterator[None]:
    """Load a model inside the block; with ``progress=False``, without the libraries' bars and INFO logs.

    With ``progress=False``, for the block: ``transformers``' progress bars
    (``transformers.utils.logging.disable_progress_bar()``),
    ``huggingface_hub``'s (``huggingface_hub.utils.disable_progress_bars()``)
    and the INFO and DEBUG records of the :data:`LIBRARY_LOGGERS`. Afterwards
    the ``transformers`` switch, the global ``huggingface_hub`` switch and
    each logger's own level are what they were (``huggingface_hub``'s
    per-group switches, which ``transformers`` resets whenever it turns bars
    on or off, are not restored). The switches are process-wide: a model
    loaded at the same time in another thread is quiet too.

    Args:
        progress: ``True`` leaves everything as it is.

    Yields:
        Nothing; load the model in the block.

    Example:
        >>> with model_loading(progress=False):
        ...     pass  # e.g. transformers.AutoModel.from_pretrained(path)

    """
    if progress:
        yield
        return
    with _without_library_bars(), _without_info_logs(LIBRARY_LOGGERS):
        yield


@contextmanager
def _without_library_bars() -> Iterator[None]:
    """Turn ``transformers``' and ``huggingface_hub``'s progress bars off for the block, then restore both switches.

    ``transformers`` is left alone when it is not installed (a Hub download
    needs only ``huggingface_hub``).
    """
    transformers_logging = (
        importlib.import_module("transformers.utils.logging") if importlib.util.find_spec("transformers") else None
    )
    hub = importlib.import_module("huggingface_hub.utils")
    transformers_bars = transformers_logging is not None and transformers_logging.is_progress_bar_enabled()
    hub_bars = not hub.are_progress_bars_disabled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_OVERRIDDEN_SWITCH)
        if transformers_logging is not None:
            transformers_logging.disable_progress_bar()
        hub.disable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_OVERRIDDEN_SWITCH)
            if transformers_logging is not None and transformers_bars:
                transformers_logging.enable_progress_bar()
            (hub.enable_progress_bars if hub_bars else hub.disable_progress_bars)()


@contextmanager
def _without_info_logs(names: tuple[str, ...]) -> Iterator[None]:
    """Raise each named logger to WARNING for the block (when it would show less), then restore its own level."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
