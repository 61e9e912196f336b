"""The image-text datasets' common form: unique images, their captions, and the image of each caption.

Every reader of :mod:`replication.image_text_data` returns a
:class:`CaptionDataset`, filled through :func:`caption_builder`;
:func:`concat` joins them into the training union.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fusemix.images import ImageFiles, OnError

from .captions import CaptionedFiles, CaptionsBuilder, FileNames

MaxCaptions = int | None | Literal["protocol"]
"""``max_captions_per_image`` of the Karpathy readers: a number, ``None`` (all) or ``"protocol"``."""

MissingImages = Literal["raise", "skip"]
"""What a curated dataset's reader does with listed images missing on disk."""


@dataclass(frozen=True)
class CaptionDataset(CaptionedFiles):
    """Unique images, their captions, and the image of each caption.

    Attributes:
        name: Short label used in messages and in the keys of ``skipped``.
        image_paths: One path per unique image. Length: ``num_images``.
        captions: Caption strings. Length: ``num_captions``.
        caption_to_image: Index into ``image_paths`` of each caption, ``int64``.
            Shape: ``(num_captions,)``.
        skipped: Number of items left out while reading, by ``"name: reason"``.

    Every image has at least one caption, so the dataset can be ranked with
    ``fusemix.retrieval_metrics`` as is. The checks, :meth:`describe`,
    :meth:`without_images` and :func:`concat` are those of
    :class:`~replication.captions.CaptionedFiles`.

    Example:
        >>> ds = CaptionDataset("toy", [Path("a.jpg"), Path("b.jpg")], ["x", "y", "z"], np.array([0, 1, 1]))
        >>> ds.num_images, ds.num_captions, ds.caption_to_image.dtype
        (2, 3, dtype('int64'))
        >>> CaptionDataset("toy", [Path("a.jpg")], ["x"], np.array([0]), {"toy: no image": 2}).describe()
        'toy: 1 image(s), 1 caption(s); skipped: toy: no image = 2'

    """

    name: str
    image_paths: list[Path]
    captions: list[str]
    caption_to_image: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    names: ClassVar[FileNames] = FileNames("image", "image_paths", "caption_to_image")

    @property
    def num_images(self) -> int:
        """Number of unique images."""
        return self.num_files

    def image_files(
        self, *, transform: Callable[[np.ndarray], Any] | None = None, on_error: OnError = "raise"
    ) -> ImageFiles:
        """The images as a lazily loading sequence (see :class:`fusemix.images.ImageFiles`).

        Example:
            >>> CaptionDataset("toy", ["a.jpg"], ["x"], np.array([0])).image_files().settings
            {'mode': 'RGB', 'transform': None}

        """
        return ImageFiles(self.image_paths, transform=transform, on_error=on_error)

    def without_images(self, indices: Sequence[int] | np.ndarray, reason: str) -> tuple[CaptionDataset, np.ndarray]:
        """Drop images (and all their captions), e.g. those :class:`fusemix.images.ImageFiles` found unreadable.

        Args:
            indices: Image indices to drop. Shape: ``(K,)``.
            reason: Why, recorded in ``skipped`` with the number of dropped images.

        Returns:
            The smaller dataset, and the kept image indices of this one (to
            select their latents). Shape of the latter: ``(num_images - K,)``.

        Example:
            >>> ds = CaptionDataset("toy", ["a.jpg", "b.jpg"], ["x", "y", "z"], np.array([0, 1, 1]))
            >>> small, kept = ds.without_images([0], "unreadable")
            >>> small.captions, small.caption_to_image.tolist(), kept.tolist()
            (['y', 'z'], [0, 0], [1])

        """
        return self.without_files(indices, reason)


def concat(datasets: Sequence[CaptionDataset], *, name: str | None = None) -> CaptionDataset:
    """Join datasets into one (the training union): images and captions appended, indices offset.

    Caption ``j`` of the ``k``-th dataset points to image
    ``offset_k + caption_to_image_k[j]``, with ``offset_k`` the number of images
    of the datasets before it. Images are not de-duplicated across datasets.

    Args:
        datasets: At least one dataset.
        name: Name of the result; defaults to the names joined with ``"+"``.

    Returns:
        The union; ``skipped`` counts are summed by key.

    Example:
        >>> a = CaptionDataset("a", ["1.jpg"], ["x", "y"], np.array([0, 0]))
        >>> b = CaptionDataset("b", ["2.jpg", "3.jpg"], ["z", "w"], np.array([1, 0]))
        >>> both = concat([a, b])
        >>> both.name, both.caption_to_image.tolist()
        ('a+b', [0, 0, 2, 1])

    """
    return CaptionDataset.concat(datasets, name=name)


def caption_builder(name: str) -> CaptionsBuilder[CaptionDataset]:
    """The builder a reader fills with the images and captions of the dataset ``name``."""
    return CaptionsBuilder(CaptionDataset, name)
