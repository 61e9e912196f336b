"""FusionModel: one adapter per named modality, plus the loss that aligns them."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from fusemix._checks import check_positive_int
from fusemix.losses import ContrastiveLoss
from fusemix.projectors import FusionAdapter, LinearAdapter


class FusionModel(nn.Module):
    """Adapters that map each modality's frozen latents into one shared space.

    Args:
        adapters: Modality name to adapter module; every adapter must output
            the same shared dimension.
        loss: Loss over the shared-space features of a batch; a
            :class:`~fusemix.ContrastiveLoss` with the paper's settings when
            ``None``.

    Example:
        >>> model = FusionModel.from_dims({"image": 1280, "text": 384}, shared_dim=256, depth=2)
        >>> batch = {"image": torch.randn(8, 1280), "text": torch.randn(8, 384)}
        >>> loss = model(batch)
        >>> model.embed("text", batch["text"]).norm(dim=-1).allclose(torch.ones(8))
        True

    """

    def __init__(self, adapters: Mapping[str, nn.Module], loss: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(adapters, Mapping) or len(adapters) < 1:
            raise ValueError("adapters: expected a non-empty mapping of modality name to adapter module")
        for name, adapter in adapters.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"adapters: modality names must be non-empty strings, got {name!r}")
            if not isinstance(adapter, nn.Module):
                raise TypeError(f"adapters[{name!r}]: expected an nn.Module, got {type(adapter).__name__}")
        out_dims = {name: getattr(a, "out_dim", None) for name, a in adapters.items()}
        known = {d for d in out_dims.values() if d is not None}
        if len(known) > 1:
            raise ValueError(f"adapters: output dims differ ({out_dims}); all adapters must map to one shared space")
        self.adapters = nn.ModuleDict(dict(adapters))
        self.loss = loss if loss is not None else ContrastiveLoss()

    @classmethod
    def from_dims(
        cls,
        dims: Mapping[str, int],
        *,
        shared_dim: int = 512,
        adapter: str = "fusion",
        depth: int = 4,
        expansion: int = 4,
        dropout: float = 0.6,
        loss: nn.Module | None = None,
    ) -> FusionModel:
        """Build a model with one adapter per modality from the latent dims.

        Args:
            dims: Modality name to latent dimension, e.g.
                ``{"image": 1536, "text": 1024}``.
            shared_dim: Dimension of the shared space (paper: 512).
            adapter: ``"fusion"`` (:class:`FusionAdapter`, the paper's) or
                ``"linear"`` (:class:`LinearAdapter`).
            depth: Residual blocks per fusion adapter (paper: 4).
            expansion: Hidden width multiplier of each block (paper: 4).
            dropout: Dropout inside each block (paper: 0.6).
            loss: Loss module; :class:`~fusemix.ContrastiveLoss` when ``None``.

        Returns:
            The model.

        """
        check_positive_int("shared_dim", shared_dim)
        if adapter not in ("fusion", "linear"):
            raise ValueError(f"adapter: expected 'fusion' or 'linear', got {adapter!r}")
        adapters: dict[str, nn.Module] = {}
        for name, dim in dims.items():
            check_positive_int(f"dims[{name!r}]", dim)
            if adapter == "fusion":
                adapters[name] = FusionAdapter(dim, shared_dim, depth=depth, expansion=expansion, dropout=dropout)
            else:
                adapters[name] = LinearAdapter(dim, shared_dim)
        return cls(adapters, loss=loss)

    @property
    def modalities(self) -> list[str]:
        """Names of the modalities, in the order given."""
        return list(self.adapters.keys())

    def _adapter(self, modality: str) -> nn.Module:
        if modality not in self.adapters:
            raise KeyError(f"modality: {modality!r} is not one of {self.modalities}")
        return self.adapters[modality]

    def project(self, modality: str, latents: Tensor) -> Tensor:
        """Map latents into the shared space, without normalising.

        Args:
            modality: Which adapter to use.
            latents: Frozen-encoder latents. Shape: ``(N, D_modality)``.

        Returns:
            Shared-space features. Shape: ``(N, shared_dim)``.

        """
        return self._adapter(modality)(latents)

    def embed(self, modality: str, latents: Tensor) -> Tensor:
        """L2-normalised shared-space embeddings, ready for retrieval.

        Args:
            modality: Which adapter to use.
            latents: Frozen-encoder latents. Shape: ``(N, D_modality)``.

        Returns:
            Unit-norm embeddings. Shape: ``(N, shared_dim)``.

        """
        return F.normalize(self.project(modality, latents), dim=-1)

    def forward(self, batch: Mapping[str, Tensor], *, return_dict: bool = False) -> Tensor | dict[str, Tensor]:
        """Project every modality of ``batch`` and return the loss.

        Args:
            batch: Modality name to latents; row ``i`` of every tensor is one
                paired example. Shape of each: ``(B, D_modality)``.
            return_dict: Passed to the loss (per-pair losses as a dict).

        Returns:
            The loss (scalar) or the loss's dict.

        """
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch: expected a dict of modality name to latents, got {type(batch).__name__}")
        unknown = [k for k in batch if k not in self.adapters]
        if unknown:
            raise KeyError(f"batch: modalities {unknown} have no adapter; known: {self.modalities}")
        features = {name: self.project(name, x) for name, x in batch.items()}
        return self.loss(features, return_dict=return_dict)
