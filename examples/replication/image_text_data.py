"""Readers for the image-text datasets of the FuseMix paper (training union and retrieval benchmarks).

The paper trains on COCO + Visual Genome + SBU + CC3M (about 5M image-caption
pairs) and evaluates retrieval on Flickr30K (1K test images) and COCO (5K test
images), Karpathy splits. Users bring the datasets; every reader here returns a
:class:`CaptionDataset` (unique image paths, captions, and the image index of
each caption), ready for encoding each image once and each caption once, and
for ``fusemix.retrieval_metrics(image_emb, text_emb, dataset.caption_to_image)``.

Expected layout under ``--data-root`` (every reader also takes explicit paths)::

    coco/dataset_coco.json             Karpathy split file (caption_datasets.zip)
    coco/train2014/  coco/val2014/     COCO 2014 images
    flickr30k/dataset_flickr30k.json   Karpathy split file (caption_datasets.zip)
    flickr30k/flickr30k-images/        Flickr30K images (<flickr id>.jpg)
    cc3m/images/                       img2dataset "files" output (see below), or
                                       images named by TSV row index + the TSV:
    cc3m/Train_GCC-training.tsv        caption<TAB>url, no header
    sbu/images/                        img2dataset "files" output, or images named
                                       by line index + the caption file:
    sbu/SBU_captioned_photo_dataset_captions.txt
    sbu/SBU_captioned_photo_dataset_urls.txt    (optional, line-aligned)
    vg/VG_100K/  vg/VG_100K_2/         Visual Genome images (<image id>.jpg)
    vg/vg_caption.json                 LAVIS/BLIP annotation (preferred), or
    vg/region_descriptions.json + vg/image_data.json   (Visual Genome v1.2)

Web datasets (CC3M, SBU) are read in one of two layouts:

- **img2dataset "files" output** (``--output_format files``): shard folders
  ``{shard:05d}/`` holding ``{key}.jpg`` (or ``.jpeg``/``.png``/``.webp``) with a
  ``{key}.txt`` caption and a ``{key}.json`` metadata sidecar. A sample counts
  when its image exists and its ``.json`` (if any) says ``"status": "success"``;
  the caption comes from ``.txt``, else from the ``"caption"`` of ``.json``.
  Downloads that failed leave no files; their number is read from the
  ``{shard}_stats.json`` files (``count - successes``) and reported in
  :attr:`CaptionDataset.skipped`.
- **flat folder by row index**: ``images/{row}.jpg`` where ``row`` is the 0-based
  line of the caption file (leading zeros allowed, so ``000000123.jpg`` is row
  123). A header line ``caption<TAB>url`` in the TSV (which img2dataset needs) is
  recognised and not counted as a row. Rows without an image are counted as
  skipped.

Missing or failed web images are skipped and counted, never fatal. Images of
the curated datasets (COCO, Flickr30K, Visual Genome) that are listed but
missing raise ``FileNotFoundError`` unless ``missing_images="skip"``: a benchmark
with silently missing test images is a different benchmark.

Choices that follow the authors' lineage (LAVIS / BLIP / ALBEF):

- Karpathy ``train`` is ``"train"`` + ``"restval"`` (113,287 COCO images).
- Evaluation splits keep, by default, the **first 5** captions of each
  image (``max_captions_per_image="protocol"``): the raw COCO file gives a few
  test images 6 or 7 sentences, the 5K-image / 25K-caption protocol of the
  VSE++ / SCAN precomputed splits has exactly 5, and Recall@K compares across
  papers only on the same caption set. LAVIS's test annotation, which the
  FuseMix authors evaluate on, keeps every caption: pass ``None``, as the
  faithful presets do. Training splits keep every caption (ALBEF's / LAVIS's
  COCO train file has all ~567K). Captions are the ``"raw"`` sentences,
  stripped of surrounding whitespace; the presets' faithful pipeline cleans
  them further with :func:`fusemix.preprocess.blip_caption` before encoding.
- Visual Genome: each region phrase is a caption of the **whole** image
  (LAVIS's ``vg_caption`` builder reads such pairs from ``vg_caption.json``).
  That file was made by ALBEF's authors with filters (per salesforce/ALBEF
  issue #2: drop samples in the COCO or RefCOCO+ evaluation sets, drop
  duplicate sentences per image, a region-area filter whose threshold is not
  given, and one more); it is read as is when present. Built from
  ``region_descriptions.json`` instead, phrases are whitespace-normalised,
  empty ones dropped, duplicates per image (case-insensitive) dropped, and
  small regions optionally dropped (``min_region_area_fraction``; ALBEF's
  threshold is not published, so the default keeps all). This gives more
  captions than the ~0.8M of ``vg_caption.json``.
- Overlap with the evaluation images: LAVIS does not filter at read time. VG
  shares images with COCO (``coco_id`` in ``image_data.json``) and Flickr
  (``flickr_id``); SBU photos are Flickr photos (the id is in the URL). Pass
  ``exclude_coco_ids`` / ``exclude_flickr_ids`` (from
  :func:`karpathy_image_ids`) to drop them.

Images load lazily with :meth:`CaptionDataset.image_files`
(:class:`fusemix.images.ImageFiles`: Pillow, ``convert("RGB")`` as LAVIS does:
alpha dropped, EXIF orientation not applied), optionally through a transform
such as the authors' :data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import numpy as np

from fusemix.images import ImageFiles, OnError

from .captions import CaptionedFiles, CaptionsBuilder, FileNames
from .checks import check_choice, check_positive_int
from .files import missing_dir, missing_file, require_dir, require_file

COMPONENTS = ("coco", "flickr30k", "cc3m", "sbu", "vg")
"""Dataset names understood by :func:`check_image_text_data`."""

TRAIN_COMPONENTS = ("coco", "vg", "sbu", "cc3m")
"""The paper's training union (COCO Karpathy train + VG + SBU + CC3M)."""

