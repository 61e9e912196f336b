"""Dataclass fields as command-line flags and config-file keys.

Every init field of a dataclass (``fusemix train`` uses
:class:`~fusemix.train.TrainConfig`) becomes a flag named after it
(``batch_size`` -> ``--batch-size``) whose help is the field's line of the
class docstring's ``Attributes:`` section; ``bool`` fields get
``--x/--no-x``, tuples take several values, ``X | None`` also takes
``none``. The same type hints check values read from a TOML or YAML file
(:func:`value_from_native`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from fusemix.cli.common import flag


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _describe_type(hint: Any) -> str:
    if _is_union(hint):
        return " or ".join("none" if arg is type(None) else _describe_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"{len(typing.get_args(hint))} numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _value_from_text(hint: Any, text: str) -> Any:
    """Parse a flag's text (or a string in a config file) as a value of type ``hint``; ``ValueError`` if it is not."""
    if _is_union(hint):
        members = typing.get_args(hint)
        if type(None) in members and text.strip().lower() in ("none", "null"):
            return None
        for member in sorted((m for m in members if m is not type(None)), key=lambda m: m is str):
            with contextlib.suppress(ValueError):
                return _value_from_text(member, text)
        raise ValueError(f"expected {_describe_type(hint)}, got {text!r}")
    if hint is bool:
        word = text.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint is str:
        return text
    if typing.get_origin(hint) is tuple:
        parts = text.replace(",", " ").split()
        return value_from_native(hint, parts)
    try:  # a field type this parser does not know: JSON, else the text itself
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def value_from_native(hint: Any, value: Any) -> Any:
    """Check (and convert) a value read from a TOML/YAML file as type ``hint``; ``ValueError`` if it does not fit.

    Example:
        >>> value_from_native(tuple[float, float], [0.9, "0.999"]), value_from_native(int | None, "none")
        ((0.9, 0.999), None)

    """
    if isinstance(value, str) and hint is not str:
        return _value_from_text(hint, value)
    if value is None:
        if _is_union(hint) and type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"expected {_describe_type(hint)}, got null")
    if _is_union(hint):
        for member in typing.get_args(hint):
            if member is not type(None):
                with contextlib.suppress(ValueError):
                    return value_from_native(member, value)
        raise ValueError(f"expected {_describe_type(hint)}, got {value!r}")
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if typing.get_origin(hint) is tuple:
        members = typing.get_args(hint)
        if isinstance(value, (list, tuple)) and len(value) == len(members):
            return tuple(value_from_native(member, item) for member, item in zip(members, value))
        raise ValueError(f"expected a list of {_describe_type(hint)}, got {value!r}")
    if hint not in (bool, int, float, str):
        return value
    raise ValueError(f"expected {_describe_type(hint)}, got {value!r}")


def _attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring, one plain-text line per name."""
    docs: dict[str, str] = {}
    lines = (inspect.getdoc(cls) or "").splitlines()
    inside, current = False, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        if not inside or not line.strip():
            continue
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None:
            docs[current] += " " + line.strip()
    return {name: _plain(text) for name, text in docs.items()}


def _plain(text: str) -> str:
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


def format_value(value: Any) -> str:
    """A field's value as its flag takes it: ``none``, ``true``/``false``, a tuple or list as its values.

    Example:
        >>> format_value(None), format_value(True), format_value((0.9, 0.999)), format_value("fusemix")
        ('none', 'true', '0.9 0.999', 'fusemix')

    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


def config_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """The init fields of dataclass ``cls`` with their resolved type hints, in definition order."""
    hints = typing.get_type_hints(cls)
    return [(field, hints[field.name]) for field in dataclasses.fields(cls) if field.init]


def config_flag_names(cls: type) -> dict[str, str]:
    """Each init field of dataclass ``cls`` to its flag, to word the library's messages in flags.

    Example:
        >>> from fusemix.train_config import TrainConfig
        >>> config_flag_names(TrainConfig)["grad_clip"]
        '--grad-clip'

    """
    return {field.name: flag(field.name) for field, _ in config_fields(cls)}


def field_default(field: dataclasses.Field[Any]) -> Any:
    """A field's default value (its factory called), ``None`` for a field without one."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of dataclass ``cls``, with its docstring line and default; unset flags stay unset.

    Args:
        parser: Where to add the flags, as one argument group.
        cls: The dataclass; its Google-style ``Attributes:`` section gives each flag's help.
        title: Title of the argument group.

    """
    group = parser.add_argument_group(title)
    docs = _attribute_docs(cls)
    for field, hint in config_fields(cls):
        option = flag(field.name)
        default = field_default(field)
        text = f"{docs.get(field.name, f'{cls.__name__}.{field.name}.')} (default: {format_value(default)})"
        if hint is bool:
            group.add_argument(option, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(hint) is tuple:
            members = typing.get_args(hint)
            group.add_argument(
                option,
                nargs=len(members),
                type=_flag_type(members[0]),
                default=argparse.SUPPRESS,
                metavar=_metavar(members[0]),
                help=text,
            )
        else:
            group.add_argument(
                option, type=_flag_type(hint), default=argparse.SUPPRESS, metavar=_metavar(hint), help=text
            )


def _flag_type(hint: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return _value_from_text(hint, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = _describe_type(hint)
    return parse


def _metavar(hint: Any) -> str:
    if _is_union(hint):
        return "|".join("none" if arg is type(None) else _metavar(arg) for arg in typing.get_args(hint))
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(hint, "VALUE")
