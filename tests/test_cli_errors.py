"""User errors the command line reports as one line (exit status 2, no traceback), found by trying it adversarially."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fusemix import FusionModel
from fusemix.checkpoint import MODEL_CONFIG, MODEL_WEIGHTS, save_model
from fusemix.cli import LATENTS_FILE, main
from fusemix.cli.common import UserCodeError
from fusemix.store import MANIFEST, LatentStore, write_store

pytest.importorskip("safetensors")

ENCODERS = """
import torch
from fusemix.encoders import CallableEncoder


def as_list(items):
    return [[float(len(item)), 1.0] for item in items]


def integers(items):
    return torch.ones(len(items), 2, dtype=torch.int64)


def build_list():
    return as_list


def build_integers():
    return integers


def build_identified_list():
    return CallableEncoder(as_list, identity={"name": "as-list"})


class ListWithIdentity:
    identity = {"name": "plain-list"}

    def __call__(self, items):
        return as_list(items)


def build_plain_identified_list():
    return ListWithIdentity()


def build_ones():
    return lambda items: torch.ones(len(items), 2)


def build_tiny():
    return lambda items: torch.full((len(items), 2), 1e-9)


def build_huge():
    return lambda items: torch.full((len(items), 2), 1e5)


def build_from(weights, device):
    return lambda items: torch.ones(len(items), 2)


def build_key_error_inside():
    colours = {"red": 1.0}
    return lambda items: torch.tensor([[colours["blue"], 0.0] for _ in items])


def build_value_error_inside():
    return lambda items: torch.tensor([[float(item), 0.0] for item in items])


def build_from_number(weights):
    scale = int(weights)
    return lambda items: torch.full((len(items), 2), float(scale))


def build_type_error_inside():
    def broken(items):
        return torch.ones(len(items), 2) + "a"  # a bug inside the user's encoder keeps its traceback

    return broken
