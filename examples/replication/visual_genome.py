"""Visual Genome as image-caption pairs: every region phrase captions the whole image.

Read from LAVIS's ``vg_caption.json`` when present, else built from
``region_descriptions.json`` + ``image_data.json``; see
:mod:`replication.image_text_data` for the choices (filters, overlap with the
evaluation images).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

from .caption_dataset import CaptionDataset, MissingImages, caption_builder
from .captions import CaptionsBuilder
from .checks import check_choice
from .files import file_progress, json_field, list_files, missing_dir, read_json, require_file
from .json_stream import iter_json_array

VG_IMAGE_DIRS = ("VG_100K", "VG_100K_2")
"""The Visual Genome image folders under ``DATA_ROOT/vg``."""

_VG_SOURCE = "Visual Genome v1.2 at https://homes.cs.washington.edu/~ranjay/visualgenome/api.html"
_VG_LAVIS_SOURCE = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/visual_genome/vg_caption.json"
)


def _normalise_text(text: str) -> str:
    return " ".join(text.split())


def _vg_image_folders(image_dirs: Sequence[Path]) -> dict[str, Path]:
    """Image file name -> the first of ``image_dirs`` that holds it."""
    folders: dict[str, Path] = {}
    for folder in image_dirs:
        for filename in list_files(folder):
            folders.setdefault(filename, folder)
    return folders


def _vg_image_data(path: Path) -> dict[int, dict[str, Any]]:
    records = read_json(path, "Visual Genome image_data.json", _VG_SOURCE)
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
    builder.skip_missing(missing, missing_images, where=dirs[0].parent, what="annotated Visual Genome image(s)")
    return builder.build()


def _vg_from_lavis(
    annotation: Path,
    folders: dict[str, Path],
    image_data: Path,
    exclude_coco: set[int],
    exclude_flickr: set[int],
) -> tuple[CaptionsBuilder[CaptionDataset], list[str]]:
    entries = read_json(annotation, "LAVIS vg_caption.json", _VG_LAVIS_SOURCE)
    if not isinstance(entries, list):
        raise ValueError(f"{annotation}: expected a JSON list of {{'image', 'caption'}} objects")
    check_overlap = bool(exclude_coco or exclude_flickr)
    records = _vg_image_data(image_data) if check_overlap else {}
    builder = caption_builder("vg")
    captions_by_image: dict[str, list[str]] = {}
    for position, entry in enumerate(entries):
        where = f"{annotation}: [{position}]"
        filename = Path(str(json_field(entry, "image", where)).replace("\\", "/")).name
        caption = str(json_field(entry, "caption", where)).strip()
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
    builder = caption_builder("vg")
    missing: list[str] = []
    seen: set[int] = set()
    entries = iter_json_array(region_descriptions)
    for position, entry in enumerate(file_progress(entries, "reading vg region descriptions", total=len(records))):
        where = f"{region_descriptions}: [{position}]"
        regions = json_field(entry, "regions", where)
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None:
            if not regions:
                continue
            image_id = json_field(regions[0], "image_id", f"{where}.regions[0]")
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
        image_area = float(json_field(record, "width", str(image_data))) * float(
            json_field(record, "height", str(image_data))
        )
        captions: list[str] = []
        keys: set[str] = set()
        for region in regions:
            phrase = _normalise_text(str(json_field(region, "phrase", f"{where}.regions")))
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


def missing_visual_genome(root: Path) -> list[str]:
    """What Visual Genome lacks under ``root`` (see :func:`replication.image_text_data.check_image_text_data`)."""
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
