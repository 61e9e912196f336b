import pytest
import torch

from fusemix import ContrastiveLoss, FuseMix, FusionAdapter, FusionModel, IdentityAdapter, SigLIPLoss, retrieval_metrics
from fusemix.regularizers import StructureLoss


def test_from_dims_builds_the_papers_adapters():
    model = FusionModel.from_dims({"image": 12, "text": 8}, shared_dim=6, depth=2, dropout=0.6)
    assert model.modalities == ["image", "text"]
    assert isinstance(model.adapters["image"], FusionAdapter) and len(model.adapters["image"].blocks) == 2
    assert isinstance(model.loss, ContrastiveLoss)
    linear = FusionModel.from_dims({"a": 3, "b": 4}, shared_dim=2, adapter="linear")
    assert linear.project("a", torch.randn(5, 3)).shape == (5, 2)


def test_forward_is_the_loss_of_the_projected_batch():
    model = FusionModel.from_dims({"image": 12, "text": 8}, shared_dim=6, depth=1, dropout=0.0, loss=SigLIPLoss())
    batch = {"image": torch.randn(10, 12), "text": torch.randn(10, 8)}
    expected = model.loss(model.project("image", batch["image"]), model.project("text", batch["text"]))
    torch.testing.assert_close(model(batch), expected)
    assert set(model(batch, return_dict=True)) == {"loss", "image-text"}


def test_embed_is_unit_norm():
    model = FusionModel.from_dims({"image": 5, "text": 7}, shared_dim=4, depth=1)
    emb = model.embed("text", torch.randn(9, 7))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(9))


def test_fixed_target_space_with_identity_adapter():
    model = FusionModel({"audio": FusionAdapter(6, 4, depth=1), "text": IdentityAdapter(4)})
    assert [n for n, _ in model.named_parameters() if n.startswith("adapters.text")] == []
    model({"audio": torch.randn(4, 6), "text": torch.randn(4, 4)}).backward()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="output dims differ"):
        FusionModel({"a": FusionAdapter(3, 4), "b": FusionAdapter(3, 5)})
    with pytest.raises(ValueError, match="adapters"):
        FusionModel({})
    with pytest.raises(TypeError, match=r"adapters\['a'\]"):
        FusionModel({"a": lambda x: x})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="adapter"):
        FusionModel.from_dims({"a": 3}, adapter="mlp")
    with pytest.raises(ValueError, match=r"dims\['a'\]"):
        FusionModel.from_dims({"a": 0})
    model = FusionModel.from_dims({"image": 3, "text": 3}, shared_dim=2, depth=0)
    with pytest.raises(KeyError, match="audio"):
        model({"image": torch.randn(4, 3), "audio": torch.randn(4, 3)})
    with pytest.raises(KeyError, match="modality"):
        model.embed("audio", torch.randn(4, 3))
    with pytest.raises(TypeError, match="batch"):
        model([torch.randn(4, 3), torch.randn(4, 3)])  # type: ignore[arg-type]


