"""The frozen encoders of a preset, built from its :class:`~replication.presets.EncoderChoice` and pipeline.

Text and audio encoders are fusemix's Hugging Face adapters as they are. An
image encoder under the faithful pipeline is :class:`TransformedImageEncoder`:
the same DINOv2 weights, fed pixel values made by the authors' transform
(:data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM`: short side to 224, centre
crop 224) instead of the Hugging Face processor (short side to 256, centre
crop 224), because :class:`fusemix.encoders.HFImageEncoder` always runs the
checkpoint's own processor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fusemix.encoders import CallableEncoder, HFAudioEncoder, HFImageEncoder, HFTextEncoder
from fusemix.preprocess import ResizeCenterCrop

from .fidelity import Fidelity
from .presets import EncoderChoice


class _ClsToken(nn.Module):
    """The CLS token of a Hugging Face ViT's ``last_hidden_state`` (DINOv2's global image feature)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0].float()


class TransformedImageEncoder(CallableEncoder):
    """A Hugging Face ViT's CLS token on pixel values made by ``transform`` rather than the model's processor.

    Items are what ``transform`` returns for an image, ``(3, size, size)``
    tensors (e.g. ``CaptionDataset.image_files(transform=encoder.transform)``),
    stacked, cast to the model's dtype and moved to its device. The weights
    are loaded by :class:`fusemix.encoders.HFImageEncoder`; the identity
    (``identity["id"]``) holds its model, fingerprint or revision, dtype and
    pooling, and the transform's identity.

    Args:
        name_or_path: Hugging Face Hub id or local directory of a ViT-style model (DINOv2).
        transform: What prepares each image, e.g. :data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM`.
        device: Where the model runs; ``None`` picks CUDA when available.
        dtype: Weights' dtype, ``"float32"`` or ``"float16"``.
        max_batch_size: Images per forward pass.

    Attributes:
        transform: The transform the items must be made with.

    Shape:
        - Input: ``B`` tensors of shape ``(3, size, size)``.
        - Output: ``(B, hidden_size)``, ``float32`` on the CPU.
    """

    def __init__(
        self,
        name_or_path: str,
        transform: ResizeCenterCrop,
        *,
        device: str | None = None,
        dtype: str = "float32",
        max_batch_size: int = 32,
    ) -> None:
        backbone = HFImageEncoder(name_or_path, pooling="cls", device=device, dtype=dtype)
        weights = {key: value for key, value in backbone.identity.items() if key != "encoder"}
        identity = {**weights, "transform": transform.identity}
        super().__init__(_ClsToken(backbone.model), identity=identity, dim=backbone.dim, max_batch_size=max_batch_size)
        self.transform = transform


def build_encoder(
    choice: EncoderChoice, fidelity: Fidelity, *, model: str | None = None, device: str | None = None
) -> Any:
    """The encoder of ``choice`` under ``fidelity`` (``model`` overrides its hub name).

    On CUDA (``device``, or by default when CUDA is available) the encoders
    run in ``fidelity.encoder_dtype``; on the CPU in float32.
    """
    name = model or choice.model
    options: dict[str, Any] = dict(choice.options)
    if device is not None:
        options["device"] = device
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        options.setdefault("dtype", fidelity.encoder_dtype)
    if choice.kind == "hf-image" and fidelity.authors_preprocessing and choice.authors_transform is not None:
        if options.get("pooling", "cls") != "cls":
            raise ValueError(f"{choice.slug}: the authors' image transform is implemented for CLS pooling only")
        return TransformedImageEncoder(
            name, choice.authors_transform, device=options.get("device"), dtype=options.get("dtype", "float32")
        )
    factory = {"hf-image": HFImageEncoder, "hf-text": HFTextEncoder, "hf-audio": HFAudioEncoder}
    return factory[choice.kind](name, **options)
