"""Fusion adapters: light modules that map a frozen encoder's latents into the shared space.

:class:`FusionAdapter` is the paper's adapter (pre-LayerNorm residual MLP
blocks, then LayerNorm and a linear map to the shared space).
:class:`LinearAdapter` is a single linear map and :class:`IdentityAdapter`
keeps a space fixed (for aligning one modality into another model's space).
A :class:`~fusemix.FusionModel` holds one adapter per modality and applies it
in :meth:`~fusemix.FusionModel.project`.

Latents of any floating dtype are accepted: an adapter with parameters
casts its input to their dtype first (a float16 store's latents go into a
float32 adapter as they are; gradients flow back in the input's dtype), and
:class:`IdentityAdapter` returns its input unchanged.

Each adapter describes itself for a model directory (``to_config`` /
``from_config``, registered with ``register_part`` of ``fusemix._registry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fusemix._checks import check_bool, check_floating, check_positive_int
from fusemix._registry import register_part


def _check_input(x: Tensor, in_dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` if it is floating with a last dim of ``in_dim``, cast to ``dtype`` (``None``: kept as it is)."""
    x = check_floating("x", x)
    if x.ndim < 1 or x.shape[-1] != in_dim:
        raise ValueError(f"x: expected a last dimension of {in_dim}, got shape {tuple(x.shape)}")
    return x if dtype is None else x.to(dtype)


class ResidualMLPBlock(nn.Module):
    """Pre-LayerNorm residual MLP block: ``x + W2(Dropout(GELU(W1(LN(x)))))``.

    Args:
        dim: Width ``d`` of the block's input and output.
        expansion: Hidden width multiplier; the hidden layer has
            ``expansion * d`` units.
        dropout: Dropout probability after the GELU.
        hidden_dim: Hidden width; overrides ``expansion`` when given.

    Shape:
        - Input: ``(*, dim)``.
        - Output: ``(*, dim)``.

    """

    def __init__(self, dim: int, *, expansion: int = 4, dropout: float = 0.0, hidden_dim: int | None = None) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("expansion", expansion)
        hidden = expansion * dim if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
        _check_dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


def _check_dropout(dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")


@register_part("adapter", "fusion")
class FusionAdapter(nn.Module):
    """The paper's fusion adapter: ``depth`` residual MLP blocks, then ``LayerNorm -> Linear``.

    With the authors' settings (``depth=4``, ``expansion=4``,
    ``dropout=0.6``, ``out_dim=512``) it has ``32 d^2 + 542 d + 512``
    parameters for a ``d``-dimensional latent: 76.3M for a 1536-d DINOv2
    ViT-G/14 latent, 34.1M for a 1024-d BGE-large latent.

    Args:
        in_dim: Dimension of the frozen encoder's latent.
        out_dim: Dimension of the shared space (the paper uses 512).
        depth: Number of residual blocks (the paper uses 4; 0 gives
            ``LayerNorm -> Linear``).
        expansion: Hidden width multiplier of each block.
        dropout: Dropout probability inside each block (the paper uses 0.6).
        hidden_dim: Hidden width of each block, overriding ``expansion``:
            a cheaper adapter for wide latents (``hidden_dim=256`` on a
            1280-d latent costs a fifth of ``expansion=1``).

    Shape:
        - Input: ``(*, in_dim)``, any floating dtype (cast to the
          parameters' dtype).
        - Output: ``(*, out_dim)``, not normalised, in the parameters' dtype.

    Example:
        >>> adapter = FusionAdapter(1280, 512, depth=4, dropout=0.6)
        >>> adapter(torch.randn(8, 1280)).shape
        torch.Size([8, 512])

    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        depth: int = 4,
        expansion: int = 4,
        dropout: float = 0.0,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth: expected an int >= 0, got {depth!r}")
        self.blocks = nn.Sequential(
            *(
                ResidualMLPBlock(in_dim, expansion=expansion, dropout=dropout, hidden_dim=hidden_dim)
                for _ in range(depth)
            )
        )
        _check_dropout(dropout)
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Map latents to the shared space.

        Args:
            x: Frozen-encoder latents, any floating dtype (cast to the
                parameters' dtype). Shape: ``(*, in_dim)``.

        Returns:
            Shared-space features. Shape: ``(*, out_dim)``.

        """
        x = _check_input(x, self.in_dim, self.proj.weight.dtype)
        return self.proj(self.norm(self.blocks(x)))

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this adapter: ``in_dim``, ``out_dim``, ``depth``, ``hidden_dim``, ``dropout``."""
        blocks = list(self.blocks)
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "depth": len(blocks),
            "hidden_dim": blocks[0].fc1.out_features if blocks else None,
            "dropout": float(blocks[0].drop.p) if blocks else 0.0,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FusionAdapter:
        """An adapter with fresh weights from :meth:`to_config`'s settings (``expansion`` too, when given)."""
        return cls(
            config["in_dim"],
            config["out_dim"],
            depth=config["depth"],
            expansion=config.get("expansion", 4),
            hidden_dim=config.get("hidden_dim"),
            dropout=config["dropout"],
        )


@register_part("adapter", "linear")
class LinearAdapter(nn.Module):
    """A single linear map into the shared space.

    Args:
        in_dim: Dimension of the latent.
        out_dim: Dimension of the shared space.
        bias: Whether the map has a bias.

    Shape:
        - Input: ``(*, in_dim)``, any floating dtype (cast to the weight's dtype).
        - Output: ``(*, out_dim)``.

    Example:
        >>> LinearAdapter(384, 128)(torch.randn(2, 384)).shape
        torch.Size([2, 128])

    """

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=check_bool("bias", bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(_check_input(x, self.in_dim, self.proj.weight.dtype))

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this adapter: ``in_dim``, ``out_dim``, ``bias``."""
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "bias": self.proj.bias is not None}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LinearAdapter:
        """An adapter with fresh weights from :meth:`to_config`'s settings."""
        return cls(config["in_dim"], config["out_dim"], bias=config["bias"])


@register_part("adapter", "identity")
class IdentityAdapter(nn.Module):
    """Keeps a space as it is: for a target space that must stay fixed.

    Args:
        dim: Dimension of the latent; inputs of another width are refused.

    Shape:
        - Input: ``(*, dim)``, any floating dtype.
        - Output: the input itself (same dtype: there are no parameters to
          cast to; the losses score features of two dtypes in the wider one).

    Example:
        >>> x = torch.randn(2, 5)
        >>> IdentityAdapter(5)(x) is x
        True

    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = check_positive_int("dim", dim)

    def forward(self, x: Tensor) -> Tensor:
        return _check_input(x, self.in_dim)

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this adapter: ``dim``."""
        return {"dim": self.in_dim}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IdentityAdapter:
        """The adapter :meth:`to_config`'s settings describe."""
        return cls(config["dim"])
