"""``fusemix train`` on small stores: resuming only on the same latents, one run per --out, the summary it prints."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusemix.cli import LATENTS_FILE, main
from fusemix.store import write_store

TESTS = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_train_resume", TESTS / "_train_resume.py")
resume_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_run)

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--shared-dim", 8, "--depth", 1, "--warmup-steps", 2, "--device", "cpu", "--no-progress"]


def run(*args: object) -> tuple[int, str, str]:
    """``fusemix ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def error_line(result: tuple[int, str, str]) -> str:
    code, _, err = result
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def stores(folder: Path, image: np.ndarray, text: np.ndarray) -> list[str]:
    """(Re)write an image and a text store in ``folder``, as a re-extraction would; their ``--latents`` flags."""
    flags = []
    for modality, rows in (("image", image), ("text", text)):
        shutil.rmtree(folder / modality, ignore_errors=True)
        write_store(folder / modality, rows, modality=modality, encoder={"name": f"toy-{modality}"})
        flags += ["--latents", f"{modality}={folder / modality}"]
    return flags


def latents() -> tuple[np.ndarray, np.ndarray]:
    train, _ = resume_run.make_data()
    return train.latents["image"], train.latents["text"]


def test_resume_refuses_a_store_re_extracted_with_other_rows(tmp_path: Path) -> None:
    image, text = latents()
    out = ["--out", tmp_path / "run", "--epochs", 1, "--batch-size", 32, *FLAGS]
    code, _, err = run("train", *stores(tmp_path, image, text), *out)
    assert code == 0, err
    code, _, err = run("train", *stores(tmp_path, image, text), *out)  # the same rows again: resumes
    assert code == 0 and "resuming from" in err, err
    line = error_line(run("train", *stores(tmp_path, image[::-1], text), *out))  # same shape and encoder
    assert line.startswith("fusemix train: error: --latents image: other latents than the run in "), line
    assert re.search(r"\(latent store \w{12} now, latent store \w{12} there", line), line


def test_a_second_run_on_a_busy_out_is_refused_before_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    command = [sys.executable, str(TESTS / "_train_resume.py"), str(out), "3", "pause"]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "paused", holder.stderr.read()
        line = error_line(run("train", *stores(tmp_path, *latents()), "--out", out, *FLAGS))
        assert f"--out: {out} is in use by another training run (pid {holder.pid} " in line, line
        assert not (out / LATENTS_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_warning_reaches_the_terminal_as_one_line_naming_the_command(tmp_path: Path) -> None:
    """Catches Python's default format (source path, line number and the code line) leaking into the CLI's stderr."""
    image, text = latents()
    flags = stores(tmp_path, image[:40], text[:40])
    command = [sys.executable, "-m", "fusemix", "train", *flags, "--out", tmp_path / "run", "--epochs", 1]
    command += ["--batch-size", 100, *FLAGS]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "fusemix train: warning: --batch-size: 100 exceeds the 40 training pairs; training full batches of 40 pairs "
        "instead"
    ], done.stderr


def test_the_summary_says_what_was_trained_after_a_batch_cut_and_an_early_stop(tmp_path: Path) -> None:
    image, text = latents()
    flags = stores(tmp_path, image[:100], text[:100])
    val = [f.replace("--latents", "--val-latents") for f in flags]
    settings = ["--epochs", 40, "--batch-size", 256, "--selection", "best", "--patience", 1, "--eval-every", 1]
    with pytest.warns(UserWarning, match="batch_size: 256 exceeds the 100 training pairs"):
        code, out, err = run("train", *flags, *val, "--out", tmp_path / "run", *settings, *FLAGS)
    assert code == 0, err
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in history if r["kind"] == "epoch"]
    chosen = history[-1]
    assert chosen["kind"] == "selection" and chosen["stopped_early"] and len(epochs) < 40
    assert (
        f"trained 100 pairs of image, text for {len(epochs)} of 40 epochs ({epochs[-1]['step']} steps, batches of "
        "100 pairs (--batch-size 256 cut to the 100 training pairs)), stopped early by --patience 1"
    ) in out, out
    assert f"selected:   epoch {chosen['epoch'] + 1} (step {chosen['step']}), the best mean " in out, out
