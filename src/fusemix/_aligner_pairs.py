"""What a closed-form aligner fits: its input checked, the pairs with both modalities, their streamed moments.

:meth:`CCAAligner.fit <fusemix.CCAAligner.fit>` and :meth:`ProcrustesAligner.fit
<fusemix.ProcrustesAligner.fit>` take a dict of two modalities' latents
(tensors, arrays, memory maps, stores: anything with ``shape``, a floating
``dtype`` and row indexing) or a :class:`~fusemix.data.PairedLatents`.
:func:`two_modalities` checks that input and returns the :class:`Pairs` to
fit (an optional seeded subset of them); :func:`pair_moments` streams those pairs
twice in chunks of rows, in float64, for the means and the centred
(cross-)covariances the aligners decompose (see :mod:`fusemix.aligners`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusemix._checks import check_features, check_positive_int


class LatentArrayLike(Protocol):
    """Latents read a chunk of rows at a time: an ``(N, D)`` ``shape``, a floating ``dtype``, row indexing.

    Indexing takes a slice or a 1-D int64 array and returns an array-like of
    those rows (``np.memmap``, :class:`~fusemix.store.LatentStore`, ...).
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, index: Any) -> Any: ...


@runtime_checkable
class PairedLatentsLike(Protocol):
    """Paired latents as :class:`~fusemix.data.PairedLatents` holds them (the core reads them without importing it)."""

    @property
    def modalities(self) -> list[str]: ...

    @property
    def latents(self) -> dict[str, Any]: ...

    def row_index(self, modality: str) -> np.ndarray: ...


AlignerLatents = Tensor | np.ndarray | LatentArrayLike
"""Latents of one modality for ``fit``: a floating tensor, NumPy array or array-like (a store). Shape: ``(N, D)``."""

AlignerData = Mapping[str, AlignerLatents] | PairedLatentsLike
"""What ``fit`` takes: a dict of two modalities' latents (row ``i`` of each is one pair) or a ``PairedLatents``."""


@dataclass(frozen=True)
class Moments:
    """Float64 means and centred covariances of two paired modalities (divided by ``N - 1``)."""

    n: int
    mean_x: Tensor
    mean_y: Tensor
    cov_x: Tensor
    cov_y: Tensor
    cross: Tensor


@dataclass(frozen=True)
class Pairs:
    """Two modalities' latents and the rows that pair them.

    Pair ``p`` is row ``rows[m][p]`` of ``sources[m]``, or row ``p`` where
    ``rows[m]`` is ``None``. Shape of each ``rows[m]``: ``(n,)``, int64.
    """

    sources: dict[str, AlignerLatents]
    rows: dict[str, np.ndarray | None]
    n: int


def _check_latents(name: str, value: object, min_rows: int) -> AlignerLatents:
    key = f"latents[{name!r}]"
    if isinstance(value, Tensor):
        return check_features(key, value, min_rows=min_rows)
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None or not callable(getattr(value, "__getitem__", None)):
        raise TypeError(
            f"{key}: expected a torch.Tensor, a numpy.ndarray or an array-like with shape, dtype and row indexing "
            f"(e.g. a LatentStore), got {type(value).__name__}"
        )
    try:
        floating = np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(f"{key}: expected floating-point latents, got dtype {dtype}")
    if len(shape) != 2:
        raise ValueError(f"{key}: expected a 2-D array of shape (N, D), got shape {tuple(shape)}")
    if shape[0] < min_rows:
        raise ValueError(f"{key}: expected at least {min_rows} row(s), got {shape[0]}")
    if shape[1] < 1:
        raise ValueError(f"{key}: expected a feature dimension of at least 1, got shape {tuple(shape)}")
    return value  # type: ignore[return-value]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"latents: modality names must be non-empty strings without '.', got {name!r}")
    return name


def _chosen(available: list[str], modalities: Sequence[str] | None, owner: str, *, first_two: bool) -> list[str]:
    """The two modalities to fit: ``modalities``, else the first two (``first_two``) or the only two."""
    if modalities is None:
        if first_two and len(available) >= 2:
            return available[:2]
        if len(available) != 2:
            raise ValueError(
                f"latents: {owner} fits exactly two modalities, got {len(available)} ({available}); "
                "pick two with modalities=[...]"
            )
        return available
    if isinstance(modalities, str) or len(modalities) != 2 or modalities[0] == modalities[1]:
        raise ValueError(f"modalities: expected two different modality names, got {modalities!r}")
    missing = [m for m in modalities if m not in available]
    if missing:
        raise ValueError(f"modalities: {missing} not in the latents ({available})")
    return list(modalities)


