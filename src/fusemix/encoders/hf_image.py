"""Image encoder over a Hugging Face ``transformers`` ViT-style backbone (DINOv2, DINOv2 with registers, ViT)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusemix._checks import check_choice
from fusemix._optional import require
from fusemix.encoders._hf import HFEncoder
from fusemix.encoders.base import callable_identity, check_bool

ImagePooling = Literal["cls", "patch_mean", "cls+patch_mean"]
IMAGE_POOLINGS: tuple[str, ...] = ("cls", "patch_mean", "cls+patch_mean")


class HFImageEncoder(HFEncoder):
    """Frozen ``transformers`` ViT-style image encoder, fed by the model's own image processor or by ``transform``.

    Images go through the checkpoint's image processor (for DINOv2: resize,
    center crop, ImageNet normalisation), or through ``transform`` when one
    is given, and ``AutoModel``; the latent is
    pooled from ``last_hidden_state``, laid out as ``(B, prefix + patches, D)``
    with the CLS token first:

    - ``"cls"``: the CLS token (DINOv2's global image feature; the paper's choice).
    - ``"patch_mean"``: the mean of the patch tokens only; CLS, register
      tokens (``num_register_tokens`` in the config) and any other prefix
      token are excluded. The number of patch tokens is computed from the
      processed image size and ``config.patch_size``.
    - ``"cls+patch_mean"``: both concatenated (DINOv2's linear-probe feature), ``2 * hidden_size`` wide.

    Items are PIL images or ``uint8`` numpy arrays of shape ``(H, W, 3)``,
    ``(H, W, 1)`` or ``(H, W)``; grey images are expanded to RGB. Images
    with an alpha channel are refused rather than silently flattened:
    composite them onto a background first (e.g. ``Image.alpha_composite``
    onto white, then ``.convert("RGB")``).

    ``transform`` replaces the image processor: a callable from an RGB PIL
    image to a ``(3, H, W)`` floating tensor of normalised pixels, the same
    ``H, W`` for every image, e.g. the FuseMix authors' DINOv2 transform
    :data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM` (short side to 224, centre
    crop 224) where the Hugging Face DINOv2 processor resizes to 256 first. It
    enters the identity:
    an object describes itself with an ``identity`` attribute (a str or a
    JSON dict; :class:`~fusemix.preprocess.ResizeCenterCrop` has one), a
    function defined at the top level of a module by its qualified name; a
    lambda, nested function, ``functools.partial`` or other callable object
    without ``identity`` has no stable name and is refused.

    Args:
        name_or_path: Hugging Face Hub id or local directory written by ``save_pretrained``.
        pooling: ``"cls"``, ``"patch_mean"`` or ``"cls+patch_mean"``.
        normalize: L2-normalise every latent.
        device: Where the model runs; ``None`` picks CUDA when available, else the CPU.
        dtype: Weights' dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``;
            pooling runs in float32 either way.
        max_batch_size: Images per forward pass (``None``: the whole list at once).
        transform: Prepares each image instead of the checkpoint's image
            processor (which is then not loaded); ``None``: the processor.
        progress: Show the libraries' progress bars and INFO logs while the
            model loads; ``False`` silences them (and restores the
            libraries' switches afterwards).

    Attributes:
        identity: Class, model (directory name and fingerprint, or Hub id and
            revision), pooling, normalize and dtype; and ``transform``'s
            identity when one is given.
        transform: As given.
        dim: ``hidden_size`` (``2 * hidden_size`` for ``"cls+patch_mean"``).

    Shape:
        - Input: a sequence of ``B`` images.
        - Output: ``(B, dim)``, ``float32`` on the CPU.

    Example:
        >>> dino = HFImageEncoder("facebook/dinov2-giant", pooling="cls", dtype="float16")  # doctest: +SKIP
        >>> dino([np.zeros((224, 224, 3), dtype=np.uint8)]).shape  # doctest: +SKIP
        torch.Size([1, 1536])
        >>> from fusemix.preprocess import DINOV2_EVAL_TRANSFORM
        >>> authors = HFImageEncoder("facebook/dinov2-giant", transform=DINOV2_EVAL_TRANSFORM)  # doctest: +SKIP

    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        pooling: ImagePooling = "cls",
        normalize: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int | None = 32,
        transform: Callable[[Any], Tensor] | None = None,
        progress: bool = True,
    ) -> None:
        check_choice("pooling", pooling, IMAGE_POOLINGS)
        check_bool("normalize", normalize)
        transform_identity = None if transform is None else callable_identity("transform", transform)
        super().__init__(name_or_path, device=device, dtype=dtype, max_batch_size=max_batch_size, progress=progress)
        self.image_module = require("PIL.Image", extra="hf", user=type(self).__name__)
        self.pooling = pooling
        self.normalize = normalize
        self.transform = transform
        self.model = self._prepare_model(self._from_pretrained(self.transformers.AutoModel))
        config = self.model.config
        patch_size = getattr(config, "patch_size", None)
        if patch_size is None:
            raise ValueError(f"name_or_path: {self!r} is not a ViT-style model (its config has no patch_size)")
        self.patch_size: tuple[int, int] = (
            (patch_size, patch_size) if isinstance(patch_size, int) else (int(patch_size[0]), int(patch_size[1]))
        )
        self.processor: Any = (
            None if transform is not None else self._from_pretrained(self.transformers.AutoImageProcessor)
        )
        self.num_register_tokens = int(getattr(config, "num_register_tokens", 0) or 0)
        hidden_size = int(config.hidden_size)
        self.dim: int | None = 2 * hidden_size if pooling == "cls+patch_mean" else hidden_size
        self.identity: dict[str, Any] = {**self._base_identity(), "pooling": pooling, "normalize": normalize}
        if transform_identity is not None:
            self.identity["transform"] = transform_identity

    def _encode_batch(self, batch: list[Any], offset: int) -> Tensor:
        images = [self._as_rgb_image(item, index) for index, item in enumerate(batch, start=offset)]
        if self.processor is not None:
            pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            pixel_values = self._transformed(images, offset)
        hidden = self.model(**self._to_model({"pixel_values": pixel_values})).last_hidden_state.float()
        height, width = pixel_values.shape[-2:]
        num_patches = (height // self.patch_size[0]) * (width // self.patch_size[1])
        num_prefix = hidden.shape[1] - num_patches
        if num_prefix < 1 or (self.num_register_tokens and num_prefix != 1 + self.num_register_tokens):
            raise ValueError(
                f"{self!r}: last_hidden_state has {hidden.shape[1]} tokens for {num_patches} patches; expected a "
                f"CLS token and {self.num_register_tokens} register token(s) before the patch tokens"
            )
        cls = hidden[:, 0]
        patch_mean = hidden[:, num_prefix:].mean(dim=1)
        if self.pooling == "cls":
            pooled = cls
        elif self.pooling == "patch_mean":
            pooled = patch_mean
        else:
            pooled = torch.cat([cls, patch_mean], dim=-1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def _transformed(self, images: list[Any], offset: int) -> Tensor:
        """Stack ``transform``'s pixel values of ``images``. Shape: ``(B, 3, H, W)``."""
        pixels = []
        for index, image in enumerate(images, start=offset):
            output = _check_pixels(self.transform(image), index)
            if pixels and output.shape != pixels[0].shape:
                raise ValueError(
                    f"transform: returned shape {tuple(output.shape)} for items[{index}] and "
                    f"{tuple(pixels[0].shape)} for items[{offset}]; every image must come out the same size"
                )
            pixels.append(output)
        return torch.stack(pixels)

    def _as_rgb_image(self, item: object, index: int) -> Any:
        image_cls = self.image_module.Image
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise TypeError(f"items[{index}]: expected a uint8 image array, got dtype {item.dtype}")
            if item.ndim == 3 and item.shape[-1] == 1:
                item = item[..., 0]
            if item.ndim == 3 and item.shape[-1] == 4:
                raise ValueError(f"items[{index}]: image has an alpha channel; composite it onto a background first")
            if not (item.ndim == 2 or (item.ndim == 3 and item.shape[-1] == 3)):
                raise ValueError(f"items[{index}]: expected an (H, W, 3), (H, W, 1) or (H, W) array, got {item.shape}")
            item = self.image_module.fromarray(np.ascontiguousarray(item))
        if not isinstance(item, image_cls):
            raise TypeError(f"items[{index}]: expected a PIL image or a uint8 numpy array, got {type(item).__name__}")
        if item.width == 0 or item.height == 0:
            raise ValueError(f"items[{index}]: image is empty ({item.width}x{item.height})")
        if {"A", "a"} & set(item.getbands()) or "transparency" in item.info:
            raise ValueError(
                f"items[{index}]: image has an alpha channel (mode {item.mode}); composite it onto a background first"
            )
        return item if item.mode == "RGB" else item.convert("RGB")


def _check_pixels(output: object, index: int) -> Tensor:
    """``transform``'s output for ``items[index]`` if it is a ``(3, H, W)`` floating tensor, else raise."""
    if not isinstance(output, Tensor) or not output.is_floating_point():
        got = f"a {output.dtype} tensor" if isinstance(output, Tensor) else f"a {type(output).__name__}"
        raise TypeError(f"transform: returned {got} for items[{index}]; expected a (3, H, W) floating tensor")
    if output.ndim != 3 or output.shape[0] != 3:
        raise ValueError(
            f"transform: returned shape {tuple(output.shape)} for items[{index}]; expected (3, H, W) pixel values"
        )
    return output
