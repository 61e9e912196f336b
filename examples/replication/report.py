"""Result tables, JSON and plots for the replication runs.

Every run of the replication produces records ``{"method", "train_size",
"seed", "metrics", "seconds"}`` (trained runs add ``"selected_step"``,
``"steps"`` and the validation ``"curve"``); this module aggregates them over
seeds (mean and sample standard deviation) into markdown tables that paste
into an issue or a paper, pairs methods seed by seed, writes JSON, and plots
recall against training-set size and validation recall against steps.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusemix.tables import markdown_table

RECALL_KEYS: tuple[str, ...] = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")


@dataclass(frozen=True)
class Reference:
    """A published number to print beside ours.

    Attributes:
        system: What produced it, e.g. ``"CLIP ViT-L/14 (zero-shot)"``.
        eval_set: The evaluation set it was measured on, e.g. ``"flickr30k"``.
        metrics: Metric key (as produced by :func:`fusemix.retrieval_metrics`) to value, in percent.
        source: Where the number is published.
    """

    system: str
    eval_set: str
    metrics: Mapping[str, float]
    source: str


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value).

    Example:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    if not values:
        raise ValueError("values: expected at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def format_mean_std(values: Sequence[float], digits: int = 1) -> str:
    """``"mean ± std"`` over seeds, or just the value for a single seed.

    Example:
        >>> format_mean_std([40.0, 42.0, 44.0])
        '42.0 ± 2.0'
        >>> format_mean_std([40.0])
        '40.0'
    """
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_runs(
    records: Iterable[Mapping[str, Any]], keys: Sequence[str]
) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    """Group run records by the values of ``keys``, keeping first-seen order."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in keys), []).append(record)
    return groups


def recall_table(
    records: Sequence[Mapping[str, Any]],
    *,
    labels: Mapping[str, str],
    train_size: int | None = None,
    eval_set: str | None = None,
    metric_keys: Sequence[str] = RECALL_KEYS,
) -> str:
    """Recall@K per method (rows) as ``mean ± std`` over seeds, plus mean training time.

    Args:
        records: Run records with ``method``, ``seed``, ``metrics``, ``seconds``
            (and ``train_size`` / ``eval_set`` when filtering by them).
        labels: Method key to the label printed in the table, in row order.
        train_size: Keep only runs at this training-set size.
        eval_set: Keep only runs evaluated on this set.
        metric_keys: Columns.
    """
    chosen = [
        r
        for r in records
        if (train_size is None or r["train_size"] == train_size) and (eval_set is None or r["eval_set"] == eval_set)
    ]
    groups = group_runs(chosen, ["method"])
    with_steps = any("steps" in r for r in chosen)
    rows = []
    for method, label in labels.items():
        runs = groups.get((method,))
        if not runs:
            continue
        cells = [format_mean_std([r["metrics"][k] for r in runs]) for k in metric_keys]
        steps = [format_steps(runs)] if with_steps else []
        rows.append([label, *cells, *steps, f"{mean_std([r['seconds'] for r in runs])[0]:.1f}", len(runs)])
    steps_header = ["steps kept (trained)"] if with_steps else []
    header = ["method", *(_pretty_key(k) for k in metric_keys), *steps_header, "time (s)", "seeds"]
    return markdown_table(header, rows)


def format_steps(runs: Sequence[Mapping[str, Any]]) -> str:
    """The mean kept step and, in brackets, the mean steps trained; ``"closed form"`` for untrained runs.

    Example:
        >>> format_steps([{"selected_step": 40, "steps": 140}, {"selected_step": 60, "steps": 160}])
        '50 (150)'
        >>> format_steps([{}])
        'closed form'
    """
    if not all("steps" in r for r in runs):
        return "closed form"
    kept = mean_std([r["selected_step"] for r in runs])[0]
    trained = mean_std([r["steps"] for r in runs])[0]
    return f"{kept:.0f} ({trained:.0f})"


def steps_table(records: Sequence[Mapping[str, Any]], *, labels: Mapping[str, str]) -> str:
    """:func:`format_steps` per trained method (rows) and training-set size (columns)."""
    trained = [r for r in records if "steps" in r]
    sizes = sorted({r["train_size"] for r in trained})
    groups = group_runs(trained, ["method", "train_size"])
    rows = [
        [label, *(format_steps(groups[(method, s)]) if (method, s) in groups else "" for s in sizes)]
        for method, label in labels.items()
        if any((method, s) in groups for s in sizes)
    ]
    return markdown_table(["method", *(f"{s} pairs" for s in sizes)], rows)


def paired_differences(
    records: Sequence[Mapping[str, Any]], method: str, baseline: str, train_size: int, metric: str = "mean"
) -> list[float]:
    """``metric`` of ``method`` minus that of ``baseline``, seed by seed, at one training-set size.

    Only seeds that both methods ran count, in seed order.

    Example:
        >>> runs = [{"method": m, "train_size": 10, "seed": s, "metrics": {"mean": v}}
        ...         for m, s, v in [("a", 0, 5.0), ("b", 0, 4.0), ("a", 1, 3.0), ("b", 1, 3.5), ("a", 2, 1.0)]]
        >>> paired_differences(runs, "a", "b", 10)
        [1.0, -0.5]
    """
    by_seed = {
        (r["method"], r["seed"]): r["metrics"][metric]
        for r in records
        if r["train_size"] == train_size and r["method"] in (method, baseline)
    }
    seeds = sorted({seed for (m, seed) in by_seed if m == method} & {seed for (m, seed) in by_seed if m == baseline})
    return [by_seed[(method, seed)] - by_seed[(baseline, seed)] for seed in seeds]


