"""From the command line to the aligned space: extract records its encoder, train writes ``model/encoders.json``,
``AlignedModel.from_pretrained(run)`` rebuilds the encoders, and ``fusemix embed`` fills a shared-space store."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from _cli_encoders import colour_statistics
from _cli_run import assert_user_error, run
from _tiny_models import build_bert, build_dinov2
from fusemix.aligned import AlignedModel
from fusemix.cli import ITEMS_FILE
from fusemix.encoder_descriptions import ENCODERS_FILE, describe_encoder, read_encoder_descriptions
from fusemix.encoders import HFImageEncoder, HFTextEncoder
from fusemix.store import LatentStore

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

HERE = Path(__file__).parent
COLOURS = {"red": (210, 40, 40), "blue": (40, 70, 210)}
SUBJECTS = ("dog", "puppy", "cat", "kitten")
PLACES = ("table", "beach")
NUM_IMAGES = 16
TEXT_OPTIONS = {"pooling": "mean", "max_length": 16}
TRAIN = ("--epochs", 2, "--batch-size", 8, "--shared-dim", 8, "--depth", 1, "--dropout", 0, "--warmup-steps", 1,
         "--checkpoint-every", 0, "--device", "cpu", "--no-progress")  # fmt: skip


def draw(index: int) -> tuple[Image.Image, str]:
    """Image ``index`` (a coloured square, placed by subject, on a background set by the place) and its caption."""
    colour, subject, place = list(COLOURS)[index % 2], SUBJECTS[(index // 2) % 4], PLACES[index // 8]
    image = Image.new("RGB", (40, 40), (60,) * 3 if place == "table" else (200,) * 3)
    corner = 4 + 6 * SUBJECTS.index(subject)
    image.paste(COLOURS[colour], (corner, corner, corner + 12, corner + 12))
    return image, f"a {colour} {subject} on the {place}"


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny BERT and DINOv2, 16 images with a caption each, three stores and two runs trained from them."""
    root = tmp_path_factory.mktemp("embed")
    paths = {"root": root, "bert": build_bert(root / "bert"), "dinov2": build_dinov2(root / "dinov2")}
    images = root / "data" / "images"
    images.mkdir(parents=True)
    rows = []
    for index in range(NUM_IMAGES):
        image, caption = draw(index)
        image.save(images / f"{index:02d}.png")
        rows.append((f"images/{index:02d}.png", caption))
    with open(root / "data" / "captions.csv", "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([("image", "caption"), *rows])
    paths.update(images=images, captions=root / "data" / "captions.csv")
    latents = root / "latents"
    steps = {
        "text": ("--encoder", "hf-text", "--model", paths["bert"], "--pooling", "mean", "--max-length", 16,
                 "--input", paths["captions"], "--column", "caption", "--device", "cpu"),
        "image": ("--encoder", "hf-image", "--model", paths["dinov2"], "--input", images, "--device", "cpu"),
        "colour": ("--encoder", "python", "--callable", HERE / "_cli_encoders.py:build_image_encoder",
                   "--input-type", "image", "--modality", "colour", "--input", images),
    }  # fmt: skip
    for modality, flags in steps.items():
        code, _, err = run("extract", *flags, "--out", latents / modality, "--no-progress")
        assert code == 0, err
        paths[f"latents-{modality}"] = latents / modality
    for name, modalities in (("run", ("image", "text")), ("run-colour", ("colour", "text"))):
        specs = [arg for m in modalities for arg in ("--latents", f"{m}={latents / m}")]
        code, _, err = run("train", *specs, "--out", root / name, *TRAIN)
        assert code == 0, err
        paths[name] = root / name
    return paths


def captions(ws: dict[str, Path]) -> list[str]:
    with open(ws["captions"], encoding="utf-8") as file:
        return [row["caption"] for row in csv.DictReader(file)]


def embed(
    ws: dict[str, Path],
    out: Path,
    *flags: object,
    model: Path | str | None = None,
    modality: str = "text",
    source: Path | str | None = None,
    column: str | None = "caption",
    device: str | None = "cpu",
) -> tuple[int, str, str]:
    """``fusemix embed FLAGS`` into ``out``: by default the captions, with the text encoder of the first run."""
    optional = {"--column": column, "--device": device}
    given = [arg for flag, value in optional.items() if value is not None for arg in (flag, value)]
    return run("embed", "--model", model or ws["run"], "--modality", modality, "--input", source or ws["captions"],
               *given, *flags, "--out", out, "--no-progress")  # fmt: skip


def test_extract_records_the_encoder_it_ran_not_the_file_reader(ws):
    """Catches a store without a description, or one of the command line's file-reading wrapper."""
    text, image, colour = (LatentStore.open(ws[f"latents-{m}"]) for m in ("text", "image", "colour"))
    bert = HFTextEncoder(ws["bert"], device="cpu", **TEXT_OPTIONS)
    assert text.metadata["encoder_description"] == describe_encoder(bert)
    assert image.metadata["encoder_description"] == describe_encoder(HFImageEncoder(ws["dinov2"], device="cpu"))
    custom = colour.metadata["encoder_description"]
    assert custom["kind"] == "custom" and custom["class"] == "fusemix.encoders.callables.CallableEncoder"
    assert all(s.metadata["encoder_description"]["identity"] == s.encoder for s in (text, image, colour))


def test_a_trained_run_reopens_with_its_encoders_and_no_argument(ws, one_thread):
    """The end of a pure command-line workflow: raw items in, the model's embedding of the encoder's latents out."""
    assert set(read_encoder_descriptions(ws["run"] / "model")) == {"image", "text"}
    aligned = AlignedModel.from_pretrained(ws["run"], device="cpu")
    assert set(aligned.encoders) == {"image", "text"}
    texts = captions(ws)[:5]
    bert = HFTextEncoder(ws["bert"], device="cpu", **TEXT_OPTIONS)
    torch.testing.assert_close(aligned["text"].encode(texts), aligned.model.embed("text", bert(texts)))
    images = [rgb(ws["images"] / f"{i:02d}.png") for i in range(5)]
    dino = HFImageEncoder(ws["dinov2"], device="cpu")
    torch.testing.assert_close(aligned["image"].encode(images), aligned.model.embed("image", dino(images)))
    partial = read_encoder_descriptions(ws["run-colour"] / "model")
    assert (partial["text"]["kind"], partial["colour"]["kind"]) == ("hf-text", "custom")
    assert list(AlignedModel.from_pretrained(ws["run-colour"], device="cpu").encoders) == ["text"]


def test_train_refuses_a_store_whose_encoder_description_is_bad_before_training(tmp_path):
    """Catches a hand-edited description found only when the model is saved, after the whole run."""
    import numpy as np

    from fusemix.store import write_store

    rows = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    bad = {"encoder_description": {"kind": "magic", "identity": {"name": "toy"}}}
    write_store(tmp_path / "image", rows, modality="image", encoder={"name": "toy"}, metadata=bad)
    write_store(tmp_path / "text", rows, modality="text", encoder={"name": "toy"})
    flags = ("--latents", f"image={tmp_path / 'image'}", "--latents", f"text={tmp_path / 'text'}")
    message = f"--latents image: {tmp_path / 'image'} records a bad encoder description"
    assert_user_error(run("train", *flags, "--out", tmp_path / "run", *TRAIN), "train", message, "'magic'")
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_embed_fills_a_store_of_the_shared_space_from_a_csv_column_and_a_folder(ws, tmp_path, one_thread):
    aligned = AlignedModel.from_pretrained(ws["run"], device="cpu")
    code, out, err = embed(ws, tmp_path / "text", "--dtype", "float32", "--batch-size", 5, "--shard-size", 7)
    assert code == 0, err
    assert f"16 text shared-space embeddings of dim 8 (float32) in {tmp_path / 'text'}" in out
    store = LatentStore.open(tmp_path / "text", verify="full")
    assert store.shape == (16, 8) and len(store.shards) == 3
    assert store.metadata["space"] == "shared" and store.metadata["model"] == str(ws["run"])
    assert store.encoder == aligned["text"].identity  # encoder and adapter weights
    assert [json.loads(line) for line in (tmp_path / "text" / ITEMS_FILE).read_text().splitlines()] == captions(ws)
    torch.testing.assert_close(store.to_tensor(), aligned["text"].encode(captions(ws)))

    code, out, err = embed(ws, tmp_path / "image", model=ws["run"] / "model", modality="image", source=ws["images"],
                           column=None)  # fmt: skip
    assert code == 0, err
    store = LatentStore.open(tmp_path / "image")
    names = [json.loads(line) for line in (tmp_path / "image" / ITEMS_FILE).read_text().splitlines()]
    assert names == [f"{i:02d}.png" for i in range(NUM_IMAGES)]
    expected = aligned["image"].encode([rgb(ws["images"] / name) for name in names])
    torch.testing.assert_close(store.to_tensor(), expected, atol=2e-3, rtol=0)  # a float16 store


def test_rerunning_embed_is_a_no_op_and_a_store_of_other_items_or_another_model_is_refused(ws, tmp_path):
    first = embed(ws, tmp_path / "text")
    assert first[0] == 0, first[2]
    again = embed(ws, tmp_path / "text")
    assert again[0] == 0 and "already complete" in again[1]
    fewer = tmp_path / "three.txt"
    fewer.write_text("".join(f"{caption}\n" for caption in captions(ws)[:3]))
    three = {"source": fewer, "column": None}
    assert_user_error(embed(ws, tmp_path / "text", **three), "embed", "--out", "other items", "--overwrite")
    other_model = embed(ws, tmp_path / "text", model=ws["run-colour"])  # same items and encoder, other adapter
    assert_user_error(other_model, "embed", f"--out: {tmp_path / 'text'} already holds", "other settings", "adapter",
                      "pass --overwrite to replace it")  # fmt: skip
    assert "out_dir" not in other_model[2] and "overwrite=True" not in other_model[2]
    code, out, err = embed(ws, tmp_path / "text", "--overwrite", **three)
    assert code == 0, err
    assert LatentStore.open(tmp_path / "text").shape == (3, 8)


def test_a_custom_encoder_is_given_with_callable(ws, tmp_path, one_thread):
    """The colour encoder was a Python function: the model records its identity only, and checks the one given."""
    colour = {"model": ws["run-colour"], "modality": "colour", "source": ws["images"], "column": None}
    assert_user_error(embed(ws, tmp_path / "c", **colour), "embed", "--callable", "custom code", "CallableEncoder")
    builder = HERE / "_cli_encoders.py:build_image_encoder"
    assert_user_error(embed(ws, tmp_path / "c", "--callable", builder, **colour), "embed", "--input-type")
    code, _, err = embed(ws, tmp_path / "c", "--callable", builder, "--input-type", "image", "--dtype", "float32",
                         **colour)  # fmt: skip
    assert code == 0, err
    aligned = AlignedModel.from_pretrained(ws["run-colour"], device="cpu")
    images = [rgb(ws["images"] / f"{i:02d}.png") for i in range(NUM_IMAGES)]
    expected = aligned.embed("colour", torch.from_numpy(colour_statistics(images)))
    torch.testing.assert_close(LatentStore.open(tmp_path / "c").to_tensor(), expected)
    impostor = HERE / "_cli_encoders.py:build_plain_audio_encoder"
    assert_user_error(embed(ws, tmp_path / "d", "--callable", impostor, "--input-type", "image", **colour), "embed",
                      f"--callable {impostor}: not the colour encoder the model was trained on",
                      "id.callable: recorded")  # fmt: skip
    identified = ("--callable", HERE / "_cli_encoders.py:build_text_encoder", "--input-type", "image")
    assert_user_error(embed(ws, tmp_path / "e", *identified, **colour), "embed",
                      "--device: ", "returned an encoder with its own identity")  # fmt: skip
    with_argument = embed(ws, tmp_path / "e", *identified, "--encoder-path", "v7", **{**colour, "device": None})
    assert_user_error(with_argument, "embed", 'id.version: not recorded, now "v7"')  # FUNCTION(--encoder-path)


def test_a_moved_encoder_model_is_given_with_encoder_path(ws, tmp_path, one_thread):
    model = shutil.copytree(ws["run"] / "model", tmp_path / "model")
    record = json.loads((model / ENCODERS_FILE).read_text())
    record["encoders"]["text"]["location"] = str(tmp_path / "gone")
    (model / ENCODERS_FILE).write_text(json.dumps(record))
    assert_user_error(embed(ws, tmp_path / "t", model=model), "embed", "--encoder-path", "not on this machine")
    moved = shutil.copytree(ws["bert"], tmp_path / "bert-moved")
    code, _, err = embed(ws, tmp_path / "t", "--encoder-path", moved, "--dtype", "float32", model=model)
    assert code == 0, err
    expected = AlignedModel.from_pretrained(ws["run"], device="cpu")["text"].encode(captions(ws))
    torch.testing.assert_close(LatentStore.open(tmp_path / "t").to_tensor(), expected)
    assert_user_error(embed(ws, tmp_path / "u", "--encoder-path", tmp_path / "nothing-here", model=model),
                      "embed", "--encoder-path: cannot load the text encoder from")  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "options", "fragments"),
    [
        ((), {"model": "runs/nowhere/at/all"}, ("--model: ", "no such directory")),
        ((), {"modality": "audio"}, ("--modality: 'audio' is not one of the modalities", "image, text")),
        (("--input-type", "image"), {}, ("--input-type: the text encoder of the model (hf-text) reads text, not",)),
        ((), {"source": "missing.csv"}, ("--input: missing.csv: no such file",)),
        (("--extensions", "png"), {}, ("--extensions: applies to a folder --input only",)),
        ((), {"column": "nope"}, ("--column", "no column 'nope'")),
    ],
    ids=["model", "modality", "input-type", "input", "extensions", "column"],
)
def test_bad_arguments_are_one_line_errors(ws, tmp_path, flags, options, fragments):
    assert_user_error(embed(ws, tmp_path / "out", *flags, **options), "embed", *fragments)


def test_embed_is_a_command_of_fusemix():
    code, out, _ = run("--help")
    assert code == 0 and "fusemix embed" in out
    code, _, err = run("embed", "--model", "run")
    assert code == 2 and "the following arguments are required: --modality, --input, --out" in err
