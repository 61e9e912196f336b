"""Alpha schedules: the mixing concentration of :class:`~fusemix.FuseMix` per epoch, as in the authors' code.

The authors' code anneals ``alpha`` between two values over training with a
cosine or an exponential curve (their released recipe keeps it flat at 1).
A schedule is a callable from a step (an epoch, for
:meth:`FuseMix.set_epoch <fusemix.FuseMix.set_epoch>`) to alpha.
"""

from __future__ import annotations

import math

from fusemix._checks import check_positive, check_positive_int


class AlphaSchedule:
    """Base class of alpha schedules: ``schedule(step)`` gives alpha at ``step``.

    Schedules interpolate from ``start`` (at step 0) to ``end`` (at
    ``total_steps`` and after) and are plain callables. Hand one to
    :class:`FuseMix` and step it once per epoch::

        mix = FuseMix(schedule=CosineAlphaSchedule(start=0.1, end=1.0, total_steps=epochs))
        for epoch in range(epochs):
            mix.set_epoch(epoch)

    Args:
        start: Alpha at step 0 (> 0).
        end: Alpha at ``total_steps`` (> 0).
        total_steps: Length of the schedule (>= 1), in whatever unit you step.

    """

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start = check_positive("start", start)
        self.end = check_positive("end", end)
        self.total_steps = check_positive_int("total_steps", total_steps)

    def _progress(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step: expected a step >= 0, got {step}")
        return min(step, self.total_steps) / self.total_steps

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(start={self.start}, end={self.end}, total_steps={self.total_steps})"


class CosineAlphaSchedule(AlphaSchedule):
    """Cosine interpolation of alpha, as in the authors' code.

    ``alpha(t) = end + (start - end) * (1 + cos(pi * t / T)) / 2``.

    Example:
        >>> s = CosineAlphaSchedule(start=0.1, end=1.0, total_steps=10)
        >>> round(s(0), 6), round(s(5), 6), round(s(10), 6)
        (0.1, 0.55, 1.0)

    """

    def __call__(self, step: int) -> float:
        t = self._progress(step)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))


class ExponentialAlphaSchedule(AlphaSchedule):
    """Geometric interpolation of alpha, as in the authors' code.

    ``alpha(t) = start * (end / start) ** (t / T)``.

    Example:
        >>> s = ExponentialAlphaSchedule(start=0.1, end=1.0, total_steps=10)
        >>> round(s(0), 6), round(s(5), 6), round(s(10), 6)
        (0.1, 0.316228, 1.0)

    """

    def __call__(self, step: int) -> float:
        return self.start * (self.end / self.start) ** self._progress(step)
