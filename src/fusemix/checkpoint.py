"""Model directories and training checkpoints, without pickle.

A *model directory* (:func:`save_model` / :func:`load_model`) holds
``model.safetensors`` (the state dict) and ``fusemix.json`` (modalities,
latent dims, adapter and loss settings, fusemix version): enough to rebuild a
:class:`~fusemix.FusionModel` anywhere.

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
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from fusemix._fileio import atomic_directory, recover_directory, write_json_atomic, write_text_atomic
from fusemix._optional import require
from fusemix._registry import build_part, describe_part
from fusemix._version import fusemix_version
from fusemix.model import FusionModel

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "fusemix.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
BEST_WEIGHTS = "best.safetensors"
FORMAT_VERSION = 1


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


def build_model(description: Mapping[str, Any]) -> FusionModel:
    """Build an untrained :class:`~fusemix.FusionModel` from a :func:`describe_model` description.

    Args:
        description: The parsed ``fusemix.json``.

    Returns:
        The model, with freshly initialised weights.

    Raises:
        ValueError: If the description is not a fusemix model description or
            names an unknown adapter or loss type.

    """
    if description.get("format") != "fusemix-model":
        raise ValueError(f"{MODEL_CONFIG}: not a fusemix model description (format={description.get('format')!r})")
    version = description.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{MODEL_CONFIG}: format_version {version!r} is newer than this fusemix reads ({FORMAT_VERSION}); "
            "upgrade fusemix"
        )
    adapters = {
        name: build_part("adapter", spec, where=f"{MODEL_CONFIG}: adapter {name!r}")
        for name, spec in description["adapters"].items()
    }
    spec = description.get("structure")
    structure = None if spec is None else build_part("structure", spec, where=f"{MODEL_CONFIG}: structure term")
    return FusionModel(
        adapters,
        loss=build_part("loss", description["loss"], where=f"{MODEL_CONFIG}: loss"),
        structure=structure,
        structure_weight=description.get("structure_weight", 0.0),
    )


def _config_dict(config: object) -> dict[str, Any] | None:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config: expected a TrainConfig, a mapping or None, got {type(config).__name__}")


def save_model(model: FusionModel, path: str | Path, *, config: object = None) -> Path:
    """Save ``model`` as a model directory: ``model.safetensors`` + ``fusemix.json``.

    The directory is written whole (see :func:`atomic_directory`); an
    existing one at ``path`` is replaced.

    Args:
        model: A :class:`~fusemix.FusionModel` of built-in adapters and loss.
        path: The directory to write.
        config: The :class:`~fusemix.train.TrainConfig` (or a dict) the model
            was trained with, stored for reference under ``"train_config"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: If safetensors is not installed.
        TypeError: If the model holds a custom adapter or loss.

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
    path = Path(path)
    with atomic_directory(path) as tmp:
        st.save_file(_state_to_save(model), str(tmp / MODEL_WEIGHTS), metadata={"format": "pt"})
        write_json_atomic(tmp / MODEL_CONFIG, description)
    return path


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> FusionModel:
    """Rebuild a model saved by :func:`save_model`, in eval mode.

    Args:
        path: The model directory.
        device: Where to put the weights.

    Returns:
        The :class:`~fusemix.FusionModel`, in eval mode (dropout off).

    Raises:
        FileNotFoundError: If ``path`` lacks ``fusemix.json`` or ``model.safetensors``.
        ValueError: If the files do not describe a fusemix model or the
            weights do not fit the description.

    """
    st = require_safetensors()
    path = Path(path)
    recover_directory(path)
    for name in (MODEL_CONFIG, MODEL_WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"path: {path} has no {name}; expected a directory written by save_model")
    description = json.loads((path / MODEL_CONFIG).read_text(encoding="utf-8"))
    model = build_model(description)
    state = st.load_file(str(path / MODEL_WEIGHTS), device=str(torch.device(device)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path / MODEL_WEIGHTS}: weights do not fit {MODEL_CONFIG}: {err}") from err
    return model.to(device).eval()


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

    An interrupted write is settled first (see :func:`recover_directory`).

    Args:
        path: The checkpoint directory.

    Returns:
        The :class:`TrainingCheckpoint`, or ``None`` when ``path`` does not exist.

    Raises:
        FileNotFoundError: If the directory exists but misses a file.

    """
    st = require_safetensors()
    path = Path(path)
    recover_directory(path)
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
