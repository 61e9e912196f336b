"""fusemix.encoders.load_callable_encoder: the encoder ``--callable MODULE:FUNCTION`` builds, from Python."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from fusemix.aligned import AlignedModel
from fusemix.cli import main
from fusemix.encoders import CallableEncoder, load_callable_encoder
from fusemix.encoders.callable_spec import ListEncoder
from fusemix.store import LatentStore

pytest.importorskip("safetensors")

ENCODERS = """
import numpy as np
import torch

from fusemix.encoders import CallableEncoder

VOCABULARY = ["red", "blue", "green", "circle", "square", "star"]


def words(texts):
    return torch.tensor([[float(w in t.split()) for w in VOCABULARY] for t in texts])


def build_words():
    return words


def build_scaled(scale):
    return lambda texts: words(texts) * float(scale)


def build_identified():
    return CallableEncoder(words, identity={"name": "words"})


def build_clips():
    return lambda clips: torch.tensor([[float(len(c)), float(np.mean(c))] for c in clips])


def build_nothing():
    return None
"""

CAPTIONS = [f"{c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")] * 3


def run(*args: object) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, err.getvalue()


@pytest.fixture
def module(tmp_path: Path) -> Path:
    (tmp_path / "my_encoders.py").write_text(ENCODERS)
    return tmp_path / "my_encoders.py"


def test_the_identity_is_the_one_fusemix_extract_records(module, tmp_path):
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    for factory, extra in (("build_words", ()), ("build_scaled", ("--model", "2"))):
        out = tmp_path / factory
        code, err = run("extract", "--encoder", "python", "--callable", f"{module}:{factory}", *extra, "--input-type",
                        "text", "--input", tmp_path / "captions.txt", "--out", out, "--no-progress")  # fmt: skip
        assert code == 0, err
        encoder = load_callable_encoder(f"{module}:{factory}", *extra[1:])
        assert encoder.identity == LatentStore.open(out).encoder
        np.testing.assert_array_equal(LatentStore.open(out).to_numpy(np.float32), encoder(CAPTIONS).numpy())


def test_a_run_trained_on_cli_latents_reopens_with_it(module, tmp_path):
    """The use: latents extracted by ``--callable``, trained, then reopened in Python; a bare function is refused."""
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    spec = f"{module}:build_words"
    for modality in ("image", "text"):  # the same bag of words stands in for both sides
        code, err = run("extract", "--encoder", "python", "--callable", spec, "--input-type", "text",
                        "--modality", modality, "--input", tmp_path / "captions.txt", "--out", tmp_path / modality,
                        "--dtype", "float32", "--no-progress")  # fmt: skip
        assert code == 0, err
    code, err = run("train", "--latents", f"image={tmp_path / 'image'}", "--latents", f"text={tmp_path / 'text'}",
                    "--out", tmp_path / "run", "--epochs", 2, "--batch-size", 18, "--shared-dim", 4, "--depth", 1,
                    "--device", "cpu", "--no-progress")  # fmt: skip
    assert code == 0, err
    encoder = load_callable_encoder(spec)
    aligned = AlignedModel.from_pretrained(tmp_path / "run", encoders={"text": encoder}, progress=False)
    expected = aligned.model.embed("text", torch.from_numpy(LatentStore.open(tmp_path / "text").to_numpy(np.float32)))
    torch.testing.assert_close(aligned["text"].encode(CAPTIONS), expected)
    import my_encoders  # the module the spec loaded put its folder on the path

    with pytest.raises(ValueError, match=r"encoders\['text'\]: not the encoder the model was trained on"):
        AlignedModel.from_pretrained(tmp_path / "run", encoders={"text": my_encoders.words}, progress=False)


def test_what_is_built_and_how_it_is_configured(module):
    wrapped = load_callable_encoder(f"{module}:build_words", max_batch_size=2, dtype="float16")
    assert isinstance(wrapped, CallableEncoder) and wrapped.identity["dtype"] == "float16"
    identified = load_callable_encoder(f"{module}:build_identified")
    assert identified.identity["id"] == {"name": "words"}  # an encoder with its own identity is kept as it is
    clips = load_callable_encoder(f"{module}:build_clips", input_type="audio")
    assert isinstance(clips, ListEncoder) and clips.identity == {"callable": "my_encoders:build_clips", "model": None}
    assert clips([np.ones(3, np.float32), np.zeros(5, np.float32)]).tolist() == [[3.0, 1.0], [5.0, 0.0]]


@pytest.mark.parametrize(
    ("spec", "kwargs", "error", "message"),
    [
        ("{m}", {}, ValueError, r"spec: expected MODULE:FUNCTION"),
        ("{d}/absent.py:build", {}, ValueError, r"spec: .*absent\.py: no such file"),
        ("no_such_module_here:build", {}, ValueError, r"spec: no module named 'no_such_module_here'"),
        ("{m}:build_missing", {}, ValueError, r"spec: .* has no attribute 'build_missing'"),
        ("{m}:VOCABULARY", {}, TypeError, r"spec: .*VOCABULARY is a list, not a function"),
        ("{m}:words", {}, TypeError, r"spec: .*words cannot be called as FUNCTION\(\).*not be the encoder itself"),
        ("{m}:build_words", {"argument": "x"}, TypeError, r"FUNCTION\(argument value\)"),
        ("{m}:build_nothing", {}, TypeError, r"spec: .*returned a NoneType"),
        ("{m}:build_identified", {"device": "cpu"}, ValueError, r"device: .*returned an encoder with its own identity"),
        (
            "{m}:build_clips",
            {"input_type": "audio", "max_batch_size": 4},
            ValueError,
            r"max_batch_size: not for a plain",
        ),
        ("{m}:build_words", {"names": {"flag": "--f"}}, ValueError, r"names: \['flag'\] are not arguments"),
        ("{m}:build_scaled", {"argument": 12}, TypeError, r"argument: expected a string .* pass str\(12\)"),
        ("{m}:build_words", {"input_type": "video"}, ValueError, r"input_type: expected one of \['text', 'image'"),
    ],
)
def test_errors_name_the_argument(module, spec, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_callable_encoder(spec.format(m=module, d=module.parent), **kwargs)


def test_names_rename_the_arguments_in_errors(module):
    with pytest.raises(TypeError, match=r"^--callable: .*FUNCTION\(--model value\).*; without --model it is called"):
        load_callable_encoder(f"{module}:build_words", "x", names={"spec": "--callable", "argument": "--model"})
