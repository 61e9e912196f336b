"""fusemix.aligned: raw items to the shared space, reopening runs with their encoders, embedding into a store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix import FusionModel
from fusemix.aligned import (
    PROGRESS_MIN_ITEMS,
    AlignedEncoder,
    AlignedModel,
    adapter_fingerprint,
    embed_store,
    model_directory,
)
from fusemix.checkpoint import save_model
from fusemix.encoders import CallableEncoder, HFTextEncoder
from fusemix.store import LatentStore


def word_stats(texts):
    """A deterministic stand-in text encoder: a few counts per text."""
    return torch.tensor([[len(t), t.count("a"), t.count(" "), 1.0] for t in texts], dtype=torch.float32)


@pytest.fixture
def words():
    return CallableEncoder(word_stats, identity="word-stats", dim=4)


@pytest.fixture
def pixels():
    return CallableEncoder(torch.nn.Linear(6, 5), identity={"name": "pixel-probe", "seed": 0}, dim=5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return FusionModel.from_dims({"image": 5, "text": 4}, shared_dim=3, depth=1).eval()


TEXTS = ["a red apple", "a dog", "rain", "a cat on a mat", "two red kites", "x"]


def test_encode_is_the_adapter_over_the_encoder_normalised(model, words):
    """The reference is the training-time path: model.embed on the encoder's latents."""
    aligned = AlignedEncoder(words, model.adapters["text"], modality="text")
    out = aligned.encode(TEXTS)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (6, 3)
    torch.testing.assert_close(out, model.embed("text", word_stats(TEXTS)))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(6))
    assert aligned.dim == 3 and aligned.device == torch.device("cpu")


@given(batch_size=st.integers(1, 8))
def test_batch_size_never_changes_the_embeddings(batch_size):
    torch.manual_seed(0)
    model = FusionModel.from_dims({"text": 4, "image": 2}, shared_dim=3, depth=1)
    aligned = AlignedEncoder(CallableEncoder(word_stats, identity="w"), model.adapters["text"], modality="text")
    torch.testing.assert_close(aligned.encode(TEXTS, batch_size=batch_size), aligned.encode(TEXTS, batch_size=64))


def test_the_adapter_runs_in_eval_mode(words):
    model = FusionModel.from_dims({"text": 4, "image": 2}, shared_dim=3, depth=2, dropout=0.9).train()
    aligned = AlignedEncoder(words, model.adapters["text"], modality="text")
    assert not aligned.adapter.training
    torch.testing.assert_close(aligned.encode(TEXTS), aligned.encode(TEXTS))  # no dropout noise


def test_numpy_outputs_and_items_that_are_not_a_list(model):
    numpy_encoder = CallableEncoder(lambda batch: batch @ np.ones((2, 4)), identity="np", numpy=True)
    aligned = AlignedEncoder(numpy_encoder, model.adapters["text"], modality="text")
    out = aligned.encode(np.ones((3, 2)))
    assert out.shape == (3, 3)
    bare = AlignedEncoder(lambda items: np.ones((len(items), 4), dtype=np.float32), model.adapters["text"],
                          modality="text")  # fmt: skip
    assert bare.encode(("a", "b")).shape == (2, 3)


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ("a red apple", TypeError, "wrap it in a list"),
        ([], ValueError, "at least one item"),
        (3, TypeError, "expected a sequence of items"),
    ],
)
def test_bad_items_are_refused(model, words, items, error, match):
    with pytest.raises(error, match=match):
        AlignedEncoder(words, model.adapters["text"], modality="text").encode(items)