EVAL_COMPONENTS = ("flickr30k", "coco")
"""The paper's retrieval benchmarks (Karpathy test splits)."""

EVAL_CAPTIONS_PER_IMAGE = 5
"""Captions kept per image on Karpathy ``val`` / ``test`` under the standard protocol."""

KARPATHY_SPLITS = ("train", "val", "test")
"""Split names accepted by the Karpathy readers; ``"train"`` includes ``"restval"``."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
"""File suffixes read as images in web-dataset folders (lower case)."""

CC3M_TSV = "Train_GCC-training.tsv"
SBU_CAPTIONS = "SBU_captioned_photo_dataset_captions.txt"
SBU_URLS = "SBU_captioned_photo_dataset_urls.txt"
VG_IMAGE_DIRS = ("VG_100K", "VG_100K_2")

_KARPATHY_SOURCE = "caption_datasets.zip at https://cs.stanford.edu/people/karpathy/deepimagesent/"
_COCO_SOURCE = "http://images.cocodataset.org/zips/{name}.zip"
_FLICKR_SOURCE = "the Flickr30K request form at https://shannon.cs.illinois.edu/DenotationGraph/"
_CC3M_SOURCE = "https://ai.google.com/research/ConceptualCaptions/download"
_SBU_SOURCE = "https://www.cs.rice.edu/~vo9/sbucaptions/"
_IMG2DATASET = "img2dataset --output_format files, https://github.com/rom1504/img2dataset"
_CC3M_DOWNLOAD = (
    f"'img2dataset --url_list {CC3M_TSV} --input_format tsv --url_col url --caption_col caption "
    "--output_format files --output_folder {images}' (after adding the header line 'caption<TAB>url')"
)
_SBU_DOWNLOAD = "img2dataset --output_format files --output_folder {images} from the URL and caption files"
_VG_SOURCE = "Visual Genome v1.2 at https://homes.cs.washington.edu/~ranjay/visualgenome/api.html"
_VG_LAVIS_SOURCE = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/visual_genome/vg_caption.json"
)

MaxCaptions = int | None | Literal["protocol"]
MissingImages = Literal["raise", "skip"]


# --------------------------------------------------------------------------- data model


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


def _builder(name: str) -> CaptionsBuilder[CaptionDataset]:
    return CaptionsBuilder(CaptionDataset, name)


# --------------------------------------------------------------------------- file helpers


def _progress(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """Wrap ``items`` in a tqdm bar when tqdm is installed (shown on terminals only)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, disable=None, unit="file")


