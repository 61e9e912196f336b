import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fusemix.aligners as aligners_module
from fusemix import retrieval_metrics
from fusemix.aligners import CCAAligner, ProcrustesAligner
from fusemix.data import PairedLatents
from fusemix.store import LatentStore, write_store


def planted(n, k, dx, dy, noise=0.01, seed=0):
    """x = z A + noise, y = z B + noise for a shared k-d latent z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)
    x = z @ torch.randn(k, dx, generator=g) + noise * torch.randn(n, dx, generator=g)
    y = z @ torch.randn(k, dy, generator=g) + noise * torch.randn(n, dy, generator=g)
    return x, y


def random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_invertible(d, rng):
    """A well-conditioned invertible matrix (singular values in [0.3, 3])."""
    return random_orthogonal(d, rng) @ np.diag(rng.uniform(0.3, 3.0, d)) @ random_orthogonal(d, rng)


def correlated(rng, n, dx, dy):
    """Latents with a few genuine cross-correlations of different strengths."""
    shared = rng.standard_normal((n, min(dx, dy)))
    x = shared @ rng.standard_normal((shared.shape[1], dx)) + rng.standard_normal((n, dx))
    y = shared @ rng.standard_normal((shared.shape[1], dy)) + 2 * rng.standard_normal((n, dy))
    return x, y


def recalls(aligner, x, y):
    index = torch.arange(x.shape[0])
    return retrieval_metrics(aligner.embed("image", x), aligner.embed("text", y), index)


# --- CCA --------------------------------------------------------------------------------------------------------


def test_cca_recovers_a_planted_linear_relation():
    k = 5
    x, y = planted(800, k, dx=24, dy=16)
    cca = CCAAligner(dim=k, regularization=1e-3).fit({"image": x[:600], "text": y[:600]})
    assert cca.modalities == ["image", "text"] and cca.out_dim == k
    assert cca.correlations_.shape == (k,) and bool((cca.correlations_ > 0.99).all())
    metrics = recalls(cca, x[600:], y[600:])
    assert metrics["i2t_R@1"] == 100.0 and metrics["t2i_R@1"] == 100.0
    full = CCAAligner().fit({"image": x[:600], "text": y[:600]})
    assert full.out_dim == 16  # min(d_x, d_y, N - 1)
    assert bool((full.correlations_.diff() <= 0).all())
    assert float(full.correlations_[k]) < 0.5  # beyond the planted k only chance correlations remain


def textbook_cca(x, y, regularization):
    """Canonical correlations and directions from inv(sqrtm(Cxx)) Cxy inv(sqrtm(Cyy)), in float64."""
    linalg = pytest.importorskip("scipy.linalg")
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    cxx, cyy, cxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    cxx = cxx + regularization * np.trace(cxx) / cxx.shape[0] * np.eye(cxx.shape[0])
    cyy = cyy + regularization * np.trace(cyy) / cyy.shape[0] * np.eye(cyy.shape[0])
    wx, wy = np.linalg.inv(linalg.sqrtm(cxx).real), np.linalg.inv(linalg.sqrtm(cyy).real)
    u, rho, vt = np.linalg.svd(wx @ cxy @ wy)
    return rho, wx @ u, wy @ vt.T, (cxx, cyy, cxy)


@pytest.mark.parametrize("regularization", [0.0, 0.1])
def test_cca_matches_the_textbook_solution(regularization):
    rng = np.random.default_rng(0)
    x, y = correlated(rng, 400, dx=7, dy=5)
    rho, ax, ay, (cxx, cyy, cxy) = textbook_cca(x, y, regularization)
    cca = CCAAligner(regularization=regularization, correlation_power=0.0).fit({"image": x, "text": y})
    np.testing.assert_allclose(cca.correlations_.numpy(), rho, rtol=1e-9, atol=1e-12)
    proj_x, proj_y = cca.projections_["image"].numpy(), cca.projections_["text"].numpy()
    signs = np.sign((proj_x * ax[:, :5]).sum(0))  # directions are defined up to a sign per pair
    np.testing.assert_allclose(proj_x, ax[:, :5] * signs, atol=1e-9)
    np.testing.assert_allclose(proj_y, ay * signs, atol=1e-9)
    # Whitened canonical variates: unit variance, cross-covariance diag(rho).
    np.testing.assert_allclose(proj_x.T @ cxx @ proj_x, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(proj_y.T @ cyy @ proj_y, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(proj_x.T @ cxy @ proj_y, np.diag(rho), atol=1e-9)
    np.testing.assert_allclose(cca.means_["image"].numpy(), x.mean(0))


def test_correlation_power_scales_the_shared_dimensions():
    rng = np.random.default_rng(1)
    x, y = correlated(rng, 300, dx=6, dy=4)
    plain = CCAAligner(correlation_power=0.0).fit({"a": x, "b": y})
    for power in (0.5, 2.0):
        weighted = CCAAligner(correlation_power=power).fit({"a": x, "b": y})
        for name in ("a", "b"):
            expected = plain.projections_[name] * plain.correlations_**power
            torch.testing.assert_close(weighted.projections_[name], expected)


@st.composite
def cca_problems(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    dx, dy = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    x, y = correlated(rng, 120, dx, dy)
    return rng, x, y


@given(cca_problems())
def test_cca_correlations_are_invariant_to_invertible_maps_shifts_and_row_order(problem):
    rng, x, y = problem
    reference = CCAAligner(regularization=0.0).fit({"x": x, "y": y}).correlations_
    x2 = x @ random_invertible(x.shape[1], rng) + rng.standard_normal(x.shape[1]) * 10
    y2 = y @ random_invertible(y.shape[1], rng) - 5.0
    order = rng.permutation(x.shape[0])
    moved = CCAAligner(regularization=0.0).fit({"x": x2[order], "y": y2[order]}).correlations_
    torch.testing.assert_close(moved, reference, atol=1e-8, rtol=1e-8)


@given(cca_problems(), st.floats(1e-3, 1e3))
def test_relative_regularization_is_invariant_to_scaled_rotations(problem, scale):
    rng, x, y = problem
    reference = CCAAligner(regularization=0.05).fit({"x": x, "y": y}).correlations_
    moved = CCAAligner(regularization=0.05).fit({"x": scale * x @ random_orthogonal(x.shape[1], rng), "y": y})
    torch.testing.assert_close(moved.correlations_, reference, atol=1e-8, rtol=1e-8)


def test_consistent_row_permutation_gives_the_same_projections():
    rng = np.random.default_rng(2)
    x, y = correlated(rng, 200, dx=8, dy=5)
    order = rng.permutation(200)
    a = CCAAligner().fit({"x": x, "y": y})
    b = CCAAligner().fit({"x": x[order], "y": y[order]})
    for name in ("x", "y"):
        torch.testing.assert_close(a.projections_[name], b.projections_[name], atol=1e-8, rtol=1e-6)


# --- Procrustes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("whiten", [False, True])
def test_procrustes_recovers_an_orthogonal_map(whiten):
    rng = np.random.default_rng(3)
    q = random_orthogonal(6, rng)
    x = rng.standard_normal((300, 6)) @ np.diag([3.0, 2.5, 2.0, 1.5, 1.0, 0.5]) + 4.0
    y = x @ q + 1e-4 * rng.standard_normal((300, 6))
    aligner = ProcrustesAligner(pca=False, whiten=whiten).fit({"image": torch.tensor(x), "text": torch.tensor(y)})
    assert aligner.modalities == ["image", "text"] and aligner.out_dim == 6
    rotation = aligner.rotation_.numpy()
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(6), atol=1e-10)
    if not whiten:
        np.testing.assert_allclose(rotation, q, atol=1e-3)
        torch.testing.assert_close(aligner.projections_["text"], torch.eye(6, dtype=torch.float64))
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    torch.testing.assert_close(aligner.embed("image", xs), aligner.embed("text", ys), atol=2e-3, rtol=0)


def test_procrustes_with_pca_retrieves_across_unequal_dims():
    x, y = planted(800, 5, dx=24, dy=16)
    aligner = ProcrustesAligner(dim=5).fit({"image": x[:600], "text": y[:600]})
    assert aligner.out_dim == 5 and aligner.projections_["image"].shape == (24, 5)
    metrics = recalls(aligner, x[600:], y[600:])
    assert metrics["i2t_R@1"] == 100.0 and metrics["t2i_R@1"] == 100.0
    assert ProcrustesAligner().fit({"image": x[:600], "text": y[:600]}).out_dim == 16


def test_procrustes_target_keeps_its_own_space():
    x, y = planted(200, 3, dx=5, dy=4)
    aligner = ProcrustesAligner(dim=3).fit({"image": x, "text": y}, target="image")
    assert aligner.modalities == ["text", "image"]
    reversed_ = ProcrustesAligner(dim=3).fit({"text": y, "image": x})
    torch.testing.assert_close(aligner.projections_["image"], reversed_.projections_["image"])
    torch.testing.assert_close(aligner.rotation_, reversed_.rotation_)


def test_procrustes_whitening_makes_the_target_variates_white():
    x, y = planted(500, 4, dx=10, dy=8, noise=0.3)
    aligner = ProcrustesAligner(dim=4, regularization=0.0).fit({"image": x, "text": y})
    t = aligner.project("text", y.double())
    torch.testing.assert_close(t.T @ t / 499, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


# --- Shared behaviour -------------------------------------------------------------------------------------------

ALIGNERS = [
    lambda: CCAAligner(),
    lambda: CCAAligner(dim=3, correlation_power=0.0),
    lambda: ProcrustesAligner(),
    lambda: ProcrustesAligner(dim=2, whiten=False),
]


@pytest.mark.parametrize("make", ALIGNERS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(4, 40), dx=st.integers(3, 12), dy=st.integers(3, 12))
def test_embeddings_are_unit_norm_and_finite_even_when_d_exceeds_n(make, seed, n, dx, dy):
    rng = np.random.default_rng(seed)
    x, y = correlated(rng, n, dx, dy)
    aligner = make().fit({"image": x, "text": y})
    assert aligner.out_dim <= min(dx, dy, n - 1)
    for name, latents in (("image", x), ("text", y)):
        emb = aligner.embed(name, torch.tensor(latents, dtype=torch.float32))
        assert emb.dtype == torch.float32 and emb.shape == (n, aligner.out_dim)
        assert bool(torch.isfinite(emb).all())
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(n))
    if isinstance(aligner, CCAAligner):
        rho = aligner.correlations_
        assert bool(torch.isfinite(rho).all()) and bool(((rho >= 0) & (rho <= 1)).all())


def test_unregularized_cca_with_more_dims_than_rows_stays_finite():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((10, 30)), rng.standard_normal((10, 25))
    cca = CCAAligner(regularization=0.0).fit({"image": x, "text": y})
    assert cca.out_dim == 9 and bool(torch.isfinite(cca.projections_["image"]).all())
    torch.testing.assert_close(cca.correlations_, torch.ones(9, dtype=torch.float64))  # in-sample overfit


@pytest.mark.parametrize("make", [CCAAligner, ProcrustesAligner])
def test_state_dict_round_trips_through_safetensors(make, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    x, y = planted(100, 3, dx=7, dy=5)
    aligner = make(dim=3).fit({"image": x, "text": y})
    safetensors.save_file(aligner.state_dict(), tmp_path / "aligner.safetensors")
    loaded = make()
    loaded.load_state_dict(safetensors.load_file(tmp_path / "aligner.safetensors"))
    assert sorted(loaded.modalities) == ["image", "text"] and loaded.out_dim == 3
    for name, latents in (("image", x), ("text", y)):
        torch.testing.assert_close(loaded.embed(name, latents), aligner.embed(name, latents), atol=0, rtol=0)
    with pytest.raises(ValueError, match="lacks"):
        (ProcrustesAligner if make is CCAAligner else CCAAligner)().load_state_dict(aligner.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected"):
        make().load_state_dict({**aligner.state_dict(), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="state_dict"):
        make().load_state_dict({"maps.image.mean": torch.zeros(3)})


def test_dtype_numpy_memmap_chunking_and_module_conversions(tmp_path, monkeypatch):
    x, y = planted(90, 3, dx=6, dy=4)
    reference = CCAAligner().fit({"image": x.clone().requires_grad_(), "text": y})
    assert not any(t.requires_grad for t in reference.state_dict().values())
    assert reference.projections_["image"].dtype == torch.float64
    np.save(tmp_path / "x.npy", x.numpy())
    monkeypatch.setattr(aligners_module, "_CHUNK_ELEMENTS", 50)  # 5 rows per chunk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed = CCAAligner().fit({"image": np.load(tmp_path / "x.npy", mmap_mode="r"), "text": y.numpy()})
    for name in ("image", "text"):
        torch.testing.assert_close(streamed.projections_[name], reference.projections_[name])
    assert reference.embed("text", y.double()).dtype == torch.float64
    assert reference.project("text", y[:2].bfloat16()).dtype == torch.bfloat16
    single = reference.to("cpu").float()
    assert single.projections_["text"].dtype == torch.float32
    torch.testing.assert_close(single.embed("text", y), reference.embed("text", y))
    assert reference.project("text", y[0]).shape == (4,)


# --- a dim larger than the data allows: capped, with a warning ------------------------------------------------------


def fit_warning(make, latents, **kwargs):
    """The aligner fitted by ``make().fit(latents)`` and the one warning it gave (which must point at this file)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aligner = make().fit(latents, **kwargs)
    assert len(caught) == 1 and caught[0].category is UserWarning and caught[0].filename == __file__
    return aligner, str(caught[0].message)


