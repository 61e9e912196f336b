"""Model directories as a reader meets them: reading never writes, and a crafted or corrupt one is a ValueError."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fusemix import FusionModel
from fusemix.checkpoint import (
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    load_model,
    load_training_checkpoint,
    recover_directory,
    save_model,
    save_training_checkpoint,
)

pytest.importorskip("safetensors")


def _model(depth: int = 1, seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel.from_dims({"a": 3, "b": 2}, shared_dim=2, depth=depth, dropout=0.0).eval()


def _same(loaded: FusionModel, model: FusionModel) -> bool:
    a, b = loaded.state_dict(), model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- reading never writes (issue 13 item 4) ---------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied (read-only test)", str(args[0]) if args else "")


@contextlib.contextmanager
def _no_writes() -> Iterator[None]:
    """Every call that would change the file system raises, as on a read-only disk (reproducible as root)."""
    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((os, "replace"), (os, "rename"), (os, "unlink"), (os, "mkdir"), (os, "rmdir")):
            patch.setattr(module, name, _refuse)
        patch.setattr(shutil, "rmtree", _refuse)
        yield


def _leftovers(tmp_path: Path) -> Path:
    """A model directory next to what a killed writer leaves: a complete new version and a partial one."""
    save_model(_model(seed=0), tmp_path / "m")
    save_model(_model(seed=1), tmp_path / "other")
    (tmp_path / "other").rename(tmp_path / ".m.ready")
    (tmp_path / ".m.new").mkdir()
    return tmp_path / "m"


def test_load_model_reads_without_changing_anything(tmp_path):
    folder = _leftovers(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with _no_writes():
        assert _same(load_model(folder), _model(seed=0))  # the directory as it is: a reader does not swap
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_load_model_on_a_read_only_directory(tmp_path):
    folder = _leftovers(tmp_path)
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions (e.g. root)")
        assert _same(load_model(folder), _model(seed=0))
    finally:
        tmp_path.chmod(0o755)


def test_a_read_that_finds_the_directory_swapped_out_waits_for_the_new_version(tmp_path, monkeypatch):
    """The race a concurrent save_model makes: moved aside just after the reader's wait, swapped in a moment later."""
    import fusemix.checkpoint as checkpoint

    save_model(_model(seed=0), tmp_path / "m")
    (tmp_path / "m").rename(tmp_path / ".m.old")
    save_model(_model(depth=2, seed=1), tmp_path / "new")
    (tmp_path / "new").rename(tmp_path / ".m.ready")
    real_wait, waits = checkpoint._wait_for_swap, []

    def wait_late(path: Path, recovery: str) -> None:  # the first wait returns just before the swap-out
        waits.append(path)
        if len(waits) > 1:
            real_wait(path, recovery)

    monkeypatch.setattr(checkpoint, "_wait_for_swap", wait_late)
    writer = threading.Timer(0.05, recover_directory, args=(tmp_path / "m",))  # the writer's swap-in
    writer.start()
    try:
        assert _same(load_model(tmp_path / "m"), _model(depth=2, seed=1))
    finally:
        writer.join()
    assert len(waits) >= 2


