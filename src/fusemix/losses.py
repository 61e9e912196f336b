"""Contrastive losses over paired features of two or more modalities.

Losses take features (not logits) and return a scalar, like open_clip's
``ClipLoss``. Features are L2-normalised inside the loss. With more than two
modalities the loss is averaged over modality pairs: every pair
(``pairs="all"``) or every pair that contains an anchor modality
(``pairs="anchor"``).

Under ``torch.distributed`` (``gather_distributed=True``) each rank passes its
slice of the batch; features are gathered from every rank with gradients, so
that with ``DistributedDataParallel`` (which averages gradients over ranks)
every parameter gets exactly the gradient of the loss on the concatenated
global batch. With ``local_loss=True`` a rank scores only its own rows
against all columns (``B_local x B_global`` logits instead of
``B_global x B_global``), which gives the same gradients for less memory; the
value each rank returns is then its share, and their mean over ranks is the
global loss.

Missing modalities: ``masks=`` gives a boolean presence flag per row for each
modality. A pair of modalities is then scored only on the rows that have
both: rows missing either are left out of that pair's logits entirely (they
are neither positives nor negatives), so the pair's loss is exactly the
unmasked loss of the present rows. The total averages over the pairs with at
least 2 such rows. Absent rows may hold any finite filler (e.g. zeros); they
get zero gradient. Under ``torch.distributed`` the masks are gathered with the
features and every pair keeps its meaning on the global batch (with
``local_loss`` each rank's share is scaled by its count of present rows, so
the mean over ranks is still the global loss).

Dtypes: features of different floating dtypes are scored in the wider one
(``torch.promote_types``: float16 with float32 gives float32, float16 with
bfloat16 gives float32), so a fixed float16 target space can meet float32
adapter outputs; gradients flow back in each input's own dtype.

Zero vectors: a feature row whose L2 norm is below ``MIN_NORM`` (1e-6)
has no direction, and normalising it would give gradients of about
``1 / norm`` (around 1e12 for an exact zero), so such a row raises a
``ValueError`` naming the modality and the row. Rows marked absent with
``masks=`` are exempt: they may hold zeros.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import reduce
from itertools import combinations
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fusemix._checks import (
    check_bool,
    check_choice,
    check_features,
    check_positive,
    check_positive_int,
    check_same_rows,
)
from fusemix._registry import register_part
from fusemix.distributed import check_equal_batch_sizes, gather_with_grad, get_rank, get_world_size

MIN_NORM = 1e-6
"""Feature rows whose L2 norm is below this are refused (absent rows aside): they have no direction."""

FeatureInputs = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias, Python 3.10)
MaskInputs = Union[Sequence[Union[Tensor, None]], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias, Python 3.10)
PairMode = Literal["all", "anchor"]


def _named_features(inputs: tuple[FeatureInputs, ...]) -> list[tuple[str, Tensor]]:
    """Flatten the call forms ``loss(a, b, ...)``, ``loss((a, b))`` and ``loss({...})``."""
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        items = [(str(k), v) for k, v in inputs[0].items()]
    else:
        seq = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) else inputs
        items = [(str(i), v) for i, v in enumerate(seq)]
    if len(items) < 2:
        raise ValueError(f"features: a contrastive loss needs at least 2 modalities, got {len(items)}")
    named = [(name, check_features(f"features[{name!r}]", x, min_rows=2)) for name, x in items]
    check_same_rows([(f"features[{name!r}]", x) for name, x in named])
    common = reduce(torch.promote_types, [x.dtype for _, x in named])
    return [(name, x.to(common)) for name, x in named]


def _check_directions(named: list[tuple[str, Tensor]], masks: list[Tensor | None]) -> None:
    """Refuse feature rows too short to have a direction (norm below ``MIN_NORM``), absent rows aside.

    One host sync for all modalities; the offending row is looked up only when there is one.
    """
    short = []
    for (_, x), mask in zip(named, masks):
        flags = torch.linalg.vector_norm(x.detach(), dim=-1) < MIN_NORM
        short.append(flags if mask is None else flags & mask.to(flags.device))
    if not bool(torch.stack([flags.any().cpu() for flags in short]).any()):
        return
    for (name, _), flags in zip(named, short):
        rows = torch.nonzero(flags).flatten()
        if rows.numel():
            raise ValueError(
                f"features[{name!r}]: row {int(rows[0])} has an L2 norm below {MIN_NORM} ({rows.numel()} such "
                "row(s)); a zero vector has no direction to compare, and normalising it would give gradients of "
                "about 1 / norm; drop such rows, or mark them absent with masks="
            )


def _named_masks(
    masks: object, features: tuple[FeatureInputs, ...], named: list[tuple[str, Tensor]]
) -> list[Tensor | None]:
    """One ``(B,)`` bool mask per feature tensor (``None``: present in every row), from dict or sequence masks."""
    batch = named[0][1].shape[0]
    names = [n for n, _ in named]
    if len(features) == 1 and isinstance(features[0], Mapping):
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: dict features take a dict of modality name to mask, got {type(masks).__name__}")
        keyed = {str(k): v for k, v in masks.items()}
        unknown = [k for k in keyed if k not in names]
        if unknown:
            raise ValueError(f"masks: modalities {unknown} are not among the features {names}")
        given: list[object] = [keyed.get(n) for n in names]
    else:
        if not isinstance(masks, (tuple, list)):
            raise TypeError(
                "masks: features given as tensors take a tuple or list of masks (one per tensor, None for all "
                f"present), got {type(masks).__name__}"
            )
        if len(masks) != len(named):
            raise ValueError(f"masks: expected one mask per feature tensor ({len(named)}), got {len(masks)}")
        given = list(masks)
    out: list[Tensor | None] = []
    for name, mask in zip(names, given):
        if mask is None:
            out.append(None)
            continue
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"masks[{name!r}]: expected a boolean torch.Tensor, got {got}")
        if mask.shape != (batch,):
            raise ValueError(f"masks[{name!r}]: expected shape ({batch},) (one flag per row), got {tuple(mask.shape)}")
        out.append(mask)
    return out


def _both(a: Tensor | None, b: Tensor | None, rows: int, device: torch.device) -> Tensor | None:
    """Rows present in both modalities of a pair (``None``: every row)."""
    if a is None and b is None:
        return None
    full = torch.ones(rows, dtype=torch.bool, device=device)
    return (full if a is None else a.to(device)) & (full if b is None else b.to(device))


def _check_anchor(anchor: object) -> str | None:
    """The anchor as its name (a position becomes its string), or an error naming ``anchor``."""
    if anchor is None:
        return None
    if isinstance(anchor, bool) or not isinstance(anchor, (str, int)):
        raise TypeError(f"anchor: expected a modality name or position, got {type(anchor).__name__}")
    return str(anchor)


def _check_temperature_range(value: object) -> tuple[float, float]:
    """``(low, high)``, two numbers with ``0 < low <= high``, or an error naming ``temperature_range``."""
    wanted = "temperature_range: expected (low, high), two numbers with 0 < low <= high"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{wanted}, got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{wanted}, got {len(value)} values")
    low, high = (check_positive("temperature_range", v) for v in value)
    if low > high:
        raise ValueError(f"temperature_range: low {low} > high {high}")
    return low, high


class PairwiseContrastiveLoss(nn.Module):
    """Base class: averages a two-modality loss over modality pairs.

    Subclasses implement :meth:`pair_loss`.

    Args:
        pairs: ``"all"`` averages over every unordered pair of modalities;
            ``"anchor"`` over the pairs ``(anchor, other)``.
        anchor: Name (dict inputs) or position (tuple inputs) of the anchor
            modality; required when ``pairs="anchor"``.
        gather_distributed: Gather features from every ``torch.distributed``
            rank (with gradients) so negatives come from the global batch.
            Ignored when no process group is initialised.
        local_loss: With ``gather_distributed``, score only this rank's rows
            against the global columns.

    """

    def __init__(
        self,
        *,
        pairs: PairMode = "all",
        anchor: str | int | None = None,
        gather_distributed: bool = False,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        self.pairs = check_choice("pairs", pairs, ("all", "anchor"))
        if pairs == "anchor" and anchor is None:
            raise ValueError("anchor: pairs='anchor' needs the anchor modality's name or position")
        self.anchor = _check_anchor(anchor)
        self.gather_distributed = bool(gather_distributed)
        self.local_loss = bool(local_loss)

    def pair_loss(
        self, a: Tensor, b: Tensor, *, a_all: Tensor | None = None, b_all: Tensor | None = None, offset: int = 0
    ) -> Tensor:  # pragma: no cover - abstract
        """Loss between two L2-normalised feature matrices.

        Args:
            a: Rows of the first modality. Shape: ``(B, D)``.
            b: The paired rows of the second modality. Shape: ``(B, D)``.
            a_all: All rows of the first modality across ranks, when scoring
                local rows against global columns; ``None`` scores ``a``
                against ``b`` only. Shape: ``(B_global, D)``.
            b_all: Same for the second modality.
            offset: Position of row 0 of ``a``/``b`` inside ``a_all``/``b_all``.
        """
        raise NotImplementedError

    def _pairs(self, names: list[str]) -> list[tuple[int, int]]:
        if self.pairs == "all":
            return list(combinations(range(len(names)), 2))
        if self.anchor not in names:
            raise ValueError(f"anchor: {self.anchor!r} is not one of the inputs {names}")
        k = names.index(self.anchor)
        return [(k, j) for j in range(len(names)) if j != k]

    def forward(
        self, *features: FeatureInputs, return_dict: bool = False, masks: MaskInputs | None = None
    ) -> Tensor | dict[str, Tensor]:
        """Compute the loss.

        Args:
            *features: Two or more feature tensors (positionally, as one
                tuple/list, or as one dict of modality name to tensor); row
                ``i`` of every tensor is one positive tuple. Shape of each:
                ``(B, D_m)``, ``B >= 2``; two modalities in a pair need the
                same ``D``. Any floating dtypes: all are scored in the widest
                (see the module docstring).
            return_dict: Return ``{"loss": total, "<a>-<b>": pair loss, ...}``
                instead of the scalar.
            masks: Optional boolean presence flags per row, shape ``(B,)``: a
                dict for dict features (modalities left out are present in
                every row), else a tuple/list with one entry per tensor
                (``None``: present in every row). Each pair is scored on the
                rows that have both of its modalities only.

        Returns:
            The mean loss over modality pairs (a scalar), or the dict. With
            masks, pairs with fewer than 2 rows that have both modalities are
            left out of the mean and of the dict; when no pair is left the
            loss is a zero that still depends on every input and parameter,
            so ``backward`` works.

        Raises:
            ValueError: If a present row's L2 norm is below ``MIN_NORM``
                (a zero vector: the message names the modality and the
                row), or the inputs' shapes do not fit.
            TypeError: If a feature tensor is not floating, or a mask is not boolean.

        Example:
            >>> loss_fn = ContrastiveLoss()
            >>> feats = {"image": torch.randn(6, 4), "text": torch.randn(6, 4), "audio": torch.randn(6, 4)}
            >>> has_audio = torch.tensor([True, True, True, False, False, False])
            >>> parts = loss_fn(feats, masks={"audio": has_audio}, return_dict=True)
            >>> torch.allclose(parts["image-audio"], loss_fn(feats["image"][:3], feats["audio"][:3]))
            True

        """
        named = _named_features(features)
        names = [n for n, _ in named]
        mask_list = [None] * len(named) if masks is None else _named_masks(masks, features, named)
        _check_directions(named, mask_list)
        normed = [F.normalize(x, dim=-1) for _, x in named]
        pairs = self._pairs(names)
        for i, j in pairs:
            if normed[i].shape[1] != normed[j].shape[1]:
                raise ValueError(
                    f"features: modalities {names[i]!r} and {names[j]!r} have different dims "
                    f"({normed[i].shape[1]} vs {normed[j].shape[1]}); project them to a shared space first"
                )
        gathered: list[Tensor] | None = None
        gathered_masks: list[Tensor | None] = mask_list
        if self.gather_distributed and get_world_size() > 1:
            check_equal_batch_sizes(normed[0].shape[0], normed[0].device)
            gathered = [gather_with_grad(x) for x in normed]
            gathered_masks = [
                None if m is None else gather_with_grad(m.to(device=x.device, dtype=x.dtype)) > 0.5
                for m, x in zip(mask_list, normed)
            ]
        parts: dict[str, Tensor] = {}
        for i, j in pairs:
            key = f"{names[i]}-{names[j]}"
            if gathered is None:
                part = self._local_pair(normed[i], normed[j], _both(mask_list[i], mask_list[j], *self._where(normed)))
            else:
                rows = _both(gathered_masks[i], gathered_masks[j], *self._where(gathered))
                part = self._gathered_pair(normed[i], normed[j], gathered[i], gathered[j], rows)
            if part is not None:
                parts[key] = part
        if parts:
            total = torch.stack(list(parts.values())).mean()
        else:
            total = self._connected_zero(normed)
        return {"loss": total, **parts} if return_dict else total

    @staticmethod
    def _where(tensors: list[Tensor]) -> tuple[int, torch.device]:
        return tensors[0].shape[0], tensors[0].device

    def _connected_zero(self, tensors: list[Tensor]) -> Tensor:
        """A zero that depends on every input and parameter (so DDP and ``backward`` see them all)."""
        terms = [x.sum() for x in tensors] + [p.sum().to(tensors[0].dtype) for p in self.parameters()]
        return torch.stack(terms).sum() * 0.0

    def _local_pair(self, a: Tensor, b: Tensor, rows: Tensor | None) -> Tensor | None:
        """One process: the pair's loss over ``rows`` (``None``: all), or ``None`` with fewer than 2 rows."""
        if rows is None or bool(rows.all()):
            return self.pair_loss(a, b)
        if int(rows.sum()) < 2:
            return None
        return self.pair_loss(a[rows], b[rows])

    def _gathered_pair(self, a: Tensor, b: Tensor, a_all: Tensor, b_all: Tensor, rows: Tensor | None) -> Tensor | None:
        """Several processes: the pair's loss (or this rank's share) over the global ``rows``."""
        if rows is not None and bool(rows.all()):
            rows = None
        if not self.local_loss:
            if rows is None:
                return self.pair_loss(a_all, b_all)
            return self.pair_loss(a_all[rows], b_all[rows]) if int(rows.sum()) >= 2 else None
        offset = get_rank() * a.shape[0]
        if rows is None:
            return self.pair_loss(a, b, a_all=a_all, b_all=b_all, offset=offset)
        n_global = int(rows.sum())
        if n_global < 2:
            return None
        mine = rows[offset : offset + a.shape[0]]
        n_local = int(mine.sum())
        if n_local == 0:  # nothing of this rank in the pair: a zero share that keeps the graph whole
            return self.pair_loss(a, b, a_all=a_all, b_all=b_all, offset=offset) * 0.0
        share = self.pair_loss(a[mine], b[mine], a_all=a_all[rows], b_all=b_all[rows], offset=int(rows[:offset].sum()))
        # pair_loss averages over this rank's rows; rescale so that the mean over ranks is the global mean.
        return share * (n_local * get_world_size() / n_global)