def format_difference(differences: Sequence[float]) -> str:
    """``"+mean ± std (wins/seeds)"``: wins are the seeds with a difference above 0.

    Example:
        >>> format_difference([1.0, 2.0, -0.5])
        '+0.8 ± 1.3 (2/3)'
    """
    mean, std = mean_std(differences)
    wins = sum(d > 0 for d in differences)
    spread = "" if len(differences) == 1 else f" ± {std:.1f}"
    return f"{mean:+.1f}{spread} ({wins}/{len(differences)})"


def paired_difference_table(
    records: Sequence[Mapping[str, Any]], *, labels: Mapping[str, str], baseline: str, metric: str = "mean"
) -> str:
    """:func:`format_difference` of every method against ``baseline`` (rows), per training-set size (columns)."""
    sizes = sorted({r["train_size"] for r in records})
    rows = []
    for method, label in labels.items():
        if method == baseline:
            continue
        cells = [paired_differences(records, method, baseline, size, metric) for size in sizes]
        if any(cells):
            rows.append([label, *(format_difference(c) if c else "" for c in cells)])
    return markdown_table([f"method − {labels.get(baseline, baseline)}", *(f"{s} pairs" for s in sizes)], rows)


def size_table(records: Sequence[Mapping[str, Any]], *, labels: Mapping[str, str], metric: str = "mean") -> str:
    """One metric per method (rows) and training-set size (columns), ``mean ± std`` over seeds."""
    sizes = sorted({r["train_size"] for r in records})
    groups = group_runs(records, ["method", "train_size"])
    rows = []
    for method, label in labels.items():
        if not any((method, s) in groups for s in sizes):
            continue
        cells = []
        for size in sizes:
            runs = groups.get((method, size))
            cells.append(format_mean_std([r["metrics"][metric] for r in runs]) if runs else "")
        rows.append([label, *cells])
    return markdown_table(["method", *(f"{s} pairs" for s in sizes)], rows)


def reference_table(references: Sequence[Reference], metric_keys: Sequence[str] = RECALL_KEYS) -> str:
    """Published reference numbers in the same columns as :func:`recall_table`."""
    rows = [
        [f"{ref.system} [{ref.eval_set}]", *(_format_optional(ref.metrics.get(k)) for k in metric_keys), ref.source]
        for ref in references
    ]
    return markdown_table(["reference", *(_pretty_key(k) for k in metric_keys), "source"], rows)


def _format_optional(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _pretty_key(key: str) -> str:
    direction, _, k = key.partition("_")
    arrows = {"i2t": "image→text", "t2i": "text→image", "a2t": "audio→text", "t2a": "text→audio"}
    return f"{arrows.get(direction, direction)} {k}" if k else key


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Write ``fig`` to ``path`` (folders created) at 120 dpi and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_recall_vs_size(
    records: Sequence[Mapping[str, Any]], path: str | Path, *, labels: Mapping[str, str], title: str
) -> bool:
    """Plot image→text and text→image R@1 against training-set size, one line per method.

    Error bars are the standard deviation over seeds. Returns ``False``
    (and writes nothing) when matplotlib is not installed.
    """
    plt = pyplot()
    if plt is None:
        return False
    groups = group_runs(records, ["method", "train_size"])
    sizes = sorted({r["train_size"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, name in zip(axes, ("i2t_R@1", "t2i_R@1"), ("image→text R@1", "text→image R@1")):
        for method, label in labels.items():
            points = [(s, [r["metrics"][key] for r in groups[(method, s)]]) for s in sizes if (method, s) in groups]
            if not points:
                continue
            xs = [s for s, _ in points]
            stats = [mean_std(v) for _, v in points]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("training pairs")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Recall@1 (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def plot_convergence(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    labels: Mapping[str, str],
    train_size: int,
    title: str,
) -> bool:
    """Plot validation mean recall against optimizer step for every trained run at ``train_size``.

    One colour per method, one thin line per seed, a dot at the step whose
    weights each run kept. Returns ``False`` (and writes nothing) when
    matplotlib is not installed or no run has a curve.
    """
    runs = [r for r in records if r["train_size"] == train_size and r.get("curve")]
    if not runs:
        return False
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, label) in enumerate(labels.items()):
        colour = colours[i % len(colours)]
        mine = [r for r in runs if r["method"] == method]
        for j, run in enumerate(mine):
            steps, values = zip(*run["curve"])
            ax.plot(steps, values, color=colour, alpha=0.6, linewidth=1, label=label if j == 0 else None)
            ax.plot([run["selected_step"]], [run["val_mean"]], "o", color=colour, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation mean recall (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True