"""


def run(*args: object) -> tuple[int, str]:
    """``fusemix ARGS`` in this process: (exit status, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, err.getvalue()


def assert_one_line(result: tuple[int, str], command: str, *fragments: str) -> None:
    code, err = result
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"fusemix {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Two 4-row stores, a model directory that takes them, and a file of encoder factories."""
    for modality, dim in (("image", 3), ("text", 2)):
        write_store(tmp_path / modality, torch.randn(4, dim), modality=modality, encoder={"name": modality})
    save_model(FusionModel.from_dims({"image": 3, "text": 2}, shared_dim=2, depth=1), tmp_path / "model")
    (tmp_path / "encoders.py").write_text(ENCODERS)
    (tmp_path / "items.txt").write_text("a cat\na dog\nbird\nfish\n")
    return tmp_path


def evaluate(work: Path, *extra: object) -> tuple[int, str]:
    return run("evaluate", "--model", work / "model", "--latents", f"image={work / 'image'}",
               "--latents", f"text={work / 'text'}", "--device", "cpu", *extra)  # fmt: skip


def test_a_30_digit_row_index_names_the_file_line_and_column(work):
    pairs = work / "pairs.csv"
    pairs.write_text("image,text\n0,0\n1,1\n123456789012345678901234567890,2\n")
    assert_one_line(evaluate(work, "--pairs", pairs), "evaluate", f"--pairs: {pairs}:4: column 'image'",
                    "row index 123456789012345678901234567890 is beyond any store")  # fmt: skip


def test_a_corrupt_npz_pairs_file_is_one_line(work):
    good = work / "good.npz"
    np.savez(good, image=np.arange(4), text=np.arange(4))
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[60:70] = bytes(10)  # inside the first array: its CRC no longer matches
    cases = {
        "garbage.npz": b"not an archive at all",
        "truncated.npz": data[: len(data) // 2],
        "crc.npz": bytes(flipped),
    }
    for name, content in cases.items():
        (work / name).write_bytes(content)
        assert_one_line(evaluate(work, "--pairs", work / name), "evaluate", f"--pairs: {work / name}: not a readable")
    huge = work / "huge.npz"
    np.savez(huge, image=np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64), text=np.arange(4))
    assert zipfile.is_zipfile(huge)
    assert_one_line(evaluate(work, "--pairs", huge), "evaluate", "array 'image' holds row index 18446744073709551615")


def test_json_pointing_at_a_folder_names_the_flag(work):
    assert_one_line(evaluate(work, "--json", work), "evaluate", f"--json: {work} is a folder")
    (work / "file").write_text("")
    assert_one_line(
        evaluate(work, "--json", work / "file" / "m.json"), "evaluate", f"--json: {work / 'file'} is not a folder"
    )


def test_out_pointing_at_a_file_names_the_flag(work):
    (work / "afile").write_text("")
    result = run("train", "--latents", f"image={work / 'image'}", "--latents", f"text={work / 'text'}",
                 "--out", work / "afile", "--epochs", 1, "--batch-size", 4, "--no-progress")  # fmt: skip
    assert_one_line(result, "train", f"--out: {work / 'afile'} exists and is not a folder")
    result = run("extract", "--encoder", "python", "--callable", f"{work / 'encoders.py'}:build_list",
                 "--input-type", "text", "--input", work / "items.txt", "--out", work / "afile" / "store")  # fmt: skip
    assert_one_line(result, "extract", f"--out: {work / 'afile'} is not a folder")


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        ("build_list", "expected a torch.Tensor or numpy array, got list"),
        ("build_integers", "expected floating values, got dtype torch.int64"),
        ("build_identified_list", "expected a torch.Tensor or numpy array, got list"),
        ("build_plain_identified_list", "expected a torch.Tensor or numpy array of shape (batch, dim), got <class"),
    ],
)
def test_an_encoder_returning_the_wrong_type_is_one_line(work, factory, fragment):
    spec = f"{work / 'encoders.py'}:{factory}"
    result = run("extract", "--encoder", "python", "--callable", spec, "--input-type", "text",
                 "--input", work / "items.txt", "--out", work / factory, "--no-progress")  # fmt: skip
    assert_one_line(result, "extract", f"--callable {spec}: ", fragment)


@pytest.mark.parametrize(
    ("function", "extra", "call"),
    [
        ("as_list", (), "FUNCTION() (missing a required argument: 'items')"),
        ("build_from", ("--model", "weights.pt"), "FUNCTION(--model value) (missing a required argument: 'device')"),
    ],
)
def test_a_callable_that_cannot_build_the_encoder_is_one_line(work, function, extra, call):
    # Passing the encoder itself (encode(items)) where the function that builds it is expected.
    spec = f"{work / 'encoders.py'}:{function}"
    result = run("extract", "--encoder", "python", "--callable", spec, *extra, "--input-type", "text",
                 "--input", work / "items.txt", "--out", work / function, "--no-progress")  # fmt: skip
    assert_one_line(result, "extract", f"--callable: {spec} cannot be called as {call}", "not be the encoder itself")
    builder = f"{work / 'encoders.py'}:build_ones"
    fixed = run("extract", "--encoder", "python", "--callable", builder, "--input-type", "text",
                "--input", work / "items.txt", "--out", work / function, "--no-progress")  # fmt: skip
    assert fixed[0] == 0, fixed[1]  # the refused run left nothing in the way of the corrected command


def test_extract_errors_name_the_flags_not_the_library_arguments(work):
    spec = f"{work / 'encoders.py'}:build_ones"

    def extract(*extra: object) -> tuple[int, str]:
        return run("extract", "--encoder", "python", "--callable", spec, "--input-type", "text",
                   "--input", work / "items.txt", "--out", work / "store", "--no-progress", *extra)  # fmt: skip

    assert extract()[0] == 0
    assert_one_line(extract("--dtype", "float32"), "extract", f"--out: {work / 'store'} already holds a complete store",
                    'dtype "float16" there, "float32" now', "pass --overwrite to replace it")  # fmt: skip
    assert_one_line(extract("--shard-size", "1"), "extract", "shard rows [4] there, --shard-size 1 now")
    for result in (extract("--dtype", "float32"), extract("--shard-size", "1")):
        assert "out_dir" not in result[1] and "overwrite=True" not in result[1] and "shard_size" not in result[1]
    assert extract("--dtype", "float32", "--overwrite")[0] == 0


