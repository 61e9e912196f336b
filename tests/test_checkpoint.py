"""Model directories as a reader meets them: reading never writes, and a crafted or corrupt one is a ValueError."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fusemix import FusionModel
from fusemix.checkpoint import (
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
