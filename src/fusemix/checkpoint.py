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
never a mix, whenever the writer is killed. safetensors is an optional
dependency (``pip install "fusemix[train]"``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusemix.fixed_target import FixedTargetLoss, TargetRegressionLoss
from fusemix.losses import ContrastiveLoss, SigLIPLoss
from fusemix.model import FusionModel
from fusemix.projectors import FusionAdapter, IdentityAdapter, LinearAdapter
from fusemix.regularizers import StructureLoss

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "fusemix.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
BEST_WEIGHTS = "best.safetensors"
FORMAT_VERSION = 1

INSTALL_HINT = 'pip install "fusemix[train]"'


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"saving and loading models needs safetensors: {INSTALL_HINT}") from err
    return safetensors.torch


def _fusemix_version() -> str:
    import fusemix

    return str(fusemix.__version__)


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories only where the OS allows opening them)."""
    if path.is_dir() and os.name != "posix":  # pragma: no cover - Windows cannot open directories
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Args:
        path: Destination file; its directory must exist.
        text: Content, written as UTF-8.

    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN and Inf are refused)."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _default_file_mode(folder: Path) -> int:
    """Permission bits a new file gets under the current umask (some writers create files 0600)."""
    probe = folder / f".mode-{uuid.uuid4().hex}"
    with open(probe, "x"):
        pass
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return mode


def _siblings(path: Path) -> tuple[Path, Path, Path]:
    """Staging (being written), ready (complete, not yet swapped in) and old (swapped out) directories."""
    return (
        path.with_name(f".{path.name}.new"),
        path.with_name(f".{path.name}.ready"),
        path.with_name(f".{path.name}.old"),
    )


def _swap_in(path: Path, ready: Path, old: Path) -> None:
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(ready, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | Path) -> None:
    """Finish or undo an interrupted :func:`atomic_directory` write of ``path``.

    A complete new version waiting to be swapped in is swapped in; partial
    writes and swapped-out old versions are removed.
    """
    path = Path(path)
    staging, ready, old = _siblings(path)
    if ready.is_dir():
        _swap_in(path, ready, old)
    elif not path.exists() and old.is_dir():
        os.replace(old, path)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Write a directory whole: yield a staging directory, then swap it in for ``path``.

    Files written into the yielded directory are flushed to disk and the
    directory replaces ``path`` by renames; if the block raises, ``path`` is
    left as it was. A writer killed at any point leaves either the old or
    the new directory, which :func:`recover_directory` settles.

    Args:
        path: The directory to (re)write; its parent is created if needed.

    Yields:
        The staging directory to fill.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_directory(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("whole or nothing")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    staging, ready, old = _siblings(path)
    staging.mkdir()
    try:
        yield staging
        mode = _default_file_mode(staging)
        for child in staging.iterdir():
            if child.is_file():
                child.chmod(mode)
            _fsync(child)
        _fsync(staging)
        os.replace(staging, ready)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(path, ready, old)


def _state_to_save(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def _describe_adapter(name: str, adapter: nn.Module) -> dict[str, Any]:
    if type(adapter) is FusionAdapter:
        blocks = list(adapter.blocks)
        return {
            "type": "fusion",
            "in_dim": adapter.in_dim,
            "out_dim": adapter.out_dim,
            "depth": len(blocks),
            "hidden_dim": blocks[0].fc1.out_features if blocks else None,
            "dropout": float(blocks[0].drop.p) if blocks else 0.0,
        }
    if type(adapter) is LinearAdapter:
        return {
            "type": "linear",
            "in_dim": adapter.in_dim,
            "out_dim": adapter.out_dim,
            "bias": adapter.proj.bias is not None,
        }
    if type(adapter) is IdentityAdapter:
        return {"type": "identity", "dim": adapter.in_dim}
    raise TypeError(
        f"model: adapter {name!r} is a {type(adapter).__name__}; a model directory can describe only "
        "FusionAdapter, LinearAdapter and IdentityAdapter (save the state dict yourself for custom modules)"
    )


def _describe_loss(loss: nn.Module) -> dict[str, Any]:
    if type(loss) is ContrastiveLoss:
        return {
            "type": "contrastive",
            "parameterization": loss.parameterization,
            "learnable": isinstance(loss.temperature_param, nn.Parameter),
            "temperature_range": list(loss.temperature_range),
            "max_logit_scale": loss.max_logit_scale,
            "pairs": loss.pairs,
            "anchor": loss.anchor,
        }
    if type(loss) is SigLIPLoss:
        return {
            "type": "siglip",
            "learnable": isinstance(loss.logit_scale, nn.Parameter),
            "chunk_size": loss.chunk_size,
            "pairs": loss.pairs,
            "anchor": loss.anchor,
        }
    if type(loss) is FixedTargetLoss and type(loss.regression) is TargetRegressionLoss:
        return {
            "type": "fixed-target",
            "source": loss.source,
            "target": loss.target,
            "regression_weight": loss.regression_weight,
            "contrastive_weight": loss.contrastive_weight,
            "contrastive": _describe_loss(loss.contrastive),
            "regression": {"type": "target-regression", "eps": loss.regression.eps},
        }
    raise TypeError(
        f"model: loss is a {type(loss).__name__}; a model directory can describe only ContrastiveLoss, SigLIPLoss "
        "and FixedTargetLoss (with TargetRegressionLoss)"
    )


def describe_model(model: FusionModel) -> dict[str, Any]:
    """The JSON description of ``model`` stored in ``fusemix.json`` (without weights).

    Args:
        model: A :class:`~fusemix.FusionModel` of built-in adapters and loss.

    Returns:
        ``{"format", "format_version", "fusemix_version", "modalities",
        "dims", "shared_dim", "adapters", "loss"}``.

    Raises:
        TypeError: If the model holds a custom adapter or loss.

    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"model: expected a FusionModel, got {type(model).__name__}")
    adapters = {name: _describe_adapter(name, a) for name, a in model.adapters.items()}
    dims = {name: a.get("in_dim", a.get("dim")) for name, a in adapters.items()}
    shared = {a.get("out_dim", a.get("dim")) for a in adapters.values()}
    return {
        "format": "fusemix-model",
        "format_version": FORMAT_VERSION,
        "fusemix_version": _fusemix_version(),
        "modalities": model.modalities,
        "dims": dims,
        "shared_dim": shared.pop() if len(shared) == 1 else None,
        "adapters": adapters,
        "loss": _describe_loss(model.loss),
        "structure": _describe_structure(model.structure),
        "structure_weight": model.structure_weight,
    }