def _read_json(path: Path, what: str, source: str) -> Any:
    require_file(path, what, source)
    with path.open(encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _read_lines(path: Path, what: str, source: str) -> list[str]:
    """Lines of a text file without their line ends (``\\n`` only: captions may hold other breaks)."""
    require_file(path, what, source)
    with path.open(encoding="utf-8", newline="") as file:
        text = file.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _field(record: Any, key: str, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: expected an object with a {key!r} field, got {str(record)[:80]}")
    return record[key]


def _list_files(folder: Path) -> set[str]:
    """Names of the plain files directly inside ``folder`` (empty if it does not exist)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries if entry.is_file()}


def _normalise_text(text: str) -> str:
    return " ".join(text.split())


_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")


class _TextChunks:
    """A sliding window over a text file, refilled in chunks."""

    def __init__(self, file: IO[str], chunk_chars: int) -> None:
        self.file = file
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.offset = 0  # characters dropped from the front of ``text`` so far
        self.eof = False

    def refill(self) -> bool:
        if self.eof:
            return False
        data = self.file.read(self.chunk_chars)
        if not data:
            self.eof = True
            return False
        self.offset += self.pos
        self.text = self.text[self.pos :] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character (consuming the whitespace), or ``""`` at the end of the file."""
        while True:
            self.pos = _JSON_WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.refill():
                return ""


def _iter_json_array(path: Path, *, chunk_chars: int = 1 << 20, max_element_chars: int = 1 << 26) -> Iterator[Any]:
    """Yield the elements of the top-level JSON array in ``path`` one by one.

    Memory holds one element (plus a chunk), not the whole file:
    ``region_descriptions.json`` is about 0.7 GB of JSON and several GB as
    Python objects.
    """
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as file:
        chunks = _TextChunks(file, chunk_chars)
        if chunks.peek() != "[":
            raise ValueError(f"{path}: expected a JSON array starting with '['")
        chunks.pos += 1
        first = True
        while True:
            char = chunks.peek()
            if char == "]":
                chunks.pos += 1
                if chunks.peek():
                    raise ValueError(f"{path}: unexpected data after the JSON array")
                return
            if not char:
                raise ValueError(f"{path}: the JSON array is not closed (file truncated?)")
            if not first:
                if char != ",":
                    raise ValueError(f"{path}: expected ',' or ']' at character {chunks.offset + chunks.pos}")
                chunks.pos += 1
                chunks.peek()
            first = False
            while True:
                try:
                    value, end = decoder.raw_decode(chunks.text, chunks.pos)
                except json.JSONDecodeError as exc:
                    if len(chunks.text) - chunks.pos > max_element_chars or not chunks.refill():
                        raise ValueError(
                            f"{path}: not valid JSON ({exc.msg} at character {chunks.offset + exc.pos})"
                        ) from exc
                    continue
                is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if is_number and _JSON_NUMBER_TAIL.fullmatch(chunks.text, end) and chunks.refill():
                    continue  # "1" may be the start of "1.5e3" in the next chunk
                break
            chunks.pos = end
            yield value


# --------------------------------------------------------------------------- Karpathy splits (COCO, Flickr30K)


def _caption_limit(split: str, max_captions_per_image: MaxCaptions) -> int | None:
    if max_captions_per_image == "protocol":
        return None if split == "train" else EVAL_CAPTIONS_PER_IMAGE
    if max_captions_per_image is None:
        return None
    if isinstance(max_captions_per_image, str):
        raise ValueError(f"max_captions_per_image: expected an int, None or 'protocol', got {max_captions_per_image!r}")
    return check_positive_int("max_captions_per_image", max_captions_per_image)


def read_karpathy(
    annotation: Path,
    image_root: Path,
    split: str,
    *,
    name: str,
    max_captions_per_image: MaxCaptions = "protocol",
    missing_images: MissingImages = "raise",
) -> CaptionDataset:
    """Read one split of a Karpathy caption file (``dataset_coco.json``, ``dataset_flickr30k.json``, ...).

    Image ``k`` of the file is ``image_root / filepath / filename`` (``filepath``
    is ``"train2014"``/``"val2014"`` for COCO and absent for Flickr30K). Images
    keep the order of the file.

    Args:
        annotation: The Karpathy JSON (``{"images": [{"split", "filename",
            "sentences": [{"raw"}, ...]}, ...]}``).
        image_root: Folder the image paths are relative to.
        split: ``"train"`` (the file's ``"train"`` and ``"restval"`` images),
            ``"val"`` or ``"test"``.
        name: Label of the dataset, e.g. ``"coco/test"``.
        max_captions_per_image: Keep at most this many captions per image, in
            file order; ``None`` keeps all; ``"protocol"`` is 5 on ``val``/``test``
            and all on ``train``. Dropped captions are counted in ``skipped``.
        missing_images: ``"raise"`` (``FileNotFoundError`` listing them) or
            ``"skip"`` (drop and count) for listed images not on disk.

    Returns:
        The split as a :class:`CaptionDataset`.

    Example:
        >>> coco = Path("data/coco")
        >>> test = read_karpathy(coco / "dataset_coco.json", coco, "test", name="coco/test")  # doctest: +SKIP
        >>> test.num_images, test.num_captions  # doctest: +SKIP
        (5000, 25000)

    """
    check_choice("split", split, KARPATHY_SPLITS)
    check_choice("missing_images", missing_images, ("raise", "skip"))
    limit = _caption_limit(split, max_captions_per_image)
    annotation, image_root = Path(annotation), Path(image_root)
    data = _read_json(annotation, "Karpathy split file", _KARPATHY_SOURCE)
    images = _field(data, "images", str(annotation))
    if not isinstance(images, list):
        raise ValueError(f"{annotation}: 'images' must be a list, got {type(images).__name__}")
    wanted = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}}[split]
    listings: dict[Path, set[str]] = {}
    builder = _builder(name)
    missing: list[Path] = []
    for position, image in enumerate(images):
        where = f"{annotation}: images[{position}]"
        if _field(image, "split", where) not in wanted:
            continue
        folder = image_root / image.get("filepath", "")
        filename = _field(image, "filename", where)
        sentences = [_field(s, "raw", f"{where}.sentences").strip() for s in _field(image, "sentences", where)]
        captions = [s for s in sentences if s]
        builder.skip("empty captions", len(sentences) - len(captions))
        if limit is not None and len(captions) > limit:
            builder.skip(f"captions beyond the first {limit} per image", len(captions) - limit)
            captions = captions[:limit]
        if not captions:
            builder.skip("images without a caption")
            continue
        if folder not in listings:
            listings[folder] = _list_files(folder)
        if filename not in listings[folder]:
            missing.append(folder / filename)
            continue
        builder.add(folder / filename, captions)
    if missing:
        if missing_images == "raise":
            raise FileNotFoundError(
                f"{image_root}: {len(missing)} image(s) of the {split!r} split of {annotation.name} are missing "
                f"(first: {missing[0]}); pass missing_images='skip' to leave them out"
            )
        builder.skip("images missing on disk", len(missing))
    return builder.build()


