"""Additive Gaussian noise in latent space: the paper's non-mixup baseline to :class:`~fusemix.FuseMix`.

:class:`LatentNoise` has FuseMix's call forms (a tensor, a tuple or a dict in,
the same structure out; presence masks passed through), so a training loop
calls either augmentation the same way (:func:`fusemix.train.fit` does, with
``augmentation="noise"``).
"""

from __future__ import annotations

import torch
from torch import nn

from fusemix._call_forms import LatentInputs, MaskInputs, Mixed, check_batch, unpack_inputs, unpack_masks
from fusemix._checks import check_positive


class LatentNoise(nn.Module):
    """Additive Gaussian noise in latent space: the paper's non-mixup baseline.

    Each modality gets independent noise; shapes are preserved. It has the
    same call forms as :class:`FuseMix` (tensor, tuple or dict in, the same
    structure out).

    Args:
        std: Noise standard deviation (> 0).
        relative: Scale the noise of each row by that row's root-mean-square
            value, so ``std`` is relative to the latent's own magnitude and
            one value fits encoders with very different scales. With
            ``False`` the noise is absolute.
        generator: ``torch.Generator`` for the noise; the global RNG when
            ``None``.

    Shape:
        - Input: tensors of shape ``(B, *)`` with at least one dim after
          the batch dim (a 1-D tensor is refused: it has no row to scale).
        - Output: same shapes.

    Example:
        >>> noise = LatentNoise(std=0.1, generator=torch.Generator().manual_seed(0))
        >>> img, txt = noise(torch.randn(4, 8), torch.randn(4, 3))
        >>> img.shape, txt.shape
        (torch.Size([4, 8]), torch.Size([4, 3]))

    """

    def __init__(self, std: float = 0.1, *, relative: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.std = check_positive("std", std)
        self.relative = bool(relative)
        self.generator = generator

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the noise has no schedule. Present so that a loop calls ``set_epoch`` on any augmentation."""

    def forward(self, *inputs: LatentInputs, masks: MaskInputs | None = None) -> Mixed:
        """Add noise to every tensor.

        Args:
            *inputs: Same call forms as :meth:`FuseMix.forward`.
            masks: Optional presence masks, as for :meth:`FuseMix.forward`;
                rows keep their presence, so they are returned unchanged
                (every modality, in the inputs' structure), which lets one
                loop call either augmentation the same way.

        Returns:
            Noisy tensors in the input's structure; with ``masks``, then the
            masks.

        """
        named, rebuild = unpack_inputs(inputs)
        check_batch(named)
        for name, x in named:
            if x.ndim < 2:
                raise ValueError(
                    f"{name}: expected shape (B, *) with at least one feature dim after the batch dim, got shape "
                    f"{tuple(x.shape)}; add one with x.unsqueeze(-1)"
                )
        mask_list = None if masks is None else unpack_masks(masks, inputs, named)
        out = []
        for _, x in named:
            device = self.generator.device if self.generator is not None else x.device
            eps = torch.randn(x.shape, generator=self.generator, device=device, dtype=x.dtype).to(x.device)
            scale = self.std
            if self.relative:
                rms = x.detach().flatten(1).pow(2).mean(dim=1).sqrt()
                scale = self.std * rms.reshape((-1,) + (1,) * (x.ndim - 1))
            out.append(x + scale * eps)
        return rebuild(out) if mask_list is None else (rebuild(out), rebuild(mask_list))

    def extra_repr(self) -> str:
        return f"std={self.std}, relative={self.relative}"


__all__ = ["LatentNoise"]