def _pairs_of_dict(latents: Mapping[str, object], names: list[str]) -> Pairs:
    sources = {_check_name(m): _check_latents(m, latents[m], min_rows=2) for m in names}
    sizes = {m: int(v.shape[0]) for m, v in sources.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{m}={size}" for m, size in sizes.items())
        raise ValueError(f"latents: row counts differ ({listed}); row i of every modality must be one paired example")
    return Pairs(sources, {m: None for m in names}, next(iter(sizes.values())))


def _pairs_of_paired(data: PairedLatentsLike, names: list[str]) -> Pairs:
    """The pairs that have both modalities (``-1`` in a ``rows`` array marks a pair that lacks one)."""
    sources = {_check_name(m): _check_latents(m, data.latents[m], min_rows=1) for m in names}
    index = {m: np.asarray(data.row_index(m), dtype=np.int64) for m in names}
    both = np.flatnonzero((index[names[0]] >= 0) & (index[names[1]] >= 0))
    if both.size < 2:
        raise ValueError(f"latents: expected at least 2 pairs with both {names[0]!r} and {names[1]!r}, got {both.size}")
    return Pairs(sources, {m: rows[both] for m, rows in index.items()}, int(both.size))


def _subset(pairs: Pairs, max_pairs: int | None, seed: int) -> Pairs:
    """At most ``max_pairs`` of the pairs: a sorted random subset drawn by ``np.random.default_rng(seed)``."""
    if max_pairs is None or pairs.n <= max_pairs:
        return pairs
    chosen = np.sort(np.random.default_rng(seed).choice(pairs.n, max_pairs, replace=False))
    rows = {m: chosen if r is None else r[chosen] for m, r in pairs.rows.items()}
    return Pairs(pairs.sources, rows, max_pairs)


def two_modalities(
    latents: object, owner: str, modalities: Sequence[str] | None, max_pairs: int | None, seed: int
) -> Pairs:
    """Check ``fit``'s input and return the pairs to fit: two modalities, only pairs that have both.

    Args:
        latents: A dict of modality name to latents (row ``i`` of each is one
            pair) or a :class:`~fusemix.data.PairedLatents`.
        owner: The aligner's class name, for messages.
        modalities: The two modalities to fit, in this order; ``None``: the
            dict's two keys, or the first two modalities of a ``PairedLatents``.
        max_pairs: Keep at most this many pairs, a sorted random subset
            drawn by ``np.random.default_rng(seed)``; all when ``None``.
        seed: Seed of that subset.

    Returns:
        The pairs, their modalities in fitting order.

    Raises:
        TypeError: If ``latents``, a latent array or ``seed`` has the wrong type.
        ValueError: If the modalities, row counts or ``max_pairs`` do not fit
            (the message starts with the argument's name).

    """
    if max_pairs is not None and (check_positive_int("max_pairs", max_pairs) < 2):
        raise ValueError(f"max_pairs: expected an int >= 2 (a fit needs two pairs), got {max_pairs}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if isinstance(latents, Mapping):
        pairs = _pairs_of_dict(latents, _chosen(list(latents), modalities, owner, first_two=False))
    elif isinstance(latents, PairedLatentsLike):
        pairs = _pairs_of_paired(latents, _chosen(list(latents.modalities), modalities, owner, first_two=True))
    else:
        raise TypeError(
            f"latents: expected a dict of modality name to latents or a PairedLatents, got {type(latents).__name__}"
        )
    return _subset(pairs, max_pairs, seed)


def _fit_device(values: list[AlignerLatents]) -> torch.device:
    devices = {v.device for v in values if isinstance(v, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"latents: tensors are on different devices ({sorted(map(str, devices))}); move them to one")
    device = devices.pop() if devices else torch.device("cpu")
    return torch.device("cpu") if device.type == "mps" else device


def _read(source: AlignerLatents, rows: np.ndarray | None, start: int, stop: int, device: torch.device) -> Tensor:
    """Pairs ``start:stop`` of one modality, in float64 on ``device``. Shape: ``(stop - start, D)``."""
    if isinstance(source, Tensor):
        index = slice(start, stop) if rows is None else torch.from_numpy(rows[start:stop]).to(source.device)
        return source[index].to(device=device, dtype=torch.float64)
    index = slice(start, stop) if rows is None else rows[start:stop]
    return torch.from_numpy(np.array(source[index], dtype=np.float64)).to(device)


def _rows(pairs: Pairs, name: str, start: int, device: torch.device, step: int, eps: float | None) -> Tensor:
    """Pairs ``start:start + step`` of modality ``name``, layer-normalised when ``eps`` is set."""
    rows = _read(pairs.sources[name], pairs.rows[name], start, min(start + step, pairs.n), device)
    return rows if eps is None else F.layer_norm(rows, (rows.shape[1],), eps=eps)


def _count_non_finite(pairs: Pairs, name: str, device: torch.device, step: int) -> int:
    return sum(int((~torch.isfinite(_rows(pairs, name, s, device, step, None))).sum()) for s in range(0, pairs.n, step))


def pair_moments(pairs: Pairs, norm_eps: Mapping[str, float | None], chunk_elements: int) -> Moments:
    """Stream the pairs twice: once for the means, once for the centred (cross-)covariances.

    Args:
        pairs: The pairs of two modalities ``x`` and ``y``, in that order.
        norm_eps: Per modality, the ``eps`` of the LayerNorm applied to each
            row first, or ``None`` for none.
        chunk_elements: Float64 values read per chunk of rows, summed over
            both modalities.

    Returns:
        The float64 moments, on the latents' device (the CPU for arrays, stores and ``mps``).
        Shapes: means ``(d_x,)`` and ``(d_y,)``, covariances ``(d_x, d_x)``, ``(d_y, d_y)`` and ``(d_x, d_y)``.

    Raises:
        ValueError: If a modality holds NaN or Inf, overflows float64, or has
            zero variance (the message names it).

    """
    name_x, name_y = pairs.sources
    eps_x, eps_y = norm_eps[name_x], norm_eps[name_y]
    device = _fit_device(list(pairs.sources.values()))
    n, dx, dy = pairs.n, pairs.sources[name_x].shape[1], pairs.sources[name_y].shape[1]
    step = max(1, chunk_elements // (dx + dy))
    sum_x = torch.zeros(dx, dtype=torch.float64, device=device)
    sum_y = torch.zeros(dy, dtype=torch.float64, device=device)
    for s in range(0, n, step):
        sum_x += _rows(pairs, name_x, s, device, step, eps_x).sum(0)
        sum_y += _rows(pairs, name_y, s, device, step, eps_y).sum(0)
    for name, total in ((name_x, sum_x), (name_y, sum_y)):
        if not bool(torch.isfinite(total).all()):
            bad = _count_non_finite(pairs, name, device, step)
            raise ValueError(f"latents[{name!r}]: contains {bad} non-finite value(s) (NaN or Inf) or overflows float64")
    mean_x, mean_y = sum_x / n, sum_y / n
    cov_x = torch.zeros(dx, dx, dtype=torch.float64, device=device)
    cov_y = torch.zeros(dy, dy, dtype=torch.float64, device=device)
    cross = torch.zeros(dx, dy, dtype=torch.float64, device=device)
    for s in range(0, n, step):
        xc = _rows(pairs, name_x, s, device, step, eps_x) - mean_x
        yc = _rows(pairs, name_y, s, device, step, eps_y) - mean_y
        cov_x += xc.T @ xc
        cov_y += yc.T @ yc
        cross += xc.T @ yc
    for name, cov in ((name_x, cov_x), (name_y, cov_y)):
        if not bool(torch.isfinite(cov).all()):
            raise ValueError(f"latents[{name!r}]: values too large for a float64 covariance")
        if float(torch.trace(cov)) == 0.0:
            raise ValueError(f"latents[{name!r}]: every row is the same (zero variance); there is nothing to align")
    scale = 1.0 / (n - 1)
    return Moments(n, mean_x, mean_y, cov_x * scale, cov_y * scale, cross * scale)


__all__ = [
    "AlignerData",
    "AlignerLatents",
    "LatentArrayLike",
    "Moments",
    "PairedLatentsLike",
    "Pairs",
    "pair_moments",
    "two_modalities",
]