@register_part("loss", "contrastive")
class ContrastiveLoss(PairwiseContrastiveLoss):
    """Symmetric InfoNCE (CLIP) loss with a learnable temperature.

    For L2-normalised features ``a`` and ``b`` of shape ``(B, D)``,
    ``logits = a @ b.T / temperature`` and the loss is the mean of the
    cross-entropies of ``logits`` and ``logits.T`` against the diagonal.

    Two parameterisations of the temperature:

    - ``"temperature"`` (default, the FuseMix authors' code): a parameter
      ``temperature`` initialised at ``temperature_init`` (0.07), clamped in
      place to ``temperature_range`` (``[0.001, 0.5]``) at every forward, and
      ``logits = sim / temperature``.
    - ``"logit_scale"`` (CLIP / open_clip): a parameter ``logit_scale``
      initialised at ``log(1 / temperature_init)``, clamped in place to
      ``[0, log(max_logit_scale)]`` at every forward (open_clip clamps after
      each optimiser step; the effect is the same), and
      ``logits = exp(logit_scale) * sim``.

    Args:
        temperature_init: Initial temperature (> 0).
        learnable: Learn the temperature; ``False`` keeps it fixed (a buffer).
        parameterization: ``"temperature"`` or ``"logit_scale"``.
        temperature_range: ``(low, high)`` clamp of the ``"temperature"``
            parameterisation.
        max_logit_scale: Upper bound of ``exp(logit_scale)`` in the
            ``"logit_scale"`` parameterisation (CLIP uses 100).
        pairs: ``"all"`` or ``"anchor"``, for more than two modalities.
        anchor: The anchor modality for ``pairs="anchor"``.
        gather_distributed: Use negatives from every ``torch.distributed``
            rank (see the module docstring).
        local_loss: Score local rows against global columns only.

    Shape:
        - Input: two or more tensors of shape ``(B, D)``.
        - Output: scalar.

    Example:
        >>> loss_fn = ContrastiveLoss()
        >>> img, txt = torch.randn(8, 32), torch.randn(8, 32)
        >>> loss = loss_fn(img, txt)
        >>> loss.shape, round(loss_fn.temperature.item(), 2)
        (torch.Size([]), 0.07)

    """

    def __init__(
        self,
        *,
        temperature_init: float = 0.07,
        learnable: bool = True,
        parameterization: Literal["temperature", "logit_scale"] = "temperature",
        temperature_range: tuple[float, float] = (0.001, 0.5),
        max_logit_scale: float = 100.0,
        pairs: PairMode = "all",
        anchor: str | int | None = None,
        gather_distributed: bool = False,
        local_loss: bool = False,
    ) -> None:
        super().__init__(pairs=pairs, anchor=anchor, gather_distributed=gather_distributed, local_loss=local_loss)
        temperature_init = check_positive("temperature_init", temperature_init)
        self.parameterization = check_choice("parameterization", parameterization, ("temperature", "logit_scale"))
        low, high = _check_temperature_range(temperature_range)
        if not low <= temperature_init <= high and parameterization == "temperature":
            raise ValueError(f"temperature_range: ({low}, {high}) does not contain temperature_init={temperature_init}")
        self.temperature_range = (low, high)
        self.max_logit_scale = check_positive("max_logit_scale", max_logit_scale)
        if parameterization == "temperature":
            init = torch.tensor(temperature_init)
            self._clamp = (low, high)
        else:
            init = torch.tensor(math.log(1.0 / temperature_init))
            self._clamp = (0.0, math.log(self.max_logit_scale))
        name = parameterization
        if check_bool("learnable", learnable):
            self.register_parameter(name, nn.Parameter(init))
        else:
            self.register_buffer(name, init)

    @property
    def temperature_param(self) -> Tensor:
        """The stored tensor, ``temperature`` or ``logit_scale`` depending on the parameterisation."""
        return getattr(self, self.parameterization)

    def current_temperature(self) -> Tensor:
        """The temperature the next forward uses (after clamping), as a 0-d tensor."""
        low, high = self._clamp
        value = self.temperature_param.detach().clamp(low, high)
        return value if self.parameterization == "temperature" else torch.exp(-value)

    def scale_logits(self, sim: Tensor) -> Tensor:
        """Turn cosine similarities into logits with the current temperature."""
        param = self.temperature_param
        if self.parameterization == "temperature":
            return sim / param
        return sim * param.exp()

    def forward(
        self, *features: FeatureInputs, return_dict: bool = False, masks: MaskInputs | None = None
    ) -> Tensor | dict[str, Tensor]:
        # Clamp in place before use, as the authors' code does. Through ``.data`` so
        # the clamp does not invalidate graphs of earlier calls awaiting backward.
        self.temperature_param.data.clamp_(*self._clamp)
        return super().forward(*features, return_dict=return_dict, masks=masks)

    def pair_loss(
        self, a: Tensor, b: Tensor, *, a_all: Tensor | None = None, b_all: Tensor | None = None, offset: int = 0
    ) -> Tensor:
        labels = torch.arange(a.shape[0], device=a.device) + offset
        if a_all is None or b_all is None:
            logits = self.scale_logits(a @ b.T)
            return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        a_to_b = F.cross_entropy(self.scale_logits(a @ b_all.T), labels)
        b_to_a = F.cross_entropy(self.scale_logits(b @ a_all.T), labels)
        return 0.5 * (a_to_b + b_to_a)

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this loss (the temperature's value is a weight, saved with them).

        Returns:
            ``{"parameterization", "learnable", "temperature_range",
            "max_logit_scale", "pairs", "anchor"}``; the distributed settings
            are left out (they belong to a run, not to the model).

        """
        return {
            "parameterization": self.parameterization,
            "learnable": isinstance(self.temperature_param, nn.Parameter),
            "temperature_range": list(self.temperature_range),
            "max_logit_scale": self.max_logit_scale,
            "pairs": self.pairs,
            "anchor": self.anchor,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ContrastiveLoss:
        """A loss from :meth:`to_config`'s settings; its temperature starts in range until weights are loaded."""
        low, high = _check_temperature_range(config["temperature_range"])
        return cls(
            temperature_init=low if config["parameterization"] == "temperature" else 0.07,
            learnable=config["learnable"],
            parameterization=config["parameterization"],
            temperature_range=(low, high),
            max_logit_scale=config["max_logit_scale"],
            pairs=config["pairs"],
            anchor=config["anchor"],
        )

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization!r}, pairs={self.pairs!r}"


