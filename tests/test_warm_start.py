import copy
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fusemix import CCAAligner, FuseMix, FusionAdapter, FusionModel, IdentityAdapter, LinearAdapter, ProcrustesAligner
from fusemix.data import PairedLatents
from fusemix.train import TrainConfig, fit
from fusemix.warmstart import aligner_input_norm, warm_start


def encoder_like(n=400, seed=0):
    """Paired latents with encoder-like quirks: a large shared offset, uneven scales, a planted 6-d relation."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g)
    image = torch.relu(z @ torch.randn(6, 24, generator=g)) * torch.linspace(0.1, 5.0, 24) + 3.0
    text = z @ torch.randn(6, 16, generator=g) + 0.3 * torch.randn(n, 16, generator=g) - 1.0
    return {"image": image, "text": text}


def build(image_adapter="fusion", text_adapter="fusion", shared_dim=6, depth=2):
    adapters = {}
    for name, kind, dim in (("image", image_adapter, 24), ("text", text_adapter, 16)):
        if kind == "fusion":
            adapters[name] = FusionAdapter(dim, shared_dim, depth=depth, dropout=0.5)
        else:
            adapters[name] = LinearAdapter(dim, shared_dim)
    return FusionModel(adapters)


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("kinds", [("fusion", "fusion"), ("fusion", "linear"), ("linear", "linear")])
@pytest.mark.parametrize(
    "make_aligner",
    [
        lambda norm: CCAAligner(dim=6, regularization=0.1, input_norm=norm),
        lambda norm: ProcrustesAligner(dim=6, input_norm=norm),
    ],
)
def test_embeddings_equal_the_aligners_at_step_zero(depth, kinds, make_aligner):
    latents = encoder_like()
    model = build(*kinds, depth=depth)
    norms = aligner_input_norm(model)
    assert norms == {
        "image": "layer_norm" if kinds[0] == "fusion" else None,
        "text": "layer_norm" if kinds[1] == "fusion" else None,
    }
    aligner = make_aligner(norms).fit(latents)
    assert warm_start(model, aligner) is model
    held_out = encoder_like(seed=1)
    for mode in ("eval", "train"):  # dropout sits before the zeroed fc2, so train mode is exact too
        getattr(model, mode)()
        for name, x in held_out.items():
            with torch.no_grad():
                got, expected = model.embed(name, x), aligner.embed(name, x)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_blocks_become_identities_and_the_final_layer_norm_plain():
    model = build(depth=2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # even from arbitrary weights
    latents = encoder_like()
    warm_start(model, CCAAligner(dim=6, input_norm="layer_norm").fit(latents))
    adapter = model.adapters["image"]
    x = latents["image"][:5]
    torch.testing.assert_close(adapter.blocks(x), x)
    assert bool((adapter.norm.weight == 1).all()) and bool((adapter.norm.bias == 0).all())


def test_training_continues_from_the_warm_start_with_fusemix():
    latents = encoder_like(256)
    model = build(depth=1)
    warm_start(model, CCAAligner(dim=6, input_norm="layer_norm").fit(latents))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mix = FuseMix(generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model(mix(latents))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"adapters.image.blocks.0.fc1.weight", "adapters.image.blocks.0.fc2.weight"} <= moved
    assert "adapters.image.proj.weight" in moved and "loss.temperature" in moved


# -- an aligner narrower than the model: the first outputs, then zeros -----------------------------------------------


@pytest.mark.parametrize("kinds", [("fusion", "fusion"), ("fusion", "linear")])
def test_a_narrower_aligner_sets_the_first_outputs_and_zeros_the_rest_which_stay_zero(kinds):
    latents = encoder_like(256)
    # the structure term compares embeddings within a modality: zeros stay zeros there too
    model = FusionModel(dict(build(*kinds, shared_dim=9, depth=1).adapters), structure_weight=10.0)
    aligner = CCAAligner(dim=6, input_norm=aligner_input_norm(model)).fit(latents)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warm_start(model, aligner)
    assert len(caught) == 1 and caught[0].filename == __file__
    message = str(caught[0].message)
    assert message.startswith("shared_dim: the model's shared dimension is 9 but the aligner has 6")
    assert "outputs 6..8 of the adapters of ['image', 'text'] start at zero" in message and "6-d space" in message
    model.eval()
    for name, x in encoder_like(seed=1).items():
        with torch.no_grad():
            got = model.embed(name, x)
        torch.testing.assert_close(got[:, :6], aligner.embed(name, x), atol=1e-5, rtol=0)
        assert bool((got[:, 6:] == 0).all())
    model.train()
    mix = FuseMix(generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    first_rows = model.adapters["image"].proj.weight[:6].detach().clone()
    for _ in range(5):
        opt.zero_grad()
        model(mix(latents)).backward()
        opt.step()
    for name in ("image", "text"):
        proj = model.adapters[name].proj
        assert bool((proj.weight[6:] == 0).all()) and bool((proj.bias[6:] == 0).all())
    assert not torch.equal(model.adapters["image"].proj.weight[:6], first_rows)  # the rest trains


def test_fit_warm_starts_a_model_wider_than_the_smaller_latent_dim():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 4))
    data = PairedLatents(
        {
            "image": np.tanh(z @ rng.standard_normal((4, 20))).astype(np.float32),
            "text": (z @ rng.standard_normal((4, 5)) + 0.1 * rng.standard_normal((300, 5))).astype(np.float32),
        }
    )
    config = TrainConfig(
        epochs=2, batch_size=64, warmup_steps=1, shared_dim=8, depth=1, dropout=0.0, device="cpu", warm_start="cca"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(data, config, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any(m.startswith("dim: 8 is larger than the 5 directions found here") for m in messages)
    assert any(m.startswith("shared_dim: the model's shared dimension is 8 but the aligner has 5") for m in messages)
    for name in ("image", "text"):
        assert bool((result.model.adapters[name].proj.weight[5:] == 0).all())


def test_only_the_chosen_modalities_are_set():
    latents = encoder_like()
    model = FusionModel({"image": FusionAdapter(24, 6, depth=1), "text": IdentityAdapter(6)})
    text_before = model.embed("text", torch.randn(3, 6))
    aligner = CCAAligner(dim=6, input_norm={"image": "layer_norm", "text": None}).fit(
        {"image": latents["image"], "text": latents["text"][:, :6]}
    )
    with pytest.raises(TypeError, match="IdentityAdapter"):
        warm_start(model, aligner)
    warm_start(model, aligner, modalities=["image"])
    x = latents["image"][:7]
    torch.testing.assert_close(model.embed("image", x), aligner.embed("image", x), atol=1e-5, rtol=0)
    assert text_before.shape == (3, 6)


def test_a_saved_and_reloaded_aligner_warm_starts_the_same(tmp_path):
    latents = encoder_like()
    aligner = CCAAligner(dim=6, input_norm="layer_norm").fit(latents)
    save_file(aligner.state_dict(), tmp_path / "cca.safetensors")
    loaded = CCAAligner()
    loaded.load_state_dict(load_file(tmp_path / "cca.safetensors"))
    assert loaded.input_norm == "layer_norm"
    a = build(depth=1)
    b = copy.deepcopy(a)
    warm_start(a, aligner)
    warm_start(b, loaded)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_mismatches_are_refused_with_what_to_do():
    latents = encoder_like()
    plain = CCAAligner(dim=6).fit(latents)
    with pytest.raises(ValueError, match="input_norm='layer_norm'"):
        warm_start(build(), plain)
    normed = CCAAligner(dim=6, input_norm="layer_norm").fit(latents)
    with pytest.raises(ValueError, match="LinearAdapter cannot reproduce"):
        warm_start(build("linear", "linear"), normed)
    with pytest.raises(ValueError, match="maps 'image' to 6 dims but the model's shared dimension is 4; .* dim=4"):
        warm_start(build(shared_dim=4), normed)
    with pytest.raises(ValueError, match="expects 24-d"):
        warm_start(FusionModel({"image": FusionAdapter(20, 6), "text": FusionAdapter(16, 6)}), normed)
    with pytest.raises(ValueError, match="not fitted"):
        warm_start(build(), CCAAligner())
    with pytest.raises(ValueError, match="'audio'"):
        warm_start(build(), normed, modalities=["audio"])
    with pytest.raises(ValueError, match="no adapter"):
        warm_start(FusionModel({"image": FusionAdapter(24, 6)}), normed)
    with pytest.raises(TypeError, match="single string"):
        warm_start(build(), normed, modalities="image")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aligner"):
        warm_start(build(), object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        warm_start(object(), normed)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        aligner_input_norm(object())  # type: ignore[arg-type]
    no_bias = FusionModel({"image": LinearAdapter(24, 6, bias=False), "text": LinearAdapter(16, 6, bias=False)})
    with pytest.raises(ValueError, match="bias=False"):
        warm_start(no_bias, plain)
