"""fusemix.encoder_descriptions: encoders.json round trips, rebuilding every model adapter, identity checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fusemix.encoder_descriptions import (
    ENCODERS_FILE,
    build_encoder,
    describe_encoder,
    identity_differences,
    read_encoder_descriptions,
    save_encoder_descriptions,
)
from fusemix.encoders import (
    CallableEncoder,
    HFAudioEncoder,
    HFImageEncoder,
    HFTextEncoder,
    SentenceTransformerEncoder,
)
from fusemix.preprocess import ResizeCenterCrop, blip_caption


def _identified_transform():
    """A callable transform with an identity of its own: recorded in the encoder's identity, but not rebuildable."""
    crop = ResizeCenterCrop(28)

    class Identified:
        identity = {"name": "my-transform"}

        def __call__(self, image):
            return crop(image)

    return Identified()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny local checkpoints: BERT, a sentence-transformers model over it, DINOv2, Whisper."""
    pytest.importorskip("transformers")
    from _tiny_models import build_bert, build_dinov2, build_sentence_transformer, build_whisper

    root = tmp_path_factory.mktemp("tiny")
    bert = build_bert(root / "tiny-bert")
    return {
        "bert": bert,
        "st": build_sentence_transformer(root / "tiny-st", bert),
        "dinov2": build_dinov2(root / "tiny-dinov2"),
        "whisper": build_whisper(root / "tiny-whisper"),
    }


def _inputs(kind):
    rng = np.random.default_rng(0)
    if kind == "image":
        return [rng.integers(0, 256, (30, 34, 3), dtype=np.uint8) for _ in range(2)]
    if kind == "audio":
        return [rng.standard_normal(8000).astype(np.float32) * 0.1, rng.standard_normal(4000).astype(np.float32) * 0.1]
    return ["A dog (on) the table.", "the red cat"]  # blip_caption drops the brackets and the full stop


def shout(text: str) -> str:
    """A preprocess function of the user's: it has a stable name, but no description can rebuild it."""
    return text.upper()


class Smaller(ResizeCenterCrop):
    """A subclass of the rebuildable transform: its behaviour may differ, so it is not rebuilt as the base class."""


SMALL_CROP = ResizeCenterCrop(28, resize=32, interpolation="bilinear")
CASES = [
    ("bert", HFTextEncoder, {"pooling": "mean", "prefix": "query: ", "max_length": 16, "normalize": True}, "text"),
    ("bert", HFTextEncoder, {"pooling": "cls", "preprocess": blip_caption}, "text"),
    ("st", SentenceTransformerEncoder, {"normalize": True, "prefix": "passage: "}, "text"),
    ("st", SentenceTransformerEncoder, {"preprocess": blip_caption}, "text"),
    ("dinov2", HFImageEncoder, {"pooling": "cls+patch_mean"}, "image"),
    ("dinov2", HFImageEncoder, {"pooling": "patch_mean", "transform": SMALL_CROP}, "image"),
    ("whisper", HFAudioEncoder, {"sampling_rate": 16000}, "audio"),
]
CASE_IDS = ["bert", "bert-blip-caption", "st", "st-blip-caption", "dinov2", "dinov2-transform", "whisper"]


@pytest.mark.parametrize(("model", "cls", "options", "kind"), CASES, ids=CASE_IDS)
def test_every_model_adapter_is_rebuilt_with_its_options(tiny, one_thread, model, cls, options, kind):
    """Catches an option that is not described (the rebuilt encoder would compute other latents)."""
    if cls is SentenceTransformerEncoder:
        pytest.importorskip("sentence_transformers")
    original = cls(tiny[model], device="cpu", max_batch_size=3, **options)
    description = describe_encoder(original)
    assert description["kind"] in ("hf-text", "sentence-transformers", "hf-image", "hf-audio")
    assert description["local"] is True and description["options"]["max_batch_size"] == 3
    json.dumps(description)  # plain JSON
    rebuilt = build_encoder(json.loads(json.dumps(description)), device="cpu")
    assert type(rebuilt) is cls
    assert identity_differences(description["identity"], rebuilt.identity) == []
    assert rebuilt.max_batch_size == 3
    torch.testing.assert_close(rebuilt(_inputs(kind)), original(_inputs(kind)))


