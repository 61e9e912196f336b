"""Closed-form linear aligners: training-free baselines with the interface of a fusion model.

:class:`CCAAligner` (regularised canonical correlation analysis) and
:class:`ProcrustesAligner` (PCA, optional whitening, then an orthogonal map)
fit two modalities' paired latents in two streaming passes over the data
and expose the same ``modalities`` / ``project`` / ``embed`` interface as
:class:`~fusemix.FusionModel`, so they plug into
:func:`~fusemix.retrieval_metrics` and :func:`fusemix.train.evaluate_retrieval`
unchanged::

    aligner = CCAAligner(dim=256).fit({"image": img, "text": txt})
    retrieval_metrics(aligner.embed("image", img_test), aligner.embed("text", txt_test), text_to_image)

``fit`` takes a dict of two modalities' latents (tensors, arrays, memory maps
or :class:`~fusemix.store.LatentStore` s, row ``i`` of each one pair) or a
:class:`~fusemix.data.PairedLatents` (its pairs that have both modalities;
``modalities=`` picks two of several), and ``max_pairs`` fits a seeded subset.
A ``dim`` larger than the data allows (``min(d_x, d_y, N - 1)``) is lowered
to that, with a ``UserWarning``.

Both are :class:`torch.nn.Module` subclasses whose fitted state lives in buffers:
``.to(device)`` moves them, ``state_dict()`` is a flat dict of tensors that
``safetensors.torch.save_file`` writes as is, and ``load_state_dict`` on a
fresh, unfitted aligner restores it (keys ``maps.<modality>.mean``,
``maps.<modality>.weight``, ``maps.<modality>.norm_eps`` for a modality fitted
with ``input_norm="layer_norm"``, and ``correlations`` or ``rotation``).
Modality names follow :class:`~fusemix.FusionModel`'s rule: non-empty, without
``.``; after loading, ``modalities`` follows the state dict's key order and
``input_norm`` the stored state.

Input normalisation: with ``input_norm="layer_norm"`` (for every modality, or
a dict per modality) each latent row is first layer-normalised (minus its own
mean, divided by its own standard deviation, ``F.layer_norm`` without affine
parameters, ``eps=1e-5`` as ``LAYER_NORM_EPS``), in fitting and in ``embed``
alike. That is what a :class:`~fusemix.FusionAdapter` does to its input
before its final linear map, so such an aligner can initialise the adapter
exactly (:func:`~fusemix.warm_start`). The default (``None``) uses
the latents as they are.

Numerics:
    Fitting runs in float64 on the device of the input tensors (CPU for NumPy
    arrays, which may be memory-mapped; CPU for Apple ``mps``, which has no
    float64). Rows are streamed in chunks to accumulate the means and then
    the centred covariances ``C = Xc^T Xc / (N - 1)``, so no float64 copy of
    the data is made. Covariances are regularised **relative to their
    scale**: ``C + r * (tr(C) / d) * I``, i.e. ``r`` times the mean
    eigenvalue, so one ``r`` suits encoders whose latents have very different
    norms, and the fit is invariant to rescaling either modality. Inverse
    square roots come from ``torch.linalg.eigh`` with eigenvalues at or below
    ``d * eps * max_eigenvalue`` dropped (the rank cut-off of
    ``numpy.linalg.matrix_rank``); no matrix is inverted explicitly.
    Embedding casts the fitted float64 buffers to the input's dtype.

Cost:
    Fitting takes ``O(N (d_x + d_y)^2)`` time for the covariances plus
    ``O((d_x + d_y)^3)`` for the decompositions, and ``O((d_x + d_y)^2)``
    float64 memory (the ``d x d`` covariances, their factors and a fixed
    32 MiB chunk of rows) beyond the input, whatever ``N``; embedding is one
    ``(N, d) @ (d, k)`` product. Measured on a 2-core CPU shared with other
    jobs (load about 7; PyTorch 2.13, one thread, which beat two under that
    load; float32 inputs): N = 1,418 with d = 1280 / 384 (the default
    replication's sizes): CCA 1.3 s, Procrustes 1.2 s (best of 5, median
    1.4 s); N = 100,000 with d = 1536 / 1024 (DINOv2 ViT-G/14 / BGE-large):
    CCA 62 s, Procrustes 65 s, 41 s of it the covariance pass. Peak memory
    beyond the input was about 250 MB at d = 1536 / 1024.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusemix._checks import check_features, check_floating, check_nonnegative, check_positive_int

_CHUNK_ELEMENTS = 2**22
"""Float64 values per streamed chunk of rows, summed over both modalities (32 MiB)."""

LAYER_NORM_EPS = 1e-5
"""``eps`` of ``input_norm="layer_norm"``: the default of ``torch.nn.LayerNorm``, hence of every FusionAdapter."""

INPUT_NORMS: tuple[str, ...] = ("layer_norm",)


class _LatentArrayLike(Protocol):
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
class _PairedLatentsLike(Protocol):
    """Paired latents as :class:`~fusemix.data.PairedLatents` holds them (the core reads them without importing it)."""

    @property
    def modalities(self) -> list[str]: ...

    @property
    def latents(self) -> dict[str, Any]: ...

    def row_index(self, modality: str) -> np.ndarray: ...


AlignerLatents = Tensor | np.ndarray | _LatentArrayLike
"""Latents of one modality for ``fit``: a floating tensor, NumPy array or array-like (a store). Shape: ``(N, D)``."""

AlignerData = Mapping[str, AlignerLatents] | _PairedLatentsLike
"""What ``fit`` takes: a dict of two modalities' latents (row ``i`` of each is one pair) or a ``PairedLatents``."""