def test_bad_encoder_outputs_name_the_items(model):
    wrong_rows = AlignedEncoder(lambda items: torch.ones(1, 4), model.adapters["text"], modality="text")
    with pytest.raises(ValueError, match=r"items \[0, 2\).*\(2, D\)"):
        wrong_rows.encode(["a", "b"])
    wrong_width = AlignedEncoder(lambda items: torch.ones(len(items), 7), model.adapters["text"], modality="text")
    with pytest.raises(ValueError, match="latents: have dim 7, but the adapter takes dim 4"):
        wrong_width.encode(["a"])
    not_a_tensor = AlignedEncoder(lambda items: [[1.0] * 4], model.adapters["text"], modality="text")
    with pytest.raises(TypeError, match="expected a tensor or numpy array, got list"):
        not_a_tensor.encode(["a"])


def test_constructor_checks(model, words):
    with pytest.raises(TypeError, match="encoder: expected a callable"):
        AlignedEncoder("bge", model.adapters["text"], modality="text")
    with pytest.raises(TypeError, match="adapter: expected an nn.Module"):
        AlignedEncoder(words, lambda x: x, modality="text")
    with pytest.raises(ValueError, match="modality"):
        AlignedEncoder(words, model.adapters["text"], modality="")
    with pytest.raises(ValueError, match="batch_size"):
        AlignedEncoder(words, model.adapters["text"], modality="text", batch_size=0)


def test_progress_bar_on_long_inputs_only(model, words, capsys):
    aligned = AlignedEncoder(words, model.adapters["text"], modality="text", batch_size=512)
    aligned.encode(["a"] * 10)
    assert "encode text" not in capsys.readouterr().err
    aligned.encode(["a"] * (PROGRESS_MIN_ITEMS + 1))
    assert "encode text" in capsys.readouterr().err
    aligned.encode(["a"] * 10, progress=True)
    assert "encode text" in capsys.readouterr().err


def test_identity_follows_the_encoder_and_the_adapter_weights(model, words):
    aligned = AlignedEncoder(words, model.adapters["text"], modality="text")
    identity = aligned.identity
    assert identity["aligned"] == "text" and identity["encoder"] == words.identity
    assert identity["adapter"] == adapter_fingerprint(model.adapters["text"])
    with torch.no_grad():
        model.adapters["text"].proj.bias.add_(1e-3)
    assert aligned.identity["adapter"] != identity["adapter"]


def test_aligned_model_access_and_latents_of_modalities_without_an_encoder(model, words):
    aligned = AlignedModel(model, {"text": words})
    assert aligned.modalities == ["image", "text"] and list(aligned.encoders) == ["text"]
    torch.testing.assert_close(aligned.encode("text", TEXTS[:2]), aligned["text"].encode(TEXTS[:2]))
    latents = torch.randn(4, 5)
    torch.testing.assert_close(aligned.embed("image", latents), model.embed("image", latents))
    torch.testing.assert_close(aligned.embed("text", word_stats(TEXTS)), aligned["text"].encode(TEXTS))
    with pytest.raises(KeyError, match="has an adapter but no encoder"):
        aligned["image"]
    with pytest.raises(KeyError, match="'audio' is not one of"):
        aligned["audio"]
    with pytest.raises(KeyError, match="have no adapter"):
        AlignedModel(model, {"audio": words})
    with pytest.raises(TypeError, match="expected a FusionModel"):
        AlignedModel(torch.nn.Linear(2, 2), {})
    with pytest.raises(TypeError, match="not iterable"):  # not a KeyError about modality 0
        list(AlignedModel(model, {}))


# ---------------------------------------------------------------------------------------------------------------------
# reopening a run


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from _tiny_models import build_bert

    return build_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def trained_run(tmp_path, bert_dir, pixels):
    """A real fit() run directory on latents of a tiny BERT (text) and a linear probe (image)."""
    from fusemix.data import PairedLatents
    from fusemix.train import TrainConfig, fit

    text = HFTextEncoder(bert_dir, pooling="mean", device="cpu")
    captions = [f"{a} {b}" for a in ("a dog", "the cat", "a red kitten", "the puppy") for b in ("runs", "sleeps")]
    images = [torch.randn(6) for _ in captions]
    data = PairedLatents({"image": pixels(images).numpy(), "text": text(captions).numpy()})
    config = TrainConfig(epochs=2, batch_size=8, shared_dim=4, depth=1, dropout=0.0, warmup_steps=1, device="cpu")
    run = tmp_path / "run"
    fit(data, config, out_dir=run, progress=False, encoders={"image": pixels, "text": text})
    return run, text, captions, images