def _describe_structure(structure: nn.Module | None) -> dict[str, Any] | None:
    if structure is None:
        return None
    if type(structure) is not StructureLoss:
        raise TypeError(f"model: structure is a {type(structure).__name__}; a model directory describes StructureLoss")
    return {
        "type": "structure",
        "temperature": structure.temperature,
        "divergence": structure.divergence,
        "center": structure.center,
        "max_rows": structure.max_rows,
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
    adapters: dict[str, nn.Module] = {}
    for name, spec in description["adapters"].items():
        kind = spec.get("type")
        if kind == "fusion":
            adapters[name] = FusionAdapter(
                spec["in_dim"],
                spec["out_dim"],
                depth=spec["depth"],
                expansion=spec.get("expansion", 4),
                hidden_dim=spec.get("hidden_dim"),
                dropout=spec["dropout"],
            )
        elif kind == "linear":
            adapters[name] = LinearAdapter(spec["in_dim"], spec["out_dim"], bias=spec["bias"])
        elif kind == "identity":
            adapters[name] = IdentityAdapter(spec["dim"])
        else:
            raise ValueError(f"{MODEL_CONFIG}: adapter {name!r} has unknown type {kind!r}")
    spec = description.get("structure")
    structure = None
    if spec is not None:
        if spec.get("type") != "structure":
            raise ValueError(f"{MODEL_CONFIG}: unknown structure term type {spec.get('type')!r}")
        structure = StructureLoss(
            spec["temperature"], divergence=spec["divergence"], center=spec["center"], max_rows=spec["max_rows"]
        )
    return FusionModel(
        adapters,
        loss=_build_loss(description["loss"]),
        structure=structure,
        structure_weight=description.get("structure_weight", 0.0),
    )


def _build_loss(spec: Mapping[str, Any]) -> nn.Module:
    """The loss module a :func:`_describe_loss` description stands for."""
    loss: nn.Module
    if spec.get("type") == "contrastive":
        low, high = spec["temperature_range"]
        loss = ContrastiveLoss(
            temperature_init=low if spec["parameterization"] == "temperature" else 0.07,
            learnable=spec["learnable"],
            parameterization=spec["parameterization"],
            temperature_range=(low, high),
            max_logit_scale=spec["max_logit_scale"],
            pairs=spec["pairs"],
            anchor=spec["anchor"],
        )
    elif spec.get("type") == "siglip":
        loss = SigLIPLoss(
            learnable=spec["learnable"], chunk_size=spec["chunk_size"], pairs=spec["pairs"], anchor=spec["anchor"]
        )
    elif spec.get("type") == "fixed-target":
        loss = FixedTargetLoss(
            spec["source"],
            spec["target"],
            regression_weight=spec["regression_weight"],
            contrastive_weight=spec["contrastive_weight"],
            contrastive=_build_loss(spec["contrastive"]),  # type: ignore[arg-type]
            regression=TargetRegressionLoss(eps=spec["regression"]["eps"]),
        )
    else:
        raise ValueError(f"{MODEL_CONFIG}: unknown loss type {spec.get('type')!r}")
    return loss


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
    st = _safetensors()
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
    st = _safetensors()
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
    st = _safetensors()
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
    st = _safetensors()
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
