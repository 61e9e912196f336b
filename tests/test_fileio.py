"""The directory lock of fusemix._fileio: one holder at a time, nested blocks in one thread, the no-fcntl fallback."""

import os
import threading

import pytest

import fusemix._fileio as fileio
from fusemix._fileio import directory_lock


def _refusal_in_another_thread(folder):
    """The error another thread gets when it asks for the lock (``None`` if it got the lock)."""
    seen = []

    def ask():
        try:
            with directory_lock(folder, ".lock", argument="out_dir", activity="run"):
                seen.append(None)
        except FileExistsError as err:
            seen.append(err)

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    return seen[0]


def test_one_holder_nested_blocks_and_the_lock_file_goes_away(tmp_path):
    with directory_lock(tmp_path, ".lock", argument="out_dir", activity="run") as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
        with directory_lock(tmp_path, ".lock", argument="out_dir", activity="run"):  # the same thread nests
            pass
        assert lock.exists()  # the outer block still holds it
        refusal = _refusal_in_another_thread(tmp_path)
        assert isinstance(refusal, FileExistsError)
        assert str(refusal).startswith(f"out_dir: {tmp_path} is in use by another run (pid {os.getpid()} on ")
    assert not lock.exists() and _refusal_in_another_thread(tmp_path) is None


def test_without_fcntl_a_lock_file_created_exclusively_and_a_stale_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "fcntl", None)
    with directory_lock(tmp_path, ".lock", argument="out_dir", activity="run") as lock:
        assert isinstance(_refusal_in_another_thread(tmp_path), FileExistsError)
    assert not lock.exists()
    lock.write_text("4242 elsewhere\n")  # left behind by a killed process
    with pytest.raises(FileExistsError, match=r"another run \(pid 4242 on elsewhere\).*one was killed\), delete "):
        with directory_lock(tmp_path, ".lock", argument="out_dir", activity="run"):
            pass
