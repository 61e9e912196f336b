"""fusemix.evaluation: evaluate_retrieval with any embedder (a model, a closed-form aligner, a plain object)."""

import numpy as np
import pytest
import torch

from fusemix import CCAAligner, FusionModel, ProcrustesAligner, retrieval_metrics
from fusemix.data import PairedLatents
from fusemix.evaluation import evaluate_retrieval, retrieval_metric_keys, retrieval_pair


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n, 4))
    image = (topics @ rng.standard_normal((4, 10))).astype(np.float32)
    text = (topics @ rng.standard_normal((4, 7)) + 0.1 * rng.standard_normal((n, 7))).astype(np.float32)
    return PairedLatents({"image": image, "text": text})


@pytest.mark.parametrize("kind", [CCAAligner, ProcrustesAligner])
def test_an_aligner_is_scored_like_the_metrics_of_its_embeddings(kind):
    data = _data()
    latents = data.gather(np.arange(len(data)))
    aligner = kind(4).fit(latents)
    expected = retrieval_metrics(
        aligner.embed("image", latents["image"]), aligner.embed("text", latents["text"]), torch.arange(len(data)),
        names=("i", "t"),
    )  # fmt: skip
    assert evaluate_retrieval(aligner, data) == pytest.approx(expected)
    assert expected["i2t_R@1"] > 50  # the planted topics are found: chance is under 2%


def test_any_object_with_embed_and_a_module_keeps_its_mode():
    data = _data()

    class Projection:  # not an nn.Module: embedded on the CPU, no mode to set
        def embed(self, modality, latents):
            return latents[:, :3]

    metrics = evaluate_retrieval(Projection(), data, ("text", "image"), ks=(1, 2))
    assert sorted(metrics) == sorted(["t2i_R@1", "t2i_R@2", "t2i_mean", "i2t_R@1", "i2t_R@2", "i2t_mean", "mean"])
    model = FusionModel.from_dims(data.dims, shared_dim=3, depth=1).train()
    assert set(evaluate_retrieval(model, data)) == set(retrieval_metric_keys(("image", "text"))) and model.training


def test_the_pair_must_be_two_modalities_of_the_data():
    data = _data()
    assert retrieval_pair(data, None) == ("image", "text")
    with pytest.raises(ValueError, match=r"pair: 'audio' is not one of \['image', 'text'\]"):
        evaluate_retrieval(CCAAligner(2), data, ("image", "audio"))
    with pytest.raises(ValueError, match="val_pair: expected two different modality names"):
        retrieval_pair(data, ("text", "text"), "val_pair")