def test_a_directory_whose_writer_died_mid_swap_is_an_error_that_says_how_to_recover(tmp_path, monkeypatch):
    # Killed between moving the old version aside and moving the new one in: m itself is missing.
    save_model(_model(seed=0), tmp_path / "m")
    (tmp_path / "m").rename(tmp_path / ".m.old")
    save_model(_model(seed=1), tmp_path / "new")
    (tmp_path / "new").rename(tmp_path / ".m.ready")
    monkeypatch.setattr("fusemix.checkpoint._SWAP_WAIT_S", 0.0)
    with _no_writes():
        with pytest.raises(FileNotFoundError, match=r"m is missing, but .*\.m\.ready holds .*recover_directory"):
            load_model(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.old", ".m.ready"]  # untouched
    recover_directory(tmp_path / "m")  # the explicit call (or the next save_model) settles it
    assert _same(load_model(tmp_path / "m"), _model(seed=1))
    with pytest.raises(FileNotFoundError, match="has no fusemix.json"):
        load_model(tmp_path / "never-saved")


def test_load_training_checkpoint_reads_without_changing_anything(tmp_path, monkeypatch):
    model = _model(seed=0)
    empty: dict = {}
    save_training_checkpoint(tmp_path / "c", model=model, optimizer_state=empty, rng_state=empty, state={"epoch": 1})
    (tmp_path / ".c.new").mkdir()  # a partial write of a later save
    monkeypatch.setattr("fusemix.checkpoint._SWAP_WAIT_S", 0.0)
    with _no_writes():
        checkpoint = load_training_checkpoint(tmp_path / "c")
        assert checkpoint is not None and checkpoint.state == {"epoch": 1}
        assert load_training_checkpoint(tmp_path / "none") is None
    (tmp_path / "c").rename(tmp_path / ".c.ready")  # killed before the swap, with nothing at c
    with pytest.raises(FileNotFoundError, match=r"c is missing, but .*\.c\.ready .*fit\(\.\.\., resume=True\)"):
        load_training_checkpoint(tmp_path / "c")
    assert (tmp_path / ".c.new").is_dir() and (tmp_path / ".c.ready").is_dir()


def test_concurrent_save_and_load(tmp_path):
    # Two versions that differ in shape: a reader mixing one's fusemix.json with the other's weights would fail.
    versions = [_model(depth=1, seed=0), _model(depth=2, seed=1)]
    folder = tmp_path / "m"
    save_model(versions[0], folder)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(40):
                save_model(versions[i % 2], folder)
        except BaseException as err:  # noqa: BLE001 (reported by the main thread)
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    loads = 0
    while writer.is_alive():
        loaded = load_model(folder)
        assert any(_same(loaded, v) for v in versions)
        loads += 1
    writer.join()
    assert not errors, errors
    assert loads > 0 and _same(load_model(folder), versions[1])


# -- crafted or corrupt model directories (issue 13 item 5) ----------------------------------------------------------


def _edited(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "m"
    save_model(_model(), folder)
    description = json.loads((folder / MODEL_CONFIG).read_text())
    edit(description)
    (folder / MODEL_CONFIG).write_text(json.dumps(description))
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(adapters=[1, 2]), r"adapters: expected an object of modality name to adapter, got list"),
        (lambda d: d.update(adapters={}), r"adapters: expected at least one modality"),
        (lambda d: d["adapters"]["a"].update(in_dim="3"), r"adapters\.a: in_dim: expected an int, got str"),
        (lambda d: d["adapters"]["a"].update(in_dim=-3), r"adapters\.a: in_dim: expected an int >= 1, got -3"),
        (lambda d: d["adapters"]["a"].pop("out_dim"), r"adapters\.a\.out_dim: missing"),
        (lambda d: d["adapters"]["a"].update(type="mlp"), r"adapters\.a\.type: unknown adapter type 'mlp'"),
        (lambda d: d["adapters"].update(b=[2]), r"adapters\.b: expected an object with a 'type', got list"),
        (lambda d: d["loss"].update(temperature_range=[0.01, 0.5, 1]), r"loss: temperature_range: expected \(low"),
        (lambda d: d["loss"].update(learnable="yes"), r"loss: learnable: expected True or False, got str"),
        (lambda d: d.update(structure_weight="1"), r"structure_weight: expected a number, got str"),
        (lambda d: d.update(structure=[]), r"structure: expected an object with a 'type', got list"),
        (lambda d: d.update(format_version=True), r"format_version: expected an int <= 1, got True"),
        (lambda d: d.update(format_version=2), r"format_version: 2 is newer than this fusemix reads \(1\)"),
        (
            lambda d: d.update(modalities=["b", "a"]),
            r"modalities: \['b', 'a'\] differs from the adapters' \['a', 'b'\]",
        ),
        (lambda d: d.update(dims={"a": 4, "b": 2}), r"dims: \{'a': 4, 'b': 2\} differs from the adapters' in_dim"),
    ],
)
def test_a_crafted_description_is_a_value_error_naming_the_file_and_field(tmp_path, edit, message):
    folder = _edited(tmp_path, edit)
    with pytest.raises(ValueError, match=f"{folder / MODEL_CONFIG}: {message}"):
        load_model(folder)


