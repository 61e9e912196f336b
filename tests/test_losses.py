import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _references import reference_infonce, reference_siglip
from fusemix import ContrastiveLoss, SigLIPLoss


@given(st.integers(2, 9), st.integers(1, 6), st.floats(0.01, 0.5))
def test_contrastive_loss_matches_hand_written_reference(n, d, temperature):
    a, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    for parameterization in ("temperature", "logit_scale"):
        loss = ContrastiveLoss(temperature_init=temperature, parameterization=parameterization).double()
        stored = loss.current_temperature().item()  # the init, rounded to float32
        assert stored == pytest.approx(temperature, rel=1e-6)
        assert loss(a, b).item() == pytest.approx(reference_infonce(a, b, stored), rel=1e-9, abs=1e-9)


@given(st.integers(2, 7), st.integers(1, 5), st.floats(0.5, 20), st.floats(-12, 2))
def test_siglip_loss_matches_hand_written_reference(n, d, scale, bias):
    a, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    loss = SigLIPLoss(logit_scale_init=scale, logit_bias_init=bias).double()
    stored_scale, stored_bias = loss.logit_scale.exp().item(), loss.logit_bias.item()  # rounded to float32
    assert stored_scale == pytest.approx(scale, rel=1e-6) and stored_bias == pytest.approx(bias, rel=1e-6, abs=1e-6)
    assert loss(a, b).item() == pytest.approx(reference_siglip(a, b, stored_scale, stored_bias), rel=1e-9)


def test_authors_parameterisation_init_and_clamp():
    loss = ContrastiveLoss()
    assert isinstance(loss.temperature, torch.nn.Parameter)
    assert loss.temperature.item() == pytest.approx(0.07)
    with torch.no_grad():
        loss.temperature.fill_(3.0)
    loss(torch.randn(4, 3), torch.randn(4, 3))
    assert loss.temperature.item() == pytest.approx(0.5)
    with torch.no_grad():
        loss.temperature.fill_(1e-6)
    assert loss.current_temperature().item() == pytest.approx(0.001)
    loss(torch.randn(4, 3), torch.randn(4, 3))
    assert loss.temperature.item() == pytest.approx(0.001)


def test_clip_parameterisation_init_and_cap():
    loss = ContrastiveLoss(parameterization="logit_scale")
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    loss(torch.randn(4, 3), torch.randn(4, 3))
    assert loss.logit_scale.exp().item() == pytest.approx(100.0)
    assert loss.current_temperature().item() == pytest.approx(0.01)


def test_temperature_is_learned_unless_fixed():
    learned = ContrastiveLoss()
    learned(torch.randn(6, 3), torch.randn(6, 3)).backward()
    assert learned.temperature.grad is not None
    fixed = ContrastiveLoss(learnable=False)
    assert list(fixed.parameters()) == [] and "temperature" in dict(fixed.named_buffers())