def test_preprocessing_is_described_and_rebuilt(tiny, one_thread):
    """Catches a transform or preprocess function left out of the description (a silently different encoder)."""
    text = describe_encoder(HFTextEncoder(tiny["bert"], preprocess=blip_caption, device="cpu"))
    assert text["options"]["preprocess"] == "fusemix.preprocess.blip_caption"
    assert build_encoder(text, device="cpu").preprocess is blip_caption
    image = describe_encoder(HFImageEncoder(tiny["dinov2"], transform=SMALL_CROP, device="cpu"))
    assert image["options"]["transform"] == SMALL_CROP.identity
    rebuilt = build_encoder(image, device="cpu")
    assert type(rebuilt.transform) is ResizeCenterCrop and rebuilt.transform.identity == SMALL_CROP.identity
    assert rebuilt.processor is None  # the transform replaces the checkpoint's image processor
    plain = HFTextEncoder(tiny["bert"], device="cpu")
    assert not torch.allclose(plain(_inputs("text")), build_encoder(text, device="cpu")(_inputs("text")))


@pytest.mark.parametrize(
    ("model", "cls", "options"),
    [
        ("bert", HFTextEncoder, {"preprocess": shout}),
        ("st", SentenceTransformerEncoder, {"preprocess": shout}),
        ("dinov2", HFImageEncoder, {"transform": Smaller(28)}),
        ("dinov2", HFImageEncoder, {"transform": _identified_transform()}),
    ],
    ids=["hf-text-own-function", "st-own-function", "transform-subclass", "transform-with-an-identity"],
)
def test_preprocessing_fusemix_cannot_rebuild_makes_a_custom_encoder(tiny, model, cls, options):
    """Catches an adapter described as rebuildable without what prepares its inputs."""
    if cls is SentenceTransformerEncoder:
        pytest.importorskip("sentence_transformers")
    encoder = cls(tiny[model], device="cpu", **options)
    description = describe_encoder(encoder)
    assert description == {"kind": "custom", "class": f"{cls.__module__}.{cls.__qualname__}",
                           "identity": encoder.identity}  # fmt: skip
    with pytest.raises(ValueError, match="cannot be rebuilt from JSON"):
        build_encoder(description)


def test_rebuilt_encoders_load_as_quietly_as_asked(tiny):
    """Catches build_encoder dropping ``progress`` (the command line's --no-progress would not silence loading)."""
    description = describe_encoder(HFTextEncoder(tiny["bert"], device="cpu"))
    assert build_encoder(description, device="cpu", progress=False).progress is False
    assert build_encoder(description, device="cpu").progress is True


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"preprocess": "os.system"}, r"options.preprocess 'os.system' is not one of \['fusemix.preprocess"),
        ({"transform": {"transform": "random-crop"}}, "is not a resize-center-crop transform"),
        ({"transform": {"transform": "resize-center-crop", "size": 28}}, "is not a valid transform"),
        ({"transform": {**SMALL_CROP.identity, "antialias": False}}, "has settings this fusemix does not know"),
        ({"transform": {**SMALL_CROP.identity, "size": -1}}, "is not a valid transform"),
    ],
)
def test_unknown_preprocessing_in_a_description_is_refused(tiny, options, match):
    """Catches a description whose preprocessing this fusemix would drop or run from an arbitrary name."""
    description = describe_encoder(HFImageEncoder(tiny["dinov2"], device="cpu"))
    with pytest.raises(ValueError, match=match):
        build_encoder({**description, "options": {**description["options"], **options}}, device="cpu")


def test_a_moved_local_model_is_found_at_its_new_place(tiny, tmp_path):
    """Catches a description that only works on the machine (and in the folder) that wrote it."""
    original = HFTextEncoder(tiny["bert"], pooling="cls", device="cpu")
    moved = shutil.copytree(tiny["bert"], tmp_path / "elsewhere" / "bert-copy")
    description = {**describe_encoder(original), "location": str(tmp_path / "gone")}
    with pytest.raises(FileNotFoundError, match="not on this machine; pass its new place"):
        build_encoder(description)
    rebuilt = build_encoder(description, location=moved, device="cpu")
    assert rebuilt.identity["model"] == "bert-copy"
    assert identity_differences(description["identity"], rebuilt.identity) == []  # same weights, other folder name


