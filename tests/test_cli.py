"""The ``fusemix`` command line end to end: extract (tiny BERT, tiny DINOv2, Python callables), train, evaluate."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusemix
from _cli_encoders import colour_statistics, letter_counts
from _cli_run import assert_user_error, run
from _tiny_models import build_bert, build_dinov2
from fusemix.checkpoint import load_model
from fusemix.cli import ITEMS_FILE, LATENTS_FILE, build_parser, main
from fusemix.cli.train import train_settings as _train_settings
from fusemix.data import PairedLatents
from fusemix.extract import SPEC
from fusemix.store import MANIFEST, LatentStore
from fusemix.train import TrainConfig, evaluate_retrieval

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")

HERE = Path(__file__).parent
COLOURS = {"red": (210, 40, 40), "blue": (40, 70, 210)}
SUBJECTS = ("dog", "puppy", "cat", "kitten")
PLACES = {"table": 60, "beach": 120, "spreadsheet": 180, "photo": 240}
NUM_IMAGES = 64  # 2 colours x 4 subjects x 4 places x 2 sizes; two captions each


def draw(index: int) -> tuple[Image.Image, str, str]:
    """Image ``index`` (a coloured shape on a grey background) and its two captions."""
    colour = list(COLOURS)[index % 2]
    subject = SUBJECTS[(index // 2) % 4]
    place = list(PLACES)[(index // 8) % 4]
    size = 8 if index < 32 else 14
    background = PLACES[place]
    transparent = index % 8 == 5  # a few RGBA images: fusemix composites them onto white
    image = Image.new("RGBA" if transparent else "RGB", (40, 40), (0, 0, 0, 0) if transparent else (background,) * 3)
    pen = ImageDraw.Draw(image)
    box = (20 - size, 20 - size, 20 + size, 20 + size)
    shape = (pen.ellipse, pen.rectangle, pen.chord, pen.pieslice)[SUBJECTS.index(subject)]
    if shape in (pen.chord, pen.pieslice):
        shape(box, 30, 300, fill=COLOURS[colour])
    else:
        shape(box, fill=COLOURS[colour])
    return image, f"a {colour} {subject} on the {place}", f"the {subject} is {colour} . a photo of a {place}"


def composited(path: Path) -> Image.Image:
    with Image.open(path) as image:
        if image.mode != "RGBA":
            return image.convert("RGB")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny BERT and DINOv2 folders, 64 images (+ files to skip), 128 captions, image-of-caption pairs."""
    root = tmp_path_factory.mktemp("cli")
    build_bert(root / "bert")
    build_dinov2(root / "dinov2")
    images = root / "data" / "images"
    images.mkdir(parents=True)
    captions = []
    for index in range(NUM_IMAGES):
        image, first, second = draw(index)
        image.save(images / f"{index:03d}.png")
        captions += [(f"images/{index:03d}.png", first), (f"images/{index:03d}.png", second)]
    (images / "notes.txt").write_text("not an image\n")
    Image.new("RGB", (8, 8)).save(images / ".hidden.png")
    with open(root / "data" / "captions.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption"])
        writer.writerows(captions)
    with open(root / "data" / "pairs.csv", "w", newline="", encoding="utf-8") as file:
        file.write("image\n" + "".join(f"{row // 2}\n" for row in range(2 * NUM_IMAGES)))
    return root


