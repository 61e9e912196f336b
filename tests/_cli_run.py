"""Running ``fusemix`` in-process and checking its one-line user errors, for the command-line tests."""

from __future__ import annotations

import contextlib
import io

from fusemix.cli import main


def run(*args: object) -> tuple[int, str, str]:
    """``fusemix ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def assert_user_error(result: tuple[int, str, str], command: str, *fragments: str) -> None:
    """Exit status 2, no traceback, and a last stderr line ``fusemix COMMAND: error: ...`` holding ``fragments``."""
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err
    *notes, line = err.strip().splitlines()
    assert line.startswith(f"fusemix {command}: error: "), err
    assert all(note.startswith(f"fusemix {command}: ") and "error" not in note for note in notes), err
    for fragment in fragments:
        assert fragment in line, line
