import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fusemix import FusionAdapter, IdentityAdapter, LinearAdapter


def _reference_adapter(adapter: FusionAdapter, x: torch.Tensor) -> torch.Tensor:
    """The authors' adapter written out by hand from its weights."""
    for block in adapter.blocks:
        h = F.layer_norm(x, (x.shape[-1],), block.norm.weight, block.norm.bias)
        h = F.linear(h, block.fc1.weight, block.fc1.bias)
        h = F.gelu(h)
        h = F.linear(h, block.fc2.weight, block.fc2.bias)
        x = x + h
    x = F.layer_norm(x, (x.shape[-1],), adapter.norm.weight, adapter.norm.bias)
    return F.linear(x, adapter.proj.weight, adapter.proj.bias)


@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 4), st.integers(1, 4))
def test_fusion_adapter_matches_hand_written_reference(in_dim, out_dim, depth, expansion):
    adapter = FusionAdapter(in_dim, out_dim, depth=depth, expansion=expansion, dropout=0.6).eval()
    x = torch.randn(5, in_dim)
    torch.testing.assert_close(adapter(x), _reference_adapter(adapter, x))
    assert len(adapter.blocks) == depth
    if depth:
        assert adapter.blocks[0].fc1.out_features == expansion * in_dim


@given(st.integers(1, 12), st.integers(1, 8), st.integers(1, 3), st.integers(1, 9))
def test_hidden_dim_overrides_expansion(in_dim, out_dim, depth, hidden):
    adapter = FusionAdapter(in_dim, out_dim, depth=depth, expansion=4, hidden_dim=hidden).eval()
    assert all(block.fc1.out_features == hidden and block.fc2.in_features == hidden for block in adapter.blocks)
    x = torch.randn(3, in_dim)
    torch.testing.assert_close(adapter(x), _reference_adapter(adapter, x))


@pytest.mark.parametrize("d", [16, 48])
def test_parameter_count_formula_in_docstring(d):
    adapter = FusionAdapter(d, 512, depth=4, expansion=4)
    assert sum(p.numel() for p in adapter.parameters()) == 32 * d * d + 542 * d + 512


def test_dropout_only_in_training_mode():
    adapter = FusionAdapter(8, 4, depth=2, dropout=0.6)
    x = torch.randn(32, 8)
    adapter.eval()
    assert torch.equal(adapter(x), adapter(x))
    adapter.train()
    assert not torch.equal(adapter(x), adapter(x))


def test_token_inputs_and_gradients():
    adapter = FusionAdapter(6, 3, depth=1)
    x = torch.randn(2, 5, 6, requires_grad=True)
    out = adapter(x)
    assert out.shape == (2, 5, 3)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in adapter.parameters())


def test_linear_and_identity_adapters():
    lin = LinearAdapter(4, 2, bias=False)
    x = torch.randn(3, 4)
    torch.testing.assert_close(lin(x), x @ lin.proj.weight.T)
    assert lin.out_dim == 2
    assert IdentityAdapter(4)(x) is x


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: FusionAdapter(0, 4), "in_dim"),
        (lambda: FusionAdapter(4, 0), "out_dim"),
        (lambda: FusionAdapter(4, 4, depth=-1), "depth"),
        (lambda: FusionAdapter(4, 4, dropout=1.0), "dropout"),
        (lambda: FusionAdapter(4, 4, expansion=0), "expansion"),
        (lambda: FusionAdapter(4, 4, hidden_dim=0), "hidden_dim"),
        (lambda: LinearAdapter(4, -2), "out_dim"),
        (lambda: IdentityAdapter(0), "dim"),
    ],
)
def test_bad_configuration_is_refused(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_wrong_input_width_or_dtype_is_refused():
    with pytest.raises(ValueError, match="x: expected a last dimension of 4"):
        FusionAdapter(4, 2)(torch.randn(3, 5))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        LinearAdapter(4, 2)(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="x: expected a last dimension of 4"):
        IdentityAdapter(4)(torch.randn(3, 2))


def test_old_module_path_warns_and_gives_the_same_classes():
    import importlib
    import sys

    import fusemix.adapters

    sys.modules.pop("fusemix.projectors", None)
    with pytest.warns(DeprecationWarning, match="fusemix.adapters"):
        old = importlib.import_module("fusemix.projectors")
    for name in ("FusionAdapter", "IdentityAdapter", "LinearAdapter", "ResidualMLPBlock"):
        assert getattr(old, name) is getattr(fusemix.adapters, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_latents_of_another_floating_dtype_are_cast_to_the_parameters(dtype):
    # Issue 13 item 6: float16/bfloat16/float64 latents (a float16 store's) crashed inside torch's matmul.
    torch.manual_seed(0)
    x = torch.randn(3, 4).to(dtype)
    for adapter in (FusionAdapter(4, 2, depth=1), LinearAdapter(4, 2)):
        out = adapter(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, adapter(x.float()))
    leaf = x.clone().requires_grad_()
    FusionAdapter(4, 2, depth=1)(leaf).sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == dtype
    assert IdentityAdapter(4)(x) is x  # nothing to cast to: the identity keeps its input as it is
    assert LinearAdapter(4, 2).double()(torch.randn(3, 4)).dtype == torch.float64
