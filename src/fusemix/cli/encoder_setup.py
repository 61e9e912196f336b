"""Building the encoder that ``fusemix extract --encoder`` and its options describe.

``hf-text``, ``hf-image``, ``hf-audio`` and ``sentence-transformers`` build the
adapters of :mod:`fusemix.encoders` from ``--model``; ``python`` calls the
user's ``--callable MODULE:FUNCTION`` and wraps a plain function in a
:class:`~fusemix.encoders.CallableEncoder` with an identity.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

import torch

from fusemix.cli.common import CommandError, user_code_errors

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


def python_encoder(
    spec: str, argument: str | None, options: Mapping[str, Any], input_type: str, *, argument_flag: str
) -> Any:
    """The encoder that ``--callable MODULE:FUNCTION`` builds, by :func:`~fusemix.encoders.load_callable_encoder`.

    Args:
        spec: ``MODULE:FUNCTION``.
        argument: What ``FUNCTION`` is called with (``fusemix extract
            --model``, ``fusemix embed --encoder-path``); ``None`` calls it
            without an argument.
        options: ``device``, ``model_dtype`` and ``max_batch_size`` when given.
        input_type: What the items are (``"audio"`` items go to a plain function as they are).
        argument_flag: The flag that gives ``argument``.

    Raises:
        CommandError: If ``spec`` cannot be imported, cannot be called with
            ``argument`` (e.g. it is the encoder itself rather than the
            function that builds it) or does not return an encoder, or
            ``options`` are given for an encoder with its own identity.

    """
    from fusemix.encoders import load_callable_encoder

    names = {"spec": "--callable", "argument": argument_flag, "device": "--device", "dtype": "--model-dtype"}
    names["max_batch_size"] = "--max-batch-size"
    try:
        with user_code_errors(f"--callable {spec}"):  # raised inside the user's module or FUNCTION: its traceback
            return load_callable_encoder(
                spec,
                argument,
                input_type=input_type,
                device=options.get("device"),
                dtype=options.get("model_dtype"),
                max_batch_size=options.get("max_batch_size"),
                names=names,
            )
    except (TypeError, ValueError) as err:
        raise CommandError(str(err)) from err


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
