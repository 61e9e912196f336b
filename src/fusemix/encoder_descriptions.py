"""Describe the frozen encoders of a trained model in ``encoders.json``, and rebuild them from it.

Adapters only accept latents of the encoder they were trained on, so a model
directory is only usable from raw inputs if it says which encoders those
were. ``encoders.json`` lies next to ``model.safetensors`` and
``fusemix.json``: :func:`fusemix.checkpoint.save_model` and
:func:`fusemix.train.fit` write it when given ``encoders=``, ``fusemix train``
from the descriptions its ``fusemix extract`` stores record, and
:func:`save_encoder_descriptions` adds it to a model directory.
:func:`build_encoder` gets the same encoder back; :func:`identity_differences`
checks that an encoder is the one a model was trained on.

``encoders.json``::

    {"format": "fusemix-encoders", "format_version": 1,
     "encoders": {
       "text": {"kind": "sentence-transformers", "location": "sentence-transformers/all-MiniLM-L6-v2",
                "local": false, "options": {"normalize": false, "prefix": "", "dtype": "float32",
                "max_batch_size": 32, "preprocess": "fusemix.preprocess.blip_caption"}, "identity": {...}},
       "image": {"kind": "custom", "class": "my_code.MyEncoder", "identity": {...}}}}

Kinds (the names of ``fusemix extract --encoder``):

- ``"hf-text"``, ``"hf-image"``, ``"hf-audio"``, ``"sentence-transformers"``:
  the adapters of :mod:`fusemix.encoders`. ``location`` is the Hub id or the
  absolute local directory, ``options`` the constructor arguments; such an
  encoder is rebuilt from the description alone (a local directory that has
  moved is given as a new ``location``). Input preparation is an option too
  when fusemix can rebuild it: ``"transform"``, the identity of a
  :class:`~fusemix.preprocess.ResizeCenterCrop` (e.g.
  :data:`~fusemix.preprocess.DINOV2_EVAL_TRANSFORM`), and ``"preprocess"``,
  the qualified name of a function of :mod:`fusemix.preprocess` (e.g.
  ``"fusemix.preprocess.blip_caption"``).
- ``"custom"``: any other encoder (a :class:`~fusemix.encoders.CallableEncoder`,
  your own class, or one of the adapters above with a transform or preprocess
  function of your own). Its code cannot be stored in JSON (and running code
  named by a downloaded file would be unsafe), so only its ``identity`` is
  kept: the user passes the encoder again and the identity is checked.

``identity`` is what :func:`fusemix.extract.encoder_identity_of` returns, the
record latent stores keep too. The device is never stored: it belongs to the
machine, not to the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fusemix._fileio import write_json_atomic
from fusemix.encoders import HFAudioEncoder, HFImageEncoder, HFTextEncoder, SentenceTransformerEncoder
from fusemix.encoders.base import dtype_name
from fusemix.extract import encoder_identity_of
from fusemix.preprocess import ResizeCenterCrop, blip_caption

ENCODERS_FILE = "encoders.json"
"""Name of the encoder descriptions file in a model directory."""
FORMAT = "fusemix-encoders"
FORMAT_VERSION = 1

_CLASSES: dict[str, type] = {
    "hf-text": HFTextEncoder,
    "hf-image": HFImageEncoder,
    "hf-audio": HFAudioEncoder,
    "sentence-transformers": SentenceTransformerEncoder,
}
REBUILDABLE_KINDS: tuple[str, ...] = tuple(_CLASSES)
"""Kinds that :func:`build_encoder` rebuilds from the description alone."""

PREPROCESSORS: dict[str, Callable[[str], str]] = {
    f"{function.__module__}.{function.__qualname__}": function for function in (blip_caption,)
}
"""The text ``preprocess`` functions a description names (by qualified name) and :func:`build_encoder` rebuilds."""


class _NotRebuildable(Exception):
    """An encoder's options include an object that a description cannot name (it is described as custom)."""


def _transform_option(transform: Callable[..., Any] | None) -> dict[str, Any]:
    """``{"transform": identity}`` for a :class:`ResizeCenterCrop`, ``{}`` without a transform."""
    if transform is None:
        return {}
    if type(transform) is not ResizeCenterCrop:
        raise _NotRebuildable
    return {"transform": transform.identity}


def _preprocess_option(preprocess: Callable[[str], str] | None) -> dict[str, Any]:
    """``{"preprocess": qualified name}`` for a function of :data:`PREPROCESSORS`, ``{}`` without one."""
    if preprocess is None:
        return {}
    name = f"{getattr(preprocess, '__module__', '')}.{getattr(preprocess, '__qualname__', '')}"
    if PREPROCESSORS.get(name) is not preprocess:
        raise _NotRebuildable
    return {"preprocess": name}


