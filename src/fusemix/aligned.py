"""The aligned space from raw inputs: a frozen encoder chained with its trained adapter.

Training leaves adapters that accept precomputed latents only.
:class:`AlignedEncoder` puts a modality's frozen encoder in front of its
adapter, so ``aligned.encode(["a red apple"])`` goes from raw items to
unit-norm shared-space embeddings. :class:`AlignedModel` holds a trained
:class:`~fusemix.FusionModel` with one aligned encoder per modality and is
reopened from a run or model directory, whose ``encoders.json`` (see
:mod:`fusemix.encoder_descriptions`) says which encoders to load.

Typical use::

    aligned = AlignedModel.from_pretrained("runs/mine")            # a run, a model directory or a Hub repo
    texts = aligned["text"].encode(["a red apple", "a dog"])       # (2, shared_dim), unit norm
    scores, rows = fusemix.search.search(texts, image_store, k=5)  # top-5 images per text
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusemix._checks import check_items, check_positive_int
from fusemix.encoder_descriptions import (
    build_encoder,
    identity_differences,
    read_encoder_descriptions,
)
from fusemix.extract import encoder_identity_of
from fusemix.model import FusionModel
from fusemix.store import LatentStore

PROGRESS_MIN_ITEMS = 1000
"""``progress=None`` shows a progress bar for inputs of more items than this."""


def adapter_fingerprint(adapter: nn.Module) -> str:
    """SHA-256 of an adapter's state dict: names, dtypes, shapes and values.

    Args:
        adapter: Any module.

    Returns:
        A 64-character hex digest; it changes with any change of a weight.

    Example:
        >>> a = torch.nn.Linear(3, 2)
        >>> adapter_fingerprint(a) == adapter_fingerprint(a), len(adapter_fingerprint(a))
        (True, 64)

    """
    digest = hashlib.sha256()
    for name, value in sorted(adapter.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _progress_bar(enabled: bool, total: int, description: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (pip install "fusemix[train]")
        return None
    return tqdm(total=total, unit="item", desc=description)


class AlignedEncoder:
    """A frozen encoder followed by the trained adapter of its modality: raw items in, shared space out.

    The adapter is put in eval mode and moved to the encoder's device (the
    encoder's ``device`` attribute, as every :mod:`fusemix.encoders` adapter
    has; otherwise the adapter stays where it is), so the whole chain runs
    there without autograd. An aligned encoder is itself an encoder, with an
    ``identity`` and a ``dim``: :func:`fusemix.extract.extract_latents` (or
    :func:`fusemix.aligned.embed_store`) writes its embeddings to a store.

    Args:
        encoder: The frozen encoder the adapter was trained on: a list of raw
            items in, ``(B, D_modality)`` latents out (any
            :mod:`fusemix.encoders` adapter, or any callable).
        adapter: The trained adapter of that modality
            (``fusion_model.adapters[modality]``).
        modality: The modality's name, e.g. ``"text"``.
        batch_size: Items encoded per step by :meth:`encode` by default.

    Attributes:
        encoder: The frozen encoder.
        adapter: The adapter, in eval mode.
        modality: The modality's name.
        batch_size: Default items per step.
        device: Where the adapter runs.
        dim: Width of the shared space, or ``None`` if the adapter does not say.

    Shape:
        - Input: a sequence of ``N`` raw items.
        - Output: ``(N, dim)``, unit norm, ``float32`` on the CPU.

    Example:
        >>> from fusemix.encoders import CallableEncoder
        >>> model = FusionModel.from_dims({"image": 4, "text": 3}, shared_dim=2, depth=1).eval()
        >>> words = CallableEncoder(lambda texts: torch.tensor([[len(t), t.count("a"), 1.0] for t in texts]),
        ...                         identity="word-stats", dim=3)
        >>> aligned = AlignedEncoder(words, model.adapters["text"], modality="text")
        >>> embeddings = aligned.encode(["a red apple", "a dog"])
        >>> embeddings.shape, torch.allclose(embeddings.norm(dim=-1), torch.ones(2))
        (torch.Size([2, 2]), True)

    """

    def __init__(self, encoder: Callable[..., Any], adapter: nn.Module, *, modality: str, batch_size: int = 32) -> None:
        if not callable(encoder):
            raise TypeError(f"encoder: expected a callable encoder, got {type(encoder).__name__}")
        if not isinstance(adapter, nn.Module):
            raise TypeError(f"adapter: expected an nn.Module, got {type(adapter).__name__}")
        if not isinstance(modality, str) or not modality:
            raise ValueError(f"modality: expected a non-empty string, got {modality!r}")
        self.encoder = encoder
        self.modality = modality
        self.batch_size = check_positive_int("batch_size", batch_size)
        encoder_device = getattr(encoder, "device", None)
        if isinstance(encoder_device, torch.device):
            adapter.to(encoder_device)
            self.device = encoder_device
        else:
            first = next(iter(adapter.parameters()), None)
            self.device = first.device if first is not None else torch.device("cpu")
        self.adapter = adapter.eval()
        out_dim = getattr(adapter, "out_dim", None)
        self.dim: int | None = int(out_dim) if isinstance(out_dim, int) else None

    @property
    def identity(self) -> dict[str, Any]:
        """What these embeddings are: the modality, the encoder's identity and the adapter's weights' fingerprint."""
        return {
            "aligned": self.modality,
            "encoder": encoder_identity_of(self.encoder),
            "adapter": adapter_fingerprint(self.adapter),
        }

    def embed_latents(self, latents: Tensor) -> Tensor:
        """Map the encoder's latents into the shared space.

        Args:
            latents: Latents of the frozen encoder. Shape: ``(N, D_modality)``.

        Returns:
            Unit-norm embeddings, ``float32`` on the CPU. Shape: ``(N, dim)``.

        """
        return _embed(self.adapter, latents, self.device)

    def encode(self, items: Sequence[Any], *, batch_size: int | None = None, progress: bool | None = None) -> Tensor:
        """Embed raw items into the shared space, in batches.

        Args:
            items: Raw items of the encoder's kind (texts, images,
                waveforms...). A single string is refused: wrap it in a list.
            batch_size: Items per step (encoder call and adapter call);
                ``self.batch_size`` when ``None``. The encoder may split a
                step further into its own micro-batches.
            progress: Show a tqdm progress bar; ``None`` shows one for more
                than :data:`PROGRESS_MIN_ITEMS` items (when tqdm is installed).

        Returns:
            Unit-norm embeddings, ``float32`` on the CPU. Shape: ``(len(items), dim)``.

        Raises:
            TypeError: If ``items`` is a single string or not a sequence, or
                the encoder returns something other than a floating ``(B, D)``
                tensor or array.
            ValueError: If ``items`` is empty or the encoder returns the wrong
                number of rows.

        """
        batch = check_items(items)
        step = self.batch_size if batch_size is None else check_positive_int("batch_size", batch_size)
        show = len(batch) > PROGRESS_MIN_ITEMS if progress is None else bool(progress)
        bar = _progress_bar(show, len(batch), f"encode {self.modality}")
        parts = []
        try:
            for start in range(0, len(batch), step):
                chunk = batch[start : start + step]
                with torch.inference_mode():
                    latents = self.encoder(chunk)
                parts.append(self.embed_latents(_as_latents(latents, len(chunk), start)))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __call__(self, items: Sequence[Any]) -> Tensor:
        """Encode ``items`` without a progress bar (the :class:`~fusemix.encoders.Encoder` interface)."""
        return self.encode(items, progress=False)

    def __repr__(self) -> str:
        return f"AlignedEncoder({self.encoder!r}, modality={self.modality!r}, dim={self.dim}, device={self.device})"