@pytest.mark.parametrize("make", [CCAAligner, ProcrustesAligner])
def test_a_dim_above_the_smaller_latent_dim_is_capped_with_a_warning(make):
    x, y = planted(60, 3, dx=12, dy=5)
    capped, message = fit_warning(lambda: make(dim=8), {"image": x, "text": y})
    assert message.startswith("dim: 8 is larger than the 5 directions found here, min(d_image, d_text, N - 1) = ")
    assert "min(12, 5, 59); fitting 5 (out_dim = 5)" in message
    exact = make(dim=5).fit({"image": x, "text": y})
    assert capped.out_dim == 5 and capped.dim == 8  # the setting is kept; the fit has what the data allows
    for name in ("image", "text"):
        torch.testing.assert_close(capped.projections_[name], exact.projections_[name], atol=0, rtol=0)


def test_cca_dim_above_the_pairs_or_the_rank_is_capped_and_the_warning_says_why():
    x, y = planted(6, 2, dx=8, dy=7)
    few, message = fit_warning(lambda: CCAAligner(dim=7), {"image": x, "text": y})
    assert few.out_dim == 5 and "min(8, 7, 5); fitting 5" in message
    x, y = planted(20, 2, dx=4, dy=3)
    low_rank = {"a": x[:, :2] @ torch.randn(2, 4), "b": y}  # rank 2 after dropping null directions
    cut, message = fit_warning(lambda: CCAAligner(dim=3, regularization=0.0), low_rank)
    assert cut.out_dim == 2 and "min(2, 3, 19); above the rank cut-off, a has 2 of its 4 dims; fitting 2" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CCAAligner(dim=3).fit({"a": x, "b": y}).out_dim == 3  # within the limit: no warning