def _common_options(encoder: Any) -> dict[str, Any]:
    return {"dtype": dtype_name(encoder.dtype), "max_batch_size": encoder.max_batch_size}


def _hf_text_options(encoder: HFTextEncoder) -> dict[str, Any]:
    return {
        "pooling": encoder.pooling,
        "prefix": encoder.prefix,
        "max_length": encoder.max_length,
        "normalize": encoder.normalize,
        **_common_options(encoder),
        **_preprocess_option(encoder.preprocess),
    }


def _hf_image_options(encoder: HFImageEncoder) -> dict[str, Any]:
    return {
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        **_common_options(encoder),
        **_transform_option(encoder.transform),
    }


def _hf_audio_options(encoder: HFAudioEncoder) -> dict[str, Any]:
    options: dict[str, Any] = {"kind": encoder.kind, "normalize": encoder.normalize, **_common_options(encoder)}
    if encoder.kind == "clap":
        options.update(clap_output=encoder.clap_output, crop_seed=encoder.crop_seed)
    return options


def _sentence_transformer_options(encoder: SentenceTransformerEncoder) -> dict[str, Any]:
    return {
        "normalize": encoder.normalize,
        "prefix": encoder.prefix,
        **_common_options(encoder),
        **_preprocess_option(encoder.preprocess),
    }


_OPTIONS: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    HFTextEncoder: ("hf-text", _hf_text_options),
    HFImageEncoder: ("hf-image", _hf_image_options),
    HFAudioEncoder: ("hf-audio", _hf_audio_options),
    SentenceTransformerEncoder: ("sentence-transformers", _sentence_transformer_options),
}


def describe_encoder(encoder: Callable[..., Any]) -> dict[str, Any]:
    """The JSON description of ``encoder`` that :func:`build_encoder` reads back.

    Only the exact classes of :mod:`fusemix.encoders`' model adapters are
    rebuildable, and only with no input preparation or one fusemix can
    rebuild: a ``transform`` that is exactly a
    :class:`~fusemix.preprocess.ResizeCenterCrop`, a ``preprocess`` function
    of :data:`PREPROCESSORS`. Everything else (subclasses included, whose
    behaviour may differ, and adapters with a transform or preprocess
    function of your own) is described as ``"custom"`` by its identity, so
    that it is never rebuilt without what prepares its inputs.

    Args:
        encoder: A frozen encoder: a list of items in, ``(B, D)`` latents out.

    Returns:
        ``{"kind", "location", "local", "options", "identity"}`` for a
        rebuildable encoder, ``{"kind": "custom", "class", "identity"}``
        otherwise.

    Raises:
        TypeError: If ``encoder`` is not callable or its identity is not JSON.

    Example:
        >>> from fusemix.encoders import CallableEncoder
        >>> describe_encoder(CallableEncoder(lambda x: x, identity="toy"))["kind"]
        'custom'

    """
    if not callable(encoder):
        raise TypeError(f"encoder: expected a callable encoder, got {type(encoder).__name__}")
    identity = encoder_identity_of(encoder)
    cls = type(encoder)
    custom = {"kind": "custom", "class": f"{cls.__module__}.{cls.__qualname__}", "identity": identity}
    known = _OPTIONS.get(cls)
    if known is None:
        return custom
    kind, options_of = known
    try:
        options = options_of(encoder)
    except _NotRebuildable:
        return custom
    source = encoder.source  # type: ignore[attr-defined]
    location = {"location": source.location, "local": source.is_local}
    return {"kind": kind, **location, "options": options, "identity": identity}


def _check_description(name: str, description: object) -> dict[str, Any]:
    if not isinstance(description, Mapping):
        raise TypeError(f"{name}: expected an encoder description (a dict), got {type(description).__name__}")
    kind = description.get("kind")
    if kind == "custom":
        required = ("identity",)
    elif kind in _CLASSES:
        required = ("location", "local", "options", "identity")
    else:
        raise ValueError(f"{name}: unknown encoder kind {kind!r}; expected 'custom' or one of {list(_CLASSES)}")
    missing = [key for key in required if key not in description]
    if missing:
        raise ValueError(f"{name}: a {kind!r} description needs {missing}")
    if not isinstance(description["identity"], Mapping):
        raise ValueError(f"{name}: 'identity' must be a dict, got {type(description['identity']).__name__}")
    if kind != "custom" and not isinstance(description["options"], Mapping):
        raise ValueError(f"{name}: 'options' must be a dict, got {type(description['options']).__name__}")
    return json.loads(json.dumps(dict(description), allow_nan=False))


