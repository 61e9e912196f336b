import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix import (
    CosineAlphaSchedule,
    ExponentialAlphaSchedule,
    FuseMix,
    LatentNoise,
    mix_latents,
    sample_mix_params,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def batches(draw, min_modalities=1, max_modalities=4):
    pairing = draw(st.sampled_from(["halves", "permute"]))
    half = draw(st.integers(1, 16))
    batch = 2 * half if pairing == "halves" else draw(st.integers(2, 32))
    n = draw(st.integers(min_modalities, max_modalities))
    dims = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = _gen(seed)
    tensors = [torch.randn(batch, d, generator=g, dtype=torch.float64) for d in dims]
    return pairing, tensors, seed


@given(batches(), st.booleans(), st.floats(0.05, 5.0))
def test_outputs_are_the_same_convex_combination_in_every_modality(case, per_sample, alpha):
    pairing, tensors, seed = case
    mix = FuseMix(alpha, pairing=pairing, per_sample=per_sample, generator=_gen(seed))
    out, p = mix(tuple(tensors), return_params=True)
    rows = tensors[0].shape[0] // 2 if pairing == "halves" else tensors[0].shape[0]
    assert p.lam.shape == (1, rows)
    assert bool(((p.lam >= 0) & (p.lam <= 1)).all())
    for x, y in zip(tensors, out):
        lam = p.lam[0][:, None]
        expected = lam * x[p.index_a] + (1 - lam) * x[p.index_b]
        assert y.shape == (rows, x.shape[1])
        torch.testing.assert_close(y, expected)
    if pairing == "halves":
        assert p.index_a.tolist() == list(range(rows))
        assert p.index_b.tolist() == list(range(rows, 2 * rows))
    else:
        assert sorted(p.index_b.tolist()) == list(range(rows))


@given(batches(min_modalities=1, max_modalities=1), st.booleans())
def test_lambda_and_pairing_are_shared_without_looking_at_params(case, per_sample):
    # A second modality that is an affine function of the first stays that function
    # of the first after mixing only if lambda and the pairing are shared.
    pairing, (x,), seed = case
    w = torch.randn(x.shape[1], 3, dtype=torch.float64)
    y = x @ w + 2.0
    x_mix, y_mix = FuseMix(pairing=pairing, per_sample=per_sample, generator=_gen(seed))(x, y)
    torch.testing.assert_close(y_mix, x_mix @ w + 2.0)


def test_independent_lambda_ablation_breaks_the_shared_relation():
    x = torch.randn(64, 4, dtype=torch.float64)
    out, p = FuseMix(share_lambda=False, generator=_gen(1))(x, 2 * x, return_params=True)
    assert p.lam.shape == (2, 32)
    assert p.lam[0, 0] != p.lam[1, 0]
    assert not torch.allclose(out[1], 2 * out[0])


def test_halves_matches_the_authors_reference():
    x, y = torch.randn(10, 6), torch.randn(10, 3)
    (xm, ym), p = FuseMix(generator=_gen(3))((x, y), return_params=True)
    lam = float(p.lam[0, 0])
    torch.testing.assert_close(xm, lam * x[:5] + (1 - lam) * x[5:])
    torch.testing.assert_close(ym, lam * y[:5] + (1 - lam) * y[5:])


def _rowwise_reference(x: torch.Tensor, lam: torch.Tensor, index_a: torch.Tensor, index_b: torch.Tensor):
    """Each output row as the authors write it: a Python (float64) lam and 1 - lam times the rows."""
    rows = []
    for r in range(index_a.shape[0]):
        weight = float(lam[r])
        rows.append(weight * x[int(index_a[r])] + (1 - weight) * x[int(index_b[r])])
    return torch.stack(rows)


@pytest.mark.parametrize("pairing", ["halves", "permute"])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("share_lambda", [True, False])
def test_float32_mixing_is_bit_equal_to_float64_coefficients(pairing, per_sample, share_lambda):
    x, y = torch.randn(64, 5), torch.randn(64, 3, 2)  # a (B, T, D) input too
    masks = (torch.arange(64) % 5 != 0, torch.arange(64) % 7 != 0)
    mix = FuseMix(pairing=pairing, per_sample=per_sample, share_lambda=share_lambda, generator=_gen(4))
    for seed in range(5):
        mix.generator.manual_seed(seed)
        ((xm, ym), (mx, my)), p = mix.mix_with_params(x, y, masks=masks)
        assert xm.dtype == ym.dtype == torch.float32
        group_y = 0 if share_lambda else 1
        assert torch.equal(xm, _rowwise_reference(x, p.lam[0], p.index_a, p.index_b))
        assert torch.equal(ym, _rowwise_reference(y, p.lam[group_y], p.index_a, p.index_b))
        assert torch.equal(mx, masks[0][p.index_a] & masks[0][p.index_b])
        assert torch.equal(my, masks[1][p.index_a] & masks[1][p.index_b])


def test_one_lambda_per_batch_by_default_and_per_row_on_request():
    x = torch.randn(32, 2)
    _, p = FuseMix(generator=_gen())(x, return_params=True)
    assert torch.unique(p.lam).numel() == 1
    _, p = FuseMix(per_sample=True, generator=_gen())(x, return_params=True)
    assert torch.unique(p.lam).numel() == 16


def test_same_seed_same_output_and_different_seed_different_output():
    x, y = torch.randn(16, 4), torch.randn(16, 4)
    for pairing in ("halves", "permute"):
        a = FuseMix(pairing=pairing, generator=_gen(7))(x, y)
        b = FuseMix(pairing=pairing, generator=_gen(7))(x, y)
        c = FuseMix(pairing=pairing, generator=_gen(8))(x, y)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert not torch.equal(a[0], c[0])


def test_global_rng_is_used_without_a_generator():
    x = torch.randn(16, 4)
    torch.manual_seed(123)
    a = FuseMix(pairing="permute")(x)
    torch.manual_seed(123)
    b = FuseMix(pairing="permute")(x)
    assert torch.equal(a, b)


def test_lambda_follows_beta_alpha_alpha():
    for alpha in (0.2, 1.0, 4.0):
        p = sample_mix_params(2, alpha, per_sample=True, pairing="permute", groups=20000, generator=_gen(0))
        lam = p.lam.flatten()
        var = 1.0 / (4 * (2 * alpha + 1))
        assert abs(lam.mean().item() - 0.5) < 0.01
        assert abs(lam.var().item() - var) < 0.1 * var


def test_small_alpha_tends_to_the_identity():
    x = torch.randn(64, 5, dtype=torch.float64)
    out, p = FuseMix(alpha=1e-3, pairing="permute", generator=_gen(2))(x, return_params=True)
    to_a = (out - x[p.index_a]).abs().amax(dim=1)
    to_b = (out - x[p.index_b]).abs().amax(dim=1)
    assert bool((torch.minimum(to_a, to_b) < 1e-2).all())


def test_dict_in_dict_out_tuple_in_tuple_out_single_tensor_out():
    x, y, z = torch.randn(8, 3), torch.randn(8, 2), torch.randn(8, 4, 5)
    mix = FuseMix(generator=_gen())
    out = mix({"text": y, "image": x, "tokens": z})
    assert list(out) == ["text", "image", "tokens"]
    assert out["tokens"].shape == (4, 4, 5)
    assert isinstance(mix(x, y), tuple) and isinstance(mix((x, y)), tuple) and isinstance(mix([x, y]), tuple)
    assert isinstance(mix(x), torch.Tensor)


def test_replay_applies_the_same_draw_to_other_tensors():
    x, y = torch.randn(12, 3), torch.randn(12, 7)
    mix = FuseMix(pairing="permute", per_sample=True, generator=_gen(5))
    (xm, ym), p = mix((x, y), return_params=True)
    torch.testing.assert_close(mix(y, params=p), ym)
    torch.testing.assert_close(mix_latents([x], p)[0], xm)


def test_gradients_flow_to_every_input():
    x = torch.randn(8, 3, requires_grad=True)
    y = torch.randn(8, 2, requires_grad=True)
    xm, ym = FuseMix(pairing="permute")(x, y)
    (xm.sum() + ym.sum()).backward()
    assert x.grad is not None and y.grad is not None
    # Every output row has total weight 1, so each input row's gradient sums to its usage.
    torch.testing.assert_close(x.grad.sum(), torch.tensor(8.0 * 3))


def test_inputs_are_not_modified():
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    x0, y0 = x.clone(), y.clone()
    FuseMix(pairing="permute")(x, y)
    LatentNoise()(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_output_dtype_follows_each_input():
    x, y = torch.randn(8, 3, dtype=torch.float16), torch.randn(8, 2, dtype=torch.float64)
    xm, ym = FuseMix()(x, y)
    assert xm.dtype == torch.float16 and ym.dtype == torch.float64


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m(torch.randn(8, 2), torch.randn(6, 2)), ValueError, "batch sizes differ"),
        (lambda m: m(torch.randn(7, 2)), ValueError, "even batch"),
        (lambda m: m(torch.randn(1, 2)), ValueError, "at least 2 rows"),
        (lambda m: m(torch.randint(0, 3, (8, 2))), TypeError, "floating-point"),
        (lambda m: m(torch.randn(0, 2)), ValueError, "non-empty"),
        (lambda m: m(), ValueError, "at least one tensor"),
        (lambda m: m([1.0, 2.0]), TypeError, "torch.Tensor"),
        (lambda m: m(torch.tensor(1.0)), ValueError, "leading batch dimension"),
        (lambda m: m({"a": torch.randn(4, 2), "b": torch.randn(2, 2)}), ValueError, r"inputs\['a'\]=4"),
    ],
)
def test_bad_input_is_refused_with_the_argument_named(call, error, match):
    with pytest.raises(error, match=match):
        call(FuseMix())