@pytest.mark.parametrize(
    ("factory", "value", "fragment"),
    [
        (
            "build_tiny",
            1e-9,
            "lie entirely below the float16 normal range |x| >= 6.10352e-05 (first: item 0, max |x| = 1e-09)",
        ),
        ("build_huge", 1e5, "hold values outside the float16 range |x| <= 65504 (first: item 0, max |x| = 100000)"),
    ],
)
def test_latents_float16_cannot_hold_are_one_line_naming_dtype_and_overwrite(work, factory, value, fragment):
    spec = f"{work / 'encoders.py'}:{factory}"

    def extract(*extra: object) -> tuple[int, str]:
        return run("extract", "--encoder", "python", "--callable", spec, "--input-type", "text",
                   "--input", work / "items.txt", "--out", work / factory, "--no-progress", *extra)  # fmt: skip

    refused = extract()
    assert_one_line(refused, "extract", f"error: encoder output for items [0, 4): 4 row(s) {fragment}",
                    "; store as --dtype float32 or rescale the latents")  # fmt: skip
    assert "dtype='float32'" not in refused[1]
    assert not (work / factory / MANIFEST).exists()
    assert extract("--dtype", "float32") == (0, "")  # the refused run wrote no shard, so nothing is in the way
    stored = LatentStore.open(work / factory)
    assert stored.dtype == np.float32 and np.array_equal(stored[:], np.full((4, 2), value, dtype=np.float32))


@pytest.mark.parametrize(
    ("factory", "extra", "cause", "message"),
    [
        ("build_type_error_inside", (), TypeError, "unsupported operand"),
        ("build_key_error_inside", (), KeyError, "'blue'"),
        ("build_value_error_inside", (), ValueError, "could not convert"),
        ("build_from_number", ("--model", "weights"), ValueError, "invalid literal for int()"),  # in FUNCTION itself
    ],
)
def test_an_error_inside_the_users_code_keeps_its_traceback(work, factory, extra, cause, message):
    """Catches a bug in the user's encoder reported as a one-line user error, which hides where it happened."""
    spec = f"{work / 'encoders.py'}:{factory}"
    with pytest.raises(UserCodeError, match=rf"^--callable {spec} raised {cause.__name__}: ") as info:
        run("extract", "--encoder", "python", "--callable", spec, *extra, "--input-type", "text",
            "--input", work / "items.txt", "--out", work / factory, "--no-progress")  # fmt: skip
    assert isinstance(info.value.__cause__, cause) and message in str(info.value.__cause__)
    assert info.value.__cause__.__traceback__ is not None  # Python prints it above the last line


def test_a_crafted_or_corrupt_model_directory_is_one_line(work):
    # Issue 13 item 5 as the command line meets it.
    config = work / "model" / MODEL_CONFIG
    description = json.loads(config.read_text())
    for adapters, fragment in (([1, 2], "adapters: expected an object"), ({"image": {"type": "fusion"}}, "missing")):
        config.write_text(json.dumps({**description, "adapters": adapters}))
        assert_one_line(evaluate(work), "evaluate", f"{config}: ", fragment)
    config.write_text(json.dumps(description))
    weights = work / "model" / MODEL_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-7])
    assert_one_line(evaluate(work), "evaluate", f"{weights}: not a readable safetensors file")