InputNorm = str | None | Mapping[str, str | None]
"""``input_norm`` of the aligners: ``None``, ``"layer_norm"``, or a dict of modality name to either."""


class _CenteredLinear(nn.Module):
    """``(x - mean) @ weight``, computed in the dtype of ``x``; ``x`` layer-normalised first if ``norm_eps`` is set."""

    def __init__(self, mean: Tensor, weight: Tensor, norm_eps: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("weight", weight)
        if norm_eps is not None:
            self.register_buffer("norm_eps", norm_eps)

    @property
    def layer_norm_eps(self) -> float | None:
        """The ``eps`` of the input LayerNorm, or ``None`` without one."""
        eps = getattr(self, "norm_eps", None)
        return None if eps is None else float(eps)

    def forward(self, x: Tensor) -> Tensor:
        eps = self.layer_norm_eps
        if eps is not None:
            x = F.layer_norm(x, (x.shape[-1],), eps=eps)
        return (x - self.mean.to(x.dtype)) @ self.weight.to(x.dtype)


@dataclass(frozen=True)
class _Moments:
    """Float64 means and centred covariances of two paired modalities (divided by ``N - 1``)."""

    n: int
    mean_x: Tensor
    mean_y: Tensor
    cov_x: Tensor
    cov_y: Tensor
    cross: Tensor


@dataclass(frozen=True)
class _Pairs:
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


def _pairs_of_dict(latents: Mapping[str, object], names: list[str]) -> _Pairs:
    sources = {_check_name(m): _check_latents(m, latents[m], min_rows=2) for m in names}
    sizes = {m: int(v.shape[0]) for m, v in sources.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{m}={size}" for m, size in sizes.items())
        raise ValueError(f"latents: row counts differ ({listed}); row i of every modality must be one paired example")
    return _Pairs(sources, {m: None for m in names}, next(iter(sizes.values())))


def _pairs_of_paired(data: _PairedLatentsLike, names: list[str]) -> _Pairs:
    """The pairs that have both modalities (``-1`` in a ``rows`` array marks a pair that lacks one)."""
    sources = {_check_name(m): _check_latents(m, data.latents[m], min_rows=1) for m in names}
    index = {m: np.asarray(data.row_index(m), dtype=np.int64) for m in names}
    both = np.flatnonzero((index[names[0]] >= 0) & (index[names[1]] >= 0))
    if both.size < 2:
        raise ValueError(f"latents: expected at least 2 pairs with both {names[0]!r} and {names[1]!r}, got {both.size}")
    return _Pairs(sources, {m: rows[both] for m, rows in index.items()}, int(both.size))


def _subset(pairs: _Pairs, max_pairs: int | None, seed: int) -> _Pairs:
    """At most ``max_pairs`` of the pairs: a sorted random subset drawn by ``np.random.default_rng(seed)``."""
    if max_pairs is None or pairs.n <= max_pairs:
        return pairs
    chosen = np.sort(np.random.default_rng(seed).choice(pairs.n, max_pairs, replace=False))
    rows = {m: chosen if r is None else r[chosen] for m, r in pairs.rows.items()}
    return _Pairs(pairs.sources, rows, max_pairs)


def _two_modalities(
    latents: object, owner: str, modalities: Sequence[str] | None, max_pairs: int | None, seed: int
) -> _Pairs:
    """Check ``fit``'s input and return the pairs to fit: two modalities, only pairs that have both."""
    if max_pairs is not None and (check_positive_int("max_pairs", max_pairs) < 2):
        raise ValueError(f"max_pairs: expected an int >= 2 (a fit needs two pairs), got {max_pairs}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if isinstance(latents, Mapping):
        pairs = _pairs_of_dict(latents, _chosen(list(latents), modalities, owner, first_two=False))
    elif isinstance(latents, _PairedLatentsLike):
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


def _rows(pairs: _Pairs, name: str, start: int, device: torch.device, step: int, eps: float | None) -> Tensor:
    """Pairs ``start:start + step`` of modality ``name``, layer-normalised when ``eps`` is set."""
    rows = _read(pairs.sources[name], pairs.rows[name], start, min(start + step, pairs.n), device)
    return rows if eps is None else F.layer_norm(rows, (rows.shape[1],), eps=eps)


def _count_non_finite(pairs: _Pairs, name: str, device: torch.device, step: int) -> int:
    return sum(int((~torch.isfinite(_rows(pairs, name, s, device, step, None))).sum()) for s in range(0, pairs.n, step))


def _check_input_norm(value: object) -> InputNorm:
    def check_one(name: str, one: object) -> None:
        if one is not None and one not in INPUT_NORMS:
            raise ValueError(f"{name}: expected None or one of {list(INPUT_NORMS)}, got {one!r}")

    if isinstance(value, Mapping):
        for key, one in value.items():
            check_one(f"input_norm[{key!r}]", one)
        return dict(value)
    check_one("input_norm", value)
    return value  # type: ignore[return-value]


def _norm_eps(input_norm: InputNorm, names: list[str]) -> dict[str, float | None]:
    """The LayerNorm ``eps`` to apply to each modality's latents (``None``: none)."""
    if isinstance(input_norm, Mapping):
        missing = [n for n in names if n not in input_norm]
        if missing:
            raise ValueError(
                f"input_norm: has no entry for the modalities {missing}; give one per fitted modality (None for none)"
            )
        return {n: LAYER_NORM_EPS if input_norm[n] == "layer_norm" else None for n in names}
    return {n: LAYER_NORM_EPS if input_norm == "layer_norm" else None for n in names}


def _moments(pairs: _Pairs, norm_eps: Mapping[str, float | None]) -> _Moments:
    """Stream the pairs twice: once for the means, once for the centred (cross-)covariances."""
    name_x, name_y = pairs.sources
    eps_x, eps_y = norm_eps[name_x], norm_eps[name_y]
    device = _fit_device(list(pairs.sources.values()))
    n, dx, dy = pairs.n, pairs.sources[name_x].shape[1], pairs.sources[name_y].shape[1]
    step = max(1, _CHUNK_ELEMENTS // (dx + dy))
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
    return _Moments(n, mean_x, mean_y, cov_x * scale, cov_y * scale, cross * scale)


def _ridge(cov: Tensor, regularization: float) -> Tensor:
    """``cov + r * (tr(cov) / d) * I``: a ridge of ``r`` times the mean eigenvalue."""
    d = cov.shape[0]
    return cov + (regularization * float(torch.trace(cov)) / d) * torch.eye(d, dtype=cov.dtype, device=cov.device)


def _eigh_descending(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric matrix, above the rank cut-off."""
    values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
    values, vectors = values.flip(0), vectors.flip(1)
    cutoff = cov.shape[0] * torch.finfo(cov.dtype).eps * max(float(values[0]), 0.0)
    keep = int((values > cutoff).sum())
    return values[:keep], vectors[:, :keep]


def _inverse_sqrt(cov: Tensor) -> Tensor:
    """``W`` with ``W^T cov W = I`` on the numerical range of ``cov``. Shape: ``(d, rank)``."""
    values, vectors = _eigh_descending(cov)
    return vectors * values.rsqrt()


def _flip_signs(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Flip column pairs so each column of ``a`` has its largest-magnitude entry positive (deterministic output)."""
    rows = a.abs().argmax(0)
    signs = torch.sign(a[rows, torch.arange(a.shape[1], device=a.device)])
    signs[signs == 0] = 1.0
    return a * signs, b * signs


def _check_dim(dim: int | None) -> int | None:
    return None if dim is None else check_positive_int("dim", dim)


def _resolve_dim(dim: int | None, limit: int, why: str) -> int:
    """``dim``, or ``limit`` when ``dim`` is ``None`` or larger (with a ``UserWarning`` that says why)."""
    if dim is None:
        return limit
    if dim > limit:
        warnings.warn(
            f"dim: {dim} is larger than the {limit} directions found here, {why}; fitting {limit} "
            f"(out_dim = {limit}). warm_start() fills the other output dims of a larger model with zeros",
            UserWarning,
            stacklevel=4,  # the caller of fit (under torch.no_grad's wrapper)
        )
        return limit
    return dim


def _limit_reason(names: tuple[str, str], sizes: tuple[int, int], dims: tuple[int, int], n: int) -> str:
    """``min(d_x, d_y, N - 1)`` spelt out with its numbers, naming a dimension cut by the rank cut-off."""
    why = f"min(d_{names[0]}, d_{names[1]}, N - 1) = min({sizes[0]}, {sizes[1]}, {n - 1})"
    cut = [f"{name} has {size} of its {dim} dims" for name, size, dim in zip(names, sizes, dims) if size != dim]
    return why + (f"; above the rank cut-off, {' and '.join(cut)}" if cut else "")


class ClosedFormAligner(nn.Module):
    """Base class of the closed-form aligners: one centred linear map per modality, kept in buffers.

    :class:`CCAAligner` and :class:`ProcrustesAligner` derive from it and
    differ in ``fit``; what they share (the fitted maps, :meth:`project`,
    :meth:`embed`) is what :func:`~fusemix.warm_start` reads.

    Args:
        input_norm: ``None``, ``"layer_norm"``, or a dict of modality name to
            either (see the module docstring).

    """

    _extra_buffers: tuple[str, ...] = ()

    def __init__(self, input_norm: InputNorm = None) -> None:
        super().__init__()
        self.maps = nn.ModuleDict()
        self.input_norm = _check_input_norm(input_norm)

    @property
    def modalities(self) -> list[str]:
        """Names of the fitted modalities, in the order given to ``fit``."""
        return list(self.maps.keys())

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load_state_dict``) has set the maps."""
        return len(self.maps) > 0

    @property
    def out_dim(self) -> int:
        """Dimension ``k`` of the shared space."""
        return int(self._fitted_maps()[self.modalities[0]].weight.shape[1])

    @property
    def means_(self) -> dict[str, Tensor]:
        """Per-modality training mean, subtracted before projecting. Shape of each: ``(D_modality,)``."""
        return {name: m.mean for name, m in self._fitted_maps().items()}

    @property
    def projections_(self) -> dict[str, Tensor]:
        """Per-modality projection matrix applied to centred latents. Shape of each: ``(D_modality, k)``."""
        return {name: m.weight for name, m in self._fitted_maps().items()}

    @property
    def input_norms_(self) -> dict[str, float | None]:
        """Per-modality ``eps`` of the LayerNorm applied to latents before centring, or ``None`` for none."""
        return {name: m.layer_norm_eps for name, m in self._fitted_maps().items()}

    def _fitted_maps(self) -> nn.ModuleDict:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first")
        return self.maps

    def _set_maps(
        self,
        maps: dict[str, tuple[Tensor, Tensor]],
        norm_eps: Mapping[str, Tensor | float | None] | None = None,
        **extra: Tensor,
    ) -> None:
        # Contiguous buffers, so that ``state_dict()`` can be written with safetensors as is.
        norm_eps = {} if norm_eps is None else norm_eps
        layers = {}
        for name, (mean, weight) in maps.items():
            eps = norm_eps.get(name)
            if eps is not None and not isinstance(eps, Tensor):
                eps = torch.tensor(float(eps), dtype=torch.float64, device=mean.device)
            layers[name] = _CenteredLinear(mean.contiguous(), weight.contiguous(), eps)
        self.maps = nn.ModuleDict(layers)
        for key, value in extra.items():
            self.register_buffer(key, value.contiguous())

    def project(self, modality: str, latents: Tensor) -> Tensor:
        """Map latents into the shared space, without normalising.

        Args:
            modality: A fitted modality's name.
            latents: Latents of that modality, on the aligner's device.
                Shape: ``(*, D_modality)``.

        Returns:
            Shared-space features in the dtype of ``latents``. Shape: ``(*, k)``.

        """
        maps = self._fitted_maps()
        if modality not in maps:
            raise KeyError(f"modality: {modality!r} is not one of {self.modalities}")
        layer = maps[modality]
        check_floating("latents", latents)
        if latents.ndim < 1 or latents.shape[-1] != layer.mean.shape[0]:
            raise ValueError(
                f"latents: expected a last dimension of {layer.mean.shape[0]} for {modality!r}, "
                f"got shape {tuple(latents.shape)}"
            )
        if latents.device != layer.mean.device:
            raise ValueError(
                f"latents: on {latents.device} but the aligner is on {layer.mean.device}; "
                "move one of them with .to(device)"
            )
        return layer(latents)

    def embed(self, modality: str, latents: Tensor) -> Tensor:
        """L2-normalised shared-space embeddings, ready for retrieval.

        Args:
            modality: A fitted modality's name.
            latents: Latents of that modality. Shape: ``(*, D_modality)``.

        Returns:
            Unit-norm embeddings in the dtype of ``latents``. Shape: ``(*, k)``.

        """
        return F.normalize(self.project(modality, latents), dim=-1)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Build maps and buffers of the stored shapes so that an unfitted aligner can load a fitted state.
        stem = f"{prefix}maps."
        names = list(dict.fromkeys(k[len(stem) :].split(".")[0] for k in state_dict if k.startswith(stem)))
        if names:
            maps: dict[str, tuple[Tensor, Tensor]] = {}
            for name in names:
                mean, weight = state_dict.get(f"{stem}{name}.mean"), state_dict.get(f"{stem}{name}.weight")
                if mean is None or weight is None:
                    raise ValueError(f"state_dict: modality {name!r} needs both '{stem}{name}.mean' and '.weight'")
                if mean.ndim != 1 or weight.ndim != 2 or weight.shape[0] != mean.shape[0]:
                    raise ValueError(
                        f"state_dict: modality {name!r} has mean shape {tuple(mean.shape)} and weight shape "
                        f"{tuple(weight.shape)}; expected (D,) and (D, k)"
                    )
                maps[name] = (torch.empty_like(mean), torch.empty_like(weight))
            dims = {name: w.shape[1] for name, (_, w) in maps.items()}
            if len(set(dims.values())) > 1:
                raise ValueError(f"state_dict: projections map to different dims {dims}")
            missing = [prefix + key for key in self._extra_buffers if prefix + key not in state_dict]
            if missing:
                raise ValueError(f"state_dict: has maps but lacks {missing}; is it from a {type(self).__name__}?")
            extra = {key: torch.empty_like(state_dict[prefix + key]) for key in self._extra_buffers}
            norm_eps = {
                name: torch.empty_like(state_dict[f"{stem}{name}.norm_eps"])
                for name in names
                if f"{stem}{name}.norm_eps" in state_dict
            }
            self._set_maps(maps, norm_eps, **extra)
            self.input_norm = {name: "layer_norm" if name in norm_eps else None for name in names}
            if len(set(self.input_norm.values())) == 1:
                self.input_norm = next(iter(self.input_norm.values()))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class CCAAligner(ClosedFormAligner):
    """Regularised canonical correlation analysis of two modalities' paired latents.

    Fitting centres each modality, regularises its covariance relative to its
    scale (``C + r * tr(C) / d * I``; see the module docstring), whitens with
    ``W = C_r^{-1/2}`` from ``eigh``, and takes the SVD
    ``W_x^T C_xy W_y = U diag(rho) V^T`` of the whitened cross-covariance. The
    singular values ``rho`` are the (regularised) canonical correlations and
    ``W_x U``, ``W_y V`` the canonical directions, whose variates have unit
    variance under the regularised covariances.

    Each modality is projected onto the top ``dim`` directions, column ``i``
    scaled by ``rho_i ** correlation_power``. The default ``0.5`` makes each
    projection the posterior mean of the shared latent in probabilistic CCA
    (Bach & Jordan 2005, "A Probabilistic Interpretation of Canonical
    Correlation Analysis", with ``M_1 = M_2 = diag(rho)^{1/2}``), so the dot
    product of two embeddings is ``sum_i rho_i u_i v_i``: poorly correlated,
    noisy directions count less. ``0`` gives plain whitened canonical
    variates (all directions weighted equally); Gong et al. (2014, "A
    Multi-View Embedding Space for Modeling Internet Images, Tags, and their
    Semantics") used ``4``.

    Defaults, measured: with few pairs per latent dimension, the ridge
    matters most. On OpenMoji (1,385 training and 500 test pairs,
    EfficientNet-Lite0 1280-d / MiniLM 384-d latents, ``dim=None``), the mean
    of Recall@{1,5,10} over both directions was 24.1 / 27.6 / 32.6 / 35.4 /
    37.4 / 36.0 for ``r`` = 0.001 / 0.01 / 0.1 / 0.3 / 1 / 3 with ``p = 0.5``;
    at ``r = 0.1``, ``p`` = 0 / 0.5 / 1 / 2 / 4 gave 30.5 / 32.6 / 33.9 / 35.4
    / 35.2, but large ``p`` collapses at large ``r`` (``p = 4``, ``r = 3``:
    18.8) while ``p = 0.5`` never fell far from the best (one split, so
    differences under about 2 points are noise). Larger ``r`` won here, but
    the more pairs per dimension, the less shrinkage is needed; ``r = 0.1``
    is a middle ground. Tune ``regularization`` on held-out pairs when it
    matters.

    Args:
        dim: Shared dimension ``k``; ``min(d_x, d_y, N - 1)`` (further capped
            by the covariances' numerical ranks) when ``None``.
        regularization: Ridge ``r >= 0`` relative to the mean eigenvalue of
            each covariance. ``0`` is exact CCA but needs ``N > d`` and
            well-conditioned latents for meaningful directions; ``r > 0``
            shrinks ``correlations_`` below the sample correlations.
        correlation_power: Exponent ``p >= 0`` of the canonical-correlation
            weight ``rho ** p`` on each shared dimension.
        input_norm: ``"layer_norm"`` layer-normalises every latent row before
            anything else (in ``fit`` and ``embed``), as a
            :class:`~fusemix.FusionAdapter` does, so the aligner can
            warm-start one; a dict sets it per modality; ``None`` (default)
            leaves latents as they are. See the module docstring.

    Attributes:
        correlations_: Canonical correlations of the kept directions, in
            descending order. Shape: ``(k,)``.
        means_: Per-modality training means (of the normalised latents with
            ``input_norm``).
        projections_: Per-modality projection matrices. Shape: ``(D, k)``.
        input_norms_: Per-modality LayerNorm ``eps``, or ``None``.

    Example:
        >>> z = torch.randn(200, 4)
        >>> img, txt = z @ torch.randn(4, 12), z @ torch.randn(4, 6) + 0.01 * torch.randn(200, 6)
        >>> cca = CCAAligner(dim=4, regularization=1e-3).fit({"image": img, "text": txt})
        >>> bool(cca.correlations_.min() > 0.9), cca.embed("text", txt).shape
        (True, torch.Size([200, 4]))

    """

    _extra_buffers = ("correlations",)

    def __init__(
        self,
        dim: int | None = None,
        *,
        regularization: float = 0.1,
        correlation_power: float = 0.5,
        input_norm: InputNorm = None,
    ) -> None:
        super().__init__(input_norm)
        self.dim = _check_dim(dim)
        self.regularization = check_nonnegative("regularization", regularization)
        self.correlation_power = check_nonnegative("correlation_power", correlation_power)

    @property
    def correlations_(self) -> Tensor:
        """Canonical correlations of the kept directions, descending. Shape: ``(k,)``."""
        self._fitted_maps()
        return self.correlations

    @torch.no_grad()
    def fit(
        self,
        latents: AlignerData,
        *,
        modalities: Sequence[str] | None = None,
        max_pairs: int | None = None,
        seed: int = 0,
    ) -> CCAAligner:
        """Fit the canonical directions of two modalities.

        Args:
            latents: The paired latents: a dict of two modality names to
                latents whose row ``i`` is one pair (tensors, NumPy arrays,
                memory maps, :class:`~fusemix.store.LatentStore` s or any
                array-like with ``shape``, a floating ``dtype`` and row
                indexing; shape of each ``(N, D_modality)``, ``N >= 2``), or
                a :class:`~fusemix.data.PairedLatents`, whose pairs are read
                as it pairs them (an image with five captions counts five
                times) and of which only the pairs that have both modalities
                take part.
            modalities: The two modalities to fit, in this order; ``None``:
                the dict's two keys, or the first two modalities of a
                ``PairedLatents``.
            max_pairs: Fit on at most this many pairs, a random subset drawn
                with ``np.random.default_rng(seed)`` (kept in order); all of
                them when ``None``. Memory does not depend on ``N`` (rows are
                streamed twice in chunks, never copied whole), so a store
                larger than RAM fits as it is; this bounds the time.
            seed: Seed of the ``max_pairs`` subset.

        Returns:
            ``self``, fitted; its buffers are float64 on the latents' device
            (the CPU for arrays and stores).

        Warns:
            UserWarning: If ``dim`` is larger than the directions CCA can
                find (``min(d_x, d_y, N - 1)`` after the rank cut-off); the
                aligner then keeps all of those (its ``out_dim`` is smaller
                than ``dim``) and the warning names both numbers.

        Example:
            >>> z = torch.randn(50, 2)
            >>> latents = {"image": z @ torch.randn(2, 6), "text": z @ torch.randn(2, 3)}
            >>> import warnings
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     cca = CCAAligner(dim=8).fit(latents)
            >>> cca.out_dim, str(caught[0].message).split(";")[0]
            (3, 'dim: 8 is larger than the 3 directions found here, min(d_image, d_text, N - 1) = min(6, 3, 49)')

        """
        pairs = _two_modalities(latents, type(self).__name__, modalities, max_pairs, seed)
        name_x, name_y = pairs.sources
        norm_eps = _norm_eps(self.input_norm, [name_x, name_y])
        moments = _moments(pairs, norm_eps)
        white_x = _inverse_sqrt(_ridge(moments.cov_x, self.regularization))
        white_y = _inverse_sqrt(_ridge(moments.cov_y, self.regularization))
        sizes, dims = (white_x.shape[1], white_y.shape[1]), (moments.cov_x.shape[0], moments.cov_y.shape[0])
        why = _limit_reason((name_x, name_y), sizes, dims, moments.n)
        k = _resolve_dim(self.dim, min(*sizes, moments.n - 1), why)
        u, rho, vh = torch.linalg.svd(white_x.T @ moments.cross @ white_y, full_matrices=False)
        rho = rho[:k].clamp(0.0, 1.0)
        proj_x, proj_y = _flip_signs(white_x @ u[:, :k], white_y @ vh[:k].T)
        weight = rho**self.correlation_power
        self._set_maps(
            {name_x: (moments.mean_x, proj_x * weight), name_y: (moments.mean_y, proj_y * weight)},
            norm_eps,
            correlations=rho,
        )
        return self

    def extra_repr(self) -> str:
        norm = f", input_norm={self.input_norm!r}" if self.input_norm is not None else ""
        return f"dim={self.dim}, regularization={self.regularization}, correlation_power={self.correlation_power}{norm}"


class ProcrustesAligner(ClosedFormAligner):
    """PCA (optionally whitened) of each modality, then the orthogonal map from one onto the other.

    Each modality is centred and, with ``pca=True``, reduced to its top
    ``dim`` principal directions (scaled to unit variance when ``whiten``,
    with the relative ridge of the module docstring). Writing ``X_r`` and
    ``Y_r`` for the reduced source and target latents, the orthogonal
    ``R = U V^T`` from the SVD ``X_r^T Y_r = U S V^T`` minimises
    ``||X_r R - Y_r||_F`` (Schönemann 1966). The source modality is embedded
    through ``R`` into the target's reduced space; the target is embedded by
    its own reduction alone.

    With ``pca=False`` nothing is reduced: the two modalities need equal dims,
    whitening (if on) is symmetric (ZCA), and without whitening the target is
    embedded as its centred latents.

    Args:
        dim: Shared dimension ``k``; ``min(d_x, d_y, N - 1)`` when ``None``.
            Must be ``None`` when ``pca=False``.
        pca: Reduce each modality to its top ``dim`` principal directions.
        whiten: Scale the principal directions to unit variance.
        regularization: Relative ridge ``r >= 0`` added to the covariance
            before whitening (unused when ``whiten=False``). On the OpenMoji
            split of :class:`CCAAligner`, ``dim=None`` gave a mean Recall of
            28.4 / 29.9 with ``r`` = 0.001 / 0.1 (30.9 unwhitened), below
            CCA's 32.6 at the defaults.
        input_norm: ``"layer_norm"``, a dict per modality, or ``None``; as
            for :class:`CCAAligner`.

    Attributes:
        rotation_: The orthogonal map ``R``. Shape: ``(k, k)``.
        means_: Per-modality training means.
        projections_: Per-modality maps from centred latents to the shared
            space (the source's includes ``R``). Shape: ``(D, k)``.

    Example:
        >>> x = torch.randn(100, 3)
        >>> q = torch.linalg.qr(torch.randn(3, 3)).Q
        >>> aligner = ProcrustesAligner(pca=False, whiten=False).fit({"audio": x, "text": x @ q})
        >>> torch.allclose(aligner.rotation_.float(), q, atol=1e-5)
        True

    """

    _extra_buffers = ("rotation",)

    def __init__(
        self,
        dim: int | None = None,
        *,
        pca: bool = True,
        whiten: bool = True,
        regularization: float = 0.1,
        input_norm: InputNorm = None,
    ) -> None:
        super().__init__(input_norm)
        self.dim = _check_dim(dim)
        for name, flag in (("pca", pca), ("whiten", whiten)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
        if not pca and dim is not None:
            raise ValueError("dim: must be None when pca=False (nothing is reduced)")
        self.pca, self.whiten = pca, whiten
        self.regularization = check_nonnegative("regularization", regularization)

    @property
    def rotation_(self) -> Tensor:
        """The orthogonal map from the source's reduced space onto the target's. Shape: ``(k, k)``."""
        self._fitted_maps()
        return self.rotation

    def _reduction(self, cov: Tensor, k: int) -> Tensor:
        """Map from centred latents to the reduced (and maybe whitened) space. Shape: ``(d, k)``."""
        if not self.pca and not self.whiten:
            return torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
        values, basis = values.flip(0)[:k], vectors.flip(1)[:, :k]
        reduction = basis
        if self.whiten:
            cutoff = cov.shape[0] * torch.finfo(cov.dtype).eps * max(float(values[0]), 0.0)
            values = torch.where(values > cutoff, values, torch.zeros_like(values))
            scale = (values + self.regularization * float(torch.trace(cov)) / cov.shape[0]).rsqrt()
            if not bool(torch.isfinite(scale).all()):
                raise ValueError("regularization: a covariance is singular; whitening it needs regularization > 0")
            reduction = basis * scale
        return reduction if self.pca else reduction @ basis.T

    @torch.no_grad()
    def fit(
        self,
        latents: AlignerData,
        *,
        target: str | None = None,
        modalities: Sequence[str] | None = None,
        max_pairs: int | None = None,
        seed: int = 0,
    ) -> ProcrustesAligner:
        """Fit the reductions and the orthogonal map.

        Args:
            latents: The paired latents: a dict of two modalities' latents
                (row ``i`` of each is one pair) or a
                :class:`~fusemix.data.PairedLatents`; as for
                :meth:`CCAAligner.fit`.
            target: The modality whose space is kept; the other one is
                rotated onto it. The second of the two modalities when ``None``.
            modalities: The two modalities to fit; as for :meth:`CCAAligner.fit`.
            max_pairs: Fit on at most this many pairs (a seeded random
                subset); as for :meth:`CCAAligner.fit`.
            seed: Seed of the ``max_pairs`` subset.

        Returns:
            ``self``, fitted; ``modalities`` lists the source, then the target.

        Warns:
            UserWarning: If ``pca=True`` and ``dim`` is larger than
                ``min(d_x, d_y, N - 1)``; that many dimensions are fitted.

        """
        pairs = _two_modalities(latents, type(self).__name__, modalities, max_pairs, seed)
        names = list(pairs.sources)
        if target is None:
            target = names[1]
        if target not in pairs.sources:
            raise ValueError(f"target: {target!r} is not one of {names}")
        source = names[0] if target == names[1] else names[1]
        ordered = _Pairs(
            {m: pairs.sources[m] for m in (source, target)}, {m: pairs.rows[m] for m in (source, target)}, pairs.n
        )
        norm_eps = _norm_eps(self.input_norm, [source, target])
        moments = _moments(ordered, norm_eps)
        d_x, d_y = moments.cov_x.shape[0], moments.cov_y.shape[0]
        if self.pca:
            why = _limit_reason((source, target), (d_x, d_y), (d_x, d_y), moments.n)
            k = _resolve_dim(self.dim, min(d_x, d_y, moments.n - 1), why)
        elif d_x != d_y:
            raise ValueError(
                f"latents: pca=False needs equal dims, got {source}={d_x} and {target}={d_y}; use pca=True"
            )
        else:
            k = d_x
        reduce_x, reduce_y = self._reduction(moments.cov_x, k), self._reduction(moments.cov_y, k)
        u, _, vh = torch.linalg.svd(reduce_x.T @ moments.cross @ reduce_y)
        rotation = u @ vh
        self._set_maps(
            {source: (moments.mean_x, reduce_x @ rotation), target: (moments.mean_y, reduce_y)},
            norm_eps,
            rotation=rotation,
        )
        return self

    def extra_repr(self) -> str:
        norm = f", input_norm={self.input_norm!r}" if self.input_norm is not None else ""
        return f"dim={self.dim}, pca={self.pca}, whiten={self.whiten}, regularization={self.regularization}{norm}"