@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_losses_are_invariant_to_a_consistent_permutation(n, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 4, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    for loss in (ContrastiveLoss().double(), SigLIPLoss().double()):
        torch.testing.assert_close(loss(a, b), loss(a[perm], b[perm]))


def test_losses_are_small_for_perfectly_aligned_features():
    a = torch.eye(16)
    b = torch.randn(16, 16)
    assert ContrastiveLoss()(a, a).item() < 1e-4
    assert ContrastiveLoss()(a, a).item() < 0.01 * ContrastiveLoss()(a, b).item()
    assert SigLIPLoss(logit_scale_init=20.0, logit_bias_init=-10.0)(a, a).item() < 1e-3


def test_more_than_two_modalities_all_pairs_and_anchored():
    x = {"image": torch.randn(6, 4), "text": torch.randn(6, 4), "audio": torch.randn(6, 4)}
    loss = ContrastiveLoss()
    parts = loss(x, return_dict=True)
    assert set(parts) == {"loss", "image-text", "image-audio", "text-audio"}
    torch.testing.assert_close(parts["loss"], (parts["image-text"] + parts["image-audio"] + parts["text-audio"]) / 3)
    torch.testing.assert_close(parts["image-text"], loss(x["image"], x["text"]))
    parts["loss"].backward()  # every pair shares the temperature; backward must work through all of them
    assert loss.temperature.grad is not None
    anchored = ContrastiveLoss(pairs="anchor", anchor="text")(x, return_dict=True)
    assert set(anchored) == {"loss", "text-image", "text-audio"}
    by_position = ContrastiveLoss(pairs="anchor", anchor=0)(x["image"], x["text"], x["audio"], return_dict=True)
    assert set(by_position) == {"loss", "0-1", "0-2"}


@pytest.mark.parametrize("n", [7, 16, 33])
def test_siglip_chunked_equals_full_in_value_and_gradient(n):
    a = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    full, chunked = SigLIPLoss().double(), SigLIPLoss(chunk_size=5).double()
    lf, lc = full(a, b), chunked(a, b)
    torch.testing.assert_close(lf, lc)
    gf = torch.autograd.grad(lf, [a, b, full.logit_scale, full.logit_bias])
    gc = torch.autograd.grad(lc, [a, b, chunked.logit_scale, chunked.logit_bias])
    for u, v in zip(gf, gc):
        torch.testing.assert_close(u, v)


def test_siglip_chunked_never_keeps_a_full_score_matrix_for_backward():
    n, chunk = 64, 8
    a = torch.randn(n, 4, requires_grad=True)
    b = torch.randn(n, 4, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = SigLIPLoss(chunk_size=chunk)(a, b)
    loss.backward()
    assert max(saved) < n * n
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SigLIPLoss()(a, b)
    assert max(saved) >= n * n  # the check above would catch a full matrix


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f: f(torch.randn(4, 3)), ValueError, "at least 2 modalities"),
        (lambda f: f(torch.randn(4, 3), torch.randn(5, 3)), ValueError, "batch sizes differ"),
        (lambda f: f(torch.randn(4, 3), torch.randn(4, 2)), ValueError, "different dims"),
        (lambda f: f(torch.randn(4), torch.randn(4)), ValueError, "2-D"),
        (lambda f: f(torch.randn(1, 3), torch.randn(1, 3)), ValueError, "at least 2 row"),
        (lambda f: f(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3)), TypeError, "floating-point"),
    ],
)
def test_bad_input_is_refused(call, error, match):
    for loss in (ContrastiveLoss(), SigLIPLoss()):
        with pytest.raises(error, match=match):
            call(loss)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="anchor"):
        ContrastiveLoss(pairs="anchor")
    with pytest.raises(ValueError, match="anchor"):
        ContrastiveLoss(pairs="anchor", anchor="audio")(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="temperature_init"):
        ContrastiveLoss(temperature_init=0)
    with pytest.raises(ValueError, match="temperature_range"):
        ContrastiveLoss(temperature_init=0.9)
    with pytest.raises(ValueError, match="parameterization"):
        ContrastiveLoss(parameterization="kelvin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        SigLIPLoss(chunk_size=0)
    with pytest.raises(ValueError, match="pairs"):
        SigLIPLoss(pairs="some")  # type: ignore[arg-type]


def test_inputs_are_not_modified():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    a0, b0 = a.clone(), b.clone()
    ContrastiveLoss()(a, b)
    SigLIPLoss(chunk_size=2)(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: ContrastiveLoss(temperature_range=(0.01, 0.5, 1.0)), ValueError, r"temperature_range: expected \(low"),
        (lambda: ContrastiveLoss(temperature_range=0.5), TypeError, r"temperature_range: expected \(low"),
        (lambda: ContrastiveLoss(temperature_range=(0.5, 0.01)), ValueError, "temperature_range: low 0.5 > high"),
        (lambda: ContrastiveLoss(temperature_range=("a", 1)), TypeError, "temperature_range: expected a number"),
        (lambda: SigLIPLoss(logit_bias_init="a"), TypeError, "logit_bias_init: expected a number, got str"),
        (lambda: SigLIPLoss(logit_bias_init=float("nan")), ValueError, "logit_bias_init: expected a finite"),
        (lambda: ContrastiveLoss(learnable="no"), TypeError, "learnable: expected True or False, got str"),
        (lambda: SigLIPLoss(anchor=[1]), TypeError, "anchor: expected a modality name or position, got list"),
    ],
)
def test_bad_settings_name_the_argument(build, error, match):
    # Issue 13 item 9: a 3-value temperature_range and a string logit_bias_init failed without naming them.
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("first", "second", "common"),
    [
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float16, torch.float32),
        (torch.float64, torch.float32, torch.float64),
    ],
)
def test_features_of_two_dtypes_are_scored_in_the_wider_one(first, second, common):
    # Issue 13 item 6: float16 and float32 features crashed deep inside torch.
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    a_cast, b_cast = a.to(first), b.to(second)
    for loss in (ContrastiveLoss(), SigLIPLoss()):
        got = loss(a_cast, b_cast)
        expected = loss.to(common)(a_cast.to(common), b_cast.to(common))
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got, expected)
        loss.float()
    leaf = a_cast.clone().requires_grad_()
    ContrastiveLoss()(leaf, b_cast).backward()
    assert leaf.grad is not None and leaf.grad.dtype == first


def test_a_zero_feature_row_is_refused_with_its_modality_and_row():
    # Issue 13 item 9: a zero vector has no direction; normalising it gave gradients around 1e12.
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    a[3] = 0.0
    for loss in (ContrastiveLoss(), SigLIPLoss()):
        with pytest.raises(ValueError, match=r"features\['text'\]: row 3 has an L2 norm below 1e-06 \(1 such row"):
            loss({"image": b, "text": a})
        with pytest.raises(ValueError, match=r"features\['0'\]: row 3"):
            loss(a, b)
    # Rows marked absent may hold zeros: they are left out of every pair, and get no gradient.
    leaf = a.clone().requires_grad_()
    present = torch.tensor([True, True, True, False, True])
    ContrastiveLoss()({"image": b, "text": leaf}, masks={"text": present}).backward()
    assert leaf.grad is not None and float(leaf.grad.abs().max()) < 1e3 and float(leaf.grad[3].abs().max()) == 0.0