@pytest.fixture(scope="module")
def stores(workspace: Path) -> dict[str, Path]:
    """Text latents (tiny BERT, from a CSV column) and image latents (tiny DINOv2, from a folder)."""
    data, latents = workspace / "data", workspace / "latents"
    text = run(
        "extract", "--encoder", "hf-text", "--model", workspace / "bert", "--pooling", "mean", "--max-length", 16,
        "--input", data / "captions.csv", "--column", "caption", "--out", latents / "text", "--batch-size", 48,
        "--shard-size", 50, "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert text[0] == 0, text[2]
    image = run(
        "extract", "--encoder", "hf-image", "--model", workspace / "dinov2", "--input", data / "images",
        "--out", latents / "image", "--batch-size", 24, "--shard-size", 40, "--max-batch-size", 8,
        "--device", "cpu", "--read-threads", 2, "--no-progress",
    )  # fmt: skip
    assert image[0] == 0, image[2]
    assert "64 image latents of dim 32 (float16)" in image[1]
    return {"text": latents / "text", "image": latents / "image"}


def test_extract_writes_stores_whose_rows_follow_the_listed_items(workspace: Path, stores: dict[str, Path]) -> None:
    from fusemix.encoders import HFImageEncoder, HFTextEncoder

    text, image = LatentStore.open(stores["text"], verify="full"), LatentStore.open(stores["image"], verify="full")
    assert (text.shape, image.shape) == ((128, 32), (64, 32))
    assert text.encoder["encoder"] == "HFTextEncoder" and text.encoder["pooling"] == "mean"
    assert image.encoder["encoder"] == "HFImageEncoder" and len(image.shards) == 2
    assert image.metadata["input_type"] == "image" and image.metadata["items_file"] == ITEMS_FILE

    images = [json.loads(line) for line in (stores["image"] / ITEMS_FILE).read_text().splitlines()]
    assert images == [f"{index:03d}.png" for index in range(NUM_IMAGES)]  # sorted; notes.txt and .hidden.png skipped
    with open(workspace / "data" / "captions.csv", encoding="utf-8") as file:
        captions = [row["caption"] for row in csv.DictReader(file)]
    assert [json.loads(line) for line in (stores["text"] / ITEMS_FILE).read_text().splitlines()] == captions

    rows = [0, 5, 13, 63]  # 5 and 13 are RGBA images
    dino = HFImageEncoder(workspace / "dinov2", device="cpu")
    expected = dino([composited(workspace / "data" / "images" / images[r]) for r in rows]).numpy()
    np.testing.assert_allclose(image[rows].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    bert = HFTextEncoder(workspace / "bert", pooling="mean", max_length=16, device="cpu")
    expected = bert([captions[r] for r in (0, 77, 127)]).numpy()
    np.testing.assert_allclose(text[[0, 77, 127]].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_rerunning_extract_is_a_no_op(workspace: Path, stores: dict[str, Path]) -> None:
    files = sorted(p for p in stores["image"].rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    code, out, err = run(
        "extract", "--encoder", "hf-image", "--model", workspace / "dinov2", "--input", workspace / "data" / "images",
        "--out", stores["image"], "--batch-size", 24, "--shard-size", 40, "--max-batch-size", 8, "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "already complete" in out
    assert sorted(p for p in stores["image"].rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_python_callables_from_a_file_and_from_a_module(workspace: Path, tmp_path: Path) -> None:
    images = workspace / "data" / "images"
    code, _, err = run(
        "extract", "--encoder", "python", "--callable", f"{HERE / '_cli_encoders.py'}:build_image_encoder",
        "--input-type", "image", "--input", images, "--out", tmp_path / "colour", "--dtype", "float32",
        "--max-batch-size", 5, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    store = LatentStore.open(tmp_path / "colour")
    assert store.shape == (NUM_IMAGES, 6) and store.modality == "image"
    assert store.encoder == {
        "encoder": "CallableEncoder",
        "id": {"callable": "_cli_encoders:build_image_encoder", "model": None},  # the file, named as a module
        "dtype": None,
    }
    expected = colour_statistics([composited(images / f"{i:03d}.png") for i in range(NUM_IMAGES)])
    np.testing.assert_allclose(store[:], expected, rtol=1e-6, atol=1e-6)

    lines = workspace / "data" / "lines.txt"
    lines.write_text("a bad cab\nhedge\nfade\n")
    code, _, err = run(
        "extract", "--encoder", "python", "--callable", "_cli_encoders:build_text_encoder", "--model", "v2",
        "--input-type", "text", "--modality", "caption", "--input", lines, "--out", tmp_path / "letters",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    store = LatentStore.open(tmp_path / "letters")
    assert store.modality == "caption" and store.encoder["id"] == {"name": "letter-counts", "version": "v2"}
    np.testing.assert_array_equal(store[:], letter_counts(["a bad cab", "hedge", "fade"]).numpy())


def test_audio_folders_and_path_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    soundfile = pytest.importorskip("soundfile")
    clips = tmp_path / "clips"
    (clips / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, samples in (("a.wav", 8000), ("b/c.flac", 4000), ("b/d.wav", 16000)):
        soundfile.write(clips / name, rng.uniform(-0.5, 0.5, samples).astype(np.float32), 16000)
    command = ["extract", "--encoder", "python", "--callable", "_cli_encoders:build_audio_encoder"]
    command += ["--input-type", "audio", "--input", clips, "--no-progress"]
    code, _, err = run(*command, "--out", tmp_path / "audio")
    assert code == 0, err
    store = LatentStore.open(tmp_path / "audio")
    assert (tmp_path / "audio" / ITEMS_FILE).read_text().splitlines() == ['"a.wav"', '"b/c.flac"', '"b/d.wav"']
    np.testing.assert_allclose(store[:][:, 0], [0.5, 0.25, 1.0], rtol=1e-3)

    # Files at other rates are resampled to the encoder's, stereo is mixed down (fusemix.audio.load_audio).
    soundfile.write(clips / "e.wav", np.full(800, 0.5, dtype=np.float32), 8000)
    soundfile.write(clips / "f.wav", np.stack([np.full(800, 0.2), np.full(800, 0.4)], 1).astype(np.float32), 16000)
    code, _, err = run(*command, "--out", tmp_path / "mixed")
    assert code == 0, err
    durations = LatentStore.open(tmp_path / "mixed")[:][:, 0]
    np.testing.assert_allclose(durations[-2:], [0.1, 0.05], rtol=1e-3)  # 800 samples at 8 kHz = 0.1 s; 800 at 16 kHz
    np.testing.assert_allclose(LatentStore.open(tmp_path / "mixed")[:][-1, 1], 0.3, rtol=1e-2)  # (0.2 + 0.4) / 2
    (clips / "e.wav").unlink()
    (clips / "f.wav").unlink()
    (clips / "g.wav").write_bytes(b"not audio")
    assert_user_error(run(*command, "--out", tmp_path / "broken"), "extract", "g.wav", "cannot read the audio file")
    (clips / "g.wav").unlink()
    plain = ["extract", "--encoder", "python", "--callable", "_cli_encoders:build_plain_audio_encoder"]
    plain += [
        "--input-type",
        "audio",
        "--input",
        clips,
        "--dtype",
        "float32",
        "--no-progress",
        "--out",
        tmp_path / "plain",
    ]
    code, _, err = run(*plain)
    assert code == 0, err
    np.testing.assert_array_equal(LatentStore.open(tmp_path / "plain")[:][:, 0], [8000, 4000, 16000])
    assert_user_error(run(*plain, "--device", "cpu"), "extract", "--device", "list of waveforms")
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if it were not installed
    assert_user_error(run(*command, "--out", tmp_path / "none"), "extract", 'pip install "fusemix[audio]"')

    manifest = tmp_path / "files.jsonl"
    manifest.write_text('{"file": "clips/a.wav", "note": 1}\n\n{"file": "clips/b/d.wav"}\n')
    code, _, err = run(
        "extract", "--encoder", "python", "--callable", "_cli_encoders:build_path_encoder", "--input-type", "path",
        "--modality", "file", "--input", manifest, "--column", "file", "--out", tmp_path / "files",
        "--dtype", "float32", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    sizes = [(clips / name).stat().st_size for name in ("a.wav", "b/d.wav")]
    np.testing.assert_array_equal(LatentStore.open(tmp_path / "files")[:], [[sizes[0], 1.0], [sizes[1], 1.0]])


def test_a_run_that_failed_before_its_first_shard_does_not_block_the_corrected_command(tmp_path: Path) -> None:
    """Its items.jsonl and settings hold no latents: other items and another encoder just start, no --overwrite."""
    texts = tmp_path / "texts.txt"
    texts.write_text("abc\nbad\ncafe\n")
    out = ["--input-type", "text", "--out", tmp_path / "store", "--no-progress"]
    with pytest.raises(RuntimeError, match="bug inside"):
        run(
            "extract", "--encoder", "python", "--callable", "_cli_encoders:build_broken_encoder", "--input", texts, *out
        )
    assert (tmp_path / "store" / ITEMS_FILE).exists() and (tmp_path / "store" / SPEC).exists()
    texts.write_text("abc\nbead\n")
    code, _, err = run("extract", "--encoder", "python", "--callable", "_cli_encoders:build_text_encoder",
                       "--input", texts, *out)  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(LatentStore.open(tmp_path / "store")[:], letter_counts(["abc", "bead"]).numpy())
    assert (tmp_path / "store" / ITEMS_FILE).read_text() == '"abc"\n"bead"\n'


FLAKY = """
from pathlib import Path

import torch

from fusemix.encoders import CallableEncoder

BROKEN = Path(__file__).with_name("broken")


def encode(texts):
    if BROKEN.exists() and "cafe" in texts:
        raise RuntimeError("the encoder failed on the second shard")
    return torch.tensor([[float(len(t)), 1.0] for t in texts])


def build():
    return CallableEncoder(encode, identity={"name": "lengths"})
"""


def test_a_refused_rerun_does_not_record_its_items_over_a_lost_items_file(tmp_path: Path) -> None:
    """Shards written, items.jsonl gone: the shards' fingerprints refuse other items, and the file stays unwritten."""
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "broken").write_text("")
    texts, other = tmp_path / "texts.txt", tmp_path / "other.txt"
    texts.write_text("abc\nbad\ncafe\nfig\n")
    other.write_text("xyz\nbad\ncafe\nfig\n")
    command = ["extract", "--encoder", "python", "--callable", f"{tmp_path / 'flaky.py'}:build", "--input-type",
               "text", "--out", tmp_path / "store", "--shard-size", 2, "--batch-size", 2, "--no-progress"]  # fmt: skip
    with pytest.raises(RuntimeError, match="second shard"):
        run(*command, "--input", texts)
    (tmp_path / "store" / ITEMS_FILE).unlink()  # lost
    assert_user_error(run(*command, "--input", other), "extract", "--input")
    assert not (tmp_path / "store" / ITEMS_FILE).exists()
    (tmp_path / "broken").unlink()
    code, _, err = run(*command, "--input", texts)  # the right items resume the kept shard
    assert code == 0, err
    assert (tmp_path / "store" / ITEMS_FILE).read_text() == '"abc"\n"bad"\n"cafe"\n"fig"\n'
    np.testing.assert_array_equal(LatentStore.open(tmp_path / "store")[:][:, 0], [3, 3, 4, 3])


def test_changed_items_are_refused_and_replaced_with_overwrite(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("abc\nbad\ncafe\n")
    command = ["extract", "--encoder", "python", "--callable", "_cli_encoders:build_text_encoder"]
    command += ["--input-type", "text", "--input", texts, "--out", tmp_path / "store", "--no-progress"]
    assert run(*command)[0] == 0
    texts.write_text("abc\nbead\ncafe\n")  # same count: the library alone would reuse the old store
    assert_user_error(run(*command), "extract", "holds latents of other items", '"bad" there, "bead" now')
    code, _, err = run(*command, "--overwrite")
    assert code == 0, err
    np.testing.assert_array_equal(LatentStore.open(tmp_path / "store")[1], letter_counts(["bead"])[0].numpy())
    assert (tmp_path / "store" / ITEMS_FILE).read_text().splitlines()[1] == '"bead"'


def test_torchrun_workers_share_the_shards_and_the_last_one_finalizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{'abcdefgh'[i % 8] * (i % 5 + 1)} cafe\n" for i in range(70)))
    command = ["extract", "--encoder", "python", "--callable", "_cli_encoders:build_text_encoder"]
    command += ["--input-type", "text", "--input", texts, "--shard-size", 16, "--batch-size", 8, "--no-progress"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = run(*command, "--out", tmp_path / "shared")
    assert code == 0 and "worker 1 of 2 finished its shards" in err
    assert not (tmp_path / "shared" / MANIFEST).exists()
    assert_user_error(run(*command, "--out", tmp_path / "shared", "--overwrite"), "extract", "several workers")
    monkeypatch.setenv("RANK", "0")
    assert run(*command, "--out", tmp_path / "shared")[0] == 0
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert run(*command, "--out", tmp_path / "single")[0] == 0
    shared, single = LatentStore.open(tmp_path / "shared"), LatentStore.open(tmp_path / "single")
    assert len(shared.shards) == 5
    for a, b in zip(shared.shards, single.shards):
        np.testing.assert_array_equal(a, b)


def write_config(path: Path, train: str, data: str) -> Path:
    path.write_text(f"[data]\n{data}\n\n[train]\n{train}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(workspace: Path, stores: dict[str, Path]) -> tuple[Path, str]:
    """A run from a TOML config (paths relative to it) whose epochs and lr the flags override."""
    data = """\
latents = { image = "latents/image", text = "latents/text" }
pairs = "data/pairs.csv"
val_latents = { image = "latents/image", text = "latents/text" }
val_pairs = "data/pairs.csv"
val_pair = "image,text"
out = "run"
"""
    train = """\
epochs = 2
batch_size = 16
lr = 1e-3
shared_dim = 8
depth = 1
dropout = 0.0
warmup_steps = 2
eval_every = 1
checkpoint_every = 1
log_every = 4
device = "cpu"
"""
    config = write_config(workspace / "train.toml", train, data)
    code, out, err = run("train", "--config", config, "--epochs", 3, "--lr", 0.002, "--no-progress")
    assert code == 0, err
    return workspace / "run", out


def test_train_merges_config_and_flags_and_writes_its_outputs(trained: tuple[Path, str]) -> None:
    run_dir, out = trained
    for name in ("model/model.safetensors", "model/fusemix.json", f"model/{LATENTS_FILE}", "log.jsonl", "log.csv"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves.png").is_file() and (run_dir / "checkpoint").is_dir()
    config = json.loads((run_dir / "model" / "fusemix.json").read_text())["train_config"]
    assert (config["epochs"], config["lr"], config["batch_size"], config["shared_dim"]) == (3, 0.002, 16, 8)
    epochs = [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert len(epochs) == 3 and all("metrics" in r for r in epochs)
    record = json.loads((run_dir / "model" / LATENTS_FILE).read_text())
    assert record["modalities"]["image"]["encoder"]["encoder"] == "HFImageEncoder"
    assert record["modalities"]["text"]["rows"] == 128
    assert f"model:      {run_dir / 'model'}" in out
    table = out[out.index("| metric | value |") :].splitlines()
    assert table[1] == "|---|---|"
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:]] == list(epochs[-1]["metrics"])


def test_train_resumes_a_finished_run_without_training_again(workspace: Path, trained: tuple[Path, str]) -> None:
    run_dir, _ = trained
    log = (run_dir / "log.jsonl").read_text()
    code, _, err = run("train", "--config", workspace / "train.toml", "--epochs", 3, "--lr", 0.002, "--no-progress")
    assert code == 0 and "resuming from" in err
    assert (run_dir / "log.jsonl").read_text() == log
    result = run("train", "--config", workspace / "train.toml", "--epochs", 4, "--lr", 0.002, "--no-progress")
    assert_user_error(result, "train", "epochs")  # another config cannot continue this checkpoint
    assert_user_error(run("train", "--config", workspace / "train.toml", "--no-resume"), "train", "--no-resume")


def test_evaluate_prints_a_table_and_writes_the_metrics_of_the_library(
    workspace: Path, stores: dict[str, Path], trained: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    latents = ["--latents", f"image={stores['image']}", "--latents", f"text={stores['text']}"]
    pairs = workspace / "data" / "pairs.csv"
    target = tmp_path / "metrics" / "test.json"
    code, out, err = run(
        "evaluate", "--model", run_dir / "model", *latents, "--pairs", pairs, "--pair", "image,text", "--json", target
    )
    assert code == 0, err
    metrics = json.loads(target.read_text())
    model = load_model(run_dir / "model")
    data = PairedLatents(
        {"image": LatentStore.open(stores["image"]), "text": LatentStore.open(stores["text"])},
        rows={"image": np.arange(2 * NUM_IMAGES) // 2},
    )
    assert metrics == evaluate_retrieval(model, data, ("image", "text"))
    directions = [f"{d}_{k}" for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10", "mean")]
    assert sorted(metrics) == sorted([*directions, "mean"])
    assert out.splitlines() == ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in metrics.items()]

    code, out, err = run("evaluate", "--model", run_dir, *latents, "--pairs", pairs, "--ks", 1, 2)  # a run folder
    assert code == 0, err
    assert "| i2t_R@2 |" in out and "| t2i_R@2 |" in out and "R@5" not in out


def test_user_errors_exit_2_with_one_line_naming_the_problem(
    workspace: Path, stores: dict[str, Path], trained: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    text, image = f"text={stores['text']}", f"image={stores['image']}"
    out = ["--out", tmp_path / "run"]
    missing = tmp_path / "missing"
    assert_user_error(
        run("train", "--latents", f"image={missing}", "--latents", text, *out), "train", str(missing), "no such"
    )
    assert_user_error(run("train", "--latents", "image", "--latents", text, *out), "train", "MODALITY=PATH", "'image'")
    assert_user_error(run("train", "--latents", text, *out), "train", "at least two modalities")
    config = write_config(tmp_path / "typo.toml", "epoch = 3", "")
    assert_user_error(run("train", "--config", config, "--latents", image, "--latents", text, *out), "train", "'epoch'")
    config = write_config(tmp_path / "bad.toml", "", "sources = 1")
    assert_user_error(run("train", "--config", config), "train", "[data]", "'sources'")
    assert_user_error(
        run("train", "--latents", f"image={stores['text']}", "--latents", text, *out), "train", "modality"
    )
    short = tmp_path / "short.npz"
    np.savez(short, image=np.arange(10))
    assert_user_error(
        run("evaluate", "--model", run_dir / "model", "--latents", image, "--latents", text, "--pairs", short),
        "evaluate",
        "has 128 rows",
    )
    assert_user_error(
        run("train", "--latents", image, "--latents", text, "--pairs", tmp_path / "nope.csv", *out), "train", "nope.csv"
    )
    assert_user_error(run("train", "--latents", image, "--latents", text, *out, "--epochs", "many"), "train", "many")
    assert_user_error(
        run("evaluate", "--model", tmp_path, "--latents", image, "--latents", text), "evaluate", "fusemix.json"
    )
    assert_user_error(
        run("evaluate", "--model", run_dir, "--latents", image, "--latents", text, "--pair", "image,audio"),
        "evaluate",
        "'audio'",
    )
    extract = ["extract", "--encoder", "hf-image", "--model", workspace / "dinov2", "--out", tmp_path / "x"]
    assert_user_error(run(*extract, "--input", workspace / "data", "--prefix", "x"), "extract", "--prefix")
    assert_user_error(run(*extract, "--input", workspace / "data" / "captions.csv"), "extract", "--column")
    assert_user_error(run(*extract, "--input", missing), "extract", "no such file")
    python = ["extract", "--encoder", "python", "--input", workspace / "data" / "captions.csv", "--column", "caption"]
    python += ["--out", tmp_path / "y"]
    assert_user_error(run(*python), "extract", "--input-type")
    assert_user_error(
        run(*python, "--input-type", "text", "--callable", "no_such_module:f"), "extract", "no_such_module"
    )
    assert run()[0] == 2


def test_unexpected_errors_keep_their_traceback(workspace: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="bug inside the user's encoder"):
        main(["extract", "--encoder", "python", "--callable", "_cli_encoders:build_broken_encoder",
              "--input-type", "text", "--input", str(workspace / "data" / "lines.txt"), "--out", str(tmp_path),
              "--no-progress"])  # fmt: skip


def test_config_files_coerce_values_and_flags_win(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    config = tmp_path / "settings" / "train.yaml"
    config.parent.mkdir()
    config.write_text(
        "train:\n  lr: 1e-3\n  grad_clip: null\n  betas: [0.8, 0.9]\n  preload: false\n  alpha_schedule: none\n"
        "data:\n  latents: {image: img.npy, text: /abs/text}\n  out: runs/a\n"
    )  # PyYAML reads 1e-3 as a string (YAML 1.1): it must still become 0.001
    flags = ["--betas", "0.5", "0.6", "--preload", "auto", "--eval-chunk-size", "none"]
    args = build_parser().parse_args(["train", "--config", str(config), *flags])
    settings = _train_settings(args)
    expected = dataclasses.replace(TrainConfig(), lr=1e-3, betas=(0.5, 0.6), preload="auto")
    assert settings.config == expected
    assert settings.latents == {"image": config.parent / "img.npy", "text": Path("/abs/text")}
    assert settings.out == config.parent / "runs" / "a"
    config.write_text("train:\n  epochs: 2.5\n")
    with pytest.raises(Exception, match=r"\[train\] epochs: expected an integer, got 2.5"):
        _train_settings(build_parser().parse_args(["train", "--config", str(config)]))


def test_help_lists_every_config_field_and_an_example() -> None:
    for command in ("extract", "train", "evaluate"):
        code, out, _ = run(command, "--help")
        assert code == 0 and "example" in out and f"fusemix {command} --" in out.replace("\\\n", "")
    _, out, _ = run("train", "--help")
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')} " in out or f"--{field.name.replace('_', '-')}," in out, field.name
    assert run("--version")[1].strip() == f"fusemix {fusemix.__version__}"


def test_the_installed_script_and_python_m_fusemix(workspace: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = shutil.which("fusemix", path=str(Path(sys.executable).parent))
    if script is not None:
        result = subprocess.run([script, "evaluate", "--help"], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0 and "fusemix evaluate --model" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "fusemix", "train", "--latents", "image", "--out", str(workspace / "never")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "fusemix train: error: argument --latents: expected MODALITY=PATH (e.g. image=latents/image), got 'image' "
        "(see 'fusemix train --help')"
    ]


def test_extract_no_progress_also_silences_the_model_loading_bar(workspace: Path, tmp_path: Path) -> None:
    bars = pytest.importorskip("transformers").utils.logging
    were_on = bars.is_progress_bar_enabled()
    bars.enable_progress_bar()  # another test of the process may have turned them off
    command = ("extract", "--encoder", "hf-text", "--model", workspace / "bert", "--device", "cpu",
               "--input", workspace / "data" / "captions.csv", "--column", "caption")  # fmt: skip
    try:
        shown = run(*command, "--out", tmp_path / "shown")
        quiet = run(*command, "--out", tmp_path / "quiet", "--no-progress")
    finally:
        (bars.enable_progress_bar if were_on else bars.disable_progress_bar)()
    assert shown[0] == quiet[0] == 0, (shown[2], quiet[2])
    assert "Loading weights" in shown[2]  # transformers' bar, drawn while the model loads
    assert "Loading weights" not in quiet[2] and "it/s" not in quiet[2]