def test_replaying_params_on_a_different_batch_size_is_refused():
    _, p = FuseMix()(torch.randn(8, 2), return_params=True)
    with pytest.raises(ValueError, match="params: drawn for a batch of 8"):
        FuseMix()(torch.randn(6, 2), params=p)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_alpha_must_be_finite_and_positive(alpha):
    with pytest.raises(ValueError, match="alpha"):
        FuseMix(alpha)
    mix = FuseMix()
    with pytest.raises(ValueError, match="alpha"):
        mix.alpha = alpha


def test_unknown_pairing_and_bad_generator_are_refused():
    with pytest.raises(ValueError, match="pairing"):
        FuseMix(pairing="shuffle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        FuseMix(generator=0)  # type: ignore[arg-type]


def test_permute_keeps_an_odd_batch():
    out = FuseMix(pairing="permute")(torch.randn(7, 2))
    assert out.shape == (7, 2)


def test_schedules_follow_the_authors_formulas():
    cos = CosineAlphaSchedule(start=0.2, end=1.0, total_steps=100)
    exp = ExponentialAlphaSchedule(start=0.2, end=1.0, total_steps=100)
    for step in (0, 13, 50, 99, 100):
        t = step / 100
        assert cos(step) == pytest.approx((0.2 - 1.0) * 0.5 * (1 + math.cos(math.pi * t)) + 1.0)
        # authors: init * (init / max) ** (-t)
        assert exp(step) == pytest.approx(0.2 * (0.2 / 1.0) ** (-t))
    assert cos(500) == pytest.approx(1.0) and exp(500) == pytest.approx(1.0)
    values = [cos(s) for s in range(101)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="step"):
        cos(-1)
    with pytest.raises(ValueError, match="end"):
        CosineAlphaSchedule(start=1.0, end=0.0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        ExponentialAlphaSchedule(start=1.0, end=2.0, total_steps=0)


def test_schedule_drives_a_fusemix_from_any_loop():
    mix = FuseMix(generator=_gen())
    schedule = CosineAlphaSchedule(start=0.1, end=2.0, total_steps=3)
    seen = []
    for step in range(4):
        mix.alpha = schedule(step)
        seen.append(mix.alpha)
        mix(torch.randn(4, 2))
    assert seen[0] == pytest.approx(0.1) and seen[-1] == pytest.approx(2.0)


def test_latent_noise_is_shape_preserving_independent_and_seeded():
    x = torch.randn(16, 8) * 100
    y = torch.randn(16, 8) * 0.01
    a = LatentNoise(std=0.1, generator=_gen(4))({"x": x, "y": y})
    b = LatentNoise(std=0.1, generator=_gen(4))({"x": x, "y": y})
    assert a["x"].shape == x.shape and torch.equal(a["x"], b["x"])
    # relative noise: the same relative size for latents of very different scales
    rel_x = ((a["x"] - x).norm() / x.norm()).item()
    rel_y = ((a["y"] - y).norm() / y.norm()).item()
    assert 0.05 < rel_x < 0.2 and 0.05 < rel_y < 0.2
    # independent per modality: noise on y is not the noise on x rescaled
    assert not torch.allclose((a["x"] - x) / x.norm(), (a["y"] - y) / y.norm())
    absolute = LatentNoise(std=0.5, relative=False, generator=_gen(0))(torch.zeros(1000, 4))
    assert abs(absolute.std().item() - 0.5) < 0.03


def test_latent_noise_bad_input():
    with pytest.raises(ValueError, match="std"):
        LatentNoise(std=0)
    with pytest.raises(ValueError, match="batch sizes differ"):
        LatentNoise()(torch.randn(4, 2), torch.randn(3, 2))


def test_mix_with_params_returns_the_call_output_and_its_draw():
    inputs = {"a": torch.randn(8, 5), "b": torch.randn(8, 3)}
    masks = {"b": torch.tensor([True, False] * 4)}
    mixed, params = FuseMix(generator=_gen(7)).mix_with_params(inputs)
    assert all(torch.equal(mixed[k], FuseMix(generator=_gen(7))(inputs)[k]) for k in inputs)
    (latents, out_masks), masked_params = FuseMix(generator=_gen(7)).mix_with_params(inputs, masks=masks)
    called_latents, called_masks = FuseMix(generator=_gen(7))(inputs, masks=masks)
    assert torch.equal(latents["a"], called_latents["a"]) and torch.equal(out_masks["b"], called_masks["b"])
    # return_params=True is the older spelling: the draw appended to the output tuple.
    assert torch.equal(FuseMix(generator=_gen(7))(inputs, return_params=True)[1].index_b, params.index_b)
    assert torch.equal(FuseMix(generator=_gen(7))(inputs, masks=masks, return_params=True)[2].lam, masked_params.lam)
    assert torch.equal(FuseMix()(inputs, params=params)["b"], mixed["b"])


def test_schedule_sets_alpha_per_epoch_and_excludes_alpha():
    schedule = CosineAlphaSchedule(start=0.2, end=1.0, total_steps=4)
    mix = FuseMix(schedule=schedule)
    assert mix.alpha == schedule(0)
    for epoch in range(6):
        mix.set_epoch(epoch)
        assert mix.alpha == schedule(epoch)
    fixed = FuseMix(0.5)
    fixed.set_epoch(3)
    assert fixed.alpha == 0.5 and FuseMix().alpha == 1.0
    with pytest.raises(ValueError, match="alpha: the schedule sets alpha"):
        FuseMix(0.5, schedule=schedule)
    with pytest.raises(TypeError, match="schedule"):
        FuseMix(schedule=0.5)  # type: ignore[arg-type]
    LatentNoise().set_epoch(2)  # every augmentation takes set_epoch


def test_latent_noise_refuses_a_tensor_without_a_feature_dimension():
    # Issue 13 item 9: a 1-D tensor raised IndexError from deep inside the noise.
    with pytest.raises(ValueError, match=r"inputs\[0\]: expected shape \(B, \*\) with at least one feature dim"):
        LatentNoise()(torch.randn(5))
    with pytest.raises(ValueError, match=r"inputs\['y'\]: expected shape"):
        LatentNoise(relative=False)({"x": torch.randn(5, 2), "y": torch.randn(5)})