def test_unparsable_descriptions_name_the_file(tmp_path):
    folder = tmp_path / "m"
    save_model(_model(), folder)
    for text, message in (
        ("{", "not valid JSON"),
        ("[" * 100_000, "not valid JSON .nested too deeply"),
        ("[]", "a JSON object"),
    ):
        (folder / MODEL_CONFIG).write_text(text)
        with pytest.raises(ValueError, match=f"{folder / MODEL_CONFIG}: .*{message}"):
            load_model(folder)
    (folder / MODEL_CONFIG).write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"{folder / MODEL_CONFIG}: not UTF-8"):
        load_model(folder)


def test_dims_are_checked_against_the_weights_before_anything_is_allocated(tmp_path):
    # in_dim=10**7 used to allocate the adapter (~4 GB) before the weights were compared; 10**12 cannot be allocated.
    def edit(description):
        description["adapters"]["a"]["in_dim"] = description["dims"]["a"] = 10**12

    folder = _edited(tmp_path, edit)
    message = (
        r"model\.safetensors: adapters\.a\.blocks\.0\.norm\.weight has shape \[3\], fusemix\.json implies \[10{12}\]"
    )
    with pytest.raises(ValueError, match=message):
        load_model(folder)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b[:-10], r"not a readable safetensors file \(.*incomplete metadata"),
        (lambda b: b"\xff" * 8 + b[8:], r"not a readable safetensors file"),
        (lambda b: b[:4], r"not a readable safetensors file"),
    ],
)
def test_a_corrupt_weights_file_is_a_value_error_naming_it(tmp_path, corrupt, message):
    folder = tmp_path / "m"
    save_model(_model(), folder)
    weights = folder / MODEL_WEIGHTS
    weights.write_bytes(corrupt(weights.read_bytes()))
    with pytest.raises(ValueError, match=f"{weights}: {message}"):
        load_model(folder)


def test_weights_that_do_not_fit_name_the_tensors(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "m"
    save_model(_model(), folder)
    state = {k: v for k, v in _model().state_dict().items() if k != "loss.temperature"}
    state["extra"] = torch.zeros(2)
    state["adapters.a.proj.bias"] = torch.zeros(2, dtype=torch.int64)
    save_file(state, str(folder / MODEL_WEIGHTS))
    with pytest.raises(
        ValueError, match=r"lacks \['loss\.temperature'\]; holds tensors fusemix\.json does not describe: \['extra'\]"
    ):
        load_model(folder)
    del state["extra"]
    state["loss.temperature"] = torch.tensor(0.07)
    save_file(state, str(folder / MODEL_WEIGHTS))
    with pytest.raises(ValueError, match=r"adapters\.a\.proj\.bias has dtype I64, expected a floating dtype"):
        load_model(folder)


# -- the encoders of a model directory (issue 16) ---------------------------------------------------------------------


def test_save_model_writes_the_encoder_descriptions_with_the_model(tmp_path):
    """Catches ``encoders=`` not reaching ``encoders.json``, or the file left over from a save without it."""
    from fusemix.encoder_descriptions import ENCODERS_FILE, describe_encoder, read_encoder_descriptions
    from fusemix.encoders import CallableEncoder

    encoder = CallableEncoder(len, identity={"name": "length"})
    save_model(_model(), tmp_path / "m", encoders={"b": encoder})
    assert read_encoder_descriptions(tmp_path / "m") == {"b": describe_encoder(encoder)}
    assert _same(load_model(tmp_path / "m"), _model())
    save_model(_model(), tmp_path / "m")  # the directory is replaced whole
    assert not (tmp_path / "m" / ENCODERS_FILE).exists()


@pytest.mark.parametrize(
    ("encoders", "error", "match"),
    [
        ({"c": {"kind": "custom", "identity": {}}}, ValueError, r"encoders: \['c'\] are not among the model's"),
        ({"b": {"kind": "magic", "identity": {}}}, ValueError, "unknown encoder kind 'magic'"),
        ({"b": 3}, TypeError, "expected a callable encoder"),
        ({}, ValueError, "non-empty mapping"),
    ],
)
def test_bad_encoders_are_refused_and_leave_the_model_directory_as_it_was(tmp_path, encoders, error, match):
    """Catches encoders of another model (or no encoders at all) saved silently, or a half-replaced directory."""
    save_model(_model(seed=1), tmp_path / "m")
    with pytest.raises(error, match=match):
        save_model(_model(seed=2), tmp_path / "m", encoders=encoders)
    assert _same(load_model(tmp_path / "m"), _model(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
