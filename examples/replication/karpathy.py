"""COCO and Flickr30K in Karpathy's splits (``dataset_coco.json``, ``dataset_flickr30k.json``).

The paper's retrieval benchmarks are the Karpathy ``test`` splits (COCO 5K,
Flickr30K 1K images); COCO ``train`` (with ``restval``) is part of its
training union. See :mod:`replication.image_text_data` for the layout and
the caption protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .caption_dataset import CaptionDataset, MaxCaptions, MissingImages, caption_builder
from .checks import check_choice, check_positive_int
from .files import json_field, list_files, missing_dir, missing_file, read_json

EVAL_CAPTIONS_PER_IMAGE = 5
"""Captions kept per image on Karpathy ``val`` / ``test`` under the standard protocol."""

KARPATHY_SPLITS = ("train", "val", "test")
"""Split names accepted by the Karpathy readers; ``"train"`` includes ``"restval"``."""

_KARPATHY_SOURCE = "caption_datasets.zip at https://cs.stanford.edu/people/karpathy/deepimagesent/"
_COCO_SOURCE = "http://images.cocodataset.org/zips/{name}.zip"
_FLICKR_SOURCE = "the Flickr30K request form at https://shannon.cs.illinois.edu/DenotationGraph/"


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
    data = read_json(annotation, "Karpathy split file", _KARPATHY_SOURCE)
    images = json_field(data, "images", str(annotation))
    if not isinstance(images, list):
        raise ValueError(f"{annotation}: 'images' must be a list, got {type(images).__name__}")
    wanted = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}}[split]
    listings: dict[Path, set[str]] = {}
    builder = caption_builder(name)
    missing: list[Path] = []
    for position, image in enumerate(images):
        where = f"{annotation}: images[{position}]"
        if json_field(image, "split", where) not in wanted:
            continue
        folder = image_root / image.get("filepath", "")
        filename = json_field(image, "filename", where)
        sentences = [json_field(s, "raw", f"{where}.sentences").strip() for s in json_field(image, "sentences", where)]
        captions = [s for s in sentences if s]
        builder.skip("empty captions", len(sentences) - len(captions))
        if limit is not None and len(captions) > limit:
            builder.skip(f"captions beyond the first {limit} per image", len(captions) - limit)
            captions = captions[:limit]
        if not captions:
            builder.skip("images without a caption")
            continue
        if folder not in listings:
            listings[folder] = list_files(folder)
        if filename not in listings[folder]:
            missing.append(folder / filename)
            continue
        builder.add(folder / filename, captions)
    builder.skip_missing(
        missing, missing_images, where=image_root, what=f"image(s) of the {split!r} split of {annotation.name}"
    )
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
    data = read_json(annotation, "Karpathy split file", _KARPATHY_SOURCE)
    ids: set[int] = set()
    for position, image in enumerate(json_field(data, "images", str(annotation))):
        where = f"{annotation}: images[{position}]"
        if json_field(image, "split", where) not in splits:
            continue
        if "cocoid" in image:
            ids.add(int(image["cocoid"]))
            continue
        stem = Path(json_field(image, "filename", where)).stem
        if not stem.isdigit():
            raise ValueError(f"{where}: no 'cocoid' and the file name {stem!r} is not a numeric Flickr id")
        ids.add(int(stem))
    return ids


def missing_coco(root: Path) -> list[str]:
    """What COCO lacks under ``root`` (see :func:`replication.image_text_data.check_image_text_data`)."""
    folder = root / "coco"
    lines = missing_file("coco", folder / "dataset_coco.json", "Karpathy split file", _KARPATHY_SOURCE)
    for name in ("train2014", "val2014"):
        lines += missing_dir("coco", folder / name, f"COCO {name} images", _COCO_SOURCE.format(name=name))
    return lines


def missing_flickr30k(root: Path) -> list[str]:
    """What Flickr30K lacks under ``root`` (see :func:`replication.image_text_data.check_image_text_data`)."""
    folder = root / "flickr30k"
    return missing_file(
        "flickr30k", folder / "dataset_flickr30k.json", "Karpathy split file", _KARPATHY_SOURCE
    ) + missing_dir("flickr30k", folder / "flickr30k-images", "Flickr30K images", _FLICKR_SOURCE)
