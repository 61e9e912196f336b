"""Image files to pixels for the image encoders: decode, convert to RGB, optionally transform.

:func:`load_image` decodes one file into ``uint8`` RGB pixels (Pillow's
``convert("RGB")``, as LAVIS does: alpha dropped, EXIF orientation not
applied). :class:`ImageFiles` does that lazily for a list of files (a
sequence for :func:`~fusemix.extract.extract_latents`), the image
counterpart of :class:`fusemix.audio.AudioFiles`; with a ``transform``
(e.g. :data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM`) each item comes out
ready for the model instead.

**Bad files never shift rows.** With ``on_error="skip"`` an unreadable file
comes out as ``None`` (the reason in :attr:`ImageFiles.failed`, and a
warning); an encoder refuses ``None``, so an extraction stops instead of
misaligning rows. Drop such files from the dataset (with their captions)
before extracting.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from fusemix._checks import check_choice
from fusemix._optional import require

OnError = Literal["raise", "skip"]


class ImageFileError(OSError):
    """An image file exists but cannot be decoded; the message starts with its path."""


def load_image(path: str | PathLike[str]) -> np.ndarray:
    """Decode an image file to RGB pixels.

    Grey, palette, CMYK and alpha images are converted with Pillow's
    ``convert("RGB")`` (alpha dropped), as LAVIS does; EXIF orientation is not
    applied.

    Args:
        path: The image file.

    Returns:
        ``uint8`` pixels. Shape: ``(H, W, 3)``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ImageFileError: The file is not a decodable image (corrupt,
            truncated, unknown format, or too large for Pillow's safety limit).
        ImportError: Pillow is not installed.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("L", (4, 2), 200).save(f"{tmp}/grey.png")
        ...     pixels = load_image(f"{tmp}/grey.png")
        >>> pixels.shape, pixels.dtype, int(pixels[0, 0, 2])
        ((2, 4, 3), dtype('uint8'), 200)

    """
    pil = require("PIL.Image", extra="hf", user="load_image")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with pil.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, pil.DecompressionBombError) as exc:
        raise ImageFileError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return np.array(rgb, dtype=np.uint8)


class ImageFiles(Sequence[Any]):
    """Images of a list of files, decoded only when indexed (for resumable extraction by index).

    Each item is :func:`load_image` of its path, passed through ``transform``
    when one is given.

    Args:
        paths: Image files. Length: ``N``.
        transform: Applied to each item's ``uint8`` pixels, e.g.
            :data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM` (items are then
            ``(3, 224, 224)`` tensors); ``None`` returns the pixels.
        on_error: ``"raise"`` (default): a missing or undecodable file raises
            (``FileNotFoundError`` / :class:`ImageFileError`, naming it).
            ``"skip"``: indexing it returns ``None``, records the reason in
            :attr:`failed` and warns.

    Attributes:
        paths: The image files.
        failed: Index -> reason, for files that failed so far (``on_error="skip"``).
        settings: The loading settings, JSON-serialisable (for the extraction's metadata).

    Shape:
        - Item: ``(H, W, 3)`` ``uint8`` pixels, or what ``transform`` returns.

    Example:
        >>> files = ImageFiles(["missing.jpg"], on_error="skip")
        >>> with warnings.catch_warnings(record=True):
        ...     item = files[0]
        >>> len(files), item, list(files.failed)
        (1, None, [0])

    """

    def __init__(
        self,
        paths: Sequence[str | PathLike[str]],
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if isinstance(paths, (str, PathLike)):
            raise TypeError("paths: expected a sequence of paths, got a single path")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable or None, got {type(transform).__name__}")
        check_choice("on_error", on_error, ("raise", "skip"))
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.on_error: OnError = on_error
        self.failed: dict[int, str] = {}
        described = getattr(transform, "identity", None) if transform is not None else None
        if transform is not None and not isinstance(described, dict):
            described = {"callable": f"{type(transform).__module__}.{type(transform).__qualname__}"}
        self.settings: dict[str, Any] = {"mode": "RGB", "transform": described}

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> ImageFiles: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ImageFiles(self.paths[index], transform=self.transform, on_error=self.on_error)
        if isinstance(index, bool):
            raise TypeError("index: expected an int or a slice, got bool")
        try:
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"index: expected an int or a slice, got {type(index).__name__}") from None
        if not -len(self.paths) <= position < len(self.paths):
            raise IndexError(f"index: {position} is out of range for {len(self.paths)} image(s)")
        position %= len(self.paths)
        try:
            pixels = load_image(self.paths[position])
        except (FileNotFoundError, ImageFileError) as exc:
            if self.on_error == "raise":
                raise
            self.failed[position] = str(exc)
            warnings.warn(f"{exc}; item {position} is None", stacklevel=2)
            return None
        return pixels if self.transform is None else self.transform(pixels)


__all__ = ["ImageFileError", "ImageFiles", "load_image"]