def _rebuilt_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a description's ``options``: a ``transform`` and a ``preprocess`` rebuilt.

    Raises:
        ValueError: If the transform or the preprocess function is not one fusemix rebuilds.

    """
    rebuilt = dict(options)
    if "transform" in rebuilt:
        rebuilt["transform"] = _rebuilt_transform(rebuilt["transform"])
    if "preprocess" in rebuilt:
        name = rebuilt["preprocess"]
        if not isinstance(name, str) or name not in PREPROCESSORS:
            raise ValueError(f"description: options.preprocess {name!r} is not one of {sorted(PREPROCESSORS)}")
        rebuilt["preprocess"] = PREPROCESSORS[name]
    return rebuilt


def _rebuilt_transform(identity: object) -> ResizeCenterCrop:
    """The :class:`ResizeCenterCrop` whose ``identity`` is ``identity``."""
    if not isinstance(identity, Mapping) or identity.get("transform") != "resize-center-crop":
        raise ValueError(f"description: options.transform {identity!r} is not a resize-center-crop transform")
    try:
        transform = ResizeCenterCrop(
            size=identity["size"],
            resize=identity["resize"],
            interpolation=identity["interpolation"],
            mean=tuple(identity["mean"]),
            std=tuple(identity["std"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"description: options.transform {identity!r} is not a valid transform ({err!r})") from None
    if transform.identity != identity:  # e.g. a setting of a newer fusemix, which this one would ignore
        raise ValueError(f"description: options.transform {identity!r} has settings this fusemix does not know")
    return transform


def build_encoder(
    description: Mapping[str, Any],
    *,
    location: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Callable[..., Any]:
    """Rebuild the encoder a :func:`describe_encoder` description stands for.

    Args:
        description: One entry of ``encoders.json``.
        location: Where the model is now (a local directory or a Hub id),
            for a local model directory that has moved; the description's
            ``location`` when ``None``.
        device: Where the encoder runs; ``None`` picks CUDA when available.
        progress: Show the libraries' progress bars and INFO logs while the
            model loads (the adapters' ``progress``).

    Returns:
        The encoder, loaded (for Hugging Face models this may download them
        unless ``HF_HUB_OFFLINE=1``).

    Raises:
        ValueError: If the description is malformed, names a transform or
            preprocess function fusemix does not rebuild, or is of kind
            ``"custom"`` (those cannot be rebuilt: pass the encoder itself).
        FileNotFoundError: If a local model directory is not there; the
            message says how to give its new place.

    """
    spec = _check_description("description", description)
    if spec["kind"] == "custom":
        raise ValueError(
            f"description: a custom encoder ({spec.get('class', 'unknown class')}) cannot be rebuilt from JSON; "
            "build it yourself and pass it (its identity is checked against the description)"
        )
    target = spec["location"] if location is None else os.fspath(location)
    if location is None and spec["local"] and not Path(target).is_dir():
        raise FileNotFoundError(
            f"description: the {spec['kind']} model directory {target} is not on this machine; pass its new place "
            "as location= (for AlignedModel.from_pretrained: encoders={modality: '/new/place'})"
        )
    options = _rebuilt_options(spec["options"])
    return _CLASSES[spec["kind"]](target, device=device, progress=progress, **options)


def identity_differences(recorded: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """What differs between the identity a model was trained with and an encoder's identity.

    Equal identities give ``[]``. Two allowances keep a moved or re-downloaded
    model usable: a local model's directory name (``"model"``) may change when
    both identities carry the same ``"fingerprint"`` of the weights, and a Hub
    ``"revision"`` that either side does not know (``None``) is not compared.
    Nested dicts are compared key by key.

    Args:
        recorded: The identity in ``encoders.json`` (or a store manifest).
        actual: The identity of the encoder at hand.

    Returns:
        One ``"key: recorded ..., now ..."`` line per difference.

    Example:
        >>> identity_differences({"model": "a", "fingerprint": "f", "pooling": "cls"},
        ...                      {"model": "b", "fingerprint": "f", "pooling": "mean"})
        ['pooling: recorded "cls", now "mean"']

    """
    return _differences(recorded, actual, "")


def _differences(recorded: Mapping[str, Any], actual: Mapping[str, Any], prefix: str) -> list[str]:
    same_weights = "fingerprint" in recorded and recorded.get("fingerprint") == actual.get("fingerprint")
    problems = []
    for key in sorted(set(recorded) | set(actual)):
        old, new = recorded.get(key), actual.get(key)
        if key == "model" and same_weights:
            continue
        if key == "revision" and (old is None or new is None):
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            problems.extend(_differences(old, new, f"{prefix}{key}."))
        elif key not in recorded:
            problems.append(f"{prefix}{key}: not recorded, now {json.dumps(new)}")
        elif key not in actual:
            problems.append(f"{prefix}{key}: recorded {json.dumps(old)}, now absent")
        elif old != new:
            problems.append(f"{prefix}{key}: recorded {json.dumps(old)}, now {json.dumps(new)}")
    return problems


EncoderOrDescription = Callable[..., Any] | Mapping[str, Any]
"""A frozen encoder, or a :func:`describe_encoder` description of one."""


def describe_encoders(
    encoders: Mapping[str, EncoderOrDescription], *, modalities: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The descriptions of several encoders, checked: what ``encoders.json`` holds.

    Args:
        encoders: Modality name to its frozen encoder, or to an
            already-made description (e.g. from a store's metadata).
        modalities: The model's modalities; an encoder of another modality
            is refused. ``None`` accepts any name.

    Returns:
        Modality name to description, in the order of ``encoders``.

    Raises:
        TypeError, ValueError: If ``encoders`` is empty, names a modality
            not in ``modalities``, or an entry is neither an encoder nor a
            valid description.

    Example:
        >>> from fusemix.encoders import CallableEncoder
        >>> described = describe_encoders({"image": CallableEncoder(len, identity="toy")}, modalities=["image", "text"])
        >>> described["image"]["kind"], described["image"]["identity"]["id"]
        ('custom', 'toy')

    """
    if not isinstance(encoders, Mapping) or not encoders:
        raise ValueError("encoders: expected a non-empty mapping of modality name to encoder or description")
    if modalities is not None:
        unknown = [m for m in encoders if m not in modalities]
        if unknown:
            raise ValueError(f"encoders: {unknown} are not among the model's modalities {list(modalities)}")
    described: dict[str, dict[str, Any]] = {}
    for modality, encoder in encoders.items():
        if not isinstance(modality, str) or not modality:
            raise TypeError(f"encoders: modality names must be non-empty strings, got {modality!r}")
        if isinstance(encoder, Mapping):
            described[modality] = _check_description(f"encoders[{modality!r}]", encoder)
        else:
            described[modality] = describe_encoder(encoder)
    return described


def save_encoder_descriptions(model_dir: str | os.PathLike[str], encoders: Mapping[str, EncoderOrDescription]) -> Path:
    """Write ``encoders.json`` into a model directory, atomically.

    Args:
        model_dir: An existing directory (a model directory, or the staging
            directory it is written from).
        encoders: Modality name to its frozen encoder, or to an
            already-made description (e.g. from a store's metadata).

    Returns:
        The path of ``encoders.json``.

    Raises:
        FileNotFoundError: If ``model_dir`` is not a directory.
        TypeError, ValueError: If an entry is neither an encoder nor a valid description.

    Example:
        >>> import tempfile
        >>> from fusemix.encoders import CallableEncoder
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_encoder_descriptions(tmp, {"image": CallableEncoder(lambda x: x, identity="toy")})
        ...     read_encoder_descriptions(tmp)["image"]["identity"]["id"]
        'toy'

    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model_dir: {root} is not a directory")
    described = describe_encoders(encoders)
    path = root / ENCODERS_FILE
    write_json_atomic(path, {"format": FORMAT, "format_version": FORMAT_VERSION, "encoders": described})
    return path


def read_encoder_descriptions(model_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The encoder descriptions of a model directory; ``{}`` when it has no ``encoders.json``.

    Args:
        model_dir: The model directory.

    Returns:
        Modality name to description.

    Raises:
        ValueError: If ``encoders.json`` is unreadable, of another format or
            newer than this fusemix reads.

    """
    path = Path(model_dir) / ENCODERS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable encoder descriptions ({err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("encoders"), dict):
        raise ValueError(f"{path}: not a fusemix encoder descriptions file")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is newer than this fusemix reads; upgrade fusemix")
    return {
        modality: _check_description(f"{path}: {modality}", description)
        for modality, description in record["encoders"].items()
    }


__all__ = [
    "ENCODERS_FILE",
    "PREPROCESSORS",
    "REBUILDABLE_KINDS",
    "build_encoder",
    "describe_encoder",
    "describe_encoders",
    "identity_differences",
    "read_encoder_descriptions",
    "save_encoder_descriptions",
]
