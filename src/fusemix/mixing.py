"""FuseMix: mixup in latent space, shared across modalities.

FuseMix (Vouitsis et al., CVPR 2024) draws one mixing coefficient
``lam ~ Beta(alpha, alpha)`` and one pairing of rows ``(a, b)`` and applies
them to the latents of *every* modality::

    x_mix = lam * x[a] + (1 - lam) * x[b]
    y_mix = lam * y[a] + (1 - lam) * y[b]

Because ``lam`` and ``(a, b)`` are shared, ``(x_mix, y_mix)`` is again a valid
positive pair for a contrastive loss.

Rows may lack some modalities (a dataset of image-text, audio-text and
image-audio pairs, say). Pass ``masks=``, a boolean presence flag per row for
each modality, and FuseMix pairs rows only with rows of the same presence
pattern (where it can; see :func:`sample_mix_params`), so a mixed row takes
each of its modalities from two rows that both have it. The output masks are
the AND of the two rows' masks, so a mixed value that any of its two rows
lacked is marked absent and a masked loss never sees it.

This module holds the transform (:class:`FuseMix`), its functional form
(:func:`sample_mix_params`, :func:`mix_latents`, :func:`~fusemix.mix_masks`) and the
latent-noise baseline (:class:`LatentNoise`); the alpha schedules of the
authors' code are in :mod:`fusemix.schedules` (and importable from here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from fusemix._checks import (
    check_choice,
    check_floating,
    check_mask,
    check_positive,
    check_positive_int,
    check_same_rows,
)
from fusemix.schedules import AlphaSchedule, CosineAlphaSchedule, ExponentialAlphaSchedule

Pairing = Literal["halves", "permute"]
PAIRINGS: tuple[str, ...] = ("halves", "permute")

LatentInputs = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias, Python 3.10)
MaskInputs = Union[Tensor, Sequence[Union[Tensor, None]], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias)
Mixed = Union[LatentInputs, tuple[LatentInputs, LatentInputs]]  # noqa: UP007 (runtime alias, Python 3.10)
"""What an augmentation returns: the latents in their input structure, or ``(latents, masks)`` with masks."""


@dataclass(frozen=True)
class MixParams:
    """The random draw behind one FuseMix call, replayable on other tensors.

    Attributes:
        lam: Mixing weights given to ``x[index_a]``. Shape: ``(groups, rows)``
            in float64, where ``rows`` is the number of output rows and
            ``groups`` is 1 when every modality shares the weights (the
            method) or the number of modalities when they do not (the
            ablation ``share_lambda=False``). With one lambda per batch all
            entries of a group are equal.
        index_a: Row of the input each output row takes with weight ``lam``.
            Shape: ``(rows,)``, int64.
        index_b: Row of the input each output row takes with weight
            ``1 - lam``. Shape: ``(rows,)``, int64.
        batch_size: Number of input rows the draw was made for.
        pairing: ``"halves"`` or ``"permute"``.

    """

    lam: Tensor
    index_a: Tensor
    index_b: Tensor
    batch_size: int
    pairing: str

    @property
    def rows(self) -> int:
        """Number of output rows."""
        return int(self.index_a.shape[0])


def _check_batch_size(batch_size: int, pairing: str, name: str = "batch_size") -> None:
    if batch_size < 2:
        raise ValueError(f"{name}: FuseMix needs a batch of at least 2 rows to mix, got {batch_size}")
    if pairing == "halves" and batch_size % 2:
        raise ValueError(
            f"{name}: pairing='halves' mixes the first half of the batch with the second and needs an even "
            f"batch, got {batch_size} rows; use an even batch or pairing='permute'"
        )


def _check_batch(named: Sequence[tuple[str, Tensor]]) -> int:
    """Return the shared, non-empty batch size of ``named`` tensors or raise ``ValueError``."""
    if not named:
        raise ValueError("inputs: expected at least one tensor, got none")
    for name, x in named:
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(
                f"{name}: expected a non-empty batch with a leading batch dimension, got shape {tuple(x.shape)}"
            )
    return check_same_rows(named)


def _seeded_numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded by one draw from ``generator`` (or torch's global RNG).

    All randomness of a FuseMix call flows from that single draw, so
    ``torch.manual_seed`` or a seeded ``torch.Generator`` fixes the result, while
    NumPy's well-tested Beta sampler does the sampling.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device).item()
    return np.random.default_rng(int(seed))


def _check_presence(presence: object, batch_size: int) -> np.ndarray:
    """``presence`` as a ``(B, M)`` NumPy bool array, or raise naming the argument."""
    if not isinstance(presence, Tensor):
        raise TypeError(f"presence: expected a boolean torch.Tensor, got {type(presence).__name__}")
    if presence.dtype != torch.bool:
        raise TypeError(f"presence: expected a boolean tensor, got dtype {presence.dtype}")
    if presence.ndim != 2 or presence.shape[0] != batch_size or presence.shape[1] < 1:
        raise ValueError(
            f"presence: expected shape ({batch_size}, M) (one flag per row and modality), got {tuple(presence.shape)}"
        )
    return presence.detach().cpu().numpy()


def _pattern_groups(presence: np.ndarray) -> list[np.ndarray]:
    """Row indices of each presence pattern (ascending), patterns in lexicographic order."""
    _, inverse = np.unique(presence, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]


def _grouped_pairing(presence: np.ndarray, pairing: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(index_a, index_b)`` pairing rows within their presence pattern; see :func:`sample_mix_params`."""
    groups = _pattern_groups(presence)
    if pairing == "permute":
        index_b = np.arange(presence.shape[0])
        for rows in groups:
            index_b[rows] = rows[rng.permutation(len(rows))]
        return np.arange(presence.shape[0]), index_b
    firsts, seconds, leftovers = [], [], []
    for rows in groups:
        half = len(rows) // 2
        firsts.append(rows[:half])
        seconds.append(rows[half : 2 * half])
        if len(rows) % 2:
            leftovers.append(rows[-1])
    left = np.asarray(leftovers, dtype=np.int64)  # an even count: the batch and the paired rows are even
    firsts.append(left[: len(left) // 2])
    seconds.append(left[len(left) // 2 :])
    index_a, index_b = np.concatenate(firsts), np.concatenate(seconds)
    order = np.argsort(index_a, kind="stable")
    return index_a[order], index_b[order]


def sample_mix_params(
    batch_size: int,
    alpha: float = 1.0,
    *,
    pairing: Pairing = "halves",
    per_sample: bool = False,
    groups: int = 1,
    generator: torch.Generator | None = None,
    presence: Tensor | None = None,
) -> MixParams:
    """Draw the mixing coefficients and the pairing for one FuseMix call.

    With ``presence`` (which modalities each row has), rows are paired within
    their presence pattern: ``"permute"`` draws one permutation per pattern
    (a row alone in its pattern is paired with itself and comes out
    unmixed); ``"halves"`` mixes the first half of each pattern's rows with
    its second half, in batch order, and pairs the one row left over by each
    odd-sized pattern with another such row (first half of the leftovers with
    the second half), so the output keeps exactly ``B/2`` rows, every input
    row used once. Only those leftover pairs mix rows of different patterns;
    they keep just the modalities both rows have (see :func:`mix_masks`).
    When every row has the same pattern the draw is the one made without
    ``presence``.

    Args:
        batch_size: Number of input rows ``B``.
        alpha: Concentration of the symmetric ``Beta(alpha, alpha)``; 1.0 is
            uniform on ``[0, 1]`` (the paper's setting).
        pairing: ``"halves"`` mixes row ``i`` with row ``i + B/2`` and returns
            ``B/2`` rows (the authors' code); ``"permute"`` mixes row ``i``
            with row ``perm[i]`` of a random permutation and returns ``B`` rows.
        per_sample: Draw one lambda per output row instead of one per batch.
        groups: Number of independent lambda sets; 1 shares lambda across
            modalities (FuseMix). More is only for ablations.
        generator: Source of randomness; torch's global RNG when ``None``.
        presence: Optional boolean presence flags, one column per modality.
            Shape: ``(B, M)``.

    Returns:
        The drawn :class:`MixParams`.

    Raises:
        ValueError: If ``batch_size < 2``, ``pairing="halves"`` with an odd
            batch, ``alpha <= 0``, an unknown ``pairing`` or a ``presence`` of
            the wrong shape.
        TypeError: If ``presence`` is not a boolean tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = sample_mix_params(8, 1.0, pairing="halves", generator=g)
        >>> p.lam.shape, p.index_a.tolist(), p.index_b.tolist()
        (torch.Size([1, 4]), [0, 1, 2, 3], [4, 5, 6, 7])
        >>> has_audio = torch.tensor([True, True, False, False, True, False, True, False])
        >>> p = sample_mix_params(8, pairing="halves", presence=has_audio[:, None], generator=g)
        >>> p.index_a.tolist(), p.index_b.tolist()  # rows with audio are mixed only with rows with audio
        ([0, 1, 2, 3], [4, 6, 5, 7])

    """
    check_choice("pairing", pairing, PAIRINGS)
    alpha = check_positive("alpha", alpha)
    check_positive_int("groups", groups)
    check_positive_int("batch_size", batch_size)
    _check_batch_size(batch_size, pairing)
    flags = None if presence is None else _check_presence(presence, batch_size)
    rng = _seeded_numpy_rng(generator)
    rows = batch_size // 2 if pairing == "halves" else batch_size
    if flags is not None:
        first, second = _grouped_pairing(flags, pairing, rng)
        index_a, index_b = torch.from_numpy(first), torch.from_numpy(second)
    elif pairing == "halves":
        index_a = torch.arange(rows)
        index_b = torch.arange(rows, batch_size)
    else:
        index_a = torch.arange(rows)
        index_b = torch.from_numpy(rng.permutation(batch_size))
    draws = rng.beta(alpha, alpha, size=(groups, rows if per_sample else 1))
    lam = torch.from_numpy(np.broadcast_to(draws, (groups, rows)).copy())
    return MixParams(
        lam=lam,
        index_a=index_a.to(torch.int64),
        index_b=index_b.to(torch.int64),
        batch_size=batch_size,
        pairing=pairing,
    )


def mix_latents(latents: Sequence[Tensor], params: MixParams) -> list[Tensor]:
    """Apply one FuseMix draw to every tensor of ``latents``.

    Output row ``r`` of modality ``m`` is
    ``lam[g, r] * x_m[index_a[r]] + (1 - lam[g, r]) * x_m[index_b[r]]`` with
    ``g = 0`` when lambda is shared, else ``g = m``. Inputs are not modified.

    Args:
        latents: Floating tensors sharing the leading batch dimension.
            Shape of each: ``(B, *)``, e.g. ``(B, D)`` or ``(B, T, D)``.
        params: A draw from :func:`sample_mix_params` made for ``B`` rows.

    Returns:
        The mixed tensors, in order. Shape of each: ``(rows, *)``.

    Raises:
        TypeError: If a tensor is not floating point.
        ValueError: If batch sizes differ from each other or from the draw,
            or the draw has a lambda group count that fits neither 1 nor
            ``len(latents)``.

    """
    named = [(f"latents[{i}]", check_floating(f"latents[{i}]", x)) for i, x in enumerate(latents)]
    return _mix_named(named, params)


def mix_masks(masks: Sequence[Tensor], params: MixParams) -> list[Tensor]:
    """The presence masks of the rows a FuseMix draw outputs: present where both mixed rows are.

    Output row ``r`` of modality ``m`` is present iff
    ``masks[m][index_a[r]] and masks[m][index_b[r]]``, so a value mixed from a
    row that lacked the modality is always marked absent.

    Args:
        masks: Boolean presence flags per modality. Shape of each: ``(B,)``.
        params: A draw from :func:`sample_mix_params` made for ``B`` rows.

    Returns:
        The output masks, on the devices of the inputs. Shape of each:
        ``(rows,)``.

    Raises:
        TypeError: If a mask is not a boolean tensor.
        ValueError: If a mask does not have shape ``(B,)``.

    Example:
        >>> p = sample_mix_params(4, pairing="halves", generator=torch.Generator().manual_seed(0))
        >>> mix_masks([torch.tensor([True, True, True, False])], p)
        [tensor([ True, False])]

    """
    out = []
    for i, mask in enumerate(masks):
        mask = check_mask(f"masks[{i}]", mask, params.batch_size)
        a, b = params.index_a.to(mask.device), params.index_b.to(mask.device)
        out.append(mask[a] & mask[b])
    return out


def _is_contiguous_halves(params: MixParams) -> bool:
    """Whether the draw mixes rows ``[0, B/2)`` with ``[B/2, B)`` in order (sliced without copies)."""
    rows = params.rows
    return (
        params.pairing == "halves"
        and 2 * rows == params.batch_size
        and torch.equal(params.index_a.cpu(), torch.arange(rows))
        and torch.equal(params.index_b.cpu(), torch.arange(rows, 2 * rows))
    )


def _mix_named(named: Sequence[tuple[str, Tensor]], params: MixParams) -> list[Tensor]:
    batch = _check_batch(named)
    if batch != params.batch_size:
        raise ValueError(f"params: drawn for a batch of {params.batch_size} rows, but the inputs have {batch}")
    groups = params.lam.shape[0]
    if groups not in (1, len(named)):
        raise ValueError(f"params: holds {groups} lambda groups, which fits neither 1 nor the {len(named)} inputs")
    half = params.rows
    contiguous = _is_contiguous_halves(params)
    out = []
    for m, (_, x) in enumerate(named):
        weight_a, weight_b = _mix_weights(params.lam[0 if groups == 1 else m], x)
        if contiguous:
            xa, xb = x[:half], x[half : 2 * half]
        else:
            xa, xb = x[params.index_a.to(x.device)], x[params.index_b.to(x.device)]
        out.append(weight_a * xa + weight_b * xb)
    return out


def _mix_weights(lam: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The weights ``(lam, 1 - lam)`` of one lambda group, ready to multiply the rows of ``x``.

    ``1 - lam`` is computed in float64 before both are cast to ``x``'s dtype,
    as the authors' code does (a float64 ``lam`` times a tensor), so float32
    mixing is bit-equal to theirs; ``1 - float32(lam)`` would differ in the
    last bit for some draws.

    Args:
        lam: One group of :attr:`MixParams.lam`: float64 (another floating dtype is widened first).
            Shape: ``(rows,)``.
        x: The latents to mix. Shape: ``(B, *)``.

    Returns:
        The two weights in ``x``'s dtype and on its device. Shape of each: ``(rows, 1, ...)``, broadcastable
        against ``(rows, *)``.

    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    lam = lam.to(torch.float64)
    return (
        lam.to(dtype=x.dtype).to(x.device).reshape(shape),
        (1 - lam).to(dtype=x.dtype).to(x.device).reshape(shape),
    )


def _unpack(
    inputs: tuple[LatentInputs, ...],
) -> tuple[list[tuple[str, Tensor]], Callable[[list[Tensor]], LatentInputs]]:
    """Turn the call forms ``f(x)``, ``f(x, y)``, ``f((x, y))`` and ``f({...})`` into a flat list.

    Returns the named tensors and a function that rebuilds the caller's
    structure (tensor, tuple or dict) from a list of outputs.
    """
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        mapping = inputs[0]
        keys = list(mapping.keys())
        named = [(f"inputs[{k!r}]", check_floating(f"inputs[{k!r}]", mapping[k])) for k in keys]
        return named, lambda outs: dict(zip(keys, outs))
    if len(inputs) == 1 and isinstance(inputs[0], Tensor):
        return [("inputs[0]", check_floating("inputs[0]", inputs[0]))], lambda outs: outs[0]
    seq = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) else inputs
    named = [(f"inputs[{i}]", check_floating(f"inputs[{i}]", x)) for i, x in enumerate(seq)]
    return named, tuple


def _unpack_masks(masks: object, inputs: tuple[LatentInputs, ...], named: Sequence[tuple[str, Tensor]]) -> list[Tensor]:
    """Masks in the structure of ``inputs`` as one ``(B,)`` bool tensor per input; a missing one is all present."""
    batch = _check_batch(named)
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: dict inputs take a dict of modality name to mask, got {type(masks).__name__}")
        keys = list(inputs[0].keys())
        unknown = [k for k in masks if k not in inputs[0]]
        if unknown:
            raise ValueError(f"masks: modalities {unknown} are not among the inputs {keys}")
        given: list[object] = [masks.get(k) for k in keys]
        labels = [f"masks[{k!r}]" for k in keys]
    elif len(inputs) == 1 and isinstance(inputs[0], Tensor) and isinstance(masks, Tensor):
        given, labels = [masks], ["masks"]
    else:
        if not isinstance(masks, (tuple, list)):
            raise TypeError(
                f"masks: inputs given as tensors take a tuple or list of masks (one per input, None for all "
                f"present), got {type(masks).__name__}"
            )
        if len(masks) != len(named):
            raise ValueError(f"masks: expected one mask per input ({len(named)}), got {len(masks)}")
        given, labels = list(masks), [f"masks[{i}]" for i in range(len(masks))]
    return [
        torch.ones(batch, dtype=torch.bool, device=x.device) if m is None else check_mask(label, m, batch)
        for m, label, (_, x) in zip(given, labels, named)
    ]


class FuseMix(nn.Module):
    """Mixup in latent space with one lambda and one pairing shared by every modality.

    A ``torch.nn.Module`` transform in the style of torchvision's
    ``transforms.v2``: it takes any number of latent tensors sharing a leading
    batch dimension and returns them mixed, in the structure it got them
    (a tensor, a tuple or a dict). It has no parameters and behaves the same
    in train and eval mode; apply it only where you want augmentation.

    **What a call returns.** ``mix(...)`` returns what it was given, mixed:
    latents in, latents out, in the same structure; latents and ``masks=``
    in, ``(latents, masks)`` out, both in that structure (as
    :class:`LatentNoise` does, so a loop calls either the same way). The
    random draw behind a call comes from :meth:`mix_with_params`, which
    returns ``(that output, params)``; like torchvision's ``make_params``,
    :meth:`sample_params` draws it ahead and ``params=`` replays it.
    ``return_params=True`` is the older spelling of :meth:`mix_with_params`:
    it appends the draw to the output tuple.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``; ``None`` is 1.0
            (uniform, the paper's value), or ``schedule(0)`` with a schedule.
            Can be changed between calls.
        pairing: ``"halves"`` (the authors' code): ``B`` rows become ``B/2``,
            row ``i`` mixed with row ``i + B/2``. ``"permute"``: ``B`` rows
            stay ``B``, row ``i`` mixed with row ``perm[i]``.
        per_sample: One lambda per output row (still shared across
            modalities) instead of one per batch.
        share_lambda: Share lambda across modalities (FuseMix). ``False``
            draws an independent lambda per modality, which breaks the
            positive pairs; it exists for the paper's ablation only.
        generator: ``torch.Generator`` driving every draw; torch's global RNG
            when ``None``. The same seed gives the same output.
        schedule: Alpha per epoch, e.g. a :class:`CosineAlphaSchedule`
            (any callable from an epoch ``>= 0`` to alpha): :meth:`set_epoch`
            sets ``alpha`` from it. Give either ``alpha`` or ``schedule``.

    Missing modalities: with ``masks=`` (a boolean presence flag per row for
    each modality) rows are paired within their presence pattern (see
    :func:`sample_mix_params` for the pairing, and how ``"halves"`` treats
    patterns with an odd number of rows), one lambda and one pairing still
    shared by every modality, and the output masks (the AND of the two mixed
    rows' masks, :func:`mix_masks`) are returned after the mixed latents.
    Absent rows may hold any finite filler (e.g. zeros).

    Shape:
        - Input: tensors of shape ``(B, *)``, all with the same ``B``; masks
          of shape ``(B,)``.
        - Output: tensors of shape ``(B/2, *)`` for ``"halves"``,
          ``(B, *)`` for ``"permute"``; masks of shape ``(B/2,)`` or ``(B,)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mix = FuseMix(alpha=1.0, generator=g)
        >>> img, txt = torch.randn(8, 16), torch.randn(8, 4)
        >>> img_mix, txt_mix = mix(img, txt)
        >>> img_mix.shape, txt_mix.shape
        (torch.Size([4, 16]), torch.Size([4, 4]))
        >>> out, params = mix({"image": img, "text": txt}, return_params=True)
        >>> sorted(out)
        ['image', 'text']
        >>> replayed = mix(img, params=params)  # same lambda and pairing
        >>> torch.equal(replayed, out["image"])
        True
        >>> has_audio = torch.tensor([True, True, False, False, True, False, True, False])
        >>> batch = {"image": img, "text": txt, "audio": torch.randn(8, 6) * has_audio[:, None]}
        >>> out, masks = mix(batch, masks={"audio": has_audio})
        >>> masks["audio"].tolist(), masks["text"].tolist()
        ([True, True, False, False], [True, True, True, True])
        >>> scheduled = FuseMix(schedule=CosineAlphaSchedule(start=0.1, end=1.0, total_steps=10))
        >>> scheduled.set_epoch(5)  # alpha of epoch 5
        >>> round(scheduled.alpha, 2)
        0.55

    """

    def __init__(
        self,
        alpha: float | None = None,
        *,
        pairing: Pairing = "halves",
        per_sample: bool = False,
        share_lambda: bool = True,
        generator: torch.Generator | None = None,
        schedule: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        if schedule is not None:
            if not callable(schedule):
                raise TypeError(f"schedule: expected an AlphaSchedule (a callable epoch -> alpha), got {schedule!r}")
            if alpha is not None:
                raise ValueError("alpha: the schedule sets alpha; give either alpha or schedule, not both")
            alpha = schedule(0)
        self.schedule = schedule
        self.alpha = 1.0 if alpha is None else alpha
        self.pairing = check_choice("pairing", pairing, PAIRINGS)
        self.per_sample = bool(per_sample)
        self.share_lambda = bool(share_lambda)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    @property
    def alpha(self) -> float:
        """Concentration of the Beta distribution lambda is drawn from."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = check_positive("alpha", value)

    def set_epoch(self, epoch: int) -> None:
        """Set ``alpha`` to the schedule's value for ``epoch``; without a schedule alpha stays as it is.

        Args:
            epoch: The epoch about to start (>= 0).

        """
        if self.schedule is not None:
            self.alpha = self.schedule(epoch)

    def sample_params(self, batch_size: int, num_modalities: int = 1, *, presence: Tensor | None = None) -> MixParams:
        """Draw lambda and the pairing for a batch of ``batch_size`` rows.

        Args:
            batch_size: Number of input rows.
            num_modalities: Number of modalities the draw will be applied to;
                only used when ``share_lambda=False``.
            presence: Optional boolean presence flags; rows are then paired
                within their presence pattern. Shape: ``(batch_size, M)``.

        Returns:
            A :class:`MixParams` to pass back as ``params=``.

        """
        return sample_mix_params(
            batch_size,
            self.alpha,
            pairing=self.pairing,  # type: ignore[arg-type]
            per_sample=self.per_sample,
            groups=1 if self.share_lambda else num_modalities,
            generator=self.generator,
            presence=presence,
        )

    def mix_with_params(
        self, *inputs: LatentInputs, masks: MaskInputs | None = None, params: MixParams | None = None
    ) -> tuple[Mixed, MixParams]:
        """Mix like calling the module, and also return the draw used.

        Args:
            *inputs: As for :meth:`forward`.
            masks: As for :meth:`forward`.
            params: Replay this draw instead of drawing a new one.

        Returns:
            ``(output, params)``: ``output`` is exactly what :meth:`forward`
            returns for these arguments, ``params`` the :class:`MixParams`
            drawn (or replayed).

        Example:
            >>> mix = FuseMix(generator=torch.Generator().manual_seed(0))
            >>> (img_mix, txt_mix), params = mix.mix_with_params(torch.randn(8, 16), torch.randn(8, 4))
            >>> params.rows, img_mix.shape
            (4, torch.Size([4, 16]))

        """
        named, rebuild = _unpack(inputs)
        mask_list = None if masks is None else _unpack_masks(masks, inputs, named)
        if params is None:
            batch = _check_batch(named)
            _check_batch_size(batch, self.pairing, name="inputs")
            presence = None if mask_list is None else torch.stack([m.cpu() for m in mask_list], dim=1)
            params = self.sample_params(batch, len(named), presence=presence)
        out = rebuild(_mix_named(named, params))
        if mask_list is None:
            return out, params
        return (out, rebuild(mix_masks(mask_list, params))), params

    def forward(
        self,
        *inputs: LatentInputs,
        params: MixParams | None = None,
        return_params: bool = False,
        masks: MaskInputs | None = None,
    ) -> Mixed | tuple[LatentInputs, MixParams] | tuple[LatentInputs, LatentInputs, MixParams]:
        """Mix the latents of every modality with one shared draw.

        Args:
            *inputs: One tensor, several tensors, one tuple/list of tensors, or
                one dict of name to tensor. Shape of each: ``(B, *)``.
            params: Replay this draw instead of drawing a new one.
            return_params: Append the draw to the output (the older spelling
                of :meth:`mix_with_params`).
            masks: Optional boolean presence flags, one ``(B,)`` tensor per
                modality, in the structure of the inputs: a dict (it may leave
                out modalities present in every row) for dict inputs, a
                tuple/list (``None`` for always present) for tensors, or one
                tensor for one tensor. A new draw pairs rows within their
                presence pattern.

        Returns:
            The mixed tensors in the input's structure; with ``masks``,
            ``(mixed, output masks)``, the masks in that structure too (every
            modality). ``return_params=True`` appends the :class:`MixParams`:
            ``(mixed, params)`` or ``(mixed, masks, params)``.

        Raises:
            TypeError: If an input is not a floating-point tensor, or a mask
                not a boolean tensor in the inputs' structure.
            ValueError: If batch sizes differ, the batch has fewer than 2 rows,
                ``pairing="halves"`` gets an odd batch, ``params`` was drawn
                for another batch size, or a mask has the wrong shape or names
                an unknown modality.

        """
        mixed, params = self.mix_with_params(*inputs, masks=masks, params=params)
        if not return_params:
            return mixed
        return (*mixed, params) if masks is not None else (mixed, params)  # type: ignore[misc]

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, pairing={self.pairing!r}, per_sample={self.per_sample}, "
            f"share_lambda={self.share_lambda}"
        )


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
        named, rebuild = _unpack(inputs)
        _check_batch(named)
        for name, x in named:
            if x.ndim < 2:
                raise ValueError(
                    f"{name}: expected shape (B, *) with at least one feature dim after the batch dim, got shape "
                    f"{tuple(x.shape)}; add one with x.unsqueeze(-1)"
                )
        mask_list = None if masks is None else _unpack_masks(masks, inputs, named)
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


__all__ = [
    "PAIRINGS",
    "AlphaSchedule",
    "CosineAlphaSchedule",
    "ExponentialAlphaSchedule",
    "FuseMix",
    "LatentInputs",
    "LatentNoise",
    "MaskInputs",
    "MixParams",
    "Mixed",
    "Pairing",
    "mix_latents",
    "mix_masks",
    "sample_mix_params",
]
