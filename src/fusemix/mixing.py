"""FuseMix: mixup in latent space, shared across modalities.

FuseMix (Vouitsis et al., CVPR 2024) draws one mixing coefficient
``lam ~ Beta(alpha, alpha)`` and one pairing of rows ``(a, b)`` and applies
them to the latents of *every* modality::

    x_mix = lam * x[a] + (1 - lam) * x[b]
    y_mix = lam * y[a] + (1 - lam) * y[b]

Because ``lam`` and ``(a, b)`` are shared, ``(x_mix, y_mix)`` is again a valid
positive pair for a contrastive loss.

This module holds the transform (:class:`FuseMix`), its functional form
(:func:`sample_mix_params`, :func:`mix_latents`), the alpha schedules of the
authors' code and the latent-noise baseline (:class:`LatentNoise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from fusemix._checks import check_choice, check_floating, check_positive, check_positive_int, check_same_rows

Pairing = Literal["halves", "permute"]
PAIRINGS: tuple[str, ...] = ("halves", "permute")

LatentInputs = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]  # noqa: UP007 (runtime alias, Python 3.10)


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


def sample_mix_params(
    batch_size: int,
    alpha: float = 1.0,
    *,
    pairing: Pairing = "halves",
    per_sample: bool = False,
    groups: int = 1,
    generator: torch.Generator | None = None,
) -> MixParams:
    """Draw the mixing coefficients and the pairing for one FuseMix call.

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

    Returns:
        The drawn :class:`MixParams`.

    Raises:
        ValueError: If ``batch_size < 2``, ``pairing="halves"`` with an odd
            batch, ``alpha <= 0`` or an unknown ``pairing``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = sample_mix_params(8, 1.0, pairing="halves", generator=g)
        >>> p.lam.shape, p.index_a.tolist(), p.index_b.tolist()
        (torch.Size([1, 4]), [0, 1, 2, 3], [4, 5, 6, 7])

    """
    check_choice("pairing", pairing, PAIRINGS)
    alpha = check_positive("alpha", alpha)
    check_positive_int("groups", groups)
    check_positive_int("batch_size", batch_size)
    _check_batch_size(batch_size, pairing)
    rng = _seeded_numpy_rng(generator)
    rows = batch_size // 2 if pairing == "halves" else batch_size
    if pairing == "halves":
        index_a = torch.arange(rows)
        index_b = torch.arange(rows, batch_size)
    else:
        index_a = torch.arange(rows)
        index_b = torch.from_numpy(rng.permutation(batch_size))
    draws = rng.beta(alpha, alpha, size=(groups, rows if per_sample else 1))
    lam = torch.from_numpy(np.broadcast_to(draws, (groups, rows)).copy())
    return MixParams(lam=lam, index_a=index_a, index_b=index_b.to(torch.int64), batch_size=batch_size, pairing=pairing)


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


def _mix_named(named: Sequence[tuple[str, Tensor]], params: MixParams) -> list[Tensor]:
    batch = _check_batch(named)
    if batch != params.batch_size:
        raise ValueError(f"params: drawn for a batch of {params.batch_size} rows, but the inputs have {batch}")
    groups = params.lam.shape[0]
    if groups not in (1, len(named)):
        raise ValueError(f"params: holds {groups} lambda groups, which fits neither 1 nor the {len(named)} inputs")
    half = params.rows
    out = []
    for m, (_, x) in enumerate(named):
        lam = params.lam[0 if groups == 1 else m].to(device=x.device, dtype=x.dtype)
        lam = lam.reshape((-1,) + (1,) * (x.ndim - 1))
        if params.pairing == "halves":
            xa, xb = x[:half], x[half : 2 * half]
        else:
            xa, xb = x[params.index_a.to(x.device)], x[params.index_b.to(x.device)]
        out.append(lam * xa + (1 - lam) * xb)
    return out


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


class FuseMix(nn.Module):
    """Mixup in latent space with one lambda and one pairing shared by every modality.

    A ``torch.nn.Module`` transform in the style of torchvision's
    ``transforms.v2``: it takes any number of latent tensors sharing a leading
    batch dimension and returns them mixed, in the structure it got them
    (a tensor, a tuple or a dict). It has no parameters and behaves the same
    in train and eval mode; apply it only where you want augmentation.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``; 1.0 (uniform) is the
            paper's value. Can be changed between calls, e.g. by an
            :class:`AlphaSchedule`.
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

    Shape:
        - Input: tensors of shape ``(B, *)``, all with the same ``B``.
        - Output: tensors of shape ``(B/2, *)`` for ``"halves"``,
          ``(B, *)`` for ``"permute"``.

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

    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        pairing: Pairing = "halves",
        per_sample: bool = False,
        share_lambda: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.alpha = alpha
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

    def sample_params(self, batch_size: int, num_modalities: int = 1) -> MixParams:
        """Draw lambda and the pairing for a batch of ``batch_size`` rows.

        Args:
            batch_size: Number of input rows.
            num_modalities: Number of modalities the draw will be applied to;
                only used when ``share_lambda=False``.

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
        )

    def forward(
        self, *inputs: LatentInputs, params: MixParams | None = None, return_params: bool = False
    ) -> LatentInputs | tuple[LatentInputs, MixParams]:
        """Mix the latents of every modality with one shared draw.

        Args:
            *inputs: One tensor, several tensors, one tuple/list of tensors, or
                one dict of name to tensor. Shape of each: ``(B, *)``.
            params: Replay this draw instead of drawing a new one.
            return_params: Also return the draw used.

        Returns:
            The mixed tensors in the input's structure, and the
            :class:`MixParams` when ``return_params`` is true.

        Raises:
            TypeError: If an input is not a floating-point tensor.
            ValueError: If batch sizes differ, the batch has fewer than 2 rows,
                ``pairing="halves"`` gets an odd batch, or ``params`` was drawn
                for another batch size.

        """
        named, rebuild = _unpack(inputs)
        if params is None:
            batch = _check_batch(named)
            _check_batch_size(batch, self.pairing, name="inputs")
            params = self.sample_params(batch, len(named))
        out = rebuild(_mix_named(named, params))
        return (out, params) if return_params else out

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, pairing={self.pairing!r}, per_sample={self.per_sample}, "
            f"share_lambda={self.share_lambda}"
        )


class AlphaSchedule:
    """Base class of alpha schedules: ``schedule(step)`` gives alpha at ``step``.

    Schedules interpolate from ``start`` (at step 0) to ``end`` (at
    ``total_steps`` and after) and are plain callables, so they fit any loop::

        for epoch in range(epochs):
            mix.alpha = schedule(epoch)

    Args:
        start: Alpha at step 0 (> 0).
        end: Alpha at ``total_steps`` (> 0).
        total_steps: Length of the schedule (>= 1), in whatever unit you step.

    """

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start = check_positive("start", start)
        self.end = check_positive("end", end)
        self.total_steps = check_positive_int("total_steps", total_steps)

    def _progress(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step: expected a step >= 0, got {step}")
        return min(step, self.total_steps) / self.total_steps

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(start={self.start}, end={self.end}, total_steps={self.total_steps})"


class CosineAlphaSchedule(AlphaSchedule):
    """Cosine interpolation of alpha, as in the authors' code.

    ``alpha(t) = end + (start - end) * (1 + cos(pi * t / T)) / 2``.

    Example:
        >>> s = CosineAlphaSchedule(start=0.1, end=1.0, total_steps=10)
        >>> round(s(0), 6), round(s(5), 6), round(s(10), 6)
        (0.1, 0.55, 1.0)

    """

    def __call__(self, step: int) -> float:
        t = self._progress(step)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))


class ExponentialAlphaSchedule(AlphaSchedule):
    """Geometric interpolation of alpha, as in the authors' code.

    ``alpha(t) = start * (end / start) ** (t / T)``.

    Example:
        >>> s = ExponentialAlphaSchedule(start=0.1, end=1.0, total_steps=10)
        >>> round(s(0), 6), round(s(5), 6), round(s(10), 6)
        (0.1, 0.316228, 1.0)

    """

    def __call__(self, step: int) -> float:
        return self.start * (self.end / self.start) ** self._progress(step)


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
        - Input: tensors of shape ``(B, *)``.
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

    def forward(self, *inputs: LatentInputs) -> LatentInputs:
        """Add noise to every tensor.

        Args:
            *inputs: Same call forms as :meth:`FuseMix.forward`.

        Returns:
            Noisy tensors in the input's structure.

        """
        named, rebuild = _unpack(inputs)
        _check_batch(named)
        out = []
        for _, x in named:
            device = self.generator.device if self.generator is not None else x.device
            eps = torch.randn(x.shape, generator=self.generator, device=device, dtype=x.dtype).to(x.device)
            scale = self.std
            if self.relative:
                rms = x.detach().flatten(1).pow(2).mean(dim=1).sqrt()
                scale = self.std * rms.reshape((-1,) + (1,) * (x.ndim - 1))
            out.append(x + scale * eps)
        return rebuild(out)

    def extra_repr(self) -> str:
        return f"std={self.std}, relative={self.relative}"
