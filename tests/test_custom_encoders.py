"""examples/custom_encoders.py: the four kinds of encoder, end to end, and the data it generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")
pytest.importorskip("PIL")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "custom_encoders.py"

from _examples import import_example  # noqa: E402
from fusemix.store import LatentStore  # noqa: E402

ce = import_example("custom_encoders")

RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


# -- the data ------------------------------------------------------------------------------------


def test_make_pairs_splits_and_captions():
    pairs = ce.make_pairs(num_train=300, num_test=30, seed=3)
    assert len(pairs.images) == len(pairs.caption_of) == 330
    assert pairs.test.tolist() == list(range(30)) and pairs.train.tolist() == list(range(30, 330))
    assert pairs.caption_of[:30].tolist() == list(range(30))  # test combinations are all different
    assert len(set(pairs.captions)) == len(pairs.captions) < 330  # each distinct caption once; some are shared
    assert sorted(set(pairs.caption_of.tolist())) == list(range(len(pairs.captions)))
    for image, row in zip(pairs.images, pairs.caption_of):  # every picture shows the colour its caption names
        colour = next(name for name in ce.COLOURS if f" {name} " in pairs.captions[row])
        foreground = np.abs(image.astype(float) - 225.0).max(axis=2) > 60
        mean = image[foreground].mean(axis=0)
        assert colour == min(ce.COLOURS, key=lambda name: np.linalg.norm(mean - np.array(ce.COLOURS[name])))
    assert all(image.shape == (36, 36, 3) and image.dtype == np.uint8 for image in pairs.images)
    again = ce.make_pairs(num_train=300, num_test=30, seed=3)
    assert again.captions == pairs.captions and all(np.array_equal(a, b) for a, b in zip(again.images, pairs.images))
    assert ce.make_pairs(num_train=300, num_test=30, seed=4).captions != pairs.captions
    with pytest.raises(ValueError, match="num_test"):
        ce.make_pairs(num_train=50, num_test=541)
    with pytest.raises(ValueError, match="num_train"):
        ce.make_pairs(num_train=3, num_test=10)


@pytest.mark.parametrize("place", list(ce.PLACES))
@pytest.mark.parametrize("colour", ["red", "blue"])
def test_render_draws_the_caption(place, colour):
    """The shape lands in the captioned cell of the 3x3 grid, in the captioned colour."""
    image = ce.render(("large", colour, "square", place), np.random.default_rng(0)).astype(float)
    shape = np.abs(image - 225.0).max(axis=2) > 60  # far from the light background
    ys, xs = np.nonzero(shape)
    row, column = ce.PLACES[place]
    assert (int(ys.mean() // 12), int(xs.mean() // 12)) == (row, column)
    mean_colour = image[shape].mean(axis=0)
    assert np.abs(mean_colour - np.array(ce.COLOURS[colour])).max() < 30  # jitter: 8 levels of std per channel


def test_render_sizes_and_shapes_differ():
    rng = np.random.default_rng(0)
    area = {
        (size, shape): (np.abs(ce.render((size, "red", shape, "in the middle"), rng).astype(float) - 225).max(2) > 60)
        .sum()
        .item()
        for size in ce.SIZES
        for shape in ce.SHAPES
    }
    for shape in ce.SHAPES:
        assert area["large", shape] > 1.5 * area["small", shape]
    assert area["large", "ring"] < area["large", "circle"]


def test_block_means_matches_a_hand_computed_tile():
    pictures = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    pictures[1, 4:8, 0:4, 0] = 255  # second picture: the bottom-left tile is red
    features = ce.block_means(pictures, block=4)
    assert features.shape == (2, 2 * 2 * 3) and features.dtype == np.float32
    assert np.allclose(features[0], -1.0)
    tiles = features[1].reshape(2, 2, 3)
    assert np.allclose(tiles[1, 0], [1.0, -1.0, -1.0])  # red: R at +1, G and B at -1
    assert np.allclose(tiles[0], -1.0) and np.allclose(tiles[1, 1], -1.0)


def test_conv_features_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    first, second = ce.ConvFeatures(seed=0), ce.ConvFeatures(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    pictures = torch.from_numpy(np.stack(ce.make_pairs(4, 2).images))
    assert first(pictures).shape == (6, 288)


# -- the script ----------------------------------------------------------------------------------


def test_help_names_the_four_kinds_of_encoder(capsys):
    with pytest.raises(SystemExit) as info:
        ce.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for name in ("HFImageEncoder", "HFTextEncoder", "SentenceTransformerEncoder", "nn.Module", "numpy", "--work-dir"):
        assert name in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test-pairs", "541"], "--test-pairs: expected 1 to 540"),
        (["--train-pairs", "2"], "--train-pairs: expected at least 4"),
        (["--image-model", "no/such/dir"], "--image-model: no/such/dir is not a directory"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        ce.main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_script_aligns_every_kind_of_encoder_far_above_chance(tmp_path):
    out = tmp_path / "results.json"
    proc = _run("--work-dir", str(tmp_path / "work"), "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| run | image encoder | text encoder |"))
    rows = [line.split(" | ") for line in lines[header + 2 : header + 5]]
    assert [row[0] for row in rows] == ["| hugging-face", "| module", "| numpy"]
    assert "(a) HFImageEncoder" in rows[0][1] and "(a) HFTextEncoder" in rows[0][2]
    assert "(c) nn.Module" in rows[1][1] and "(b) SentenceTransformerEncoder" in rows[1][2]
    assert "(d) numpy function" in rows[2][1]

    result = json.loads(out.read_text())
    assert result["pairs"]["train"] == 1000 and result["pairs"]["test"] == 200 and result["chance_R@1"] == 0.5
    for record in result["runs"]:
        metrics = record["metrics"]
        assert all(0.0 <= metrics[key] <= 100.0 for key in RECALL_KEYS)
        # chance is 0.5 % at R@1 and 5 % at R@10 on 200 test pairs
        assert metrics["i2t_R@1"] > 5.0 and metrics["t2i_R@1"] > 5.0, record
        assert metrics["i2t_R@10"] > 50.0 and metrics["t2i_R@10"] > 50.0, record
    for record in result["runs"][1:]:  # fixed image features written for the pictures align better than a random ViT
        assert record["metrics"]["i2t_R@1"] > 25.0 and record["metrics"]["t2i_R@1"] > 25.0, record
    numpy_run = result["runs"][2]["metrics"]
    # the printed table holds the JSON's numbers
    assert rows[2][3] == f"{numpy_run['i2t_R@1']:.1f}"
    stores = [LatentStore.open(path) for path in result["stores"].values()]
    assert sorted(len(store) for store in stores) == [result["pairs"]["captions"]] * 2 + [1200] * 3


def test_without_minilm_tiny_models_stand_in_and_a_rerun_reuses_the_stores(tmp_path, monkeypatch):
    monkeypatch.setattr(ce, "minilm_directory", lambda: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = ce.Settings(work_dir=tmp_path, num_train=400, num_test=60, epochs=20)
        first = ce.run(settings)
        manifests = sorted(tmp_path.rglob("manifest.json"))
        stamps = [m.stat().st_mtime_ns for m in manifests]
        second = ce.run(settings)
    finally:
        torch.set_num_threads(threads)
    assert len(manifests) == 5 and [m.stat().st_mtime_ns for m in manifests] == stamps
    assert [r["metrics"] for r in first["runs"]] == [r["metrics"] for r in second["runs"]]  # seeded end to end
    assert {Path(p).name for p in first["stores"].values()} == {
        "hf-image-tiny-dinov2",
        "hf-text-tiny-bert-mean",
        "st-tiny-st",
        "module-conv",
        "numpy-block-means",
    }
    # Chance is 16.7 % at R@10 on 60 test pairs. Two random tiny transformers (the hugging-face run) align weakly on
    # this little data (the full run with MiniLM is checked above); the fixed image features align well.
    for record in first["runs"][1:]:
        assert record["metrics"]["i2t_R@10"] > 50.0 and record["metrics"]["t2i_R@10"] > 50.0, record
    stores = {Path(p).name: LatentStore.open(p) for p in first["stores"].values()}
    text = stores["hf-text-tiny-bert-mean"].encoder
    assert text["encoder"] == "HFTextEncoder" and text["model"] == "tiny-bert" and text["pooling"] == "mean"
    assert len(text["fingerprint"]) == 64
    assert stores["module-conv"].encoder == {
        "encoder": "CallableEncoder",
        "id": {"name": "ConvFeatures", "seed": 0},
        "dtype": None,
    }
    assert stores["numpy-block-means"].metadata["seed"] == 0


def test_building_the_encoders_quietly_leaves_the_libraries_switches_as_they_were(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setattr(ce, "minilm_directory", lambda: None)
    logging = transformers.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_warning()
    logging.enable_progress_bar()
    try:
        encoders = ce.build_encoders(ce.Settings(work_dir=tmp_path))  # progress=False: loads quietly
        after = logging.get_verbosity(), logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity(verbosity)
        (logging.enable_progress_bar if bars else logging.disable_progress_bar)()
    assert after == (transformers.logging.WARNING, True)  # other code in this process still gets its bars and warnings
    assert not encoders["hf-text"].encoder.progress and not encoders["hf-image"].encoder.progress