def read_coco(
    root: Path,
    split: str,
    *,
    annotation: Path | None = None,
    max_captions_per_image: MaxCaptions = "protocol",
    missing_images: MissingImages = "raise",
) -> CaptionDataset:
    """Read a COCO Karpathy split: ``root/dataset_coco.json`` with images in ``root/{train2014,val2014}/``.

    ``"train"`` is the 113,287 ``train`` + ``restval`` images; ``"test"`` the
    5,000 test images with their first 5 captions (25,000; every caption with
    ``max_captions_per_image=None``). See
    :func:`read_karpathy` for the arguments.

    Example:
        >>> read_coco(Path("data/coco"), "test").describe()  # doctest: +SKIP
        'coco/test: 5,000 image(s), 25,000 caption(s); skipped: ...'

    """
    root = Path(root)
    return read_karpathy(
        Path(annotation) if annotation is not None else root / "dataset_coco.json",
        root,
        split,
        name=f"coco/{split}",
        max_captions_per_image=max_captions_per_image,
        missing_images=missing_images,
    )


def read_flickr30k(
    root: Path,
    split: str,
    *,
    annotation: Path | None = None,
    image_dir: Path | None = None,
    max_captions_per_image: MaxCaptions = "protocol",
    missing_images: MissingImages = "raise",
) -> CaptionDataset:
    """Read a Flickr30K Karpathy split: ``root/dataset_flickr30k.json``, images in ``root/flickr30k-images/``.

    ``"test"`` is 1,000 images and 5,000 captions. See :func:`read_karpathy`.

    Example:
        >>> read_flickr30k(Path("data/flickr30k"), "test").num_captions  # doctest: +SKIP
        5000

    """
    root = Path(root)
    return read_karpathy(
        Path(annotation) if annotation is not None else root / "dataset_flickr30k.json",
        Path(image_dir) if image_dir is not None else root / "flickr30k-images",
        split,
        name=f"flickr30k/{split}",
        max_captions_per_image=max_captions_per_image,
        missing_images=missing_images,
    )


def karpathy_image_ids(annotation: Path, splits: Sequence[str] = ("val", "test")) -> set[int]:
    """Source ids of the images of some Karpathy splits, to keep them out of training data.

    COCO files give ``cocoid`` (matches ``coco_id`` of Visual Genome's
    ``image_data.json``); Flickr30K files name images ``<flickr id>.jpg``
    (matches VG's ``flickr_id`` and the photo id in SBU URLs).

    Args:
        annotation: A Karpathy JSON.
        splits: Split names as written in the file (``"train"``, ``"restval"``,
            ``"val"``, ``"test"``).

    Returns:
        The ids.

    Example:
        >>> coco_eval = karpathy_image_ids(Path("data/coco/dataset_coco.json"))  # doctest: +SKIP
        >>> len(coco_eval)  # doctest: +SKIP
        10000

    """
    annotation = Path(annotation)
    data = _read_json(annotation, "Karpathy split file", _KARPATHY_SOURCE)
    ids: set[int] = set()
    for position, image in enumerate(_field(data, "images", str(annotation))):
        where = f"{annotation}: images[{position}]"
        if _field(image, "split", where) not in splits:
            continue
        if "cocoid" in image:
            ids.add(int(image["cocoid"]))
            continue
        stem = Path(_field(image, "filename", where)).stem
        if not stem.isdigit():
            raise ValueError(f"{where}: no 'cocoid' and the file name {stem!r} is not a numeric Flickr id")
        ids.add(int(stem))
    return ids


# --------------------------------------------------------------------------- web datasets (CC3M, SBU)


