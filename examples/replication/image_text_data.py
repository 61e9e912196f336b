"""Readers for the image-text datasets of the FuseMix paper (training union and retrieval benchmarks).

The paper trains on COCO + Visual Genome + SBU + CC3M (about 5M image-caption
pairs) and evaluates retrieval on Flickr30K (1K test images) and COCO (5K test
images), Karpathy splits. Users bring the datasets; every reader here returns a
:class:`CaptionDataset` (unique image paths, captions, and the image index of
each caption), ready for encoding each image once and each caption once, and
for ``fusemix.retrieval_metrics(image_emb, text_emb, dataset.caption_to_image)``.

The readers live in :mod:`replication.karpathy` (COCO, Flickr30K),
:mod:`replication.web_captions` (CC3M, SBU) and
:mod:`replication.visual_genome`, on the :class:`CaptionDataset` of
:mod:`replication.caption_dataset`; this module gathers their names and
checks the layout below before anything is read
(:func:`check_image_text_data`).

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

from collections.abc import Sequence
from pathlib import Path

from .caption_dataset import CaptionDataset, MaxCaptions, MissingImages, concat
from .checks import check_choice
from .karpathy import (
    EVAL_CAPTIONS_PER_IMAGE,
    KARPATHY_SPLITS,
    karpathy_image_ids,
    missing_coco,
    missing_flickr30k,
    read_coco,
    read_flickr30k,
    read_karpathy,
)
from .visual_genome import VG_IMAGE_DIRS, missing_visual_genome, read_visual_genome
from .web_captions import (
    CC3M_TSV,
    IMAGE_SUFFIXES,
    SBU_CAPTIONS,
    SBU_URLS,
    missing_cc3m,
    missing_sbu,
    read_cc3m,
    read_img2dataset,
    read_indexed_images,
    read_sbu,
)

COMPONENTS = ("coco", "flickr30k", "cc3m", "sbu", "vg")
"""Dataset names understood by :func:`check_image_text_data`."""

TRAIN_COMPONENTS = ("coco", "vg", "sbu", "cc3m")
"""The paper's training union (COCO Karpathy train + VG + SBU + CC3M)."""

EVAL_COMPONENTS = ("flickr30k", "coco")
"""The paper's retrieval benchmarks (Karpathy test splits)."""


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
        "coco": missing_coco,
        "flickr30k": missing_flickr30k,
        "cc3m": missing_cc3m,
        "sbu": missing_sbu,
        "vg": missing_visual_genome,
    }
    root = Path(root)
    lines: list[str] = []
    for component in dict.fromkeys(needed):
        check_choice("needed", component, COMPONENTS)
        lines += checks[component](root)
    return lines


__all__ = [
    "CC3M_TSV",
    "COMPONENTS",
    "EVAL_CAPTIONS_PER_IMAGE",
    "EVAL_COMPONENTS",
    "IMAGE_SUFFIXES",
    "KARPATHY_SPLITS",
    "SBU_CAPTIONS",
    "SBU_URLS",
    "TRAIN_COMPONENTS",
    "VG_IMAGE_DIRS",
    "CaptionDataset",
    "MaxCaptions",
    "MissingImages",
    "check_image_text_data",
    "concat",
    "karpathy_image_ids",
    "read_cc3m",
    "read_coco",
    "read_flickr30k",
    "read_img2dataset",
    "read_indexed_images",
    "read_karpathy",
    "read_sbu",
    "read_visual_genome",
]
