"""Captioned media files: unique files (images or audio clips), their captions, and the file of each caption.

:class:`CaptionedFiles` holds what the image-text and the audio-text readers
share: the checks of the caption-to-file index, :meth:`~CaptionedFiles.describe`,
dropping files with their captions, joining datasets, and the
:class:`CaptionsBuilder` the readers fill while they walk an annotation file.
Each kind of dataset is a frozen dataclass deriving from it with its own
field names (``image_paths`` / ``caption_to_image`` for
:class:`~replication.image_text_data.CaptionDataset`, ``audio_paths`` /
``caption_to_audio`` for :class:`~replication.audio_text_data.AudioCaptionDataset`)
and its own way of loading the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import numpy as np

Dataset = TypeVar("Dataset", bound="CaptionedFiles")


@dataclass(frozen=True)
class FileNames:
    """How a kind of dataset names its files, in its fields and messages.

    Attributes:
        singular: One file, e.g. ``"image"`` or ``"clip"``.
        paths: The field holding the unique files, e.g. ``"image_paths"``.
        index: The field holding each caption's file index, e.g. ``"caption_to_image"``.
    """

    singular: str
    paths: str
    index: str


class CaptionedFiles:
    """Base of the caption datasets: unique files, captions, and the file of each caption.

    A subclass is a frozen dataclass with the fields ``name``, its
    ``names.paths`` field (one path per unique file), ``captions``, its
    ``names.index`` field (the file index of each caption, ``int64``, shape
    ``(num_captions,)``) and ``skipped`` (items left out while reading, by
    ``"name: reason"``), in that order. Every file has at least one caption,
    so the dataset can be ranked with ``fusemix.retrieval_metrics`` as is.
    """

    names: ClassVar[FileNames]
    name: str
    captions: list[str]
    skipped: dict[str, int]

    def __post_init__(self) -> None:
        index_name, paths_name, singular = self.names.index, self.names.paths, self.names.singular
        index = np.asarray(getattr(self, index_name))
        if index.ndim != 1:
            raise ValueError(f"{index_name}: expected a 1-D array, got shape {index.shape}")
        if index.size and not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"{index_name}: expected integer {singular} indices, got dtype {index.dtype}")
        index = index.astype(np.int64, copy=False)
        paths = [Path(p) for p in getattr(self, paths_name)]
        object.__setattr__(self, index_name, index)
        object.__setattr__(self, paths_name, paths)
        if index.size != len(self.captions):
            raise ValueError(f"{index_name}: has {index.size} entries but there are {len(self.captions)} captions")
        if index.size and (int(index.min()) < 0 or int(index.max()) >= len(paths)):
            raise ValueError(f"{index_name}: indices must lie in [0, {len(paths)})")
        uncaptioned = np.flatnonzero(np.bincount(index, minlength=len(paths)) == 0)
        if uncaptioned.size:
            raise ValueError(
                f"{paths_name}: {uncaptioned.size} {singular}(s) have no caption (first: {paths[uncaptioned[0]]})"
            )

    @property
    def file_paths(self) -> list[Path]:
        """The unique files, whatever the subclass calls them. Length: ``num_files``."""
        return getattr(self, self.names.paths)

    @property
    def caption_to_file(self) -> np.ndarray:
        """The file index of each caption, whatever the subclass calls it. Shape: ``(num_captions,)``."""
        return getattr(self, self.names.index)

    @property
    def num_files(self) -> int:
        """Number of unique files."""
        return len(self.file_paths)

    @property
    def num_captions(self) -> int:
        """Number of captions (= number of training pairs)."""
        return len(self.captions)

    def describe(self) -> str:
        """One line: counts, then what was skipped while reading."""
        line = f"{self.name}: {self.num_files:,} {self.names.singular}(s), {self.num_captions:,} caption(s)"
        if self.skipped:
            line += "; skipped: " + ", ".join(f"{reason} = {count:,}" for reason, count in self.skipped.items())
        return line

    def without_files(self: Dataset, indices: Sequence[int] | np.ndarray, reason: str) -> tuple[Dataset, np.ndarray]:
        """Drop files (and all their captions), e.g. those that cannot be read.

        Args:
            indices: File indices to drop. Shape: ``(K,)``.
            reason: Why, recorded in ``skipped`` with the number of dropped files.

        Returns:
            The smaller dataset, and the kept file indices of this one (to
            select their latents). Shape of the latter: ``(num_files - K,)``.
        """
        drop = np.unique(np.asarray(indices, dtype=np.int64))
        if drop.size and (drop[0] < 0 or drop[-1] >= self.num_files):
            raise ValueError(f"indices: must lie in [0, {self.num_files}), got {drop[[0, -1]].tolist()}")
        keep_file = np.ones(self.num_files, dtype=bool)
        keep_file[drop] = False
        kept = np.flatnonzero(keep_file)
        new_index = np.full(self.num_files, -1, dtype=np.int64)
        new_index[kept] = np.arange(kept.size)
        keep_caption = keep_file[self.caption_to_file]
        skipped = dict(self.skipped)
        if drop.size:
            key = f"{self.name}: {reason}"
            skipped[key] = skipped.get(key, 0) + int(drop.size)
        smaller = type(self)(
            self.name,
            [self.file_paths[i] for i in kept],
            [c for c, keep in zip(self.captions, keep_caption) if keep],
            new_index[self.caption_to_file[keep_caption]],
            skipped,
        )
        return smaller, kept

    @classmethod
    def concat(cls: type[Dataset], datasets: Sequence[Dataset], *, name: str | None = None) -> Dataset:
        """Join datasets into one (the training union): files and captions appended, indices offset.

        Caption ``j`` of the ``k``-th dataset points to file
        ``offset_k + index_k[j]``, with ``offset_k`` the number of files of the
        datasets before it. Files are not de-duplicated across datasets.

        Args:
            datasets: At least one dataset of this class.
            name: Name of the result; defaults to the names joined with ``"+"``.

        Returns:
            The union; ``skipped`` counts are summed by key.
        """
        if not datasets:
            raise ValueError("datasets: expected at least one dataset")
        for position, dataset in enumerate(datasets):
            if not isinstance(dataset, cls):
                raise TypeError(f"datasets[{position}]: expected a {cls.__name__}, got {type(dataset).__name__}")
        offsets = np.cumsum([0] + [d.num_files for d in datasets[:-1]])
        skipped: dict[str, int] = {}
        for dataset in datasets:
            for reason, count in dataset.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + count
        return cls(
            name if name is not None else "+".join(d.name for d in datasets),
            [path for d in datasets for path in d.file_paths],
            [caption for d in datasets for caption in d.captions],
            np.concatenate([d.caption_to_file + offset for d, offset in zip(datasets, offsets)]).astype(np.int64),
            skipped,
        )


class CaptionsBuilder(Generic[Dataset]):
    """Accumulates unique files and their captions while a reader walks an annotation file.

    Args:
        kind: The dataset class to build.
        name: The dataset's name (prefix of the ``skipped`` keys).

    Example:
        >>> from replication.image_text_data import CaptionDataset
        >>> builder = CaptionsBuilder(CaptionDataset, "toy")
        >>> builder.add(Path("a.jpg"), ["x", "y"])
        >>> builder.skip("empty captions", 2)
        >>> builder.build().describe()
        'toy: 1 image(s), 2 caption(s); skipped: toy: empty captions = 2'

    """

    def __init__(self, kind: type[Dataset], name: str) -> None:
        self.kind = kind
        self.name = name
        self.paths: list[Path] = []
        self.captions: list[str] = []
        self.caption_to_file: list[int] = []
        self.skipped: dict[str, int] = {}

    def add(self, path: Path, captions: Sequence[str]) -> None:
        """Add one file and its captions (at least one)."""
        position = len(self.paths)
        self.paths.append(path)
        self.captions.extend(captions)
        self.caption_to_file.extend([position] * len(captions))

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` items left out for ``reason``."""
        if count:
            key = f"{self.name}: {reason}"
            self.skipped[key] = self.skipped.get(key, 0) + count

    def skip_missing(
        self,
        missing: Sequence[object],
        policy: str,
        *,
        where: object,
        what: str,
        argument: str = "missing_images",
        reason: str = "images missing on disk",
    ) -> None:
        """Count the annotated files ``missing`` on disk as skipped for ``reason``, or refuse them.

        Args:
            missing: The missing files (paths or names), in annotation order.
            policy: ``"skip"`` or ``"raise"``, the value of the reader's ``argument``.
            where: Where they were looked for, first in the message.
            what: What they are, e.g. ``"image(s) of the 'test' split"``.
            argument: The reader's argument that sets ``policy``.
            reason: The ``skipped`` key they are counted under.

        Raises:
            FileNotFoundError: With ``policy="raise"``, naming ``where``, how
                many ``what`` are missing and the first of them.

        """
        if not missing:
            return
        if policy == "raise":
            raise FileNotFoundError(
                f"{where}: {len(missing)} {what} are missing (first: {missing[0]}); pass {argument}='skip' to leave "
                "them out"
            )
        self.skip(reason, len(missing))

    def build(self) -> Dataset:
        """The dataset read so far."""
        return self.kind(self.name, self.paths, self.captions, np.asarray(self.caption_to_file, np.int64), self.skipped)
