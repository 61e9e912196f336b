"""``fusemix evaluate --identical-keys``: identical captions scored on stores written by ``fusemix extract``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusemix import FusionModel, IdentityAdapter
from fusemix.checkpoint import save_model
from fusemix.cli import ITEMS_FILE, main
from fusemix.store import write_store

pytest.importorskip("safetensors")

ENCODER = """
import torch

LATENTS = {"a dog": [1.0, 0, 0, 0], "a red stamp": [0.0, 0.6, 0.8, 0.0], "a cat": [0, 0, 0, 1.0],
           "a dog and a cat": [0.7, 0, 0, 0.7]}


def build():
    return lambda texts: torch.tensor([LATENTS[text] for text in texts])
"""
"""Captions to latents: "a red stamp" lies between images 1 and 2 (one-hot), nearer to image 2."""


def run(*args: object) -> tuple[int, dict[str, float], str]:
    """``fusemix ARGS`` in this process: (exit status, the Recall@1 of the printed table, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    rows = [line.strip("| ").split(" | ") for line in out.getvalue().splitlines()[2:]]
    return code, {name: float(value) for name, value in rows if name.endswith("R@1")}, err.getvalue()


def extract_captions(work: Path, name: str, captions: list[str]) -> Path:
    (work / f"{name}.txt").write_text("".join(f"{c}\n" for c in captions))
    encoder = ["--encoder", "python", "--callable", f"{work / 'encoder.py'}:build", "--input-type", "text"]
    code, _, err = run("extract", *encoder, "--input", work / f"{name}.txt", "--out", work / name, "--no-progress")
    assert code == 0, err
    return work / name


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Four one-hot images, a model that keeps both spaces as they are, and the caption encoder."""
    write_store(tmp_path / "image", torch.eye(4), modality="image", encoder={"name": "one-hot"})
    save_model(FusionModel({"image": IdentityAdapter(4), "text": IdentityAdapter(4)}), tmp_path / "model")
    (tmp_path / "encoder.py").write_text(ENCODER)
    return tmp_path


def evaluate(work: Path, text: Path, *extra: object) -> tuple[int, dict[str, float], str]:
    return run("evaluate", "--model", work / "model", "--latents", f"image={work / 'image'}",
               "--latents", f"text={text}", "--ks", 1, "--device", "cpu", *extra)  # fmt: skip


def test_identical_captions_of_two_images_count_for_both_with_text(work: Path) -> None:
    text = extract_captions(work, "text", ["a dog", "a red stamp", "a red stamp", "a cat"])  # caption i: image i
    assert (text / ITEMS_FILE).read_text().splitlines()[1:3] == ['"a red stamp"', '"a red stamp"']
    # Each row its own caption: images 1 and 2 tie their caption with the other copy (2 of 4 found first); caption 1
    # finds image 2 first (3 of 4). 'row' changes nothing: no row is shared.
    for choice in ("refuse", "row"):
        code, recall, err = evaluate(work, text, "--identical-keys", choice)
        assert code == 0, err
        assert recall == {"i2t_R@1": 50.0, "t2i_R@1": 75.0}
        # the default says why: a user who never heard of --identical-keys learns it from the run
        assert ("note: 1 of the 4 text items are copies of another" in err) == (choice == "refuse"), err
        assert ("--identical-keys text counts equal items as hits" in err) == (choice == "refuse"), err
    code, recall, err = evaluate(work, text, "--identical-keys", "text")
    assert code == 0, err
    assert recall == {"i2t_R@1": 100.0, "t2i_R@1": 100.0}  # both copies are hits for images 1 and 2, both ways
    assert "identical text items grouped by text" in err and "note:" not in err
    distinct = extract_captions(work, "distinct", ["a dog", "a red stamp", "a cat", "a dog and a cat"])
    assert "note:" not in evaluate(work, distinct)[2]


def test_a_k_that_reaches_the_number_of_items_is_noted(work: Path) -> None:
    text = extract_captions(work, "text", ["a dog", "a red stamp", "a cat", "a dog and a cat"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["evaluate", "--model", str(work / "model"), "--latents", f"image={work / 'image'}",
                     "--latents", f"text={text}", "--ks", "1", "4", "100", "--device", "cpu"])  # fmt: skip
    assert code == 0, err.getvalue()
    assert "| i2t_R@100 | 100.00 |" in out.getvalue() and "| i2t_R@4 | 100.00 |" in out.getvalue()
    assert "note: --ks 4 100: K reaches the number of items ranked (4 text for each image" in err.getvalue()
    _, _, quiet = evaluate(work, text)  # --ks 1 of 4 items: nothing to say
    assert "note:" not in quiet


def test_a_caption_stored_once_for_two_images_is_refused_unless_grouped(work: Path, tmp_path: Path) -> None:
    text = extract_captions(work, "distinct", ["a dog", "a red stamp", "a cat"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,text\n0,0\n1,1\n2,1\n3,2\n")
    code, _, err = evaluate(work, text, "--pairs", pairs)
    assert code == 2 and "row 1 of 'text' is paired with several rows of 'image' ([1, 2])" in err
    for choice in ("row", "text"):
        code, recall, err = evaluate(work, text, "--pairs", pairs, "--identical-keys", choice)
        assert code == 0, err
        assert recall == {"i2t_R@1": 100.0, "t2i_R@1": 100.0}


def test_text_needs_the_items_file_of_a_store(work: Path, tmp_path: Path) -> None:
    npy = tmp_path / "text.npy"
    np.save(npy, np.eye(4, dtype=np.float32))
    code, _, err = evaluate(work, npy, "--identical-keys", "text")
    assert code == 2 and err.startswith("fusemix evaluate: error: --identical-keys: ") and ".npy file" in err
    bare = tmp_path / "bare"  # a store written from Python: no items file
    write_store(bare, torch.eye(4), modality="text", encoder={"name": "one-hot"})
    code, _, err = evaluate(work, bare, "--identical-keys", "text")
    assert code == 2 and f"{bare / ITEMS_FILE}, which does not exist" in err
    (bare / ITEMS_FILE).write_text(json.dumps("a dog") + "\n")
    code, _, err = evaluate(work, bare, "--identical-keys", "text")
    assert code == 2 and "lists 1 items, but the text store" in err and "holds 4 rows" in err
