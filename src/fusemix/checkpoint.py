"""Model directories and training checkpoints, without pickle.

A *model directory* (:func:`save_model` / :func:`load_model`) holds
``model.safetensors`` (the state dict) and ``fusemix.json`` (modalities,
latent dims, adapter and loss settings, fusemix version): enough to rebuild a
:class:`~fusemix.FusionModel` anywhere. Saved with ``encoders=``, it also
holds ``encoders.json``, which frozen encoder feeds each adapter
(:mod:`fusemix.encoder_descriptions`), for
:meth:`fusemix.aligned.AlignedModel.from_pretrained`.

A *training checkpoint* (:func:`save_training_checkpoint` /
:func:`load_training_checkpoint`) adds ``optimizer.pt`` and ``rng.pt``
(plain tensors and dicts, readable with ``torch.load(weights_only=True)``),
``state.json`` (progress, batcher place, config, history) and, for a run
that selects its best evaluation, ``best.safetensors`` (those weights).

Directories are written whole: into a hidden sibling, flushed to disk, then
swapped in with renames, so a reader sees the old directory or the new one,
never a mix, whenever the writer is killed (:func:`atomic_directory`; it and
the atomic file writes live in ``fusemix._fileio`` and are re-exported here).
safetensors is an optional dependency (``pip install "fusemix[train]"``).

Reading never writes: :func:`load_model` and :func:`load_training_checkpoint`
work on a read-only disk and beside a concurrent writer (a directory swapped
in during a read is read again). Settling a write whose writer was killed
mid-swap belongs to writers (:func:`save_model`, ``fit``) or to an explicit
:func:`recover_directory`; a reader that finds the directory missing with the
complete new version beside it waits briefly for a writer to finish the
swap, then raises ``FileNotFoundError`` saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from fusemix._fileio import (
    atomic_directory,
    interrupted_write,
    recover_directory,
    write_json_atomic,
    write_text_atomic,
)
from fusemix._optional import require
from fusemix._registry import PartConfigError, build_part, describe_part
from fusemix._version import fusemix_version
from fusemix.model import FusionModel

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "fusemix.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
BEST_WEIGHTS = "best.safetensors"
FORMAT_VERSION = 1

_SWAP_WAIT_S = 2.0
"""How long a reader waits for a missing directory whose new version lies beside it (a writer swapping it in)."""
_READ_ATTEMPTS = 20
"""How many times a reader reads a directory that keeps being replaced during the read."""
_BACKOFF_S, _BACKOFF_MAX_S = 0.001, 0.1
"""A reader's pause before its second read (doubled before each next one, up to the maximum): about 1.5 s in all."""
_MODEL_RECOVERY = "call fusemix.checkpoint.recover_directory on it (or save the model again), then load it"
_CHECKPOINT_RECOVERY = (
    "fit(..., resume=True) settles it when it resumes, or call fusemix.checkpoint.recover_directory on it"
)
Read = TypeVar("Read")


def require_safetensors() -> ModuleType:
    """``safetensors.torch``, or an ``ImportError`` that says how to install it (``pip install "fusemix[train]"``)."""
    return require("safetensors.torch", extra="train", user="saving and loading models")


