"""Closed-form linear aligners: training-free baselines with the interface of a fusion model.

:class:`CCAAligner` (regularised canonical correlation analysis) and
:class:`ProcrustesAligner` (PCA, optional whitening, then an orthogonal map)
fit two modalities' paired latents in two streaming passes over the data
(more than two modalities are refused with a ``ValueError``) and expose the
same ``modalities`` / ``project`` / ``embed`` interface as
:class:`~fusemix.FusionModel`, so they plug into
:func:`~fusemix.retrieval_metrics` unchanged::

    aligner = CCAAligner(dim=256).fit({"image": img, "text": txt})
    retrieval_metrics(aligner.embed("image", img_test), aligner.embed("text", txt_test), text_to_image)

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

from collections.abc import Mapping
from dataclasses import dataclass

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

AlignerLatents = Tensor | np.ndarray
"""Latents accepted by ``fit``: a floating tensor or NumPy array of shape ``(N, D)``."""

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


def _check_latents(name: str, value: object) -> AlignerLatents:
    key = f"latents[{name!r}]"
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{key}: expected a floating-point array, got dtype {value.dtype}")
        if value.ndim != 2:
            raise ValueError(f"{key}: expected a 2-D array of shape (N, D), got shape {value.shape}")
        if value.shape[0] < 2:
            raise ValueError(f"{key}: expected at least 2 row(s), got {value.shape[0]}")
        if value.shape[1] < 1:
            raise ValueError(f"{key}: expected a feature dimension of at least 1, got shape {value.shape}")
        return value
    if isinstance(value, Tensor):
        return check_features(key, value, min_rows=2)
    raise TypeError(f"{key}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _check_two_modalities(latents: object, owner: str) -> dict[str, AlignerLatents]:
    if not isinstance(latents, Mapping):
        raise TypeError(f"latents: expected a dict of modality name to latents, got {type(latents).__name__}")
    if len(latents) != 2:
        raise ValueError(f"latents: {owner} fits exactly two modalities, got {len(latents)} ({list(latents)})")
    checked: dict[str, AlignerLatents] = {}
    for name, value in latents.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"latents: modality names must be non-empty strings without '.', got {name!r}")
        checked[name] = _check_latents(name, value)
    sizes = {name: value.shape[0] for name, value in checked.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise ValueError(f"latents: row counts differ ({listed}); row i of every modality must be one paired example")
    return checked


def _fit_device(values: list[AlignerLatents]) -> torch.device:
    devices = {v.device for v in values if isinstance(v, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"latents: tensors are on different devices ({sorted(map(str, devices))}); move them to one")
    device = devices.pop() if devices else torch.device("cpu")
    return torch.device("cpu") if device.type == "mps" else device


def _rows(value: AlignerLatents, start: int, stop: int, device: torch.device, norm_eps: float | None = None) -> Tensor:
    if isinstance(value, np.ndarray):
        rows = torch.from_numpy(np.array(value[start:stop], dtype=np.float64)).to(device)
    else:
        rows = value[start:stop].to(device=device, dtype=torch.float64)
    return rows if norm_eps is None else F.layer_norm(rows, (rows.shape[1],), eps=norm_eps)


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


def _moments(latents: dict[str, AlignerLatents], norm_eps: Mapping[str, float | None] | None = None) -> _Moments:
    """Stream the rows twice: once for the means, once for the centred (cross-)covariances."""
    (name_x, x), (name_y, y) = latents.items()
    eps_x, eps_y = (None, None) if norm_eps is None else (norm_eps[name_x], norm_eps[name_y])
    device = _fit_device([x, y])
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    step = max(1, _CHUNK_ELEMENTS // (dx + dy))
    sum_x = torch.zeros(dx, dtype=torch.float64, device=device)
    sum_y = torch.zeros(dy, dtype=torch.float64, device=device)
    for s in range(0, n, step):
        sum_x += _rows(x, s, s + step, device, eps_x).sum(0)
        sum_y += _rows(y, s, s + step, device, eps_y).sum(0)
    for name, total, value in ((name_x, sum_x, x), (name_y, sum_y, y)):
        if not bool(torch.isfinite(total).all()):
            bad = int((~np.isfinite(value)).sum()) if isinstance(value, np.ndarray) else int((~value.isfinite()).sum())
            raise ValueError(f"latents[{name!r}]: contains {bad} non-finite value(s) (NaN or Inf) or overflows float64")
    mean_x, mean_y = sum_x / n, sum_y / n
    cov_x = torch.zeros(dx, dx, dtype=torch.float64, device=device)
    cov_y = torch.zeros(dy, dy, dtype=torch.float64, device=device)
    cross = torch.zeros(dx, dy, dtype=torch.float64, device=device)
    for s in range(0, n, step):
        xc = _rows(x, s, s + step, device, eps_x) - mean_x
        yc = _rows(y, s, s + step, device, eps_y) - mean_y
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
    if dim is None:
        return limit
    if dim > limit:
        raise ValueError(f"dim: {dim} is larger than the {limit} allowed here ({why})")
    return dim


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
    def fit(self, latents: Mapping[str, AlignerLatents]) -> CCAAligner:
        """Fit the canonical directions of two modalities.

        Args:
            latents: Exactly two modality names mapped to paired latents (row
                ``i`` of each is one example); tensors or NumPy arrays
                (memory-mapped ones are streamed). Shape of each:
                ``(N, D_modality)`` with ``N >= 2``.

        Returns:
            ``self``, fitted; its buffers are float64 on the latents' device.

        """
        checked = _check_two_modalities(latents, type(self).__name__)
        name_x, name_y = checked
        norm_eps = _norm_eps(self.input_norm, [name_x, name_y])
        moments = _moments(checked, norm_eps)
        white_x = _inverse_sqrt(_ridge(moments.cov_x, self.regularization))
        white_y = _inverse_sqrt(_ridge(moments.cov_y, self.regularization))
        limit = min(white_x.shape[1], white_y.shape[1], moments.n - 1)
        k = _resolve_dim(self.dim, limit, "min(d_x, d_y, N - 1) after dropping numerically null directions")
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
    def fit(self, latents: Mapping[str, AlignerLatents], *, target: str | None = None) -> ProcrustesAligner:
        """Fit the reductions and the orthogonal map.

        Args:
            latents: Exactly two modality names mapped to paired latents (row
                ``i`` of each is one example). Shape of each:
                ``(N, D_modality)`` with ``N >= 2``.
            target: The modality whose space is kept; the other one is
                rotated onto it. The second key of ``latents`` when ``None``.

        Returns:
            ``self``, fitted; ``modalities`` lists the source, then the target.

        """
        checked = _check_two_modalities(latents, type(self).__name__)
        names = list(checked)
        if target is None:
            target = names[1]
        if target not in checked:
            raise ValueError(f"target: {target!r} is not one of {names}")
        source = names[0] if target == names[1] else names[1]
        ordered = {source: checked[source], target: checked[target]}
        norm_eps = _norm_eps(self.input_norm, [source, target])
        moments = _moments(ordered, norm_eps)
        d_x, d_y = moments.cov_x.shape[0], moments.cov_y.shape[0]
        if self.pca:
            k = _resolve_dim(self.dim, min(d_x, d_y, moments.n - 1), "min(d_x, d_y, N - 1)")
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