def _embed(adapter: nn.Module, latents: Tensor, device: torch.device) -> Tensor:
    """Unit-norm ``adapter(latents)`` computed on ``device`` in the adapter's dtype, returned as CPU float32."""
    if not isinstance(latents, Tensor) or not latents.is_floating_point() or latents.ndim != 2:
        raise TypeError(f"latents: expected a floating (N, D) tensor, got {_describe(latents)}")
    in_dim = getattr(adapter, "in_dim", None)
    if isinstance(in_dim, int) and latents.shape[1] != in_dim:
        raise ValueError(
            f"latents: have dim {latents.shape[1]}, but the adapter takes dim {in_dim}; are they from the encoder "
            "the model was trained on?"
        )
    first = next(iter(adapter.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    with torch.inference_mode():
        shared = adapter(latents.to(device=device, dtype=dtype))
        return F.normalize(shared.float(), dim=-1).cpu()


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _as_latents(output: object, rows: int, first: int) -> Tensor:
    what = f"encoder output for items [{first}, {first + rows})"
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(output)
    if not isinstance(output, Tensor):
        raise TypeError(f"{what}: expected a tensor or numpy array, got {type(output).__name__}")
    if not output.is_floating_point() or output.ndim != 2 or output.shape[0] != rows:
        raise ValueError(f"{what}: expected a floating ({rows}, D) tensor, got {_describe(output)}")
    return output


def model_directory(path: str | os.PathLike[str]) -> Path:
    """The model directory of ``path``: ``path`` itself if it holds ``fusemix.json``, else its ``model/``.

    Args:
        path: A model directory or a training run directory.

    Raises:
        FileNotFoundError: If neither holds a model.

    """
    from fusemix._run_files import MODEL_DIR
    from fusemix.checkpoint import MODEL_CONFIG

    root = Path(path)
    if (root / MODEL_CONFIG).is_file():
        return root
    if (root / MODEL_DIR / MODEL_CONFIG).is_file():
        return root / MODEL_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"path: {root}: no such directory")
    raise FileNotFoundError(
        f"path: {root} holds no {MODEL_CONFIG} (nor {MODEL_DIR}/{MODEL_CONFIG}); not a fusemix model or run"
    )


class _ReadingEncoder:
    """An aligned encoder fed items that ``read`` turns into raw inputs first (file paths into images...)."""

    def __init__(self, aligned: AlignedEncoder, read: Callable[[Any], Any]) -> None:
        self.aligned = aligned
        self.read = read

    def __call__(self, items: Sequence[Any]) -> Tensor:
        return self.aligned([self.read(item) for item in items])


def embed_store(
    aligned: AlignedEncoder,
    items: Sequence[Any] | Iterable[Any],
    out_dir: str | os.PathLike[str],
    *,
    read: Callable[[Any], Any] | None = None,
    batch_size: int = 256,
    shard_size: int = 65536,
    dtype: str = "float16",
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    num_workers: int = 1,
    worker_index: int = 0,
) -> LatentStore | None:
    """Embed a dataset into the shared space and keep the embeddings in a latent store, resumably.

    :func:`fusemix.extract.extract_latents` with ``aligned`` as the encoder:
    row ``i`` of the store is the unit-norm shared-space embedding of
    ``items[i]``, ready for :func:`fusemix.search.search`. The store records
    ``aligned.identity`` (encoder identity and adapter fingerprint) as its
    encoder, so a rerun with another adapter is refused instead of mixing two
    spaces, and its metadata says ``"space": "shared"``. Resuming, several
    workers and iterables work as for ``extract_latents``.

    Args:
        aligned: The aligned encoder of the items' modality.
        items: Raw items, or references to them (e.g. file paths) with ``read``.
        out_dir: Store directory (created if needed).
        read: Called on each item before encoding (e.g. open an image file);
            ``None`` passes the items as they are.
        batch_size: Items per encoder call.
        shard_size: Rows per shard file.
        dtype: ``"float16"`` (default: unit-norm embeddings lose about 3
            decimal digits) or ``"float32"``.
        metadata: Free JSON metadata, recorded with ``"space": "shared"``.
        progress: Show a tqdm progress bar (if tqdm is installed).
        overwrite: Replace a store or unfinished run in ``out_dir`` made with other settings.
        num_workers: Number of workers sharing the extraction.
        worker_index: This worker's index in ``[0, num_workers)``.

    Returns:
        The complete store, or ``None`` for a worker whose share is done while others' shards are missing.

    Raises:
        TypeError: If ``aligned`` is not an :class:`AlignedEncoder`.
        ValueError, OSError: As :func:`fusemix.extract.extract_latents`.

    Example:
        >>> import tempfile
        >>> from fusemix.encoders import CallableEncoder
        >>> model = FusionModel.from_dims({"image": 4, "text": 3}, shared_dim=2, depth=1)
        >>> words = CallableEncoder(lambda texts: torch.tensor([[len(t), t.count("a"), 1.0] for t in texts]),
        ...                         identity="word-stats", dim=3)
        >>> aligned = AlignedModel(model, {"text": words})["text"]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = embed_store(aligned, ["a red apple", "a dog", "rain"], tmp, progress=False)
        ...     print(store.shape, store.metadata["space"])
        (3, 2) shared

    """
    from fusemix.extract import extract_latents

    if not isinstance(aligned, AlignedEncoder):
        raise TypeError(f"aligned: expected an AlignedEncoder, got {type(aligned).__name__}")
    if read is not None and not callable(read):
        raise TypeError(f"read: expected a callable or None, got {type(read).__name__}")
    encoder: Callable[[Sequence[Any]], Tensor] = aligned if read is None else _ReadingEncoder(aligned, read)
    return extract_latents(
        encoder,
        items,
        out_dir,
        modality=aligned.modality,
        batch_size=batch_size,
        shard_size=shard_size,
        dtype=dtype,
        encoder_identity=aligned.identity,
        num_workers=num_workers,
        worker_index=worker_index,
        progress=progress,
        metadata={**({} if metadata is None else dict(metadata)), "space": "shared"},
        overwrite=overwrite,
    )


EncoderSource = Callable[..., Any] | str | os.PathLike[str]


class AlignedModel:
    """A trained :class:`~fusemix.FusionModel` with the frozen encoders of its modalities.

    Encoders may be given for some modalities only: the others can still be
    embedded from precomputed latents with :meth:`embed`.

    Args:
        model: The trained model; it is put in eval mode.
        encoders: Modality name to the frozen encoder its adapter was trained on.
        batch_size: Default items per step of every :class:`AlignedEncoder`.
        train_config: The training settings, kept for :meth:`save_pretrained`
            (a dict, e.g. ``TrainConfig.to_dict()``).
        encoder_descriptions: Descriptions of the encoders of modalities
            given no encoder here (from ``encoders.json``), kept so that
            :meth:`save_pretrained` writes them again.

    Attributes:
        model: The model.
        encoders: Modality name to :class:`AlignedEncoder`.
        train_config: As given.
        encoder_descriptions: As given.

    Example:
        >>> from fusemix.encoders import CallableEncoder
        >>> model = FusionModel.from_dims({"image": 4, "text": 3}, shared_dim=2, depth=1)
        >>> words = CallableEncoder(lambda texts: torch.tensor([[len(t), t.count("a"), 1.0] for t in texts]),
        ...                         identity="word-stats", dim=3)
        >>> aligned = AlignedModel(model, {"text": words})
        >>> aligned["text"].encode(["a red apple"]).shape, aligned.embed("image", torch.randn(5, 4)).shape
        (torch.Size([1, 2]), torch.Size([5, 2]))

    """

    def __init__(
        self,
        model: FusionModel,
        encoders: Mapping[str, Callable[..., Any]] | None = None,
        *,
        batch_size: int = 32,
        train_config: Mapping[str, Any] | None = None,
        encoder_descriptions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not isinstance(model, FusionModel):
            raise TypeError(f"model: expected a FusionModel, got {type(model).__name__}")
        encoders = {} if encoders is None else encoders
        if not isinstance(encoders, Mapping):
            raise TypeError(f"encoders: expected a mapping of modality name to encoder, got {type(encoders).__name__}")
        unknown = [m for m in encoders if m not in model.modalities]
        if unknown:
            raise KeyError(f"encoders: {unknown} have no adapter in the model (it has {model.modalities})")
        self.model = model.eval()
        self.encoders: dict[str, AlignedEncoder] = {
            modality: AlignedEncoder(encoder, model.adapters[modality], modality=modality, batch_size=batch_size)
            for modality, encoder in encoders.items()
        }
        self.train_config = None if train_config is None else dict(train_config)
        self.encoder_descriptions = {m: dict(d) for m, d in (encoder_descriptions or {}).items()}

    @property
    def modalities(self) -> list[str]:
        """The model's modalities, in order (with or without an encoder)."""
        return self.model.modalities

    __iter__ = None
    """Not iterable (``__getitem__`` takes modality names, not positions): iterate over :attr:`modalities`."""

    def __getitem__(self, modality: str) -> AlignedEncoder:
        """The aligned encoder of ``modality``."""
        if modality not in self.encoders:
            if modality in self.model.modalities:
                raise KeyError(
                    f"modality: {modality!r} has an adapter but no encoder here; pass encoders={{{modality!r}: ...}} "
                    f"(or embed its precomputed latents with .embed({modality!r}, latents))"
                )
            raise KeyError(f"modality: {modality!r} is not one of {self.model.modalities}")
        return self.encoders[modality]

    def encode(
        self, modality: str, items: Sequence[Any], *, batch_size: int | None = None, progress: bool | None = None
    ) -> Tensor:
        """``self[modality].encode(items, ...)``: see :meth:`AlignedEncoder.encode`."""
        return self[modality].encode(items, batch_size=batch_size, progress=progress)

    def embed(self, modality: str, latents: Tensor) -> Tensor:
        """Embed precomputed latents of ``modality``: unit norm, ``float32`` on the CPU. Shape: ``(N, shared_dim)``."""
        if modality in self.encoders:
            return self.encoders[modality].embed_latents(latents)
        if modality not in self.modalities:
            raise KeyError(f"modality: {modality!r} is not one of {self.modalities}")
        adapter = self.model.adapters[modality]
        first = next(iter(adapter.parameters()), None)
        return _embed(adapter, latents, first.device if first is not None else torch.device("cpu"))

    @classmethod
    def from_directory(
        cls,
        path: str | os.PathLike[str],
        *,
        encoders: Mapping[str, EncoderSource] | None = None,
        modalities: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        check_identity: bool = True,
        batch_size: int = 32,
        progress: bool = True,
    ) -> AlignedModel:
        """Open a local run or model directory with its encoders.

        Every modality gets, in order of preference: the encoder given in
        ``encoders``; the encoder rebuilt from ``encoders.json`` at the place
        given in ``encoders`` (a string or path); the encoder rebuilt from
        ``encoders.json`` as described. A ``"custom"`` description without a
        given encoder leaves the modality without one (its latents can still
        be embedded with :meth:`embed`).

        Args:
            path: A model directory or a training run (its ``model/``).
            encoders: Modality name to an encoder, or to the new place (local
                directory or Hub id) of a described model that has moved.
            modalities: Load encoders for these modalities only, and for those
                given in ``encoders`` (default: all that can be loaded).
            device: Where encoders rebuilt from the description run (``None``:
                CUDA when available); each adapter follows its encoder.
            check_identity: Refuse an encoder whose identity differs from the
                one recorded in ``encoders.json``.
            batch_size: Default items per step of every aligned encoder.
            progress: Show the libraries' loading bars and INFO logs while
                encoders are rebuilt; ``False`` loads them quietly.

        Returns:
            The aligned model.

        Raises:
            FileNotFoundError: If ``path`` holds no model, or a described
                local model directory is gone (the message says how to give
                its new place).
            KeyError: If ``encoders`` or ``modalities`` name a modality the model does not have.
            ValueError: If an encoder's identity differs from the recorded
                one (the message lists the differences).

        """
        import json

        from fusemix.checkpoint import MODEL_CONFIG, load_model

        folder = model_directory(path)
        model = load_model(folder)
        description = json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8"))
        recorded = read_encoder_descriptions(folder)
        given = {} if encoders is None else dict(encoders)
        wanted = list(model.modalities) if modalities is None else list(dict.fromkeys([*modalities, *given]))
        unknown = [m for m in [*given, *wanted] if m not in model.modalities]
        if unknown:
            raise KeyError(f"encoders, modalities: {sorted(set(unknown))} are not among the model's {model.modalities}")
        loaded: dict[str, Callable[..., Any]] = {}
        for modality in wanted:
            source = given.get(modality)
            spec = recorded.get(modality)
            if source is not None and callable(source):
                encoder = source
            elif isinstance(source, (str, os.PathLike)):
                if spec is None:
                    raise ValueError(
                        f"encoders[{modality!r}]: {folder} has no description of its encoder to rebuild at "
                        f"{os.fspath(source)!r}; pass the encoder itself"
                    )
                encoder = build_encoder(spec, location=source, device=device, progress=progress)
            elif source is not None:
                raise TypeError(
                    f"encoders[{modality!r}]: expected an encoder or a model location, got {type(source).__name__}"
                )
            elif spec is not None and spec["kind"] != "custom":
                encoder = build_encoder(spec, device=device, progress=progress)
            else:
                continue
            if check_identity and spec is not None:
                problems = identity_differences(spec["identity"], encoder_identity_of(encoder))
                if problems:
                    raise ValueError(
                        f"encoders[{modality!r}]: not the encoder the model was trained on ({'; '.join(problems)}); "
                        "pass the right one, or check_identity=False if you know the latents are the same"
                    )
            loaded[modality] = encoder
        return cls(
            model,
            loaded,
            batch_size=batch_size,
            train_config=description.get("train_config"),
            encoder_descriptions=recorded,
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike[str],
        *,
        revision: str | None = None,
        encoders: Mapping[str, EncoderSource] | None = None,
        modalities: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        check_identity: bool = True,
        batch_size: int = 32,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        progress: bool = True,
    ) -> AlignedModel:
        """Open a saved model with its encoders: a local run or model directory, or a Hugging Face Hub repository.

        A Hub id is downloaded with :func:`fusemix.hub.download` (only the
        files of :data:`fusemix.hub.HUB_FILES`; ``pip install
        "fusemix[hub]"``), then opened with :meth:`from_directory`.

        Args:
            path_or_repo_id: A local directory (a training run, a model
                directory, a ``save_pretrained`` directory) or a Hub model id
                such as ``"user/fusemix-openmoji"``.
            revision: Hub branch, tag or commit (Hub only).
            encoders: Modality name to an encoder, or to the new place of a
                described local model (see :meth:`from_directory`).
            modalities: Load encoders for these modalities only.
            device: Where rebuilt encoders run (``None``: CUDA when available).
            check_identity: Refuse encoders whose identity differs from the recorded one.
            batch_size: Default items per step of every aligned encoder.
            cache_dir: Hub cache directory (Hub only; default: huggingface_hub's).
            token: Hub token for private repositories (Hub only).
            local_files_only: Use only the local Hub cache, never the network
                (Hub only; ``HF_HUB_OFFLINE=1`` does the same).
            progress: Show download and loading bars and the libraries' INFO
                logs; ``False`` downloads and loads quietly.

        Returns:
            The model.

        Raises:
            FileNotFoundError: If a local path holds no model.
            ImportError: If a Hub id is given and huggingface_hub is not installed.

        """
        from fusemix.hub import download

        folder = download(
            path_or_repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            progress=progress,
        )
        return cls.from_directory(
            folder,
            encoders=encoders,
            modalities=modalities,
            device=device,
            check_identity=check_identity,
            batch_size=batch_size,
            progress=progress,
        )

    def save_pretrained(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """:func:`fusemix.hub.save_pretrained` of this model."""
        from fusemix.hub import save_pretrained

        return save_pretrained(self, path, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """:func:`fusemix.hub.push_to_hub` of this model."""
        from fusemix.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def __repr__(self) -> str:
        encoders = ", ".join(f"{m}={e.encoder!r}" for m, e in self.encoders.items()) or "none"
        return f"AlignedModel(modalities={self.modalities}, encoders: {encoders})"


__all__ = [
    "PROGRESS_MIN_ITEMS",
    "AlignedEncoder",
    "AlignedModel",
    "adapter_fingerprint",
    "embed_store",
    "model_directory",
]