def test_a_subclass_or_a_callable_is_described_as_custom():
    class Tweaked(CallableEncoder):
        pass

    for encoder in (CallableEncoder(lambda x: x, identity={"name": "toy"}), Tweaked(lambda x: x, identity="t")):
        description = describe_encoder(encoder)
        assert description["kind"] == "custom" and description["identity"] == encoder.identity
        with pytest.raises(ValueError, match="cannot be rebuilt from JSON"):
            build_encoder(description)
    assert describe_encoder(len) == {"kind": "custom", "class": "builtins.builtin_function_or_method",
                                     "identity": {"name": "builtins.len"}}  # fmt: skip


def test_identity_differences():
    recorded = {"encoder": "HFTextEncoder", "model": "bge", "fingerprint": "f1", "pooling": "cls", "dtype": "float32"}
    assert identity_differences(recorded, dict(recorded)) == []
    assert identity_differences(recorded, {**recorded, "model": "bge-copy"}) == []
    assert identity_differences(recorded, {**recorded, "model": "other", "fingerprint": "f2"}) == [
        'fingerprint: recorded "f1", now "f2"',
        'model: recorded "bge", now "other"',
    ]
    hub = {"model": "BAAI/bge-large-en-v1.5", "revision": None, "pooling": "cls"}
    assert identity_differences(hub, {**hub, "revision": "abc"}) == []
    assert identity_differences({**hub, "revision": "abc"}, {**hub, "revision": "def"}) == [
        'revision: recorded "abc", now "def"'
    ]
    nested = {"encoder": "CallableEncoder", "id": {"weights": "w1", "size": 224}}
    assert identity_differences(nested, {"encoder": "CallableEncoder", "id": {"weights": "w2"}}) == [
        "id.size: recorded 224, now absent",
        'id.weights: recorded "w1", now "w2"',
    ]
    assert identity_differences({}, {"pooling": "cls"}) == ['pooling: not recorded, now "cls"']


def test_save_and_read_round_trip(tmp_path, tiny):
    text = HFTextEncoder(tiny["bert"], device="cpu")
    image = CallableEncoder(torch.nn.Linear(3, 2), identity="probe", dim=2)
    prepared = describe_encoder(text)
    path = save_encoder_descriptions(tmp_path, {"text": prepared, "image": image})
    assert path == tmp_path / ENCODERS_FILE
    record = json.loads(path.read_text())
    assert record["format"] == "fusemix-encoders" and record["format_version"] == 1
    read = read_encoder_descriptions(tmp_path)
    assert read == {"text": prepared, "image": describe_encoder(image)}
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left


def test_read_without_a_file_is_empty_and_bad_files_are_refused(tmp_path):
    assert read_encoder_descriptions(tmp_path) == {}
    (tmp_path / ENCODERS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable encoder descriptions"):
        read_encoder_descriptions(tmp_path)
    (tmp_path / ENCODERS_FILE).write_text(json.dumps({"format": "other", "encoders": {}}))
    with pytest.raises(ValueError, match="not a fusemix encoder descriptions file"):
        read_encoder_descriptions(tmp_path)
    (tmp_path / ENCODERS_FILE).write_text(json.dumps({"format": "fusemix-encoders", "format_version": 99,
                                                      "encoders": {}}))  # fmt: skip
    with pytest.raises(ValueError, match="newer than this fusemix reads"):
        read_encoder_descriptions(tmp_path)


@pytest.mark.parametrize(
    ("encoders", "error", "match"),
    [
        ({}, ValueError, "non-empty mapping"),
        ({"text": {"kind": "magic", "identity": {}}}, ValueError, "unknown encoder kind 'magic'"),
        ({"text": {"kind": "hf-text", "identity": {}}}, ValueError, r"needs \['location', 'local', 'options'\]"),
        ({"text": {"kind": "custom", "identity": "x"}}, ValueError, "'identity' must be a dict"),
        ({"": CallableEncoder(len, identity="x")}, TypeError, "non-empty strings"),
        ({"text": 3}, TypeError, "expected a callable encoder"),
    ],
)
def test_save_refuses_bad_entries(tmp_path, encoders, error, match):
    with pytest.raises(error, match=match):
        save_encoder_descriptions(tmp_path, encoders)


def test_save_needs_an_existing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_dir"):
        save_encoder_descriptions(tmp_path / "missing", {"x": CallableEncoder(len, identity="x")})