def test_training_with_fusemix_aligns_a_planted_relation(one_thread):
    # Two "encoders" see the same 8-d concept through different random nonlinear maps.
    g = torch.Generator().manual_seed(0)
    concepts = torch.randn(600, 8, generator=g)
    img = torch.tanh(concepts @ torch.randn(8, 32, generator=g)) + 0.1 * torch.randn(600, 32, generator=g)
    txt = torch.tanh(concepts @ torch.randn(8, 24, generator=g)) + 0.1 * torch.randn(600, 24, generator=g)
    train, test = slice(0, 500), slice(500, 600)
    model = FusionModel.from_dims({"image": 32, "text": 24}, shared_dim=16, depth=1, dropout=0.1)
    mix = FuseMix(generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randperm(500, generator=g)[:128]
        loss = model(mix({"image": img[train][idx], "text": txt[train][idx]}))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        m = retrieval_metrics(model.embed("image", img[test]), model.embed("text", txt[test]), torch.arange(100))
    assert m["i2t_R@1"] > 30 and m["t2i_R@1"] > 30  # chance is 1%


# --- structure-preserving term --------------------------------------------------------------------------------


def _small_model(**kwargs):
    return FusionModel.from_dims({"image": 12, "text": 8}, shared_dim=6, depth=1, dropout=0.0, **kwargs).double()


def _batch(rows=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(rows, 12, generator=g, dtype=torch.float64),
        "text": torch.randn(rows, 8, generator=g, dtype=torch.float64),
    }


def test_structure_term_is_added_with_its_weight_and_reported():
    structure = StructureLoss(temperature=0.2)
    model = _small_model(structure=structure, structure_weight=0.5)
    batch = _batch()
    features = {m: model.project(m, x) for m, x in batch.items()}
    alignment = model.loss(features)
    expected_structure = structure(batch, features)
    torch.testing.assert_close(model(batch), alignment + 0.5 * expected_structure)
    parts = model(batch, return_dict=True)
    assert set(parts) == {"loss", "alignment", "structure", "image-text"}
    torch.testing.assert_close(parts["alignment"], alignment)
    torch.testing.assert_close(parts["structure"], expected_structure)
    torch.testing.assert_close(parts["loss"], alignment + 0.5 * expected_structure)
    assert "structure_weight=0.5" in repr(model)


def test_structure_weight_alone_builds_the_default_term_and_zero_weight_only_reports():
    model = _small_model(structure_weight=1.0)
    assert isinstance(model.structure, StructureLoss)
    monitored = _small_model(structure=StructureLoss())
    monitored.load_state_dict(model.state_dict())  # the term adds no parameters or buffers
    batch = _batch()
    plain = _small_model()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(monitored(batch), plain(batch))
    parts = monitored(batch, return_dict=True)
    torch.testing.assert_close(parts["loss"], parts["alignment"])
    assert parts["structure"].item() > 0
    assert plain.structure is None and set(plain(batch, return_dict=True)) == {"loss", "image-text"}
    assert set(model.state_dict()) == set(plain.state_dict())


def test_structure_term_sees_the_mixed_latents_under_fusemix():
    model = _small_model(structure_weight=2.0)
    mix = FuseMix(generator=torch.Generator().manual_seed(0))
    mixed, params = mix(_batch(rows=12), return_params=True)
    features = {m: model.project(m, x) for m, x in mixed.items()}
    expected = model.loss(features) + 2.0 * model.structure(mixed, features)
    torch.testing.assert_close(model(mixed), expected)
    assert params.rows == 6


def test_identity_adapters_are_left_out_of_the_structure_term():
    model = FusionModel(
        {"audio": FusionAdapter(6, 4, depth=1), "text": IdentityAdapter(4)},
        structure=StructureLoss(),
        structure_weight=1,
    )
    batch = {"audio": torch.randn(8, 6), "text": torch.randn(8, 4)}
    features = {m: model.project(m, x) for m, x in batch.items()}
    torch.testing.assert_close(
        model.structure_term(batch, features), model.structure({"audio": batch["audio"]}, {"audio": features["audio"]})
    )
    only_identity = FusionModel({"text": IdentityAdapter(4)}, loss=ContrastiveLoss(), structure_weight=1.0)
    assert only_identity.structure_term({"text": batch["text"]}, {"text": batch["text"]}).item() == 0.0


def test_training_with_the_structure_term_keeps_neighbourhoods_closer(one_thread):
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(64, 12, generator=g), "text": torch.randn(64, 8, generator=g)}
    results = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        model = FusionModel.from_dims(
            {"image": 12, "text": 8},
            shared_dim=6,
            depth=1,
            dropout=0.0,
            structure=StructureLoss(),
            structure_weight=weight,
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(40):
            loss = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[weight] = model(batch, return_dict=True)["structure"].item()
    assert results[5.0] < 0.6 * results[0.0]


def test_bad_structure_arguments_are_refused():
    with pytest.raises(ValueError, match="structure_weight"):
        _small_model(structure_weight=-1.0)
    with pytest.raises(ValueError, match="structure_weight"):
        _small_model(structure_weight=float("nan"))
    with pytest.raises(TypeError, match="structure_weight"):
        _small_model(structure_weight=True)
    with pytest.raises(TypeError, match="structure"):
        FusionModel({"a": FusionAdapter(3, 2)}, structure=lambda a, b: 0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no structure term"):
        _small_model().structure_term({}, {})


def test_a_float16_batch_trains_and_embeds_like_its_float32_values():
    # Issue 13 item 6: a float16 store's latents crashed FusionModel.forward and embed.
    torch.manual_seed(0)
    model = FusionModel.from_dims({"a": 4, "b": 3}, shared_dim=2, depth=1, dropout=0.0, structure_weight=1.0)
    batch = {"a": torch.randn(6, 4).half(), "b": torch.randn(6, 3).half()}
    loss = model(batch)
    torch.testing.assert_close(loss, model({k: v.float() for k, v in batch.items()}))
    loss.backward()
    assert model.embed("a", batch["a"]).dtype == torch.float32
    fixed = FusionModel({"audio": FusionAdapter(4, 3, depth=1), "text": IdentityAdapter(3)})
    parts = fixed({"audio": torch.randn(6, 4).double(), "text": torch.randn(6, 3).half()}, return_dict=True)
    assert parts["loss"].dtype == torch.float32
