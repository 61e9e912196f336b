"""An encoder built by user code named ``MODULE:FUNCTION``, with the identity ``fusemix extract`` records for it.

``fusemix extract --encoder python --callable MODULE:FUNCTION`` and
``fusemix embed --callable`` build their encoder with
:func:`load_callable_encoder`; call it with the same ``spec`` (and
``argument``, the ``--model`` value) to get an encoder with the same
identity in Python, for example to reopen a model trained on such latents
with :meth:`fusemix.aligned.AlignedModel.from_pretrained`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

INPUT_TYPES: tuple[str, ...] = ("text", "image", "audio", "path")
"""What the items an encoder gets can be (``fusemix extract --input-type``)."""
ARGUMENT_NAMES: tuple[str, ...] = ("spec", "argument", "device", "dtype", "max_batch_size")
"""The arguments of :func:`~fusemix.encoders.load_callable_encoder` that its errors name (``names`` renames them)."""


def callable_name(spec: str) -> str:
    """``MODULE:FUNCTION`` with a ``.py`` file written as its module name, wherever the file lies.

    Example:
        >>> callable_name("src/my_encoders.py:build"), callable_name("my_encoders:build")
        ('my_encoders:build', 'my_encoders:build')

    """
    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        module_name = Path(module_name).stem
    return f"{module_name}:{attribute}"


def _import_target(spec: str, name: str) -> Callable[..., Any]:
    """The object ``MODULE:FUNCTION`` names; MODULE is a module name or a ``.py`` file."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{name}: expected MODULE:FUNCTION (e.g. my_encoders:build), got {spec!r}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        file = Path(module_name).expanduser().resolve()
        if not file.is_file():
            raise ValueError(f"{name}: {module_name}: no such file")
        module_key = f"_fusemix_callable_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}"
        module_spec = importlib.util.spec_from_file_location(module_key, file)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"{name}: {module_name}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_key] = module
        if str(file.parent) not in sys.path:  # let the file import its neighbours
            sys.path.insert(0, str(file.parent))
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            raise ValueError(
                f"{name}: no module named {module_name!r} (from the current folder or installed)"
            ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{name}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{name}: {spec} is a {type(target).__name__}, not a function")
    return target


def _check_factory_call(spec: str, factory: Callable[..., Any], argument: str | None, names: Mapping[str, str]) -> None:
    """Refuse a ``FUNCTION`` whose signature cannot take the call ``FUNCTION()`` / ``FUNCTION(argument)``.

    The usual cause is passing the encoder itself (``encode(items)``) where
    the function that builds it is expected.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some extension types have none; let the call decide
        return
    call = "FUNCTION()" if argument is None else f"FUNCTION({names['argument']} value)"
    try:
        signature.bind() if argument is None else signature.bind(argument)
    except TypeError as err:
        raise TypeError(
            f"{names['spec']}: {spec} cannot be called as {call} ({err}); FUNCTION must build the encoder and "
            "return it (e.g. def build(): return encode), not be the encoder itself"
            + ("" if argument is None else f"; without {names['argument']} it is called as FUNCTION()")
        ) from None


class ListEncoder:
    """A plain callable given the list of items as it is (waveforms of different lengths), with an identity.

    Args:
        fn: The function or ``nn.Module`` (put in eval mode, frozen).
        identity: The identity recorded in a store of its latents.

    """

    def __init__(self, fn: Callable[[list[Any]], Any], identity: dict[str, Any]) -> None:
        if isinstance(fn, torch.nn.Module):
            fn.eval().requires_grad_(False)
        self.fn = fn
        self.identity = identity
        self.sampling_rate = getattr(fn, "sampling_rate", None)

    def __call__(self, items: list[Any]) -> Any:
        return self.fn(items)


def load_callable_encoder(
    spec: str,
    argument: str | None = None,
    *,
    input_type: str = "text",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_batch_size: int | None = None,
    names: Mapping[str, str] | None = None,
) -> Any:
    r"""The encoder ``MODULE:FUNCTION`` builds: ``FUNCTION()``, or ``FUNCTION(argument)``.

    An encoder with an ``identity`` dict (any :mod:`fusemix.encoders`
    adapter) is returned as it is. A plain function or ``nn.Module`` is
    wrapped with the identity ``{"callable": "MODULE:FUNCTION", "model":
    argument}`` (a ``.py`` file by its module name): in a
    :class:`~fusemix.encoders.CallableEncoder` configured by ``device``,
    ``dtype`` and ``max_batch_size``, or, for ``input_type="audio"`` (clips
    differ in length and cannot be stacked), in a :class:`~fusemix.encoders.callable_spec.ListEncoder` that
    passes the list of clips as it is. This is what ``fusemix extract
    --encoder python --callable MODULE:FUNCTION [--model ARGUMENT]`` builds,
    so the identities match.

    Args:
        spec: ``MODULE:FUNCTION``; MODULE is an importable module (the current
            folder is on the path) or a path to a ``.py`` file. Importing it
            runs its code: only name code you trust.
        argument: What ``FUNCTION`` is called with (``None``: no argument).
        input_type: What the items are: ``"text"``, ``"image"``, ``"audio"`` or ``"path"``.
        device: Where a wrapped function or module runs.
        dtype: The dtype floating inputs of a wrapped function are cast to.
        max_batch_size: Items per call of a wrapped function (``None``: all).
        names: What to call this function's arguments in error messages
            (keys of :data:`~fusemix.encoders.callable_spec.ARGUMENT_NAMES`), e.g. the command line's flags.

    Returns:
        The encoder.

    Raises:
        ValueError: If ``spec`` is malformed or names a module or attribute
            that does not exist, ``input_type`` is not one of
            :data:`~fusemix.encoders.callable_spec.INPUT_TYPES`, or ``device`` / ``dtype`` /
            ``max_batch_size`` are given for an encoder with its own identity
            or for a plain audio function.
        TypeError: If ``spec`` or ``argument`` is not a string, or ``spec`` names something that cannot be called as
            ``FUNCTION()`` / ``FUNCTION(argument)`` (e.g. the encoder itself
            rather than the function that builds it), or what it returns is
            not a callable encoder.

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "my_encoders.py").write_text(
        ...     "import torch\ndef build():\n    return lambda texts: torch.ones(len(texts), 3)\n")
        >>> encoder = load_callable_encoder(f"{folder}/my_encoders.py:build")
        >>> encoder.identity["id"], tuple(encoder(["a", "b"]).shape)
        ({'callable': 'my_encoders:build', 'model': None}, (2, 3))

    """
    from fusemix.encoders.callables import CallableEncoder

    unknown = sorted(set(names or {}) - set(ARGUMENT_NAMES))
    if unknown:
        raise ValueError(f"names: {unknown} are not arguments of load_callable_encoder ({list(ARGUMENT_NAMES)})")
    named = {name: name for name in ARGUMENT_NAMES} | dict(names or {})
    if not isinstance(spec, str):
        raise TypeError(f"{named['spec']}: expected a 'MODULE:FUNCTION' string, got {type(spec).__name__}")
    if argument is not None and not isinstance(argument, str):
        raise TypeError(
            f"{named['argument']}: expected a string (what the command line passes, recorded in the identity) or "
            f"None, got {type(argument).__name__}; pass str({argument!r})"
        )
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type: expected one of {list(INPUT_TYPES)}, got {input_type!r}")
    options = {
        name: value
        for name, value in (("device", device), ("dtype", dtype), ("max_batch_size", max_batch_size))
        if value is not None
    }
    factory = _import_target(spec, named["spec"])
    _check_factory_call(spec, factory, argument, named)
    encoder = factory() if argument is None else factory(argument)
    if isinstance(encoder, (str, bytes, Mapping)) or not callable(encoder):
        raise TypeError(
            f"{named['spec']}: {spec} returned a {type(encoder).__name__}; it must return the encoder, a callable "
            "mapping a list of items to a (len(items), dim) tensor"
        )
    if isinstance(getattr(encoder, "identity", None), Mapping):
        if options:
            raise ValueError(
                f"{named[min(options)]}: {spec} returned an encoder with its own identity; set the device, dtype "
                "and batch size there (these only configure a plain function or module)"
            )
        return encoder
    identity = {"callable": callable_name(spec), "model": argument}
    if input_type == "audio":  # CallableEncoder would stack the waveforms, which differ in length
        if options:
            raise ValueError(
                f"{named[min(options)]}: not for a plain audio function, which gets the list of waveforms as it is; "
                "move and batch inside it"
            )
        return ListEncoder(encoder, identity)
    return CallableEncoder(encoder, identity=identity, **options)


__all__ = ["ARGUMENT_NAMES", "INPUT_TYPES", "ListEncoder", "callable_name", "load_callable_encoder"]
