"""The web datasets of the training union, CC3M and SBU: img2dataset output, or images named by caption row.

See :mod:`replication.image_text_data` for the two layouts, what counts as a
sample and what is counted as skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from .caption_dataset import CaptionDataset, caption_builder
from .files import (
    file_progress,
    json_field,
    list_files,
    missing_dir,
    missing_file,
    read_json,
    require_dir,
    require_file,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
"""File suffixes read as images in web-dataset folders (lower case)."""

CC3M_TSV = "Train_GCC-training.tsv"
SBU_CAPTIONS = "SBU_captioned_photo_dataset_captions.txt"
SBU_URLS = "SBU_captioned_photo_dataset_urls.txt"

_CC3M_SOURCE = "https://ai.google.com/research/ConceptualCaptions/download"
_SBU_SOURCE = "https://www.cs.rice.edu/~vo9/sbucaptions/"
_IMG2DATASET = "img2dataset --output_format files, https://github.com/rom1504/img2dataset"
_CC3M_DOWNLOAD = (
    f"'img2dataset --url_list {CC3M_TSV} --input_format tsv --url_col url --caption_col caption "
    "--output_format files --output_folder {images}' (after adding the header line 'caption<TAB>url')"
)
_SBU_DOWNLOAD = "img2dataset --output_format files --output_folder {images} from the URL and caption files"


def _read_lines(path: Path, what: str, source: str) -> list[str]:
    """Lines of a text file without their line ends (``\\n`` only: captions may hold other breaks)."""
    require_file(path, what, source)
    with path.open(encoding="utf-8", newline="") as file:
        text = file.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _has_subfolders(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(entry.is_dir() for entry in entries)


def _image_suffix(suffixes: Collection[str]) -> str | None:
    return next((suffix for suffix in IMAGE_SUFFIXES if suffix in suffixes), None)


def _read_img2dataset(folder: Path, name: str, *, exclude_flickr_ids: Collection[int] = ()) -> CaptionDataset:
    require_dir(folder, f"{name} images (img2dataset output)", _IMG2DATASET)
    builder = caption_builder(name)
    shards = sorted(entry for entry in folder.iterdir() if entry.is_dir())
    for stats_file in sorted(folder.glob("*_stats.json")):
        stats = read_json(stats_file, "img2dataset shard statistics", _IMG2DATASET)
        count, successes = json_field(stats, "count", str(stats_file)), json_field(stats, "successes", str(stats_file))
        builder.skip("not downloaded (img2dataset stats)", max(0, int(count) - int(successes)))
    for shard in file_progress(shards, f"reading {name} shards"):
        by_key: dict[str, dict[str, Path]] = {}
        for filename in list_files(shard):
            stem, suffix = os.path.splitext(filename)
            by_key.setdefault(stem, {})[suffix.lower()] = shard / filename
        for key in sorted(by_key):
            suffixes = by_key[key]
            meta = read_json(suffixes[".json"], "img2dataset sidecar", _IMG2DATASET) if ".json" in suffixes else {}
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
                if flickr_id(url) in exclude_flickr_ids:
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
    builder = caption_builder(name)
    by_row: dict[int, str] = {}
    for filename in list_files(images):
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


def flickr_id(url: str) -> int | None:
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
            keep_row = [flickr_id(url) not in exclude for url in urls]
    return read_indexed_images(images, captions, name="sbu", keep_row=keep_row)


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


def missing_cc3m(root: Path) -> list[str]:
    """What CC3M lacks under ``root`` (see :func:`replication.image_text_data.check_image_text_data`)."""
    return _check_web("cc3m", root, CC3M_TSV, "CC3M caption<TAB>url file", _CC3M_SOURCE, _CC3M_DOWNLOAD)


def missing_sbu(root: Path) -> list[str]:
    """What SBU lacks under ``root`` (see :func:`replication.image_text_data.check_image_text_data`)."""
    return _check_web("sbu", root, SBU_CAPTIONS, "SBU caption file", _SBU_SOURCE, _SBU_DOWNLOAD)
