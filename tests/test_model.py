import pytest
import torch

from fusemix import ContrastiveLoss, FuseMix, FusionAdapter, FusionModel, IdentityAdapter, SigLIPLoss, retrieval_metrics


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


def test_training_with_fusemix_aligns_a_planted_relation():
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
