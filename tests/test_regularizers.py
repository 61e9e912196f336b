import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix.regularizers import StructureLoss, neighbour_log_probs


def random_orthonormal_columns(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal rows (rows <= cols): an isometric embedding x -> x @ Q."""
    q, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    return q[:rows]


def reference_structure(x: torch.Tensor, y: torch.Tensor, temperature: float, divergence: str, center: bool) -> float:
    """The loss written out with loops over rows and neighbours, in float64."""

    def distributions(z):
        z = z.double()
        if center:
            z = z - z.mean(0)
        z = z / z.norm(dim=1, keepdim=True)
        n = z.shape[0]
        rows = []
        for i in range(n):
            logits = {j: float(z[i] @ z[j]) / temperature for j in range(n) if j != i}
            norm = sum(math.exp(v) for v in logits.values())
            rows.append({j: math.exp(v) / norm for j, v in logits.items()})
        return rows

    p_rows, q_rows = distributions(x), distributions(y)
    total = 0.0
    for p, q in zip(p_rows, q_rows):
        if divergence == "kl":
            total += sum(p[j] * math.log(p[j] / q[j]) for j in p)
        else:
            m = {j: (p[j] + q[j]) / 2 for j in p}
            total += 0.5 * sum(p[j] * math.log(p[j] / m[j]) + q[j] * math.log(q[j] / m[j]) for j in p)
    return total / len(p_rows)


@st.composite
def point_clouds(draw):
    n = draw(st.integers(3, 12))
    d = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1, g


@given(point_clouds(), st.integers(0, 4), st.floats(0.1, 10.0), st.sampled_from(["js", "kl"]), st.floats(0.05, 1.0))
def test_zero_for_scaled_rotations_and_shifts(cloud, extra_dims, scale, divergence, temperature):
    x, g = cloud
    d = x.shape[1]
    isometry = random_orthonormal_columns(d, d + extra_dims, g)  # may also embed into a wider space
    shift = torch.randn(d + extra_dims, generator=g, dtype=torch.float64)
    structure = StructureLoss(temperature, divergence=divergence)
    value = structure({"m": x}, {"m": scale * x @ isometry + shift})
    assert abs(value.item()) < 1e-10
    plain = StructureLoss(temperature, divergence=divergence, center=False)
    assert abs(plain({"m": x}, {"m": scale * x @ isometry}).item()) < 1e-10


@pytest.mark.parametrize("divergence", ["js", "kl"])
@pytest.mark.parametrize("seed", range(5))
def test_positive_when_the_map_distorts_similarities(divergence, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    structure = StructureLoss(0.2, divergence=divergence)
    stretched = x @ torch.diag(torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64))
    assert structure({"m": x}, {"m": stretched}).item() > 1e-4
    generic = x @ torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert structure({"m": x}, {"m": generic}).item() > 1e-4
    # A shift changes cosine similarities unless the batch is centred.
    shifted = x + 5.0
    assert StructureLoss(0.2, divergence=divergence, center=False)({"m": x}, {"m": shifted}).item() > 1e-4


@pytest.mark.parametrize("divergence", ["js", "kl"])
@pytest.mark.parametrize("center", [True, False])
def test_matches_a_hand_written_reference(divergence, center):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    u, v = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    structure = StructureLoss(0.3, divergence=divergence, center=center)
    parts = structure({"image": x, "text": u}, {"image": y, "text": v}, return_dict=True)
    expected_image = reference_structure(x, y, 0.3, divergence, center)
    expected_text = reference_structure(u, v, 0.3, divergence, center)
    assert parts["image"].item() == pytest.approx(expected_image, rel=1e-9)
    assert parts["text"].item() == pytest.approx(expected_text, rel=1e-9)
    assert parts["loss"].item() == pytest.approx((expected_image + expected_text) / 2, rel=1e-9)


def test_js_is_bounded_by_log_2_and_kl_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    y = torch.randn(32, 8, generator=g, dtype=torch.float64)
    js = StructureLoss(0.01, divergence="js")({"m": x}, {"m": y}).item()
    kl = StructureLoss(0.01, divergence="kl")({"m": x}, {"m": y}).item()
    assert 0 < js <= math.log(2) + 1e-12
    assert kl > math.log(2)


def test_neighbour_distributions_leave_out_the_diagonal():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    logp = neighbour_log_probs(x, 1.0, center=False)
    assert logp.shape == (3, 2) and logp.dtype == torch.float64
    # row 0's neighbours are rows 1 and 2: cosines 0 and 1/sqrt(2)
    expected = torch.log_softmax(torch.tensor([0.0, 1 / math.sqrt(2)], dtype=torch.float64), 0)
    torch.testing.assert_close(logp[0], expected)
    assert neighbour_log_probs(x.half(), 1.0).dtype == torch.float32


def test_gradient_flows_into_features_only():
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randn(8, 3, requires_grad=True)
    StructureLoss()({"m": x}, {"m": y}).backward()
    assert x.grad is None
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_masks_restrict_each_modality_to_its_present_rows():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    u, v = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    present = torch.tensor([True, False, True, True, False, True, True, False, True])
    structure = StructureLoss(0.2)
    parts = structure({"a": x, "b": u}, {"a": y, "b": v}, masks={"a": present}, return_dict=True)
    torch.testing.assert_close(parts["a"], structure.modality_loss(x[present], y[present]))
    torch.testing.assert_close(parts["b"], structure.modality_loss(u, v))  # no mask: every row
    few = torch.zeros(9, dtype=torch.bool)
    few[:2] = True  # two rows: a single neighbour each, nothing to compare
    parts = structure({"a": x, "b": u}, {"a": y, "b": v}, masks={"a": few}, return_dict=True)
    assert set(parts) == {"loss", "b"}
    torch.testing.assert_close(parts["loss"], parts["b"])
    y_grad = y.clone().requires_grad_(True)
    nothing = structure({"a": x}, {"a": y_grad}, masks={"a": few})
    assert nothing.item() == 0.0
    nothing.backward()
    assert torch.equal(y_grad.grad, torch.zeros_like(y))


def test_max_rows_uses_the_first_present_rows():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g, dtype=torch.float64)
    present = torch.tensor([False, True] * 6)
    capped = StructureLoss(0.2, max_rows=4)
    torch.testing.assert_close(capped({"a": x}, {"a": y}), capped.modality_loss(x[:4], y[:4]))
    rows = present.nonzero().flatten()[:4]
    torch.testing.assert_close(capped({"a": x}, {"a": y}, masks={"a": present}), capped.modality_loss(x[rows], y[rows]))
    assert "max_rows=4" in repr(capped)
    with pytest.raises(ValueError, match="max_rows"):
        StructureLoss(max_rows=2)
    with pytest.raises(TypeError, match="max_rows"):
        StructureLoss(max_rows=3.5)  # type: ignore[arg-type]


def test_extra_latent_modalities_are_ignored_and_sequences_are_flattened():
    structure = StructureLoss()
    x, y = torch.randn(6, 2, 3), torch.randn(6, 4)
    value = structure({"a": x, "unused": torch.randn(6, 1)}, {"a": y})
    torch.testing.assert_close(value, structure({"a": x.flatten(1)}, {"a": y}))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: s({"a": torch.randn(4, 2)}, {"b": torch.randn(4, 2)}), ValueError, "latents: has no entry"),
        (lambda s: s({"a": torch.randn(4, 2)}, {"a": torch.randn(5, 2)}), ValueError, r"features\['a'\]"),
        (lambda s: s({"a": torch.randn(4, 2)}, {}), ValueError, "at least one modality"),
        (lambda s: s([torch.randn(4, 2)], {"a": torch.randn(4, 2)}), TypeError, "latents"),
        (lambda s: s({"a": torch.ones(4, 2, dtype=torch.long)}, {"a": torch.randn(4, 2)}), TypeError, "floating"),
        (
            lambda s: s({"a": torch.randn(4, 2)}, {"a": torch.randn(4, 2)}, masks={"a": torch.ones(4)}),
            TypeError,
            "boolean",
        ),
        (
            lambda s: s({"a": torch.randn(4, 2)}, {"a": torch.randn(4, 2)}, masks={"a": torch.ones(3, dtype=bool)}),
            ValueError,
            r"masks\['a'\]: expected shape \(4,\)",
        ),
        (lambda s: s({"a": torch.randn(4, 2)}, {"a": torch.randn(4, 2)}, masks=[None]), TypeError, "masks"),
    ],
)
def test_bad_input_is_refused(call, error, match):
    with pytest.raises(error, match=match):
        call(StructureLoss())


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        StructureLoss(0.0)
    with pytest.raises(ValueError, match="divergence"):
        StructureLoss(divergence="wasserstein")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="center"):
        StructureLoss(center=1)  # type: ignore[arg-type]
    assert "divergence='js'" in repr(StructureLoss())