# --- what fit reads: PairedLatents, stores, subsets ------------------------------------------------------------------


def assert_same_fit(a, b):
    assert a.modalities == b.modalities
    for name in a.modalities:
        torch.testing.assert_close(a.means_[name], b.means_[name], atol=1e-12, rtol=0)
        torch.testing.assert_close(a.projections_[name], b.projections_[name], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("make", [CCAAligner, ProcrustesAligner])
def test_fit_takes_paired_latents_as_it_pairs_them(make, monkeypatch):
    monkeypatch.setattr(aligners_module, "_CHUNK_ELEMENTS", 70)  # 5 rows per chunk: rows of several chunks
    rng = np.random.default_rng(0)
    images = rng.standard_normal((30, 8)).astype(np.float32)
    image_of_caption = rng.integers(0, 30, 90)  # one-to-many: an image read once per caption
    captions = (images[image_of_caption] @ rng.standard_normal((8, 6)) + rng.standard_normal((90, 6))).astype(
        np.float32
    )
    data = PairedLatents({"image": images, "text": captions}, rows={"image": image_of_caption})
    reference = make(dim=4).fit({"image": images[image_of_caption], "text": captions})
    assert_same_fit(make(dim=4).fit(data), reference)
    swapped = make(dim=4).fit(data, modalities=["text", "image"])
    assert swapped.modalities == ["text", "image"]
    assert_same_fit(swapped, make(dim=4).fit({"text": captions, "image": images[image_of_caption]}))


def test_fit_takes_only_the_pairs_with_both_modalities_and_picks_them_by_name():
    rng = np.random.default_rng(1)
    latents = {m: rng.standard_normal((40, d)).astype(np.float32) for m, d in (("image", 6), ("text", 5), ("audio", 4))}
    image_rows, audio_rows = np.arange(40), np.arange(40)
    image_rows[:10] = -1  # pairs 0-9: text and audio
    audio_rows[30:] = -1  # pairs 30-39: image and text
    data = PairedLatents(latents, rows={"image": image_rows, "audio": audio_rows})
    first_two = CCAAligner(dim=3).fit(data)  # image and text: pairs 10-39
    assert_same_fit(first_two, CCAAligner(dim=3).fit({"image": latents["image"][10:], "text": latents["text"][10:]}))
    audio_image = CCAAligner(dim=3).fit(data, modalities=("audio", "image"))  # pairs 10-29
    expected = CCAAligner(dim=3).fit({"audio": latents["audio"][10:30], "image": latents["image"][10:30]})
    assert_same_fit(audio_image, expected)
    lonely = PairedLatents(latents, rows={"image": [0, 1, -1], "audio": [-1, 2, 2], "text": [0, 1, 2]})
    with pytest.raises(ValueError, match="latents: expected at least 2 pairs with both 'image' and 'audio', got 1"):
        CCAAligner().fit(lonely, modalities=["image", "audio"])


def test_fit_reads_latent_stores_and_a_seeded_subset(tmp_path):
    x, y = planted(200, 3, dx=7, dy=5)
    images = write_store(tmp_path / "image", x.numpy(), modality="image", encoder={"name": "toy"}, shard_size=64)
    texts = write_store(tmp_path / "text", y.numpy(), modality="text", encoder={"name": "toy"}, dtype="float32")
    stored = {"image": LatentStore(tmp_path / "image"), "text": LatentStore(tmp_path / "text")}
    in_memory = {"image": images.to_tensor(), "text": texts.to_tensor()}  # float16 on disk: compare like for like
    assert_same_fit(CCAAligner(dim=3).fit(stored), CCAAligner(dim=3).fit(in_memory))
    data = PairedLatents(stored)
    chosen = np.sort(np.random.default_rng(7).choice(200, 50, replace=False))
    subset = {m: t[chosen] for m, t in in_memory.items()}
    for source in (stored, data, in_memory):
        assert_same_fit(
            ProcrustesAligner(dim=3).fit(source, max_pairs=50, seed=7), ProcrustesAligner(dim=3).fit(subset)
        )
    assert_same_fit(CCAAligner().fit(data, max_pairs=500), CCAAligner().fit(in_memory))  # more than there are: all
    other_seed = CCAAligner(dim=3).fit(data, max_pairs=50, seed=8)
    assert not torch.equal(other_seed.means_["image"], CCAAligner(dim=3).fit(subset).means_["image"])


def test_bad_fit_options_are_refused():
    x, y = planted(20, 2, dx=4, dy=3)
    data = PairedLatents({"a": x.numpy(), "b": y.numpy(), "c": y.numpy()})
    with pytest.raises(ValueError, match=r"modalities: \['d'\] not in the latents \(\['a', 'b', 'c'\]\)"):
        CCAAligner().fit(data, modalities=["a", "d"])
    with pytest.raises(ValueError, match="modalities: expected two different modality names"):
        CCAAligner().fit(data, modalities=["a", "a"])
    with pytest.raises(ValueError, match="modalities: expected two different"):
        CCAAligner().fit({"a": x, "b": y}, modalities="ab")
    with pytest.raises(ValueError, match=r"fits exactly two modalities, got 3 .* modalities=\[...\]"):
        CCAAligner().fit({"a": x, "b": y, "c": y})
    assert CCAAligner().fit({"a": x, "b": y, "c": y}, modalities=["c", "a"]).modalities == ["c", "a"]
    with pytest.raises(ValueError, match="max_pairs: expected an int >= 2"):
        CCAAligner().fit(data, max_pairs=1)
    with pytest.raises(TypeError, match="max_pairs"):
        CCAAligner().fit(data, max_pairs=2.5)
    with pytest.raises(TypeError, match="seed"):
        CCAAligner().fit(data, seed="0")
    with pytest.raises(TypeError, match="latents: expected a dict of modality name to latents or a PairedLatents"):
        CCAAligner().fit((x, y))


def test_bad_input_is_refused():
    x, y = planted(20, 2, dx=4, dy=3)
    for make in (CCAAligner, ProcrustesAligner):
        name = make.__name__
        with pytest.raises(RuntimeError, match=r"call fit\(\) first"):
            make().embed("image", x)
        with pytest.raises(ValueError, match=f"{name} fits exactly two modalities"):
            make().fit({"a": x, "b": y, "c": y})
        with pytest.raises(ValueError, match=r"at least 2 row\(s\), got 1"):
            make().fit({"a": x[:1], "b": y[:1]})
        with pytest.raises(ValueError, match=r"at least 2 row\(s\), got 1"):
            make().fit({"a": x[:1].numpy(), "b": y[:1]})
        with pytest.raises(ValueError, match="row counts differ"):
            make().fit({"a": x, "b": y[:10]})
        bad_y = y.clone()
        bad_y[5, 1] = float("nan")
        with pytest.raises(ValueError, match=r"latents\['b'\]: contains 1 non-finite"):
            make().fit({"a": x, "b": bad_y})
        with pytest.raises(ValueError, match=r"latents\['a'\]: contains 1 non-finite"):
            bad = x.numpy().copy()
            bad[3, 1] = np.inf
            make().fit({"a": bad, "b": y})
        with pytest.raises(ValueError, match="zero variance"):
            make().fit({"a": x, "b": torch.ones(20, 3)})
        with pytest.raises(TypeError, match=r"latents\['a'\]"):
            make().fit({"a": x.long(), "b": y})
        with pytest.raises(TypeError, match=r"latents\['a'\]"):
            make().fit({"a": x.numpy().astype(np.int64), "b": y})
        with pytest.raises(TypeError, match=r"latents\['a'\]"):
            make().fit({"a": x.tolist(), "b": y})
        with pytest.raises(TypeError, match="latents"):
            make().fit([x, y])
        with pytest.raises(ValueError, match="modality names"):
            make().fit({"a.b": x, "c": y})
        with pytest.raises(ValueError, match="dim"):
            make(dim=0)
        with pytest.raises(ValueError, match="regularization"):
            make(regularization=-1.0)
        fitted = make().fit({"image": x, "text": y})
        with pytest.raises(KeyError, match="modality"):
            fitted.embed("audio", x)
        with pytest.raises(ValueError, match="last dimension of 3"):
            fitted.embed("text", x)
        with pytest.raises(TypeError, match="latents"):
            fitted.embed("text", y.long())
    with pytest.raises(RuntimeError, match=r"call fit\(\) first"):
        _ = CCAAligner().correlations_
    with pytest.raises(RuntimeError, match=r"call fit\(\) first"):
        _ = ProcrustesAligner().rotation_
    with pytest.raises(ValueError, match="correlation_power"):
        CCAAligner(correlation_power=-0.5)
    with pytest.raises(ValueError, match="dim: must be None when pca=False"):
        ProcrustesAligner(dim=2, pca=False)
    with pytest.raises(TypeError, match="whiten"):
        ProcrustesAligner(whiten=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pca=False needs equal dims"):
        ProcrustesAligner(pca=False).fit({"a": x, "b": y})
    with pytest.raises(ValueError, match="target"):
        ProcrustesAligner().fit({"a": x, "b": y}, target="c")
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="regularization > 0"):
        ProcrustesAligner(pca=False, regularization=0.0).fit(
            {"a": rng.standard_normal((5, 8)), "b": rng.standard_normal((5, 8))}
        )


# --- input normalisation ----------------------------------------------------------------------------------------


def layer_norm(x):
    x = torch.as_tensor(x)
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=aligners_module.LAYER_NORM_EPS)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: CCAAligner(**kw),
        lambda **kw: CCAAligner(dim=3, correlation_power=0.0, **kw),
        lambda **kw: ProcrustesAligner(**kw),
        lambda **kw: ProcrustesAligner(dim=2, whiten=False, **kw),
    ],
)
def test_layer_norm_input_is_the_plain_fit_on_layer_normed_latents(make):
    x, y = planted(150, 3, dx=7, dy=5)
    x, y = x.double() * 4 + 2, y.double() - 3
    normed = make(input_norm="layer_norm").fit({"image": x, "text": y})
    plain = make().fit({"image": layer_norm(x), "text": layer_norm(y)})
    assert normed.input_norms_ == {"image": aligners_module.LAYER_NORM_EPS, "text": aligners_module.LAYER_NORM_EPS}
    assert plain.input_norms_ == {"image": None, "text": None}
    for name, latents in (("image", x), ("text", y)):
        torch.testing.assert_close(normed.projections_[name], plain.projections_[name])
        torch.testing.assert_close(normed.embed(name, latents), plain.embed(name, layer_norm(latents)))
    # a per-row rescaling and shift of the latents is invisible after a LayerNorm
    torch.testing.assert_close(
        normed.embed("image", x * 7 + 1), normed.embed("image", x), atol=1e-5, rtol=0
    )  # up to eps
    assert "input_norm='layer_norm'" in repr(normed)


