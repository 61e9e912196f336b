"""The logs of a training run: the history mirrored to ``log.jsonl`` and ``log.csv``, and ``curves.png``."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusemix._fileio import atomic_write, write_text_atomic
from fusemix._optional import install_hint, require
from fusemix._run_files import LOG_CSV, LOG_JSONL


class RunLog:
    """History in memory, mirrored to ``log.jsonl`` (appended) and ``log.csv`` (rewritten)."""

    COLUMNS = ("kind", "epoch", "step", "loss", "lr", "temperature", "alpha", "epoch_seconds")
    SELECTION_COLUMNS = ("metric", "value", "stopped_early")
    """Columns added after ``COLUMNS`` once the history holds a ``"selection"`` record."""

    def __init__(self, out_dir: Path | None, history: list[dict[str, Any]]) -> None:
        self.out_dir = out_dir
        self.history = history
        self._jsonl = None
        if out_dir is not None:
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in history)
            write_text_atomic(out_dir / LOG_JSONL, text)
            self._jsonl = open(out_dir / LOG_JSONL, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self.write_csv()

    def append(self, record: dict[str, Any]) -> None:
        """Add ``record`` to the history and to ``log.jsonl`` (flushed at once)."""
        self.history.append(record)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()

    def write_csv(self) -> None:
        """Rewrite ``log.csv`` from the history (one column per field and per metric)."""
        if self.out_dir is None:
            return
        metric_keys = sorted({k for r in self.history for k in r.get("metrics", {})})
        columns = self.COLUMNS
        if any(r.get("kind") == "selection" for r in self.history):
            columns += self.SELECTION_COLUMNS
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*columns, *metric_keys])
        for r in self.history:
            metrics = r.get("metrics", {})
            writer.writerow([_csv_value(r.get(c)) for c in columns] + [_csv_value(metrics.get(k)) for k in metric_keys])
        write_text_atomic(self.out_dir / LOG_CSV, buf.getvalue())

    def close(self) -> None:
        """Close ``log.jsonl``."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _csv_value(value: object) -> object:
    """A log value as a CSV cell: ``None`` is an empty cell."""
    return "" if value is None else value


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> bool:
    """Plot the epoch loss and the recall metrics of ``history`` against epochs into a PNG.

    A ``"selection"`` record (``selection="best"``) is marked on the recall
    panel: a dashed line at the selected epoch and a star at the selected
    metric's value.

    Args:
        history: Log records as in ``FitResult.history``.
        path: The PNG to write (atomically).

    Returns:
        ``True`` when written, ``False`` (with a warning) when matplotlib is
        not installed.

    """
    path = Path(path)
    try:
        figure = curves_figure(history)
    except ImportError:
        warnings.warn(
            f"fit: {path.name} skipped because matplotlib is not installed ({install_hint('train')})", stacklevel=2
        )
        return False
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100), "write the curves")
    return True


def curves_figure(history: Sequence[Mapping[str, Any]]) -> Any:
    """The matplotlib ``Figure`` of :func:`plot_curves`: loss (left) and validation recall (right) per epoch.

    Raises:
        ImportError: If matplotlib is not installed (the message says how to install it).

    """
    Figure = require("matplotlib.figure", extra="train", user="plotting the training curves").Figure  # noqa: N806 (a class)
    epochs = [r for r in history if r.get("kind") == "epoch"]
    evals = [r for r in epochs if r.get("metrics")]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, recall_ax = fig.subplots(1, 2)
    loss_ax.plot([r["epoch"] + 1 for r in epochs], [r["loss"] for r in epochs], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="loss")
    keys = sorted({k for r in evals for k in r["metrics"] if k.endswith("_R@1")}) + ["mean"]
    for k in keys:
        points = [(r["epoch"] + 1, r["metrics"][k]) for r in evals if k in r["metrics"]]
        if points:
            recall_ax.plot(*zip(*points), marker="o", label=k)
    selection = next((r for r in history if r.get("kind") == "selection"), None)
    if selection is not None:
        x = selection["epoch"] + 1
        recall_ax.axvline(x, color="0.5", linestyle="--", linewidth=1)
        label = f"selected: {selection['metric']} at epoch {x}"
        recall_ax.plot([x], [selection["value"]], marker="*", markersize=14, linestyle="none", color="k", label=label)
    recall_ax.set(xlabel="epoch", ylabel="recall (%)", title="validation retrieval")
    if evals:
        recall_ax.legend()
    return fig
