"""The frozen encoders of a preset, built from its :class:`~replication.presets.EncoderChoice` and pipeline.

Every encoder is one of fusemix's Hugging Face adapters. Under the faithful
pipeline they prepare their inputs the authors' way: an image encoder with
the choice's ``authors_transform`` (``HFImageEncoder(transform=...)``, e.g.
:data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM`: short side to 224, centre
crop 224, where the Hugging Face DINOv2 processor resizes to 256 first) and
a text encoder with the preset's caption processor
(``HFTextEncoder(preprocess=...)``, e.g.
:func:`fusemix.preprocess.blip_caption`); both are recorded in the
encoder's identity, and so in every latent store it writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fusemix.encoders import HFAudioEncoder, HFImageEncoder, HFTextEncoder

from .fidelity import Fidelity
from .presets import EncoderChoice


def build_encoder(
    choice: EncoderChoice,
    fidelity: Fidelity,
    *,
    model: str | None = None,
    device: str | None = None,
    caption_processor: Callable[[str], str] | None = None,
    progress: bool = True,
) -> Any:
    """The encoder of ``choice`` under ``fidelity`` (``model`` overrides its hub name).

    On CUDA (``device``, or by default when CUDA is available) the encoders
    run in ``fidelity.encoder_dtype``; on the CPU in float32.

    Args:
        choice: The encoder of the preset.
        fidelity: The pipeline; with ``authors_preprocessing`` an image
            encoder gets ``choice.authors_transform`` and a text encoder
            ``caption_processor``.
        model: Hub name or local directory replacing ``choice.model``.
        device: Where the encoder runs (``None``: CUDA when available).
        caption_processor: The preset's caption preprocessing (``None``: raw captions).
        progress: Show the libraries' loading bars.

    Returns:
        The adapter, with its model loaded.
    """
    name = model or choice.model
    options: dict[str, Any] = dict(choice.options)
    if device is not None:
        options["device"] = device
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        options.setdefault("dtype", fidelity.encoder_dtype)
    if fidelity.authors_preprocessing:
        if choice.kind == "hf-image" and choice.authors_transform is not None:
            options["transform"] = choice.authors_transform
        if choice.kind == "hf-text" and caption_processor is not None:
            options["preprocess"] = caption_processor
    factory = {"hf-image": HFImageEncoder, "hf-text": HFTextEncoder, "hf-audio": HFAudioEncoder}
    return factory[choice.kind](name, progress=progress, **options)
