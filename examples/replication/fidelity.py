"""How close a preset run stays to the authors' release: the faithful pipeline (the default) or the fast one.

The FuseMix authors' code (layer6ai-labs/fusemix, a LAVIS fork) cleans every
caption with LAVIS's ``blip_caption`` processor before the text encoder,
prepares every image with its own DINOv2 evaluation transform, runs the
encoders and stores the latents in float32, keeps every caption of an
evaluation image, and trains in float32. :data:`FAITHFUL` does all of that;
:data:`FAST` is the pipeline the presets had before (each encoder's own
processor on raw captions and images, float16 encoders on CUDA and float16
latents, the first five captions of an evaluation image, bf16 autocast on
CUDA), about half the disk and encoder time. The docs page "Differences from
the authors' code" lists what each choice changes and what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["float32", "float16"]


@dataclass(frozen=True)
class Fidelity:
    """The pipeline choices around the core that the authors' code fixes.

    Attributes:
        name: ``"faithful"`` or ``"fast"``, for messages and reports.
        latent_dtype: Storage dtype of the latent stores.
        encoder_dtype: Weights' dtype of the frozen encoders on CUDA (on the
            CPU they always run in float32).
        amp: :attr:`fusemix.train.TrainConfig.amp` of training (``"off"``: float32).
        authors_preprocessing: Apply the preprocessing a preset names as the
            authors' (``Preset.caption_processor`` on every caption,
            ``EncoderChoice.authors_transform`` on every image); otherwise
            raw captions and each encoder's own processor.
        eval_captions: ``max_captions_per_image`` of the evaluation splits of
            the Karpathy readers: ``None`` keeps every caption of an image
            (LAVIS), ``"protocol"`` its first five.
    """

    name: str
    latent_dtype: Precision
    encoder_dtype: Precision
    amp: str
    authors_preprocessing: bool
    eval_captions: Literal["protocol"] | None

    @property
    def variant(self) -> str:
        """Cache folder of the latents this pipeline makes, e.g. ``"authors-float32"``.

        Example:
            >>> FAITHFUL.variant, FAST.variant
            ('authors-float32', 'encoder-float16')

        """
        return f"{'authors' if self.authors_preprocessing else 'encoder'}-{self.latent_dtype}"


FAITHFUL = Fidelity(
    name="faithful",
    latent_dtype="float32",
    encoder_dtype="float32",
    amp="off",
    authors_preprocessing=True,
    eval_captions=None,
)
"""The authors' pipeline: their caption and image preprocessing, float32 encoders, latents and training, every
caption of an evaluation image."""

FAST = Fidelity(
    name="fast",
    latent_dtype="float16",
    encoder_dtype="float16",
    amp="auto",
    authors_preprocessing=False,
    eval_captions="protocol",
)
"""The faster pipeline: each encoder's own processor, float16 encoders on CUDA and float16 latents, bf16 autocast
on CUDA, the first five captions of an evaluation image."""
