"""Building the encoder that ``fusemix extract --encoder`` and its options describe.

``hf-text``, ``hf-image``, ``hf-audio`` and ``sentence-transformers`` build the
adapters of :mod:`fusemix.encoders` from ``--model``; ``python`` calls the
user's ``--callable MODULE:FUNCTION`` and wraps a plain function in a
:class:`~fusemix.encoders.CallableEncoder` with an identity.
"""

from __future__ import annotations

import argparse
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

from fusemix.cli.common import CommandError, flag

ENCODERS: tuple[str, ...] = ("hf-text", "hf-image", "hf-audio", "sentence-transformers", "python")
ENCODER_INPUT = {"hf-text": "text", "sentence-transformers": "text", "hf-image": "image", "hf-audio": "audio"}
"""The input type each encoder reads (``python`` reads what ``--input-type`` says)."""
_COMMON_OPTIONS = {"device", "model_dtype", "max_batch_size"}
ENCODER_OPTIONS: dict[str, set[str]] = {
    "hf-text": {"pooling", "prefix", "max_length", "normalize", *_COMMON_OPTIONS},
    "hf-image": {"pooling", "normalize", *_COMMON_OPTIONS},
    "hf-audio": {"audio_kind", "clap_output", "crop_seed", "normalize", *_COMMON_OPTIONS},
    "sentence-transformers": {"prefix", "normalize", *_COMMON_OPTIONS},
    "python": set(_COMMON_OPTIONS),
}
"""The adapter options (flags without ``--``) each encoder takes."""
ADAPTER_OPTIONS = sorted(set().union(*ENCODER_OPTIONS.values()))


def _callable_name(spec: str) -> str:
    """``MODULE:FUNCTION`` with a ``.py`` file written as its module name, wherever the file lies."""
    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        module_name = Path(module_name).stem
    return f"{module_name}:{attribute}"


def _load_callable(spec: str) -> Callable[..., Any]:
    """The object ``MODULE:FUNCTION`` names; MODULE is a module name or a ``.py`` file."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"--callable: expected MODULE:FUNCTION (e.g. my_encoders:build), got {spec!r}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        file = Path(module_name).expanduser().resolve()
        if not file.is_file():
            raise CommandError(f"--callable: {module_name}: no such file")
        name = f"_fusemix_callable_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:
            raise CommandError(f"--callable: {module_name}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
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
            raise CommandError(
                f"--callable: no module named {module_name!r} (from the current folder or installed)"
            ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"--callable: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"--callable: {spec} is a {type(target).__name__}, not a function")
    return target


class _ListEncoder:
    """A user's plain callable given the list of items as it is (waveforms of different lengths), with an identity."""

    def __init__(self, fn: Callable[[list[Any]], Any], identity: dict[str, Any]) -> None:
        if isinstance(fn, torch.nn.Module):
            fn.eval().requires_grad_(False)
        self.fn = fn
        self.identity = identity
        self.sampling_rate = getattr(fn, "sampling_rate", None)

    def __call__(self, items: list[Any]) -> Any:
        return self.fn(items)