def test_fit_refuses_encoders_of_other_modalities_before_training(tmp_path, words):
    """Catches encoders checked only when the model is saved, after the whole run."""
    from fusemix.data import PairedLatents
    from fusemix.train import TrainConfig, fit

    data = PairedLatents({"image": np.ones((8, 5), np.float32), "text": np.ones((8, 4), np.float32)})
    with pytest.raises(ValueError, match=r"encoders: \['audio'\] are not among the model's modalities"):
        fit(data, TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path / "run", encoders={"audio": words})
    assert not (tmp_path / "run").exists()


def test_a_run_reopens_with_its_text_encoder_rebuilt(trained_run, pixels, one_thread):
    run, text, captions, images = trained_run
    assert model_directory(run) == run / "model"
    aligned = AlignedModel.from_directory(run, device="cpu")
    assert list(aligned.encoders) == ["text"]  # the custom image encoder cannot be rebuilt from JSON
    assert isinstance(aligned["text"].encoder, HFTextEncoder) and aligned["text"].encoder.pooling == "mean"
    assert aligned.train_config["batch_size"] == 8
    expected = aligned.model.embed("text", text(captions))
    torch.testing.assert_close(aligned["text"].encode(captions), expected)
    with_image = AlignedModel.from_directory(run, encoders={"image": pixels}, modalities=["image"])
    assert list(with_image.encoders) == ["image"]
    assert list(AlignedModel.from_directory(run, encoders={"image": pixels}, modalities=[]).encoders) == ["image"]
    assert with_image["image"].encode(images).shape == (len(images), 4)


def test_progress_false_rebuilds_the_encoders_quietly(trained_run, capfd, one_thread):
    """Catches ``progress`` not reaching the encoders rebuilt from ``encoders.json``."""
    transformers = pytest.importorskip("transformers")
    run, *_ = trained_run
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.enable_progress_bar()  # another test may have turned them off for the process
    try:
        capfd.readouterr()
        AlignedModel.from_directory(run, device="cpu")
        assert "Loading weights" in capfd.readouterr().err  # transformers draws it for local checkpoints too
        for opened in (AlignedModel.from_directory(run, device="cpu", progress=False),
                       AlignedModel.from_pretrained(run, device="cpu", progress=False)):  # fmt: skip
            assert list(opened.encoders) == ["text"]
            assert capfd.readouterr().err == ""
        assert transformers.utils.logging.is_progress_bar_enabled()  # the switch is put back
    finally:
        (transformers.utils.logging.enable_progress_bar if bars else transformers.utils.logging.disable_progress_bar)()


def test_the_wrong_encoder_is_refused_unless_told(trained_run, bert_dir):
    run, *_ = trained_run
    impostor = CallableEncoder(torch.nn.Linear(6, 5), identity={"name": "pixel-probe", "seed": 1}, dim=5)
    with pytest.raises(ValueError, match=r"encoders\['image'\]: not the encoder the model was trained on.*id.seed"):
        AlignedModel.from_directory(run, encoders={"image": impostor}, device="cpu")
    other_pooling = HFTextEncoder(bert_dir, pooling="cls", device="cpu")
    with pytest.raises(ValueError, match='pooling: recorded "mean", now "cls"'):
        AlignedModel.from_directory(run, encoders={"text": other_pooling})
    loose = AlignedModel.from_directory(run, encoders={"text": other_pooling}, check_identity=False)
    assert loose["text"].encoder is other_pooling