@register_part("loss", "siglip")
class SigLIPLoss(PairwiseContrastiveLoss):
    """Sigmoid pairwise loss (SigLIP, Zhai et al. 2023) with learnable scale and bias.

    ``logits = exp(logit_scale) * a @ b.T + logit_bias``; every pair is an
    independent binary problem (``+1`` on the diagonal, ``-1`` off it) and the
    loss is ``-sum(logsigmoid(labels * logits)) / B``. The initialisation is
    SigLIP's: ``exp(logit_scale) = 10``, ``logit_bias = -10``.

    Args:
        logit_scale_init: Initial ``exp(logit_scale)`` (> 0).
        logit_bias_init: Initial bias.
        learnable: Learn scale and bias; ``False`` keeps them fixed.
        chunk_size: If set, compute the loss over blocks of ``chunk_size``
            columns, recomputing each block in the backward pass, so at most
            ``B * chunk_size`` logits exist at any time and the ``B x B``
            matrix is never built. Same value and gradients, more compute.
        pairs: ``"all"`` or ``"anchor"``, for more than two modalities.
        anchor: The anchor modality for ``pairs="anchor"``.
        gather_distributed: Use negatives from every ``torch.distributed``
            rank (see the module docstring).
        local_loss: Score local rows against global columns only.

    Shape:
        - Input: two or more tensors of shape ``(B, D)``.
        - Output: scalar.

    Example:
        >>> loss_fn = SigLIPLoss(chunk_size=4)
        >>> loss_fn(torch.randn(8, 32), torch.randn(8, 32)).shape
        torch.Size([])

    """

    def __init__(
        self,
        *,
        logit_scale_init: float = 10.0,
        logit_bias_init: float = -10.0,
        learnable: bool = True,
        chunk_size: int | None = None,
        pairs: PairMode = "all",
        anchor: str | int | None = None,
        gather_distributed: bool = False,
        local_loss: bool = False,
    ) -> None:
        super().__init__(pairs=pairs, anchor=anchor, gather_distributed=gather_distributed, local_loss=local_loss)
        scale = torch.tensor(math.log(check_positive("logit_scale_init", logit_scale_init)))
        if isinstance(logit_bias_init, bool) or not isinstance(logit_bias_init, (int, float)):
            raise TypeError(f"logit_bias_init: expected a number, got {type(logit_bias_init).__name__}")
        if not math.isfinite(logit_bias_init):
            raise ValueError(f"logit_bias_init: expected a finite number, got {logit_bias_init}")
        bias = torch.tensor(float(logit_bias_init))
        self.chunk_size = None if chunk_size is None else check_positive_int("chunk_size", chunk_size)
        if check_bool("learnable", learnable):
            self.logit_scale = nn.Parameter(scale)
            self.logit_bias = nn.Parameter(bias)
        else:
            self.register_buffer("logit_scale", scale)
            self.register_buffer("logit_bias", bias)

    def _block_loss(self, a: Tensor, b_block: Tensor, diagonal: int, scale: Tensor, bias: Tensor) -> Tensor:
        """Summed loss of rows ``a`` against columns ``b_block``; row ``i`` is positive with column ``i - diagonal``."""
        logits = scale * (a @ b_block.T) + bias
        rows = torch.arange(a.shape[0], device=a.device)
        cols = torch.arange(b_block.shape[0], device=a.device) + diagonal
        labels = (rows[:, None] == cols[None, :]).to(logits.dtype) * 2 - 1
        return -F.logsigmoid(labels * logits).sum()

    def pair_loss(
        self, a: Tensor, b: Tensor, *, a_all: Tensor | None = None, b_all: Tensor | None = None, offset: int = 0
    ) -> Tensor:
        # Every (row, column) pair is its own binary problem, so scoring a's rows
        # against all of b's columns covers each pair exactly once.
        columns = b if b_all is None else b_all
        scale = self.logit_scale.exp()
        n, m = a.shape[0], columns.shape[0]
        if self.chunk_size is None or self.chunk_size >= m:
            return self._block_loss(a, columns, -offset, scale, self.logit_bias) / n
        total = a.new_zeros(())
        for start in range(0, m, self.chunk_size):
            block = columns[start : start + self.chunk_size]
            total = total + checkpoint(
                self._block_loss, a, block, start - offset, scale, self.logit_bias, use_reentrant=False
            )
        return total / n

    def to_config(self) -> dict[str, Any]:
        """The settings that rebuild this loss: ``learnable``, ``chunk_size``, ``pairs``, ``anchor``.

        Scale and bias are weights, saved with them; the distributed settings
        are left out (they belong to a run, not to the model).
        """
        return {
            "learnable": isinstance(self.logit_scale, nn.Parameter),
            "chunk_size": self.chunk_size,
            "pairs": self.pairs,
            "anchor": self.anchor,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SigLIPLoss:
        """A loss from :meth:`to_config`'s settings, with SigLIP's initial scale and bias."""
        return cls(
            learnable=config["learnable"],
            chunk_size=config["chunk_size"],
            pairs=config["pairs"],
            anchor=config["anchor"],
        )

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}, pairs={self.pairs!r}"
