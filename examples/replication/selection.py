"""Which epoch a preset run keeps: the best on a validation split (the default) or the authors' best on test.

The authors' code evaluates the first test set (Flickr30K test) after every
epoch and keeps the epoch with the best image->text mean recall (the mean of
its R@1, R@5 and R@10); the numbers it reports come from that epoch, so they
were selected on the data they are reported on and are optimistic.
``"validation"`` (the default) keeps the best epoch by the same metric on the
validation split of the first evaluation set (Flickr30K ``val``, AudioCaps
``val``), never on a test split. ``"authors"`` reproduces the authors'
protocol, for comparing with their numbers, and the report marks every row
it produced with a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

SelectionMode = Literal["validation", "authors"]
SELECTION_MODES: tuple[str, ...] = ("validation", "authors")

WARNING = "⚠"


@dataclass(frozen=True)
class Selection:
    """Model selection of a preset run.

    Attributes:
        mode: ``"validation"`` or ``"authors"`` (the first test set is evaluated during training).
        metric: The metric maximised, e.g. ``"i2t_mean"`` (the authors' ``agg_metrics``:
            query-to-text mean recall).
        split: The evaluation set the epochs are compared on, e.g. ``"flickr30k-val"``.
        best: Keep the best epoch by ``metric`` (``False``: the last epoch, ``split`` only monitored).

    Example:
        >>> honest = Selection("validation", "i2t_mean", "flickr30k-val")
        >>> honest.config_overrides()
        {'selection': 'best', 'selection_metric': 'i2t_mean', 'eval_every': 1}
        >>> honest.label("fusemix"), honest.on_test
        ('fusemix', False)
        >>> Selection("authors", "i2t_mean", "flickr30k-test").label("fusemix")
        'fusemix ⚠ best epoch on flickr30k-test'
        >>> Selection("authors", "i2t_mean", "flickr30k-test", best=False).on_test  # only monitored there
        False

    """

    mode: SelectionMode
    metric: str
    split: str
    best: bool = True

    def __post_init__(self) -> None:
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"mode: expected one of {list(SELECTION_MODES)}, got {self.mode!r}")

    @property
    def on_test(self) -> bool:
        """Whether the kept epoch was chosen on a test split (the authors' protocol)."""
        return self.mode == "authors" and self.best

    def config_overrides(self) -> dict[str, Any]:
        """:class:`~fusemix.train.TrainConfig` fields: the epoch to keep, by ``metric``, evaluated every epoch."""
        return {"selection": "best" if self.best else "last", "selection_metric": self.metric, "eval_every": 1}

    def label(self, run_name: str) -> str:
        """The table label of a run: its name, with a warning when the epoch was chosen on a test set."""
        return f"{run_name} {WARNING} best epoch on {self.split}" if self.on_test else run_name

    def note(self) -> str:
        """One line for the report saying how the epoch of every row was chosen."""
        if self.on_test:
            return (
                f"{WARNING} Model selection on a TEST set (--authors-selection, the authors' protocol): each run kept "
                f"the epoch with the best {self.metric} on {self.split}, so its {self.split} numbers are optimistic. "
                "Compare them only with the authors' own; for honest numbers, run without --authors-selection."
            )
        if not self.best:
            return f"Model selection: none; each run kept its last epoch ({self.split} was monitored)."
        return (
            f"Model selection: each run kept the epoch with the best {self.metric} on {self.split} "
            "(a validation split; no test set was used to choose)."
        )

    def describe(self) -> dict[str, Any]:
        """JSON record of the selection, for ``results.json``."""
        return {**asdict(self), "on_test": self.on_test}