def test_a_moved_text_model_is_given_by_its_new_place(trained_run, bert_dir, tmp_path):
    import shutil

    run, text, captions, _ = trained_run
    record = json.loads((run / "model" / "encoders.json").read_text())
    record["encoders"]["text"]["location"] = str(tmp_path / "was-here")
    (run / "model" / "encoders.json").write_text(json.dumps(record))
    with pytest.raises(FileNotFoundError, match=r"encoders=\{modality: '/new/place'\}"):
        AlignedModel.from_directory(run, device="cpu")
    moved = shutil.copytree(bert_dir, tmp_path / "moved-bert")
    aligned = AlignedModel.from_directory(run, encoders={"text": moved}, device="cpu")
    torch.testing.assert_close(aligned["text"].encode(captions), aligned.model.embed("text", text(captions)))


def test_directories_without_descriptions_or_models(tmp_path, model, words):
    save_model(model, tmp_path / "bare")
    aligned = AlignedModel.from_directory(tmp_path / "bare", encoders={"text": words})
    assert list(aligned.encoders) == ["text"]  # no encoders.json: nothing to check against, nothing rebuilt
    with pytest.raises(ValueError, match="no description of its encoder to rebuild"):
        AlignedModel.from_directory(tmp_path / "bare", encoders={"text": "/somewhere"})
    with pytest.raises(KeyError, match=r"\['audio'\] are not among"):
        AlignedModel.from_directory(tmp_path / "bare", modalities=["audio"])
    with pytest.raises(TypeError, match="expected an encoder or a model location"):
        AlignedModel.from_directory(tmp_path / "bare", encoders={"text": 3})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no fusemix.json"):
        model_directory(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        model_directory(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------------
# embed_store


def test_embed_store_rows_are_the_encoded_items(tmp_path, model, words):
    aligned = AlignedModel(model, {"text": words})["text"]
    store = embed_store(aligned, TEXTS, tmp_path / "s", batch_size=4, shard_size=5, dtype="float32", progress=False,
                        metadata={"source": "toy"})  # fmt: skip
    assert isinstance(store, LatentStore) and store.shape == (6, 3) and store.modality == "text"
    torch.testing.assert_close(store.to_tensor(), aligned.encode(TEXTS))
    assert store.encoder == aligned.identity
    assert store.metadata == {"source": "toy", "space": "shared"}


def test_embed_store_reads_references_and_refuses_another_adapter(tmp_path, model, words):
    aligned = AlignedModel(model, {"text": words})["text"]
    files = []
    for i, text in enumerate(TEXTS[:3]):
        (tmp_path / f"{i}.txt").write_text(text)
        files.append(tmp_path / f"{i}.txt")
    store = embed_store(aligned, files, tmp_path / "s", read=lambda path: path.read_text(), progress=False)
    torch.testing.assert_close(store.to_tensor(), aligned.encode(TEXTS[:3]), atol=2e-3, rtol=0)  # float16 store
    other = FusionModel.from_dims({"image": 5, "text": 4}, shared_dim=3, depth=1)
    with pytest.raises(ValueError, match="already holds a complete store made with other settings"):
        embed_store(AlignedModel(other, {"text": words})["text"], files, tmp_path / "s", read=str, progress=False)
    with pytest.raises(TypeError, match="aligned: expected an AlignedEncoder"):
        embed_store(words, TEXTS, tmp_path / "t")
    with pytest.raises(TypeError, match="read: expected a callable"):
        embed_store(aligned, TEXTS, tmp_path / "t", read="open")


def test_the_aligned_space_modules_import_no_optional_dependency():
    """import fusemix.aligned / search / zeroshot / hub / encoder_descriptions stays light: nothing optional loads."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import fusemix.aligned, fusemix.search, fusemix.zeroshot, fusemix.hub, fusemix.encoder_descriptions\n"
        "heavy = ['transformers', 'sentence_transformers', 'faiss', 'huggingface_hub', 'safetensors', 'matplotlib']\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout
