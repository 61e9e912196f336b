"""Which weights a run returns with ``selection="best"``: the best evaluation so far, its weights, early stopping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fusemix._paired import PairedLatents
from fusemix.checkpoint import BEST_WEIGHTS
from fusemix.evaluation import retrieval_metric_keys, retrieval_pair
from fusemix.train_config import TrainConfig


@dataclass(frozen=True)
class Selection:
    """The evaluation whose weights :func:`~fusemix.train.fit` returned with ``selection="best"``.

    Attributes:
        epoch: Epoch at whose end the evaluation ran (0-based).
        step: Optimizer steps done when it ran.
        metric: The ``selection_metric``.
        value: That metric's value there (percent).
        metrics: Every validation metric of that evaluation.

    """

    epoch: int
    step: int
    metric: str
    value: float
    metrics: dict[str, float]


def check_selection_target(config: TrainConfig, val: PairedLatents | None, val_pair: tuple[str, str] | None) -> None:
    """Refuse, before training, ``selection="best"`` without ``val`` or with a metric its evaluation lacks."""
    if config.selection != "best":
        return
    if val is None:
        raise ValueError(
            "val: selection='best' keeps the weights of the best evaluation on the validation pairs; pass val= or "
            "use selection='last'"
        )
    pair = retrieval_pair(val, val_pair, "val_pair")
    keys = retrieval_metric_keys(pair)
    if config.selection_metric not in keys:
        raise ValueError(
            f"selection_metric: {config.selection_metric!r} is not a validation metric of val_pair {pair}; "
            f"expected one of {keys}"
        )


class Selector:
    """``selection="best"``: the best evaluation so far, a CPU copy of its weights, and early stopping."""

    def __init__(self, metric: str, patience: int | None) -> None:
        self.metric, self.patience = metric, patience
        self.best: Selection | None = None
        self.weights: dict[str, Tensor] | None = None
        self.since_best = 0
        self.stopped_early = False

    def update(self, epoch: int, step: int, metrics: Mapping[str, float], model: nn.Module) -> None:
        """Take one evaluation: keep the weights on a strictly higher value, else count it towards ``patience``."""
        value = float(metrics[self.metric])
        if self.best is None or value > self.best.value:
            self.best = Selection(epoch=epoch, step=step, metric=self.metric, value=value, metrics=dict(metrics))
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.since_best = 0
            return
        self.since_best += 1
        self.stopped_early = self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The JSON-safe selection state; the weights are saved apart."""
        return {
            "metric": self.metric,
            "best": None if self.best is None else asdict(self.best),
            "evaluations_since_best": self.since_best,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: Mapping[str, Any], weights: dict[str, Tensor] | None, where: Path) -> None:
        """Restore :meth:`state_dict` output and the best weights saved with it (CPU tensors, not shared)."""
        best = state["best"]
        if best is not None and weights is None:
            raise ValueError(f"checkpoint: {where} records a best evaluation but has no {BEST_WEIGHTS}")
        self.best = None if best is None else Selection(**best)
        self.weights = weights
        self.since_best = int(state["evaluations_since_best"])
        self.stopped_early = bool(state["stopped_early"])

    def record(self) -> dict[str, Any]:
        """The ``"selection"`` log record of the selected evaluation (once the run is over)."""
        assert self.best is not None  # the run's last epoch is always evaluated
        best = self.best
        return {
            "kind": "selection",
            "epoch": best.epoch,
            "step": best.step,
            "metric": best.metric,
            "value": best.value,
            "stopped_early": self.stopped_early,
            "metrics": dict(best.metrics),
        }