def test_a_deeply_nested_latents_record_is_one_line(work):
    (work / "model" / LATENTS_FILE).write_text("[" * 100_000)
    assert_one_line(evaluate(work), "evaluate", f"{work / 'model' / LATENTS_FILE}: unreadable (nested too deeply)")


def test_a_text_file_may_end_in_blank_lines_but_not_hold_one_between_items(work):
    """Blank lines after the last item (an editor's extra newline) shift no row; one between items would."""
    spec = f"{work / 'encoders.py'}:build_ones"

    def extract(text: str, name: str) -> tuple[int, str]:
        (work / f"{name}.txt").write_text(text)
        return run("extract", "--encoder", "python", "--callable", spec, "--input-type", "text",
                   "--input", work / f"{name}.txt", "--out", work / name, "--no-progress")  # fmt: skip

    assert extract("a cat\r\na dog\n\n \r\n\n", "trailing")[0] == 0
    assert (work / "trailing" / "items.jsonl").read_text() == '"a cat"\n"a dog"\n'
    assert_one_line(extract("a cat\n\na dog\n\n", "inside"), "extract", "line 2 is empty (1 empty line(s) before")


# -- library refusals in the command's terms: the flags, never the Python spellings of fit() and PairedLatents ------

TRAIN = ["--epochs", 1, "--batch-size", 4, "--depth", 1, "--shared-dim", 2, "--device", "cpu", "--no-progress"]


def train(work: Path, out: Path, *extra: object) -> tuple[int, str]:
    return run("train", "--latents", f"image={work / 'image'}", "--latents", f"text={work / 'text'}",
               "--out", out, *extra)  # fmt: skip


def assert_no_python_spelling(err: str, *spellings: str) -> None:
    for spelling in ("out_dir", "val=", "rows[", "latents[", "from_dict", *spellings):
        assert spelling not in err, err


def test_latents_that_cannot_pair_by_row_name_pairs(work):
    write_store(work / "few", torch.randn(3, 2), modality="text", encoder={"name": "text"})
    latents = ["--latents", f"image={work / 'image'}", "--latents", f"text={work / 'few'}"]
    for command, result in (
        ("train", run("train", *latents, "--out", work / "run", *TRAIN)),
        ("evaluate", run("evaluate", "--model", work / "model", *latents, "--device", "cpu")),
    ):
        assert_one_line(result, command, "--latents text: has 3 rows", "--latents image has 4 rows",
                        "give --pairs column 'text' to pair its rows explicitly")  # fmt: skip
        assert_no_python_spelling(result[1])
    assert not (work / "run").exists()
    pairs = work / "pairs.csv"
    pairs.write_text("image,text\n0,0\n1,7\n")
    result = run("train", *latents, "--pairs", pairs, "--out", work / "run", *TRAIN)
    assert_one_line(result, "train", "--pairs column 'text': indices must lie in [0, 3) (--latents text has 3 rows)")
    assert_no_python_spelling(result[1])


def test_selection_best_without_validation_data_is_refused_before_anything_is_written(work):
    out = work / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no batch-size warning first: the refusal comes before fit
        result = train(work, out, "--selection", "best", "--no-progress")
    assert_one_line(result, "train", "--val-latents: --selection best keeps the weights",
                    "pass --val-latents or use --selection last")  # fmt: skip
    assert_no_python_spelling(result[1], "selection=", "selection='")
    assert not out.exists()


def test_validation_pairs_sharing_a_key_are_refused_before_anything_is_written(work):
    pairs = work / "shared.csv"
    pairs.write_text("image,text\n0,0\n1,0\n2,2\n")
    val = ["--val-latents", f"image={work / 'image'}", "--val-latents", f"text={work / 'text'}", "--val-pairs", pairs]
    result = train(work, work / "run", *val, *TRAIN)
    assert_one_line(result, "train", "--val-pairs: row 0 of 'text' is paired with several rows of 'image' ([0, 1])",
                    "score --val-pair text,image instead")  # fmt: skip
    assert_no_python_spelling(result[1], "key_groups", "retrieval_metrics")
    assert not (work / "run").exists()
    result = evaluate(work, "--pairs", pairs)
    assert_one_line(result, "evaluate", "--pairs: row 0 of 'text' is paired with several rows of 'image'",
                    "give --identical-keys row or text, or score --pair text,image")  # fmt: skip
    assert_no_python_spelling(result[1], "key_groups", "retrieval_metrics")
    assert evaluate(work, "--pairs", pairs, "--identical-keys", "row")[0] == 0