def _state_to_save(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def describe_model(model: FusionModel) -> dict[str, Any]:
    """The JSON description of ``model`` stored in ``fusemix.json`` (without weights).

    Every adapter, the loss and the structure term describe themselves
    (``to_config``; registered in ``fusemix._registry``).

    Args:
        model: A :class:`~fusemix.FusionModel` of built-in adapters and loss.

    Returns:
        ``{"format", "format_version", "fusemix_version", "modalities",
        "dims", "shared_dim", "adapters", "loss", "structure",
        "structure_weight"}``.

    Raises:
        TypeError: If the model holds a custom adapter or loss.

    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"model: expected a FusionModel, got {type(model).__name__}")
    adapters = {
        name: describe_part("adapter", a, where=f"model: adapter {name!r}") for name, a in model.adapters.items()
    }
    shared = {a.out_dim for a in model.adapters.values()}
    return {
        "format": "fusemix-model",
        "format_version": FORMAT_VERSION,
        "fusemix_version": fusemix_version(),
        "modalities": model.modalities,
        "dims": {name: a.in_dim for name, a in model.adapters.items()},
        "shared_dim": shared.pop() if len(shared) == 1 else None,
        "adapters": adapters,
        "loss": describe_part("loss", model.loss, where="model: loss"),
        "structure": None
        if model.structure is None
        else describe_part("structure", model.structure, where="model: structure"),
        "structure_weight": model.structure_weight,
    }


def _check_top_level(description: Mapping[str, Any]) -> None:
    """Raise :class:`PartConfigError` unless the fields outside the parts are those of a model description."""
    if description.get("format") != "fusemix-model":
        found = description.get("format")
        raise PartConfigError("format", f"{found!r} is not 'fusemix-model'; not a fusemix model description")
    version = description.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PartConfigError("format_version", f"expected an int <= {FORMAT_VERSION}, got {version!r}")
    if version > FORMAT_VERSION:
        raise PartConfigError(
            "format_version", f"{version} is newer than this fusemix reads ({FORMAT_VERSION}); upgrade fusemix"
        )
    adapters = description.get("adapters")
    if not isinstance(adapters, Mapping):
        raise PartConfigError(
            "adapters", f"expected an object of modality name to adapter, got {type(adapters).__name__}"
        )
    if not adapters:
        raise PartConfigError("adapters", "expected at least one modality")


def _check_redundant_fields(description: Mapping[str, Any], model: FusionModel) -> None:
    """``modalities`` and ``dims``, when present, must say what the adapters say."""
    modalities = description.get("modalities", model.modalities)
    if modalities != model.modalities:
        raise PartConfigError("modalities", f"{modalities!r} differs from the adapters' {model.modalities!r}")
    dims = description.get("dims")
    in_dims = {name: getattr(adapter, "in_dim", None) for name, adapter in model.adapters.items()}
    if dims is not None and dims != in_dims:
        raise PartConfigError("dims", f"{dims!r} differs from the adapters' in_dim {in_dims!r}")


def build_model(description: Mapping[str, Any], *, source: str = MODEL_CONFIG) -> FusionModel:
    """Build an untrained :class:`~fusemix.FusionModel` from a :func:`describe_model` description.

    Every field is checked before anything is built: under
    ``torch.device("meta")`` the model can be built without allocating
    anything, to learn the shapes its weights must have.

    Args:
        description: The parsed ``fusemix.json``.
        source: Names the description in error messages (a file path).

    Returns:
        The model, with freshly initialised weights.

    Raises:
        ValueError: If the description is not that of a fusemix model; the
            message starts with ``source`` and the field's dotted path, e.g.
            ``fusemix.json: adapters.image: in_dim: expected an int, got str``.

    """
    if not isinstance(description, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(description).__name__}")
    try:
        _check_top_level(description)
        adapters = {
            name: build_part("adapter", spec, where=f"adapters.{name}")
            for name, spec in description["adapters"].items()
        }
        loss = build_part("loss", description.get("loss"), where="loss")
        spec = description.get("structure")
        structure = None if spec is None else build_part("structure", spec, where="structure")
    except PartConfigError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        model = FusionModel(
            adapters, loss=loss, structure=structure, structure_weight=description.get("structure_weight", 0.0)
        )
        _check_redundant_fields(description, model)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None
    return model


def _config_dict(config: object) -> dict[str, Any] | None:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config: expected a TrainConfig, a mapping or None, got {type(config).__name__}")


def save_model(
    model: FusionModel,
    path: str | Path,
    *,
    config: object = None,
    encoders: Mapping[str, Callable[..., Any] | Mapping[str, Any]] | None = None,
) -> Path:
    """Save ``model`` as a model directory: ``model.safetensors`` + ``fusemix.json`` (+ ``encoders.json``).

    The directory is written whole (see :func:`atomic_directory`); an
    existing one at ``path`` is replaced.

    Args:
        model: A :class:`~fusemix.FusionModel` of built-in adapters and loss.
        path: The directory to write.
        config: The :class:`~fusemix.train.TrainConfig` (or a dict) the model
            was trained with, stored for reference under ``"train_config"``.
        encoders: Modality name to the frozen encoder its adapter was
            trained on, or to a description of it
            (:func:`fusemix.encoder_descriptions.describe_encoder`), written
            to ``encoders.json`` so that
            :meth:`fusemix.aligned.AlignedModel.from_pretrained` gets the
            encoders back; some modalities may be left out. ``None`` writes
            no ``encoders.json``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: If safetensors is not installed.
        TypeError: If the model holds a custom adapter or loss.
        ValueError: If ``encoders`` names a modality the model lacks or
            holds something that is neither an encoder nor a description
            (checked before anything is written).

    Example:
        >>> import tempfile, pathlib
        >>> model = FusionModel.from_dims({"image": 6, "text": 4}, shared_dim=3, depth=1).eval()
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> _ = save_model(model, folder)
        >>> x = torch.randn(2, 4)
        >>> torch.equal(load_model(folder).embed("text", x), model.embed("text", x))
        True

    """
    st = require_safetensors()
    description = describe_model(model)
    description["train_config"] = _config_dict(config)
    described = None
    if encoders is not None:
        from fusemix.encoder_descriptions import describe_encoders, save_encoder_descriptions

        described = describe_encoders(encoders, modalities=model.modalities)
    path = Path(path)
    with atomic_directory(path) as tmp:
        st.save_file(_state_to_save(model), str(tmp / MODEL_WEIGHTS), metadata={"format": "pt"})
        write_json_atomic(tmp / MODEL_CONFIG, description)
        if described is not None:
            save_encoder_descriptions(tmp, described)
    return path


def _directory_id(path: Path) -> tuple[int, int] | None:
    """Device and inode of a directory (a swap-in gives a new one), ``None`` if it is missing."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _wait_for_swap(path: Path, recovery: str) -> None:
    """Return once ``path`` is not a missing directory with an interrupted write's version beside it.

    Raises:
        FileNotFoundError: If that lasts ``_SWAP_WAIT_S`` (the writer was
            killed mid-swap); the message says how to recover (``recovery``).

    """
    deadline = time.monotonic() + _SWAP_WAIT_S
    while (leftover := interrupted_write(path)) is not None:
        if time.monotonic() >= deadline:
            raise FileNotFoundError(
                f"path: {path} is missing, but {leftover} holds the version an interrupted write left (its writer "
                f"was killed while swapping it in); {recovery}"
            )
        time.sleep(0.01)


@contextlib.contextmanager
def _pinned_id(path: Path) -> Iterator[tuple[int, int] | None]:
    """The directory's device and inode, the directory held open meanwhile so no new one can take its inode."""
    try:
        fd: int | None = os.open(path, os.O_RDONLY)
    except OSError:  # missing, or a platform that cannot open directories: compare without the pin
        fd = None
    try:
        info = None if fd is None else os.fstat(fd)
        yield _directory_id(path) if info is None else (info.st_dev, info.st_ino)
    finally:
        if fd is not None:
            os.close(fd)


def _read_directory(path: Path, read: Callable[[], Read], recovery: str) -> Read:
    """``read()`` a directory that a writer may replace whole meanwhile, without writing anything.

    A read during which the directory was swapped for another version is
    repeated, so the result never mixes two versions: the directory is held
    open while it is read, so a swap shows as another inode at ``path``. A
    directory found missing in the middle of a swap (the old version moved
    aside, the new one not yet in place) is waited for, not reported missing.
    """
    for attempt in range(_READ_ATTEMPTS):
        if attempt:  # back off, so that a writer replacing the directory in a burst can finish it
            time.sleep(min(_BACKOFF_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
        _wait_for_swap(path, recovery)
        with _pinned_id(path) as before:
            if before is None and interrupted_write(path) is not None:
                continue  # swapped out after the wait, the new version not in yet: wait for it again
            try:
                result = read()
            except Exception:
                if _directory_id(path) == before:
                    raise
                continue
            if _directory_id(path) == before:
                return result
    raise OSError(f"path: {path} was replaced {_READ_ATTEMPTS} times while being read; read it again later")


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> FusionModel:
    """Rebuild a model saved by :func:`save_model`, in eval mode.

    Args:
        path: The model directory.
        device: Where to put the weights.

    Reading writes nothing (a read-only directory loads), and a concurrent
    :func:`save_model` of the same path is safe: the model is whole, from
    one version or the other.

    Returns:
        The :class:`~fusemix.FusionModel`, in eval mode (dropout off).

    Raises:
        FileNotFoundError: If ``path`` lacks ``fusemix.json`` or
            ``model.safetensors``, or is missing while an interrupted save
            left its new version beside it (the message says how to recover).
        ValueError: If the files do not describe a fusemix model or the
            weights do not fit the description.

    """
    st = require_safetensors()
    path = Path(path)
    return _read_directory(path, lambda: _load_model(st, path, device), _MODEL_RECOVERY)


def _load_model(st: ModuleType, path: Path, device: str | torch.device) -> FusionModel:
    """Check the description, then the weights' header against it, then build the model and load the weights."""
    for name in (MODEL_CONFIG, MODEL_WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"path: {path} has no {name}; expected a directory written by save_model")
    config_file, weights_file = path / MODEL_CONFIG, path / MODEL_WEIGHTS
    description = _read_description(config_file)
    with torch.device("meta"):  # shapes and dtypes only: nothing is allocated
        expected = build_model(description, source=str(config_file)).state_dict()
    _check_weights(weights_file, _weights_header(weights_file), expected)
    model = build_model(description, source=str(config_file))
    state = st.load_file(str(weights_file), device=str(torch.device(device)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_file}: weights do not fit {MODEL_CONFIG}: {err}") from err
    return model.to(device).eval()


def _read_description(file: Path) -> object:
    """The parsed ``fusemix.json``; ``ValueError`` naming the file when it is not UTF-8 JSON."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{file}: not valid JSON (nested too deeply)") from None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""The safetensors dtype codes a model directory may hold, as torch dtypes."""


def _weights_header(file: Path) -> dict[str, tuple[str, list[int]]]:
    """Dtype code and shape of every tensor of a safetensors file, from its header (no tensor data is read).

    Raises:
        ValueError: If the file is not a whole safetensors file (truncated
            files too: the header's offsets must cover the file exactly).

    """
    safetensors = require("safetensors", extra="train", user="loading models")
    try:
        with safetensors.safe_open(str(file), framework="pt") as weights:
            slices = {name: weights.get_slice(name) for name in weights.keys()}  # noqa: SIM118 (not a dict)
            return {name: (piece.get_dtype(), list(piece.get_shape())) for name, piece in slices.items()}
    except safetensors.SafetensorError as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from None


def _check_weights(file: Path, header: Mapping[str, tuple[str, list[int]]], expected: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` unless ``header`` holds exactly the tensors of ``expected``, with their shapes.

    Floating tensors may be stored in any floating dtype (they are cast on
    loading); other tensors need their own dtype.
    """
    missing = [name for name in expected if name not in header]
    extra = [name for name in header if name not in expected]
    if missing or extra:
        lacks = f"lacks {missing}" if missing else "lacks nothing"
        raise ValueError(
            f"{file}: weights do not fit {MODEL_CONFIG}: {lacks}; holds tensors {MODEL_CONFIG} does not describe: "
            f"{extra}"
        )
    wrong = [name for name, tensor in expected.items() if list(tensor.shape) != header[name][1]]
    if wrong:
        name = wrong[0]
        raise ValueError(
            f"{file}: {name} has shape {header[name][1]}, {MODEL_CONFIG} implies {list(expected[name].shape)} "
            f"({len(wrong)} tensor(s) differ); the two files do not belong together"
        )
    for name, tensor in expected.items():
        stored = _SAFETENSORS_DTYPES.get(header[name][0])
        fits = stored is not None and (
            stored.is_floating_point if tensor.dtype.is_floating_point else stored == tensor.dtype
        )
        if not fits:
            wanted = "a floating dtype" if tensor.dtype.is_floating_point else str(tensor.dtype)
            raise ValueError(f"{file}: {name} has dtype {header[name][0]}, expected {wanted}")


@dataclass
class TrainingCheckpoint:
    """The content of a training checkpoint directory.

    Attributes:
        model_state: The model's state dict (CPU tensors).
        optimizer_state: ``{"optimizer": ..., "grad_scaler": ...}`` as saved.
        rng_state: Random generator states as saved.
        state: The parsed ``state.json``.
        best_state: The state dict in ``best.safetensors`` (CPU tensors), or
            ``None`` when the checkpoint has none.

    """

    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, Any]
    state: dict[str, Any]
    best_state: dict[str, Tensor] | None = None


def _torch_save(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_training_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer_state: Mapping[str, Any],
    rng_state: Mapping[str, Any],
    state: Mapping[str, Any],
    best_state: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write a training checkpoint directory whole.

    Args:
        path: The checkpoint directory (replaced if it exists).
        model: The model; its state dict goes to ``model.safetensors``.
        optimizer_state: Saved with ``torch.save`` to ``optimizer.pt``; must
            hold only tensors and plain Python values.
        rng_state: Saved to ``rng.pt``; tensors and plain values only.
        state: JSON-safe progress record, saved to ``state.json``.
        best_state: Another state dict of the model (the best evaluation's
            weights), saved to ``best.safetensors``; ``None`` writes no file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    """
    st = require_safetensors()
    path = Path(path)
    with atomic_directory(path) as tmp:
        st.save_file(_state_to_save(model), str(tmp / MODEL_WEIGHTS), metadata={"format": "pt"})
        _torch_save(dict(optimizer_state), tmp / OPTIMIZER_FILE)
        _torch_save(dict(rng_state), tmp / RNG_FILE)
        write_json_atomic(tmp / STATE_FILE, dict(state))
        if best_state is not None:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in best_state.items()}
            st.save_file(tensors, str(tmp / BEST_WEIGHTS), metadata={"format": "pt"})
    return path


def load_training_checkpoint(path: str | Path) -> TrainingCheckpoint | None:
    """Read a checkpoint written by :func:`save_training_checkpoint`, or ``None`` if there is none.

    Reading writes nothing. An interrupted write is settled by its writer
    (``fit`` calls :func:`recover_directory` before it resumes), not here.

    Args:
        path: The checkpoint directory.

    Returns:
        The :class:`TrainingCheckpoint`, or ``None`` when ``path`` does not
        exist and no interrupted write of it is left.

    Raises:
        FileNotFoundError: If the directory exists but misses a file, or is
            missing while an interrupted write left its new version beside
            it (the message says how to recover).

    """
    st = require_safetensors()
    path = Path(path)
    return _read_directory(path, lambda: _load_training_checkpoint(st, path), _CHECKPOINT_RECOVERY)


def _load_training_checkpoint(st: ModuleType, path: Path) -> TrainingCheckpoint | None:
    if not path.exists():
        return None
    for name in (MODEL_WEIGHTS, OPTIMIZER_FILE, RNG_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint: {path} has no {name}; the checkpoint is incomplete")
    best = path / BEST_WEIGHTS
    return TrainingCheckpoint(
        model_state=st.load_file(str(path / MODEL_WEIGHTS)),
        optimizer_state=torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True),
        rng_state=torch.load(path / RNG_FILE, map_location="cpu", weights_only=True),
        state=json.loads((path / STATE_FILE).read_text(encoding="utf-8")),
        best_state=st.load_file(str(best)) if best.is_file() else None,
    )


__all__ = [
    "BEST_WEIGHTS",
    "FORMAT_VERSION",
    "MODEL_CONFIG",
    "MODEL_WEIGHTS",
    "OPTIMIZER_FILE",
    "RNG_FILE",
    "STATE_FILE",
    "TrainingCheckpoint",
    "atomic_directory",
    "build_model",
    "describe_model",
    "load_model",
    "load_training_checkpoint",
    "recover_directory",
    "require_safetensors",
    "save_model",
    "save_training_checkpoint",
    "write_json_atomic",
    "write_text_atomic",
]
