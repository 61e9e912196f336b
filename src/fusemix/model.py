"""FusionModel: one adapter per named modality, plus the loss that aligns them.

Optionally the loss gets a structure-preserving term
(:class:`~fusemix.StructureLoss`, weighted by ``structure_weight``), and
batches may have rows that lack some modalities (``masks=``; see
:meth:`FusionModel.forward`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from fusemix._checks import check_nonnegative, check_positive_int
from fusemix.adapters import FusionAdapter, IdentityAdapter, LinearAdapter
from fusemix.losses import ContrastiveLoss
from fusemix.regularizers import StructureLoss


def loss_accepts_masks(loss: nn.Module) -> bool:
    """Whether a loss module's ``forward`` takes ``masks=`` (as :class:`~fusemix.ContrastiveLoss` and SigLIP do).

    Example:
        >>> from fusemix import ContrastiveLoss, FixedTargetLoss
        >>> loss_accepts_masks(ContrastiveLoss()), loss_accepts_masks(FixedTargetLoss())
        (True, False)

    """
    params = inspect.signature(loss.forward).parameters.values()
    return any(p.name == "masks" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class FusionModel(nn.Module):
    """Adapters that map each modality's frozen latents into one shared space.

    Args:
        adapters: Modality name to adapter module; every adapter must output
            the same shared dimension.
        loss: Loss over the shared-space features of a batch; a
            :class:`~fusemix.ContrastiveLoss` with the paper's settings when
            ``None``.
        structure: Structure-preserving regulariser comparing each
            modality's latents with its adapter's outputs; a default
            :class:`~fusemix.StructureLoss` when ``None`` and
            ``structure_weight > 0``. It has no parameters or buffers, so the
            model's ``state_dict`` is the same with or without it.
        structure_weight: Weight ``w >= 0`` of the structure term: the
            model's loss is ``alignment + w * structure``. With
            ``structure`` given and ``w = 0`` the term is only reported (with
            ``return_dict=True``), not trained on.

    Example:
        >>> model = FusionModel.from_dims({"image": 1280, "text": 384}, shared_dim=256, depth=2)
        >>> batch = {"image": torch.randn(8, 1280), "text": torch.randn(8, 384)}
        >>> loss = model(batch)
        >>> model.embed("text", batch["text"]).norm(dim=-1).allclose(torch.ones(8))
        True
        >>> regularised = FusionModel.from_dims({"image": 1280, "text": 384}, shared_dim=256, depth=1,
        ...                                     structure_weight=1.0)
        >>> sorted(regularised(batch, return_dict=True))
        ['alignment', 'image-text', 'loss', 'structure']

    """

    def __init__(
        self,
        adapters: Mapping[str, nn.Module],
        loss: nn.Module | None = None,
        *,
        structure: StructureLoss | None = None,
        structure_weight: float = 0.0,
    ) -> None:
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
        self.structure_weight = check_nonnegative("structure_weight", structure_weight)
        if structure is not None and not isinstance(structure, nn.Module):
            raise TypeError(
                f"structure: expected a StructureLoss (an nn.Module) or None, got {type(structure).__name__}"
            )
        if structure is None and self.structure_weight > 0:
            structure = StructureLoss()
        self.structure: nn.Module | None = structure

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
        structure: StructureLoss | None = None,
        structure_weight: float = 0.0,
        hidden_dim: int | None = None,
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
            hidden_dim: Hidden width of each block, overriding ``expansion``
                (see :class:`FusionAdapter`).
            loss: Loss module; :class:`~fusemix.ContrastiveLoss` when ``None``.
            structure: Structure-preserving regulariser (see the class).
            structure_weight: Its weight (see the class).

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
                adapters[name] = FusionAdapter(
                    dim, shared_dim, depth=depth, expansion=expansion, dropout=dropout, hidden_dim=hidden_dim
                )
            else:
                adapters[name] = LinearAdapter(dim, shared_dim)
        return cls(adapters, loss=loss, structure=structure, structure_weight=structure_weight)

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

    def forward(
        self,
        batch: Mapping[str, Tensor],
        *,
        return_dict: bool = False,
        masks: Mapping[str, Tensor] | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """Project every modality of ``batch`` and return the loss.

        Args:
            batch: Modality name to latents; row ``i`` of every tensor is one
                paired example. Shape of each: ``(B, D_modality)``.
            return_dict: Passed to the loss (per-pair losses as a dict). With
                a structure term the dict also holds ``"alignment"`` (the
                loss module's value), ``"structure"`` (the unweighted
                structure term) and ``"loss"`` (the weighted total).
            masks: Optional modality name to boolean presence flags per row
                (shape ``(B,)``; modalities left out are present in every
                row), for batches whose rows lack some modalities; absent
                rows' latents may be any finite filler (e.g. zeros). Passed
                to the loss (which must accept ``masks``, as
                :class:`~fusemix.ContrastiveLoss` and
                :class:`~fusemix.SigLIPLoss` do) and to the structure term.

        Returns:
            The loss (scalar) or the dict.

        Raises:
            TypeError: If ``batch`` or ``masks`` is not a dict, or the loss
                does not accept masks.
            KeyError: If a modality of ``batch`` or ``masks`` has no adapter
                or no latents.

        """
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch: expected a dict of modality name to latents, got {type(batch).__name__}")
        unknown = [k for k in batch if k not in self.adapters]
        if unknown:
            raise KeyError(f"batch: modalities {unknown} have no adapter; known: {self.modalities}")
        extra: dict[str, Mapping[str, Tensor]] = {}
        if masks is not None:
            if not isinstance(masks, Mapping):
                raise TypeError(f"masks: expected a dict of modality name to boolean mask, got {type(masks).__name__}")
            stray = [k for k in masks if k not in batch]
            if stray:
                raise KeyError(f"masks: modalities {stray} are not in the batch {list(batch)}")
            if not loss_accepts_masks(self.loss):
                raise TypeError(
                    f"masks: the model's loss ({type(self.loss).__name__}) does not take masks; use ContrastiveLoss "
                    "or SigLIPLoss for batches with missing modalities"
                )
            extra["masks"] = masks
        features = {name: self.project(name, x) for name, x in batch.items()}
        with_structure = self.structure is not None and (self.structure_weight > 0 or return_dict)
        if not with_structure:
            return self.loss(features, return_dict=return_dict, **extra)
        parts = self.loss(features, return_dict=True, **extra) if return_dict else None
        alignment = parts["loss"] if parts is not None else self.loss(features, return_dict=False, **extra)
        structure = self.structure_term(batch, features, masks)
        total = alignment + self.structure_weight * structure if self.structure_weight > 0 else alignment
        if parts is None:
            return total
        return {**parts, "loss": total, "alignment": alignment, "structure": structure}

    def structure_term(
        self, latents: Mapping[str, Tensor], features: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """The unweighted structure term over the modalities whose adapter is not an identity.

        Args:
            latents: Modality name to the latents fed to the adapters.
                Shape of each: ``(B, D_modality)``.
            features: Modality name to the adapters' outputs. Shape of each:
                ``(B, shared_dim)``.
            masks: Optional presence flags, as for :meth:`forward`.

        Returns:
            Scalar; zero (depending on ``features``) when every modality's
            adapter is an :class:`~fusemix.IdentityAdapter` (whose term is 0).

        Raises:
            RuntimeError: If the model has no structure term.

        """
        if self.structure is None:
            raise RuntimeError("structure_term: the model has no structure term; pass structure= or structure_weight=")
        names = [m for m in features if not isinstance(self.adapters[m], IdentityAdapter)]
        if not names:
            return next(iter(features.values())).sum() * 0.0
        kept_masks = None if masks is None else {m: v for m, v in masks.items() if m in names}
        return self.structure({m: latents[m] for m in names}, {m: features[m] for m in names}, masks=kept_masks)

    def extra_repr(self) -> str:
        return f"structure_weight={self.structure_weight}" if self.structure is not None else ""
