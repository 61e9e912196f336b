"""fusemix.zeroshot: CLIP's prompt ensembling, predictions, top-k accuracy with ties, confusion matrices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fusemix import FusionModel
from fusemix.aligned import AlignedModel
from fusemix.encoders import CallableEncoder
from fusemix.zeroshot import ZeroShotClassifier, confusion_matrix, top_k_accuracy

VOCABULARY = ["cat", "dog", "bird", "photo", "drawing", "of", "a"]


def bag_of_words(texts):
    """Stand-in text side: word counts over a tiny vocabulary, so every embedding is computable by hand."""
    return torch.tensor([[text.split().count(word) for word in VOCABULARY] for text in texts], dtype=torch.float32)


def test_class_embedding_is_the_normalised_mean_of_normalised_prompts():
    """Hand-written reference of the CLIP recipe: normalise each prompt, average per class, normalise again."""
    templates = ["a photo of {}", "a drawing of a {}"]
    classifier = ZeroShotClassifier.from_class_names(bag_of_words, ["cat", "dog"], templates)
    cat = F.normalize(bag_of_words(["a photo of cat", "a drawing of a cat"]), dim=-1).mean(dim=0)
    dog = F.normalize(bag_of_words(["a photo of dog", "a drawing of a dog"]), dim=-1).mean(dim=0)
    expected = F.normalize(torch.stack([cat, dog]), dim=-1)
    torch.testing.assert_close(classifier.class_embeddings, expected)
    assert classifier.class_names == ["cat", "dog"] and classifier.num_classes == 2


def test_callable_templates_and_bare_names():
    bare = ZeroShotClassifier.from_class_names(bag_of_words, ["cat", "bird"])
    torch.testing.assert_close(bare.class_embeddings, torch.eye(7)[[0, 2]])
    called = ZeroShotClassifier.from_class_names(bag_of_words, ["cat", "bird"], [lambda name: f"{name} {name}"])
    torch.testing.assert_close(called.class_embeddings, bare.class_embeddings)


def test_logits_predict_and_scale():
    classifier = ZeroShotClassifier(torch.eye(3), ["red", "green", "blue"], logit_scale=100.0)
    inputs = torch.tensor([[0.0, 3.0, 4.0], [2.0, 0.5, 0.0]])
    norm = 4.25**0.5
    expected = torch.tensor([[0.0, 60.0, 80.0], [200.0 / norm, 50.0 / norm, 0.0]])
    torch.testing.assert_close(classifier.logits(inputs), expected)
    assert classifier.predict(inputs).tolist() == [2, 0]
    assert classifier.predict(inputs, k=2).tolist() == [[2, 1], [0, 1]]
    assert classifier.predict(inputs, k=10).shape == (2, 3)
    assert "3 classes" in repr(classifier)


def test_the_text_side_of_an_aligned_model_builds_the_classifier():
    torch.manual_seed(0)
    model = FusionModel.from_dims({"image": 4, "text": 7}, shared_dim=3, depth=1)
    aligned = AlignedModel(model, {"text": CallableEncoder(bag_of_words, identity="bow", dim=7)})
    classifier = ZeroShotClassifier.from_class_names(aligned["text"], ["cat", "dog"], ["a photo of {}"], batch_size=1)
    expected = F.normalize(model.embed("text", bag_of_words(["a photo of cat", "a photo of dog"])), dim=-1)
    torch.testing.assert_close(classifier.class_embeddings, expected)
    images = aligned.embed("image", torch.randn(5, 4))
    assert classifier.predict(images).shape == (5,)


@pytest.mark.parametrize(
    ("names", "templates", "error", "match"),
    [
        ([], ("{}",), TypeError, "class_names: expected a non-empty sequence"),
        ("cat", ("{}",), TypeError, "class_names"),
        (["cat", "cat"], ("{}",), ValueError, r"\['cat'\] appear more than once"),
        (["cat", " "], ("{}",), ValueError, r"class_names\[1\]"),
        (["cat"], ("a photo",), ValueError, r"templates\[0\]: 'a photo' must hold exactly one"),
        (["cat"], ("{} {}",), ValueError, "exactly one"),
        (["cat"], "a {}", TypeError, "templates: expected a non-empty sequence"),
        (["cat"], (3,), TypeError, r"templates\[0\]"),
        (["cat"], (lambda name: 3,), TypeError, "returned int"),
    ],
)
def test_bad_names_and_templates(names, templates, error, match):
    with pytest.raises(error, match=match):
        ZeroShotClassifier.from_class_names(bag_of_words, names, templates)


def test_bad_encoders_and_embeddings():
    with pytest.raises(ValueError, match="2 rows for 3 prompts"):
        ZeroShotClassifier.from_class_names(lambda texts: torch.ones(2, 3), ["a", "b", "c"])
    with pytest.raises(TypeError, match="text_encoder: expected an AlignedEncoder or a callable"):
        ZeroShotClassifier.from_class_names("bge", ["a"])
    with pytest.raises(ValueError, match="2 names for 3 class embeddings"):
        ZeroShotClassifier(torch.eye(3), ["a", "b"])
    with pytest.raises(ValueError, match="class_embeddings: contain NaN"):
        ZeroShotClassifier(torch.tensor([[float("nan"), 1.0]]), ["a"])
    with pytest.raises(ValueError, match="embeddings: have dim 2"):
        ZeroShotClassifier(torch.eye(3), ["a", "b", "c"]).logits(torch.ones(1, 2))
    with pytest.raises(ValueError, match="logit_scale"):
        ZeroShotClassifier(torch.eye(1), ["a"], logit_scale=0.0)


def test_top_k_accuracy_counts_ties_against_the_true_class():
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    labels = [0, 2, 0, 1]
    # ranks of the true class (ties ahead): 1, 1, 0, 2
    assert top_k_accuracy(logits, labels, ks=(1, 2, 3)) == {1: 25.0, 2: 75.0, 3: 100.0}


@given(st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_top_k_accuracy_equals_a_sort_without_ties(seed, k):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(20, 7, generator=g)  # continuous values: no ties
    labels = torch.randint(0, 7, (20,), generator=g)
    top = logits.argsort(dim=1, descending=True)[:, :k]
    expected = 100.0 * float((top == labels[:, None]).any(dim=1).double().mean())
    assert top_k_accuracy(logits, labels, ks=(k,))[k] == pytest.approx(expected)


def test_confusion_matrix_reference_and_invariants():
    predictions, labels = [0, 2, 2, 1, 0], [0, 2, 1, 1, 2]
    matrix = confusion_matrix(predictions, labels, 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]
    assert int(matrix.sum()) == 5 and int(matrix.trace()) == 3
    with pytest.raises(ValueError, match=r"labels: class indices must lie in \[0, 3\)"):
        confusion_matrix([0], [3], 3)
    with pytest.raises(ValueError, match="predictions: shape"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(TypeError, match="labels: expected a 1-D sequence of integer"):
        top_k_accuracy(torch.ones(2, 2), torch.tensor([0.0, 1.0]))