def _has_subfolders(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(entry.is_dir() for entry in entries)


def _image_suffix(suffixes: Collection[str]) -> str | None:
    return next((suffix for suffix in IMAGE_SUFFIXES if suffix in suffixes), None)


def _read_img2dataset(folder: Path, name: str, *, exclude_flickr_ids: Collection[int] = ()) -> CaptionDataset:
    require_dir(folder, f"{name} images (img2dataset output)", _IMG2DATASET)
    builder = _builder(name)
    shards = sorted(entry for entry in folder.iterdir() if entry.is_dir())
    for stats_file in sorted(folder.glob("*_stats.json")):
        stats = _read_json(stats_file, "img2dataset shard statistics", _IMG2DATASET)
        count, successes = _field(stats, "count", str(stats_file)), _field(stats, "successes", str(stats_file))
        builder.skip("not downloaded (img2dataset stats)", max(0, int(count) - int(successes)))
    for shard in _progress(shards, f"reading {name} shards"):
        by_key: dict[str, dict[str, Path]] = {}
        for filename in _list_files(shard):
            stem, suffix = os.path.splitext(filename)
            by_key.setdefault(stem, {})[suffix.lower()] = shard / filename
        for key in sorted(by_key):
            suffixes = by_key[key]
            meta = _read_json(suffixes[".json"], "img2dataset sidecar", _IMG2DATASET) if ".json" in suffixes else {}
            if not isinstance(meta, dict):
                raise ValueError(f"{suffixes['.json']}: expected a JSON object")
            if meta.get("status", "success") != "success":
                builder.skip(f"sidecar status {meta['status']!r}")
                continue
            suffix = _image_suffix(suffixes)
            if suffix is None:
                if suffixes.keys() & {".txt", ".json"}:
                    builder.skip("sidecar without an image")
                continue
            if ".txt" in suffixes:
                caption = suffixes[".txt"].read_text(encoding="utf-8")
            elif isinstance(meta.get("caption"), str):
                caption = meta["caption"]
            else:
                builder.skip("no caption (.txt or 'caption' in .json)")
                continue
            caption = caption.strip()
            if not caption:
                builder.skip("empty captions")
                continue
            if exclude_flickr_ids:
                url = meta.get("url")
                if not isinstance(url, str):
                    raise ValueError(f"{shard / key}: exclude_flickr_ids needs the image URL ('url' in its .json)")
                if _flickr_id(url) in exclude_flickr_ids:
                    builder.skip("excluded (Flickr photo of an evaluation split)")
                    continue
            builder.add(suffixes[suffix], [caption])
    return builder.build()


def read_img2dataset(folder: Path, *, name: str) -> CaptionDataset:
    """Read an img2dataset ``--output_format files`` folder: one image and one caption per sample.

    Samples are ordered by shard folder, then key. See the module docstring for
    what counts as a sample and what is counted as skipped.

    Args:
        folder: The img2dataset ``--output_folder``.
        name: Label of the dataset.

    Returns:
        The samples as a :class:`CaptionDataset`.

    Example:
        >>> read_img2dataset(Path("data/cc3m/images"), name="cc3m").describe()  # doctest: +SKIP
        'cc3m: 2,871,317 image(s), 2,871,317 caption(s); skipped: cc3m: not downloaded (img2dataset stats) = ...'

    """
    return _read_img2dataset(Path(folder), name)


def read_indexed_images(
    images: Path, captions: Sequence[str], *, name: str, keep_row: Sequence[bool] | None = None
) -> CaptionDataset:
    """Pair a flat folder of images named by row index (``123.jpg``, ``000000123.jpg``) with caption rows.

    Args:
        images: The folder.
        captions: Caption of each row (0-based).
        name: Label of the dataset.
        keep_row: Optional mask over rows; rows marked ``False`` are counted as
            excluded. Length: ``len(captions)``.

    Returns:
        One image per row that has an image file, in row order.

    Example:
        >>> read_indexed_images(Path("data/sbu/images"), ["a man", "a dog"], name="sbu")  # doctest: +SKIP

    """
    images = Path(images)
    require_dir(images, f"{name} images", _IMG2DATASET)
    if keep_row is not None and len(keep_row) != len(captions):
        raise ValueError(f"keep_row: has {len(keep_row)} entries but there are {len(captions)} caption rows")
    builder = _builder(name)
    by_row: dict[int, str] = {}
    for filename in _list_files(images):
        stem, suffix = os.path.splitext(filename)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not stem.isdigit():
            builder.skip("image files not named by row index")
            continue
        row = int(stem)
        if row in by_row:
            raise ValueError(f"{images / filename}: row {row} already has an image ({by_row[row]})")
        if row >= len(captions):
            raise ValueError(f"{images / filename}: row index {row} but the caption file has {len(captions)} rows")
        by_row[row] = filename
    builder.skip("no image (not downloaded)", len(captions) - len(by_row))
    for row in sorted(by_row):
        if keep_row is not None and not keep_row[row]:
            builder.skip("excluded (Flickr photo of an evaluation split)")
            continue
        caption = captions[row].strip()
        if not caption:
            builder.skip("empty captions")
            continue
        builder.add(images / by_row[row], [caption])
    return builder.build()


def _read_cc3m_tsv(path: Path) -> list[str]:
    lines = _read_lines(path, "CC3M caption file", _CC3M_SOURCE)
    if lines and lines[0].strip().lower() == "caption\turl":
        lines = lines[1:]
    captions = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{path}: line {number} is not 'caption<TAB>url': {line[:80]!r}")
        captions.append(fields[0])
    return captions


def read_cc3m(root: Path, *, images: Path | None = None, annotation: Path | None = None) -> CaptionDataset:
    """Read Conceptual Captions 3M as downloaded: img2dataset output, or images named by TSV row.

    Args:
        root: ``DATA_ROOT/cc3m``.
        images: The image folder; default ``root/images``. Holding shard
            sub-folders, it is read as img2dataset output (captions from the
            sidecars, the TSV is not needed); otherwise as a flat folder of
            images named by 0-based TSV row.
        annotation: The TSV (``caption<TAB>url``, no header); default
            ``root/Train_GCC-training.tsv``. Used for the flat layout only.

    Returns:
        The downloaded pairs; failed downloads are counted in ``skipped``.

    Example:
        >>> read_cc3m(Path("data/cc3m")).num_captions  # doctest: +SKIP
        2871317

    """
    root = Path(root)
    images = Path(images) if images is not None else root / "images"
    if _has_subfolders(images):
        return _read_img2dataset(images, "cc3m")
    tsv = Path(annotation) if annotation is not None else root / CC3M_TSV
    return read_indexed_images(images, _read_cc3m_tsv(tsv), name="cc3m")


_FLICKR_URL = re.compile(r"/(\d+)_[0-9a-f]+(?:_[a-z0-9])?\.(?:jpg|jpeg|png|gif)$", re.IGNORECASE)


def _flickr_id(url: str) -> int | None:
    """Photo id of a static Flickr URL (``.../2723/4385058960_b0f291553e.jpg`` -> 4385058960)."""
    match = _FLICKR_URL.search(url.strip())
    return int(match.group(1)) if match else None


def read_sbu(
    root: Path,
    *,
    images: Path | None = None,
    captions_file: Path | None = None,
    urls_file: Path | None = None,
    exclude_flickr_ids: Collection[int] = (),
) -> CaptionDataset:
    """Read SBU Captions as downloaded: img2dataset output, or images named by caption-file line.

    Args:
        root: ``DATA_ROOT/sbu``.
        images: The image folder; default ``root/images`` (img2dataset output
            when it holds shard sub-folders, else a flat folder named by
            0-based line of the caption file).
        captions_file: Default ``root/SBU_captioned_photo_dataset_captions.txt``.
        urls_file: Default ``root/SBU_captioned_photo_dataset_urls.txt``; must
            have as many lines as the caption file. Needed (flat layout) only
            for ``exclude_flickr_ids``; checked for alignment when present.
        exclude_flickr_ids: Flickr photo ids to leave out (e.g. Flickr30K test
            images, see :func:`karpathy_image_ids`), matched on the URL.

    Returns:
        The downloaded pairs, missing downloads and exclusions counted in ``skipped``.

    Example:
        >>> read_sbu(Path("data/sbu")).describe()  # doctest: +SKIP

    """
    root = Path(root)
    images = Path(images) if images is not None else root / "images"
    exclude = set(exclude_flickr_ids)
    if _has_subfolders(images):
        return _read_img2dataset(images, "sbu", exclude_flickr_ids=exclude)
    captions_file = Path(captions_file) if captions_file is not None else root / SBU_CAPTIONS
    urls_file = Path(urls_file) if urls_file is not None else root / SBU_URLS
    captions = _read_lines(captions_file, "SBU caption file", _SBU_SOURCE)
    keep_row = None
    if urls_file.is_file() or exclude:
        urls = _read_lines(urls_file, "SBU URL file", _SBU_SOURCE)
        if len(urls) != len(captions):
            raise ValueError(
                f"{urls_file}: has {len(urls)} lines but {captions_file.name} has {len(captions)}; they must align"
            )
        if exclude:
            keep_row = [_flickr_id(url) not in exclude for url in urls]
    return read_indexed_images(images, captions, name="sbu", keep_row=keep_row)


# --------------------------------------------------------------------------- Visual Genome


def _vg_image_folders(image_dirs: Sequence[Path]) -> dict[str, Path]:
    """Image file name -> the first of ``image_dirs`` that holds it."""
    folders: dict[str, Path] = {}
    for folder in image_dirs:
        for filename in _list_files(folder):
            folders.setdefault(filename, folder)
    return folders


def _vg_image_data(path: Path) -> dict[int, dict[str, Any]]:
    records = _read_json(path, "Visual Genome image_data.json", _VG_SOURCE)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of images")
    by_id: dict[int, dict[str, Any]] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: [{position}] is not an object")
        image_id = record.get("image_id", record.get("id"))
        if image_id is None:
            raise ValueError(f"{path}: [{position}] has neither 'image_id' nor 'id'")
        by_id[int(image_id)] = record
    return by_id


def _excluded_by_overlap(
    record: dict[str, Any], exclude_coco_ids: Collection[int], exclude_flickr_ids: Collection[int]
) -> bool:
    coco_id, flickr_id = record.get("coco_id"), record.get("flickr_id")
    return (coco_id is not None and int(coco_id) in exclude_coco_ids) or (
        flickr_id is not None and int(flickr_id) in exclude_flickr_ids
    )


def read_visual_genome(
    root: Path,
    *,
    source: Literal["auto", "lavis", "regions"] = "auto",
    annotation: Path | None = None,
    region_descriptions: Path | None = None,
    image_data: Path | None = None,
    image_dirs: Sequence[Path] | None = None,
    min_region_area_fraction: float = 0.0,
    exclude_coco_ids: Collection[int] = (),
    exclude_flickr_ids: Collection[int] = (),
    missing_images: MissingImages = "raise",
) -> CaptionDataset:
    """Read Visual Genome as image-caption pairs: every region phrase captions the whole image.

    Args:
        root: ``DATA_ROOT/vg``.
        source: ``"lavis"`` reads ``vg_caption.json`` (list of ``{"image": path,
            "caption": str}``, the file LAVIS's ``vg_caption`` builder and
            BLIP/ALBEF train on; images matched by file name); ``"regions"``
            builds pairs from ``region_descriptions.json`` + ``image_data.json``;
            ``"auto"`` uses ``vg_caption.json`` when it exists.
        annotation: ``vg_caption.json``; default ``root/vg_caption.json``.
        region_descriptions: Default ``root/region_descriptions.json`` (streamed,
            not loaded whole).
        image_data: Default ``root/image_data.json``; gives image sizes and the
            ``coco_id`` / ``flickr_id`` used by the exclusions.
        image_dirs: Folders holding ``<image id>.jpg``; default
            ``root/VG_100K`` and ``root/VG_100K_2``.
        min_region_area_fraction: ``"regions"`` only: drop phrases whose box
            covers less than this fraction of the image (0 keeps all).
        exclude_coco_ids: Leave out images with these ``coco_id`` (e.g. the
            COCO Karpathy val/test images, see :func:`karpathy_image_ids`).
        exclude_flickr_ids: Leave out images with these ``flickr_id``.
        missing_images: ``"raise"`` or ``"skip"`` for annotated images not on disk.

    Returns:
        One entry per image with at least one caption left.

    Example:
        >>> vg = read_visual_genome(Path("data/vg"))  # doctest: +SKIP
        >>> vg.num_captions  # doctest: +SKIP
        768536

    """
    check_choice("source", source, ("auto", "lavis", "regions"))
    check_choice("missing_images", missing_images, ("raise", "skip"))
    if isinstance(min_region_area_fraction, bool) or not isinstance(min_region_area_fraction, (int, float)):
        raise TypeError(f"min_region_area_fraction: expected a number, got {type(min_region_area_fraction).__name__}")
    if not 0.0 <= min_region_area_fraction <= 1.0:
        raise ValueError(f"min_region_area_fraction: expected a number in [0, 1], got {min_region_area_fraction!r}")
    root = Path(root)
    annotation = Path(annotation) if annotation is not None else root / "vg_caption.json"
    image_data = Path(image_data) if image_data is not None else root / "image_data.json"
    dirs = [Path(d) for d in image_dirs] if image_dirs is not None else [root / d for d in VG_IMAGE_DIRS]
    if source == "auto":
        source = "lavis" if annotation.is_file() else "regions"
    folders = _vg_image_folders(dirs)
    if not folders:
        raise FileNotFoundError(
            f"{dirs[0]}: no Visual Genome images in {[str(d) for d in dirs]} (get them from {_VG_SOURCE})"
        )
    exclude_coco, exclude_flickr = set(exclude_coco_ids), set(exclude_flickr_ids)
    if source == "lavis":
        builder, missing = _vg_from_lavis(annotation, folders, image_data, exclude_coco, exclude_flickr)
    else:
        region_descriptions = (
            Path(region_descriptions) if region_descriptions is not None else root / "region_descriptions.json"
        )
        builder, missing = _vg_from_regions(
            region_descriptions, image_data, folders, float(min_region_area_fraction), exclude_coco, exclude_flickr
        )
    if missing:
        if missing_images == "raise":
            raise FileNotFoundError(
                f"{dirs[0].parent}: {len(missing)} annotated Visual Genome image(s) are missing "
                f"(first: {missing[0]}); pass missing_images='skip' to leave them out"
            )
        builder.skip("images missing on disk", len(missing))
    return builder.build()


def _vg_from_lavis(
    annotation: Path,
    folders: dict[str, Path],
    image_data: Path,
    exclude_coco: set[int],
    exclude_flickr: set[int],
) -> tuple[CaptionsBuilder[CaptionDataset], list[str]]:
    entries = _read_json(annotation, "LAVIS vg_caption.json", _VG_LAVIS_SOURCE)
    if not isinstance(entries, list):
        raise ValueError(f"{annotation}: expected a JSON list of {{'image', 'caption'}} objects")
    check_overlap = bool(exclude_coco or exclude_flickr)
    records = _vg_image_data(image_data) if check_overlap else {}
    builder = _builder("vg")
    captions_by_image: dict[str, list[str]] = {}
    for position, entry in enumerate(entries):
        where = f"{annotation}: [{position}]"
        filename = Path(str(_field(entry, "image", where)).replace("\\", "/")).name
        caption = str(_field(entry, "caption", where)).strip()
        if not caption:
            builder.skip("empty captions")
            continue
        captions_by_image.setdefault(filename, []).append(caption)
    missing: list[str] = []
    for filename, captions in captions_by_image.items():
        if check_overlap:
            stem = Path(filename).stem
            record = records.get(int(stem)) if stem.isdigit() else None
            if record is None:
                raise ValueError(f"{annotation}: image {filename!r} is not in {image_data.name}; cannot check overlap")
            if _excluded_by_overlap(record, exclude_coco, exclude_flickr):
                builder.skip("images excluded (overlap with evaluation images)")
                continue
        if filename not in folders:
            missing.append(filename)
            continue
        builder.add(folders[filename] / filename, captions)
    return builder, missing


def _vg_from_regions(
    region_descriptions: Path,
    image_data: Path,
    folders: dict[str, Path],
    min_area_fraction: float,
    exclude_coco: set[int],
    exclude_flickr: set[int],
) -> tuple[CaptionsBuilder[CaptionDataset], list[str]]:
    require_file(region_descriptions, "Visual Genome region_descriptions.json", _VG_SOURCE)
    records = _vg_image_data(image_data)
    builder = _builder("vg")
    missing: list[str] = []
    seen: set[int] = set()
    entries = _iter_json_array(region_descriptions)
    for position, entry in enumerate(_progress(entries, "reading vg region descriptions", total=len(records))):
        where = f"{region_descriptions}: [{position}]"
        regions = _field(entry, "regions", where)
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None:
            if not regions:
                continue
            image_id = _field(regions[0], "image_id", f"{where}.regions[0]")
        image_id = int(image_id)
        if image_id in seen:
            raise ValueError(f"{where}: image {image_id} appears twice")
        seen.add(image_id)
        record = records.get(image_id)
        if record is None:
            raise ValueError(f"{where}: image {image_id} is not in {image_data.name}")
        if _excluded_by_overlap(record, exclude_coco, exclude_flickr):
            builder.skip("images excluded (overlap with evaluation images)")
            continue
        image_area = float(_field(record, "width", str(image_data))) * float(_field(record, "height", str(image_data)))
        captions: list[str] = []
        keys: set[str] = set()
        for region in regions:
            phrase = _normalise_text(str(_field(region, "phrase", f"{where}.regions")))
            if not phrase:
                builder.skip("empty region phrases")
                continue
            if min_area_fraction > 0:
                box = max(0.0, float(region.get("width", 0))) * max(0.0, float(region.get("height", 0)))
                if image_area <= 0 or box / image_area < min_area_fraction:
                    builder.skip("region phrases below min_region_area_fraction")
                    continue
            key = phrase.lower()
            if key in keys:
                builder.skip("duplicate region phrases (same image)")
                continue
            keys.add(key)
            captions.append(phrase)
        if not captions:
            builder.skip("images without a region phrase left")
            continue
        filename = f"{image_id}.jpg"
        if filename not in folders:
            missing.append(filename)
            continue
        builder.add(folders[filename] / filename, captions)
    return builder, missing


# --------------------------------------------------------------------------- layout check


def _check_coco(root: Path) -> list[str]:
    folder = root / "coco"
    lines = missing_file("coco", folder / "dataset_coco.json", "Karpathy split file", _KARPATHY_SOURCE)
    for name in ("train2014", "val2014"):
        lines += missing_dir("coco", folder / name, f"COCO {name} images", _COCO_SOURCE.format(name=name))
    return lines


def _check_flickr30k(root: Path) -> list[str]:
    folder = root / "flickr30k"
    return missing_file(
        "flickr30k", folder / "dataset_flickr30k.json", "Karpathy split file", _KARPATHY_SOURCE
    ) + missing_dir("flickr30k", folder / "flickr30k-images", "Flickr30K images", _FLICKR_SOURCE)


def _check_web(component: str, root: Path, index_file: str, what: str, source: str, download: str) -> list[str]:
    folder = root / component
    images = folder / "images"
    lines = missing_dir(
        component,
        images,
        f"{component.upper()} images: img2dataset 'files' output, or images named by row of {index_file}",
        f"{source}, then download with {download.format(images=images)} (https://github.com/rom1504/img2dataset)",
    )
    if not _has_subfolders(images):
        lines += missing_file(component, folder / index_file, f"{what}; a flat images folder needs it", source)
    return lines


def _check_vg(root: Path) -> list[str]:
    folder = root / "vg"
    lines: list[str] = []
    for name in VG_IMAGE_DIRS:
        lines += missing_dir("vg", folder / name, "Visual Genome images", _VG_SOURCE)
    has_lavis = (folder / "vg_caption.json").is_file()
    has_regions = (folder / "region_descriptions.json").is_file() and (folder / "image_data.json").is_file()
    if not (has_lavis or has_regions):
        lines.append(
            f"vg: captions are missing: {folder / 'vg_caption.json'} (LAVIS, from {_VG_LAVIS_SOURCE}) or "
            f"{folder / 'region_descriptions.json'} + {folder / 'image_data.json'} (from {_VG_SOURCE})"
        )
    return lines


def check_image_text_data(root: Path, needed: Sequence[str]) -> list[str]:
    """List every file or folder the image-text preset needs under ``root`` and cannot find.

    Only the layout is checked (files exist, folders are not empty), not the
    content, so this is instant even for the full datasets.

    Args:
        root: The ``--data-root`` folder (layout in the module docstring).
        needed: Names from :data:`COMPONENTS`, e.g. ``TRAIN_COMPONENTS + EVAL_COMPONENTS``.

    Returns:
        One human-readable line per missing item (what, where, where to get
        it), starting with the dataset name; empty when all is in place.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     lines = check_image_text_data(Path(tmp), ["flickr30k"])
        >>> [line.split(" (")[0].replace(tmp, "ROOT") for line in lines]
        ['flickr30k: ROOT/flickr30k/dataset_flickr30k.json', 'flickr30k: ROOT/flickr30k/flickr30k-images/']

    """
    if isinstance(needed, str):
        raise TypeError("needed: expected a sequence of dataset names, got a single string")
    checks = {
        "coco": _check_coco,
        "flickr30k": _check_flickr30k,
        "cc3m": lambda r: _check_web("cc3m", r, CC3M_TSV, "CC3M caption<TAB>url file", _CC3M_SOURCE, _CC3M_DOWNLOAD),
        "sbu": lambda r: _check_web("sbu", r, SBU_CAPTIONS, "SBU caption file", _SBU_SOURCE, _SBU_DOWNLOAD),
        "vg": _check_vg,
    }
    root = Path(root)
    lines: list[str] = []
    for component in dict.fromkeys(needed):
        check_choice("needed", component, COMPONENTS)
        lines += checks[component](root)
    return lines
