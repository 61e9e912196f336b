"""The FuseMix authors' input preprocessing, for reproducing their latents with your own encoders.

The authors' release (a LAVIS fork) prepares every input before its frozen
encoder sees it; latents extracted without these steps are not theirs:

- :func:`blip_caption`: LAVIS's ``blip_caption`` text processor, applied to
  every caption before BGE or E5 (E5 then prepends ``"query: "``).
- :class:`ResizeCenterCrop`: the torchvision evaluation transform of their
  DINOv2 processor (``Resize(224)`` of the short side with bicubic
  interpolation, ``CenterCrop(224)``, scaling to ``[0, 1]``, ImageNet
  normalisation), on Pillow and torch alone (torchvision is not needed).
  :data:`DINOV2_EVAL_TRANSFORM` is that transform with the authors' settings.

Both are written from the behaviour of the originals and tested against
them: the caption processor on hand-written cases, the image transform
against torchvision's own output on real images (equal to within float32
rounding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fusemix._checks import check_choice, check_positive_int
from fusemix._optional import require

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet (RGB), the normalisation of DINOv2 and most ImageNet-trained models."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet (RGB)."""

Interpolation = Literal["nearest", "bilinear", "bicubic"]
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")

_CAPTION_PUNCTUATION = re.compile(r'[.!"()*#:;~]')
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def blip_caption(text: str, max_words: int = 50) -> str:
    r"""Clean a caption the way LAVIS's ``blip_caption`` processor does (the FuseMix authors' text preprocessing).

    In order: lower-case; replace each of ``. ! " ( ) * # : ; ~`` with a
    space; replace every run of two or more whitespace characters with one
    space; strip trailing newlines, then leading and trailing spaces; split
    on single spaces and keep the first ``max_words`` pieces.

    Other characters stay: commas, apostrophes, hyphens, digits, accents. As
    in the original, a *single* tab or newline is not a run and stays where
    it is (``"a\tb"`` keeps its tab, ``"x\t"`` its trailing tab), and only
    spaces count as word separators for ``max_words``.

    Args:
        text: The raw caption.
        max_words: Words kept (LAVIS's default, 50, is what the authors used).

    Returns:
        The cleaned caption (possibly empty, e.g. for ``"..."``).

    Raises:
        TypeError: If ``text`` is not a ``str`` or ``max_words`` not an int.
        ValueError: If ``max_words < 1``.

    Example:
        >>> blip_caption('A man (left) rides a horse.  "Wow!"')
        'a man left rides a horse wow'
        >>> blip_caption("one two three four", max_words=2)
        'one two'

    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    check_positive_int("max_words", max_words)
    cleaned = _CAPTION_PUNCTUATION.sub(" ", text.lower())
    cleaned = _WHITESPACE_RUN.sub(" ", cleaned).rstrip("\n").strip(" ")
    return " ".join(cleaned.split(" ")[:max_words])


def _check_channels(name: str, values: tuple[float, ...], positive: bool) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(np.isfinite(values)) or (positive and min(values) <= 0):
        bound = "finite and > 0" if positive else "finite"
        raise ValueError(f"{name}: expected three {bound} per-channel values (R, G, B), got {values}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Resize the short side, crop the centre, scale to ``[0, 1]`` and normalise: torchvision's evaluation transform.

    The same steps, and the same numbers, as torchvision's
    ``Compose([Resize(resize, interpolation), CenterCrop(size), ToTensor(),
    Normalize(mean, std)])`` on a Pillow image:

    - the short side becomes ``resize`` and the long side
      ``int(resize * long / short)`` (truncated), with Pillow's
      ``Image.resize`` and its antialiasing filter (no resize when the image
      already has that size);
    - the crop starts at ``int(round((side - size) / 2))`` on each axis
      (Python's rounding: halves to even);
    - pixels become ``float32(value) / 255``, then ``(x - mean) / std`` per
      channel, in float32.

    Images are converted to RGB with Pillow's ``convert("RGB")`` first
    (alpha dropped, as LAVIS's image loaders do).

    Args:
        size: Side of the square crop (DINOv2: 224).
        resize: Short side after resizing; ``None`` means ``size``. Must be
            at least ``size``.
        interpolation: ``"bicubic"`` (the authors' DINOv2 transform),
            ``"bilinear"`` or ``"nearest"``.
        mean: Per-channel mean subtracted after scaling (RGB).
        std: Per-channel standard deviation divided by (RGB).

    Attributes:
        identity: JSON-serialisable description of the transform, for an
            encoder's or an extraction's identity.

    Shape:
        - Input: a Pillow image, or ``uint8`` pixels of shape ``(H, W, 3)``
          or ``(H, W)``.
        - Output: ``(3, size, size)``, ``float32``.

    Example:
        >>> pixels = np.zeros((300, 400, 3), dtype=np.uint8)
        >>> DINOV2_EVAL_TRANSFORM(pixels).shape
        torch.Size([3, 224, 224])

    """

    size: int = 224
    resize: int | None = None
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        check_positive_int("size", self.size)
        if self.resize is not None:
            check_positive_int("resize", self.resize)
            if self.resize < self.size:
                raise ValueError(f"resize: {self.resize} is smaller than the crop size {self.size}")
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        object.__setattr__(self, "mean", _check_channels("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _check_channels("std", self.std, positive=True))

    @property
    def identity(self) -> dict[str, Any]:
        """What the transform does, as JSON (recorded with the latents it produced)."""
        return {
            "transform": "resize-center-crop",
            "resize": self.resize if self.resize is not None else self.size,
            "size": self.size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step, torchvision's rule.

        Example:
            >>> DINOV2_EVAL_TRANSFORM.resized_size(640, 480)
            (298, 224)

        """
        short_side = self.resize if self.resize is not None else self.size
        if width <= height:
            return short_side, int(short_side * height / width)
        return int(short_side * width / height), short_side

    def __call__(self, image: Any) -> Tensor:
        """Transform one image.

        Args:
            image: A Pillow image, or ``uint8`` pixels. Shape: ``(H, W, 3)`` or ``(H, W)``.

        Returns:
            Normalised pixels. Shape: ``(3, size, size)``, ``float32``.

        Raises:
            TypeError: If ``image`` is neither a Pillow image nor a ``uint8`` array.
            ValueError: If the array has another shape, or the image is empty.

        """
        pil = require("PIL.Image", extra="hf", user="ResizeCenterCrop")
        image = _as_pil(pil, image)
        width, height = image.size
        new_size = self.resized_size(width, height)
        if new_size != (width, height):
            filters = {"nearest": pil.NEAREST, "bilinear": pil.BILINEAR, "bicubic": pil.BICUBIC}
            image = image.resize(new_size, filters[self.interpolation])
        left = int(round((new_size[0] - self.size) / 2.0))
        top = int(round((new_size[1] - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        scaled = pixels.to(torch.float32).div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return scaled.sub(mean).div(std).contiguous()


def _as_pil(pil: Any, image: Any) -> Any:
    """``image`` as an RGB Pillow image (arrays: ``uint8`` ``(H, W, 3)`` or ``(H, W)``)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image: expected uint8 pixels, got dtype {image.dtype}")
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
            raise ValueError(f"image: expected an (H, W, 3) or (H, W) array, got shape {image.shape}")
        image = pil.fromarray(np.ascontiguousarray(image))
    if not isinstance(image, pil.Image):
        raise TypeError(f"image: expected a PIL image or a uint8 numpy array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image: is empty ({image.width}x{image.height})")
    return image if image.mode == "RGB" else image.convert("RGB")


DINOV2_EVAL_TRANSFORM = ResizeCenterCrop(224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
"""The FuseMix authors' DINOv2 evaluation transform (``lavis/processors/dinov2_processors.py``): short side to 224
(bicubic), centre crop 224, ImageNet mean and std. The Hugging Face DINOv2 image processor differs: it resizes the
short side to 256 before the 224 crop."""

__all__ = ["DINOV2_EVAL_TRANSFORM", "IMAGENET_MEAN", "IMAGENET_STD", "ResizeCenterCrop", "blip_caption"]
