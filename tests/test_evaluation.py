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


# --- identical captions: key_groups ------------------------------------------------------------------------------


class _AsGiven:
    """Embeds latents as they are, so the scores below are counted by hand."""

    def embed(self, modality, latents):
        return latents


RED = [0.0, 0.6, 0.8, 0.0]  # "a red stamp": between images 1 and 2, nearer to 2
CAPTIONS = ["a dog", "a red stamp", "a red stamp", "a cat"]  # caption i describes image i


def _stamps():
    """Four images (one-hot) and their four captions, the middle two the same text with the same latent."""
    return PairedLatents({"image": np.eye(4), "text": np.array([[1.0, 0, 0, 0], RED, RED, [0, 0, 0, 1]])})


def test_key_groups_count_identical_captions_as_hits_in_both_directions():
    data = _stamps()
    plain = evaluate_retrieval(_AsGiven(), data, ks=(1, 2))
    # image -> text: images 1 and 2 each tie their own caption with the other copy (ties count against): R@1 2/4,
    # R@2 4/4. text -> image: caption 1 ranks image 2 first, its own image second: R@1 3/4, R@2 4/4.
    assert (plain["i2t_R@1"], plain["i2t_R@2"], plain["t2i_R@1"], plain["t2i_R@2"]) == (50.0, 100.0, 75.0, 100.0)
    for groups in (CAPTIONS, "value", np.array(CAPTIONS)):
        grouped = evaluate_retrieval(_AsGiven(), data, key_groups=groups, ks=(1, 2))
        # Both copies are positives of images 1 and 2, and both images are positives of either copy: all at rank 1.
        assert (grouped["i2t_R@1"], grouped["t2i_R@1"], grouped["mean"]) == (100.0, 100.0, 100.0)
    by_row = evaluate_retrieval(_AsGiven(), data, key_groups="row", ks=(1, 2))  # every caption row is its own group
    assert by_row == plain


def test_key_groups_row_scores_a_caption_stored_once_for_two_images():
    distinct = np.array([[1.0, 0, 0, 0], RED, [0, 0, 0, 1]])
    data = PairedLatents({"image": np.eye(4), "text": distinct}, rows={"text": [0, 1, 1, 2]})
    with pytest.raises(ValueError, match=r"key: row 1 of 'text' is paired with several rows of 'image' \(\[1, 2\]\)"):
        evaluate_retrieval(_AsGiven(), data)
    shared = evaluate_retrieval(_AsGiven(), data, key_groups="row", ks=(1,))
    # The shared row becomes one key item per image (4 keys, as in test above), grouped: every query finds a hit first.
    assert (shared["i2t_R@1"], shared["t2i_R@1"]) == (100.0, 100.0)
    assert shared == evaluate_retrieval(_AsGiven(), _stamps(), key_groups=CAPTIONS, ks=(1,))
    with pytest.raises(ValueError, match=r"key_groups: expected 'row', 'value' or one label per row"):
        evaluate_retrieval(_AsGiven(), data, key_groups=CAPTIONS)  # one label per *row*: 3 rows here