def test_input_norm_per_modality_and_default_state_dict_keys():
    x, y = planted(120, 3, dx=6, dy=4)
    mixed = CCAAligner(input_norm={"image": "layer_norm", "text": None}).fit({"image": x, "text": y})
    assert mixed.input_norms_ == {"image": aligners_module.LAYER_NORM_EPS, "text": None}
    reference = CCAAligner().fit({"image": layer_norm(x), "text": y})
    torch.testing.assert_close(mixed.embed("text", y), reference.embed("text", y))
    assert set(mixed.state_dict()) == {
        "maps.image.mean",
        "maps.image.weight",
        "maps.image.norm_eps",
        "maps.text.mean",
        "maps.text.weight",
        "correlations",
    }
    default = CCAAligner().fit({"image": x, "text": y})
    assert not any(key.endswith("norm_eps") for key in default.state_dict())  # the old format, unchanged
    loaded = CCAAligner()
    loaded.load_state_dict(mixed.state_dict())
    assert loaded.input_norm == {"image": "layer_norm", "text": None}
    torch.testing.assert_close(loaded.embed("image", x), mixed.embed("image", x), atol=0, rtol=0)
    overridden = CCAAligner(input_norm="layer_norm")
    overridden.load_state_dict(default.state_dict())  # the stored state decides
    assert overridden.input_norm is None and overridden.input_norms_ == {"image": None, "text": None}


def test_bad_input_norm_is_refused():
    x, y = planted(20, 2, dx=4, dy=3)
    with pytest.raises(ValueError, match="input_norm: expected None or one of"):
        CCAAligner(input_norm="batch_norm")
    with pytest.raises(ValueError, match=r"input_norm\['a'\]"):
        ProcrustesAligner(input_norm={"a": "l2"})
    with pytest.raises(ValueError, match=r"input_norm: has no entry for the modalities \['b'\]"):
        CCAAligner(input_norm={"a": "layer_norm"}).fit({"a": x, "b": y})
    extra = CCAAligner(input_norm={"a": None, "b": None, "c": "layer_norm"}).fit({"a": x, "b": y})
    assert extra.input_norms_ == {"a": None, "b": None}
