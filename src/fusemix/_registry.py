"""Model parts that describe themselves, so that a model directory can save and rebuild them.

A class that a model directory may hold (an adapter, a loss, the regression
term of a fixed-target loss, a structure term) registers under a JSON type
name with :func:`register_part` and provides two methods:

- ``to_config(self) -> dict``: the JSON-safe settings that rebuild it
  (weights aside), without ``"type"``;
- ``from_config(cls, config) -> instance`` (a classmethod): the part those
  settings describe, with fresh weights.

:func:`describe_part` and :func:`build_part` turn a part into
``{"type": name, **settings}`` and back; :mod:`fusemix.checkpoint` walks a
model with them, so a new adapter or loss only registers itself. Lookups are
by exact class: a subclass computes something else and is refused unless it
registers too. Adapters also expose ``in_dim`` and ``out_dim``. Every built-in
part registers when ``fusemix`` is imported.

A description that does not describe a part raises :class:`PartConfigError`
(a ``ValueError``) naming the field by its dotted path, e.g.
``adapters.image: in_dim: expected an int, got str`` or
``loss.contrastive.pairs: missing``: ``from_config`` reads its fields with
``config[name]`` (a missing one is reported as such) and leaves their checks
to the constructor, whose errors start with the argument's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar

PartKind = Literal["adapter", "loss", "regression", "structure"]
KINDS: tuple[str, ...] = ("adapter", "loss", "regression", "structure")


class DescribablePart(Protocol):
    """What a registered class provides (see the module docstring)."""

    def to_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DescribablePart: ...


PartClass = TypeVar("PartClass", bound=type)


class PartConfigError(ValueError):
    """A description that does not describe a model part.

    Attributes:
        field: Dotted path of the offending field, e.g. ``"adapters.image"``.
        problem: What is wrong with it.

    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


_BY_NAME: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_BY_CLASS: dict[type, tuple[str, str]] = {}


def register_part(kind: PartKind, name: str) -> Callable[[PartClass], PartClass]:
    """Class decorator: register a model part under ``kind`` and the JSON type ``name``.

    Args:
        kind: ``"adapter"``, ``"loss"``, ``"regression"`` or ``"structure"``.
        name: The ``"type"`` written to ``fusemix.json``, unique within ``kind``.

    Raises:
        ValueError: If ``kind`` is unknown or ``name`` is taken by another class.
        TypeError: If the class lacks ``to_config`` or ``from_config``.

    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")

    def register(cls: PartClass) -> PartClass:
        if not callable(getattr(cls, "to_config", None)) or not callable(getattr(cls, "from_config", None)):
            raise TypeError(f"{cls.__name__}: a registered model part needs to_config() and from_config()")
        taken = _BY_NAME[kind].get(name)
        if taken is not None and taken is not cls:
            raise ValueError(f"name: {kind} type {name!r} is taken by {taken.__name__}")
        _BY_NAME[kind][name] = cls
        _BY_CLASS[cls] = (kind, name)
        return cls

    return register


def _known(kind: str) -> str:
    names = [cls.__name__ for cls in _BY_NAME[kind].values()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def describe_part(kind: PartKind, part: object, *, where: str) -> dict[str, Any]:
    """``{"type": name, **part.to_config()}`` for a registered part.

    Args:
        kind: What the part must be.
        part: The module to describe.
        where: Names the part in the error message, e.g. ``"model: adapter 'image'"``.

    Raises:
        TypeError: If ``part``'s class is not registered as a ``kind``.

    """
    entry = _BY_CLASS.get(type(part))
    if entry is None or entry[0] != kind:
        raise TypeError(
            f"{where} is a {type(part).__name__}; a model directory can describe only {_known(kind)} "
            "(save the state dict yourself for custom modules)"
        )
    return {"type": entry[1], **part.to_config()}  # type: ignore[attr-defined]


def build_part(kind: PartKind, spec: Mapping[str, Any], *, where: str) -> Any:
    """The part a :func:`describe_part` description stands for, with fresh weights.

    Args:
        kind: What the part must be.
        spec: The description, ``{"type": name, **settings}``.
        where: Dotted path of the description, the start of every error's
            field, e.g. ``"loss"`` or ``"adapters.image"``.

    Raises:
        PartConfigError: If ``spec`` is not an object, its type is not a
            registered ``kind``, a field is missing, or the part refuses a
            setting (the error names the field).

    """
    if not isinstance(spec, Mapping):
        raise PartConfigError(where, f"expected an object with a 'type', got {type(spec).__name__}")
    name = spec.get("type")
    cls = _BY_NAME[kind].get(name) if isinstance(name, str) else None
    if cls is None:
        raise PartConfigError(f"{where}.type", f"unknown {kind} type {name!r} (known: {', '.join(_BY_NAME[kind])})")
    try:
        return cls.from_config(spec)
    except PartConfigError as err:  # a part within the part
        raise PartConfigError(f"{where}.{err.field}", err.problem) from None
    except KeyError as err:
        raise PartConfigError(f"{where}.{err.args[0]}", "missing") from None
    except (TypeError, ValueError) as err:
        raise PartConfigError(where, str(err)) from err
