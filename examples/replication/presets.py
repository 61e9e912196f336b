"""The paper's experiments as presets: encoders, data, recipe and the runs each one makes.

A preset names frozen encoders per modality (several encoders of one
modality are concatenated, as the paper does for audio), the training and
evaluation sets, the training recipe (:class:`fusemix.train.TrainConfig`
overrides on top of the authors' defaults) and one or more runs (ablations
vary the recipe, the training fraction or the encoders). Nothing here runs
anything; :mod:`replication.pipeline` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, ResizeCenterCrop, blip_caption

from .report import Reference


@dataclass(frozen=True)
class EncoderChoice:
    """One frozen encoder of a preset.

    Attributes:
        slug: Short name used in cache folders and tables, e.g. ``"dinov2-giant"``.
        kind: ``"hf-image"``, ``"hf-text"`` or ``"hf-audio"`` (the
            :mod:`fusemix.encoders` adapter to use).
        model: Hugging Face hub name (or a local directory).
        options: Keyword arguments of the adapter (pooling, prefix, ...).
        authors_transform: The authors' image transform for this encoder,
            used instead of the model's own processor under the faithful
            pipeline (``None``: the model's processor in every pipeline).
    """

    slug: str
    kind: str
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)
    authors_transform: ResizeCenterCrop | None = None


@dataclass(frozen=True)
class Run:
    """One training run of a preset.

    Attributes:
        name: Row label and output sub-folder.
        config: :class:`~fusemix.train.TrainConfig` overrides for this run.
        train_fraction: Share of the training pairs used (a fixed seeded subset).
        encoders: Encoders replacing the preset's for this run (encoder ablation).
    """

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    train_fraction: float = 1.0
    encoders: Mapping[str, tuple[EncoderChoice, ...]] | None = None


@dataclass(frozen=True)
class Preset:
    """One experiment of the paper.

    Attributes:
        name: ``--preset`` value.
        description: One line for ``--help``.
        task: ``"image-text"`` or ``"audio-text"``.
        encoders: Modality to its encoders (concatenated when several).
        train_sets: Components of the training union.
        eval_sets: Evaluation sets (test splits).
        config: :class:`~fusemix.train.TrainConfig` overrides shared by every run.
        runs: The runs; the table has one row per run and evaluation set.
        references: Published numbers printed beside ours.
        caption_processor: The authors' caption preprocessing, applied to
            every caption under the faithful pipeline (``None``: raw captions
            in every pipeline, e.g. where the authors' code is unpublished).
    """

    name: str
    description: str
    task: str
    encoders: Mapping[str, tuple[EncoderChoice, ...]]
    train_sets: tuple[str, ...]
    eval_sets: tuple[str, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    runs: tuple[Run, ...] = (Run("fusemix"),)
    references: tuple[Reference, ...] = ()
    caption_processor: Callable[[str], str] | None = None

    @property
    def modalities(self) -> tuple[str, str]:
        """The (query, key) modalities of the retrieval task, e.g. ``("image", "text")``."""
        return ("image", "text") if self.task == "image-text" else ("audio", "text")


DINOV2_GIANT = EncoderChoice(
    "dinov2-giant", "hf-image", "facebook/dinov2-giant", {"pooling": "cls"}, DINOV2_EVAL_TRANSFORM
)
DINOV2_LARGE = EncoderChoice(
    "dinov2-large", "hf-image", "facebook/dinov2-large", {"pooling": "cls"}, DINOV2_EVAL_TRANSFORM
)
# BGE: the raw CLS vector (no normalisation), as the authors' feature extractor returns it.
BGE_LARGE = EncoderChoice("bge-large", "hf-text", "BAAI/bge-large-en-v1.5", {"pooling": "cls"})
BGE_BASE = EncoderChoice("bge-base", "hf-text", "BAAI/bge-base-en-v1.5", {"pooling": "cls"})
# E5: v2, as in the authors' config (e5_feature_extractor_large.yaml); mean pooling, "query: " before each caption.
E5_LARGE = EncoderChoice("e5-large-v2", "hf-text", "intfloat/e5-large-v2", {"pooling": "mean", "prefix": "query: "})
WHISPER = EncoderChoice("whisper-large-v2", "hf-audio", "openai/whisper-large-v2", {"kind": "whisper"})
CLAP_HTSAT = EncoderChoice("clap-htsat", "hf-audio", "laion/clap-htsat-unfused", {"kind": "clap"})

IMAGE_TEXT_TRAIN: tuple[str, ...] = ("coco", "vg", "sbu", "cc3m")
IMAGE_TEXT_EVAL: tuple[str, ...] = ("flickr30k", "coco")

CLIP_REFERENCES: tuple[Reference, ...] = (
    Reference(
        "CLIP ViT-L/14 (zero-shot)",
        "flickr30k",
        {"i2t_R@1": 88.0, "t2i_R@1": 68.7},
        "Radford et al. 2021, Table 13",
    ),
    Reference(
        "CLIP ViT-L/14 (zero-shot)",
        "coco",
        {"i2t_R@1": 58.4, "t2i_R@1": 37.8},
        "Radford et al. 2021, Table 13",
    ),
)

_IMAGE_TEXT = {"image": (DINOV2_GIANT,), "text": (BGE_LARGE,)}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "image-text",
            "DINOv2 ViT-G/14 + BGE-large on COCO+VG+SBU+CC3M, eval Flickr30K 1K and COCO 5K (the main result)",
            "image-text",
            _IMAGE_TEXT,
            IMAGE_TEXT_TRAIN,
            IMAGE_TEXT_EVAL,
            references=CLIP_REFERENCES,
            caption_processor=blip_caption,
        ),
        Preset(
            "image-text-e5",
            "the main result with E5-large-v2 (mean pooling, 'query: ' prefix) as the text encoder",
            "image-text",
            {"image": (DINOV2_GIANT,), "text": (E5_LARGE,)},
            IMAGE_TEXT_TRAIN,
            IMAGE_TEXT_EVAL,
            references=CLIP_REFERENCES,
            caption_processor=blip_caption,
        ),
        Preset(
            "ablation-augmentation",
            "augmentation ablation: none, latent noise, FuseMix, FuseMix with independent lambda",
            "image-text",
            _IMAGE_TEXT,
            IMAGE_TEXT_TRAIN,
            IMAGE_TEXT_EVAL,
            runs=(
                Run("none", {"augmentation": "none"}),
                Run("latent noise", {"augmentation": "noise"}),
                Run("fusemix", {"augmentation": "fusemix"}),
                Run("fusemix, independent lambda", {"augmentation": "fusemix-independent"}),
            ),
            caption_processor=blip_caption,
        ),
        Preset(
            "ablation-batch-size",
            "batch-size ablation: 2,048 to 40,960 pairs per step",
            "image-text",
            _IMAGE_TEXT,
            IMAGE_TEXT_TRAIN,
            IMAGE_TEXT_EVAL,
            runs=tuple(Run(f"batch {b}", {"batch_size": b}) for b in (2048, 8192, 20480, 40960)),
            caption_processor=blip_caption,
        ),
        Preset(
            "ablation-data-size",
            "data-size ablation: 10%, 25%, 50% and all of the training pairs",
            "image-text",
            _IMAGE_TEXT,
            IMAGE_TEXT_TRAIN,
            IMAGE_TEXT_EVAL,
            runs=tuple(Run(f"{int(f * 100)}% of pairs", train_fraction=f) for f in (0.1, 0.25, 0.5, 1.0)),
            caption_processor=blip_caption,
        ),
        Preset(
            "ablation-encoders",
            "encoder ablation: image encoder DINOv2 ViT-G or ViT-L, text encoder BGE-large, BGE-base or E5-large-v2",
            "image-text",
            _IMAGE_TEXT,
            IMAGE_TEXT_TRAIN,
            IMAGE_TEXT_EVAL,
            runs=tuple(
                Run(f"{img.slug} + {txt.slug}", encoders={"image": (img,), "text": (txt,)})
                for img, txt in (
                    (DINOV2_GIANT, BGE_LARGE),
                    (DINOV2_LARGE, BGE_LARGE),
                    (DINOV2_GIANT, BGE_BASE),
                    (DINOV2_GIANT, E5_LARGE),
                )
            ),
            caption_processor=blip_caption,
        ),
        Preset(
            "audio-text",
            "Whisper + CLAP/HTS-AT audio latents (concatenated) and BGE-large on AudioCaps+Clotho",
            "audio-text",
            {"audio": (WHISPER, CLAP_HTSAT), "text": (BGE_LARGE,)},
            ("audiocaps", "clotho"),
            ("audiocaps", "clotho"),
            # ~50K AudioCaps + ~19K Clotho captions: a 40,960 batch would be most of
            # the data per step; this is our choice, the authors did not publish it.
            # No caption_processor: the authors' audio-text code is not published.
            config={"batch_size": 4096},
        ),
    )
}
"""Every preset, by ``--preset`` name."""

ENCODER_SLUGS: frozenset[str] = frozenset(
    choice.slug
    for preset in PRESETS.values()
    for run in preset.runs
    for choices in (run.encoders or preset.encoders).values()
    for choice in choices
)
"""Every encoder slug of every preset: the names ``--model SLUG=PATH`` accepts."""