def test_a_rerun_with_other_settings_names_them_as_flags(work):
    out = work / "run"
    code, err = train(work, out, *TRAIN)
    assert code == 0, err
    code, err = train(work, out, *TRAIN, "--epochs", 2, "--lr", "2e-3", "--per-sample-lambda")
    *notes, line = err.strip().splitlines()
    assert code == 2 and notes == [f"fusemix train: resuming from {out / 'checkpoint'}"], err
    assert line == (
        f"fusemix train: error: --epochs: 1 in {out}, 2 now; --lr: 0.001 in {out}, 0.002 now; --per-sample-lambda: "
        f"false in {out}, true now; rerun with the settings of the run in {out} to resume it, or choose another --out"
    ), line
    assert_no_python_spelling(err, "epochs=", "lr=", "TrainConfig", "state.json")
    assert train(work, out, *TRAIN)[0] == 0  # the run's own settings still resume it


def test_a_diverging_run_names_the_flags_that_tame_it(work):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an lr this large may also overflow inside the optimizer
        code, err = train(work, work / "run", *TRAIN, "--epochs", 20, "--lr", "1e12", "--warmup-steps", 0)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fusemix train: error: loss: became "), err
    assert "(--lr 1e+12), set --grad-clip or use --amp off" in err, err
    assert_no_python_spelling(err, "grad_clip", "amp=", "lr=")


def test_settings_that_do_not_fit_together_are_named_as_flags(work):
    cases = [
        (("--patience", 2), "--patience: ", "needs --selection best, got --selection last"),
        (("--warmup-start-lr", 1), "--warmup-start-lr: must not exceed --lr 0.001, got 1.0"),
        (("--batch-size", 3), "--batch-size: must be even with --pairing halves"),
        (("--alpha-schedule", "cosine"), "--alpha-end: --alpha-schedule cosine needs the final alpha"),
    ]
    for flags, *fragments in cases:
        result = train(work, work / "run", "--no-progress", *flags)
        assert_one_line(result, "train", *fragments)
        assert_no_python_spelling(result[1], "selection=", "lr=", "pairing=", "alpha_schedule")
    assert not (work / "run").exists()


def test_fp16_on_the_cpu_names_the_amp_flag(work):
    result = train(work, work / "run", *TRAIN, "--amp", "fp16")
    assert_one_line(result, "train", "--amp: 'fp16' needs a CUDA device, got cpu", "use --amp bf16 or --amp off")
    assert_no_python_spelling(result[1], "amp=")


def test_a_config_that_is_a_folder_says_so(work):
    (work / "cfg").mkdir()
    result = train(work, work / "run", "--config", work / "cfg", *TRAIN)
    assert_one_line(result, "train", f"--config: {work / 'cfg'} is a folder; give the settings file")
    assert "no such file" not in result[1]


def test_a_busy_extraction_out_names_the_flag(work):
    from fusemix._fileio import directory_lock

    out = work / "store"
    out.mkdir()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with directory_lock(out, ".fusemix-extract.lock", argument="out_dir", activity="extraction"):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        result = run("extract", "--encoder", "python", "--callable", f"{work / 'encoders.py'}:build_ones",
                     "--input-type", "text", "--input", work / "items.txt", "--out", out, "--no-progress")  # fmt: skip
    finally:
        release.set()
        holder.join()
    assert_one_line(result, "extract", f"--out: {out} is in use by another extraction")
    assert_no_python_spelling(result[1])