def _check_factory_call(spec: str, factory: Callable[..., Any], argument: str | None, argument_flag: str) -> None:
    """Refuse a ``FUNCTION`` whose signature cannot take the call ``FUNCTION()`` / ``FUNCTION(argument)``.

    The usual cause is passing the encoder itself (``encode(items)``) where
    the function that builds it is expected.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some extension types have none; let the call decide
        return
    call = "FUNCTION()" if argument is None else f"FUNCTION({argument_flag} value)"
    try:
        signature.bind() if argument is None else signature.bind(argument)
    except TypeError as err:
        raise CommandError(
            f"--callable: {spec} cannot be called as {call} ({err}); FUNCTION must build the encoder and return "
            f"it (e.g. def build(): return encode), not be the encoder itself"
            + ("" if argument is None else f"; without {argument_flag} it is called as FUNCTION()")
        ) from None


def python_encoder(
    spec: str, argument: str | None, options: Mapping[str, Any], input_type: str, *, argument_flag: str
) -> Any:
    """The encoder that ``--callable MODULE:FUNCTION`` builds: ``FUNCTION()``, or ``FUNCTION(argument)``.

    An encoder with an ``identity`` dict is used as it is; a plain function
    or module is wrapped with the identity ``{"callable": "MODULE:FUNCTION",
    "model": argument}`` (in a :class:`~fusemix.encoders.CallableEncoder`
    configured by ``options``, except for audio).

    Args:
        spec: ``MODULE:FUNCTION``.
        argument: What ``FUNCTION`` is called with (``fusemix extract
            --model``, ``fusemix embed --encoder-path``); ``None`` calls it
            without an argument.
        options: ``device``, ``model_dtype`` and ``max_batch_size`` when given.
        input_type: What the items are (``"audio"`` items go to a plain function as they are).
        argument_flag: The flag that gives ``argument`` (named when ``FUNCTION`` cannot take it).

    Raises:
        CommandError: If ``spec`` cannot be imported, cannot be called with
            ``argument`` (e.g. it is the encoder itself rather than the
            function that builds it) or does not return an encoder, or
            ``options`` are given for an encoder with its own identity.

    """
    from fusemix.encoders import CallableEncoder

    factory = _load_callable(spec)
    _check_factory_call(spec, factory, argument, argument_flag)
    encoder = factory() if argument is None else factory(argument)
    if isinstance(encoder, (str, bytes, Mapping)) or not callable(encoder):
        raise CommandError(
            f"--callable: {spec} returned a {type(encoder).__name__}; it must return the encoder, a callable "
            "mapping a list of items to a (len(items), dim) tensor"
        )
    if isinstance(getattr(encoder, "identity", None), Mapping):
        if options:
            raise CommandError(
                f"{flag(sorted(options)[0])}: {spec} returned an encoder with its own identity; set the "
                "device, dtype and batch size there (these flags only configure a plain function or module)"
            )
        return encoder
    identity = {"callable": _callable_name(spec), "model": argument}
    if input_type == "audio":  # CallableEncoder would stack the waveforms, which differ in length
        if options:
            raise CommandError(
                f"{flag(sorted(options)[0])}: not for a plain audio function, which gets the list of waveforms as "
                "it is; move and batch inside it"
            )
        return _ListEncoder(encoder, identity)
    return CallableEncoder(
        encoder,
        identity=identity,
        max_batch_size=options.get("max_batch_size"),
        device=options.get("device"),
        dtype=options.get("model_dtype"),
    )


def build_encoder(args: argparse.Namespace, options: dict[str, Any], input_type: str) -> Any:
    """The encoder ``--encoder`` and the adapter options describe (loads the model)."""
    if args.encoder == "python":
        if not args.callable:
            raise CommandError("--callable: --encoder python needs --callable MODULE:FUNCTION")
        return python_encoder(args.callable, args.model, options, input_type, argument_flag="--model")
    if not args.model:
        raise CommandError(f"--model: --encoder {args.encoder} needs the Hub id or local folder of the model")
    from fusemix.encoders import HFAudioEncoder, HFImageEncoder, HFTextEncoder, SentenceTransformerEncoder

    kwargs = {{"model_dtype": "dtype", "audio_kind": "kind"}.get(name, name): value for name, value in options.items()}
    classes = {
        "hf-text": HFTextEncoder,
        "hf-image": HFImageEncoder,
        "hf-audio": HFAudioEncoder,
        "sentence-transformers": SentenceTransformerEncoder,
    }
    try:
        return classes[args.encoder](args.model, progress=not args.no_progress, **kwargs)
    except OSError as err:  # transformers / sentence-transformers: the model cannot be found or loaded
        raise CommandError(f"--model: cannot load {args.model!r}: {err}") from err


def default_device(num_workers: int) -> str | None:
    """``cuda:LOCAL_RANK`` for a torchrun worker on a CUDA machine; ``None`` (the adapter's choice) otherwise."""
    local_rank = os.environ.get("LOCAL_RANK")
    if num_workers > 1 and local_rank is not None and local_rank.isdigit() and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return None
