"""Generate an image from a sound through a frozen ``diffusers`` text-to-image pipeline (FuseMix's audio-to-image).

The pipeline stays exactly as it is: audio latents are aligned into the
conditioning it already takes from its own frozen text encoder, and at
generation time the aligned audio is passed as ``prompt_embeds`` instead of a
prompt. Two steps, each a subcommand:

``train``
    1. encode every caption with the pipeline's own ``encode_prompt`` into the
       exact tensors the pipeline consumes (``prompt_embeds``; plus
       ``pooled_prompt_embeds`` for SDXL), flattened into one target vector
       per caption by a :class:`fusemix.fixed_target.ConditioningLayout`
       (the positions outside the predicted window come from the pipeline's
       encoding of the empty prompt);
    2. encode every clip with :class:`fusemix.encoders.HFAudioEncoder`
       (Whisper or CLAP; mono, resampled here to the model's rate), or take
       precomputed audio latents from an ``.npy`` file;
    3. train a fusion adapter audio -> target with :func:`fusemix.train.fit`:
       FuseMix, the contrastive loss and a regression onto the standardised
       target (:func:`fusemix.fixed_target.fixed_target_model`);
    4. save the adapter, the layout and the target standardizer to
       ``<run>/adapter``.

``generate``
    encodes sounds, maps them through the adapter into conditioning tensors
    and calls the pipeline with ``prompt_embeds=`` (``pooled_prompt_embeds=``)
    and the unconditional embeddings the pipeline itself would use for no
    negative prompt; writes one PNG per sound.

Both encodings are written to latent stores under ``<run>`` with
:func:`fusemix.extract.extract_latents`, so an interrupted ``train`` resumes
where it stopped and a rerun does not encode twice. Adapter training writes
its checkpoints, logs and curves to ``<run>/fit`` and resumes from there too.

Supported pipelines: ``StableDiffusionPipeline`` (Stable Diffusion 1.x / 2.x)
and ``StableDiffusionXLPipeline`` (SDXL), from a local directory written by
``save_pretrained`` or a Hub name. Everything runs offline given local paths
(set ``HF_HUB_OFFLINE=1``).

Pairs file: a CSV with a header and the columns ``audio`` (path of a clip,
relative to the CSV's folder; any format ``soundfile`` reads) and
``caption``. With ``--audio-latents`` the ``audio`` column is not needed and
row ``i`` of the ``.npy`` file is the latent of row ``i`` of the CSV.

Examples::

    python examples/audio_to_image.py train --pipeline ./stable-diffusion-v1-5 \\
        --pairs audiocaps/train.csv --audio-encoder ./whisper-large-v3 --run runs/a2i
    python examples/audio_to_image.py generate --pipeline ./stable-diffusion-v1-5 --run runs/a2i \\
        --audio dog_bark.wav rain.wav --out-dir images/

Needs ``pip install "fusemix[train,hf]" diffusers soundfile scipy``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusemix import FusionAdapter
from fusemix.checkpoint import atomic_directory, write_json_atomic
from fusemix.data import PairedLatents
from fusemix.fixed_target import (
    ConditioningLayout,
    SequenceTemplate,
    TargetStandardizer,
    fixed_target_model,
)
from fusemix.store import LatentStore

SUPPORTED = "StableDiffusionPipeline (Stable Diffusion 1.x/2.x) or StableDiffusionXLPipeline (SDXL)"
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "audio_to_image.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "fusemix-audio-to-image"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- the pipeline's own conditioning ------------------------------------------------------------------------------


def load_pipeline(name_or_path: str, *, device: str, dtype: str) -> Any:
    """Load a supported pipeline from a local directory or a Hub name, frozen, on ``device``.

    Raises:
        ValueError: If the pipeline is not one of :data:`SUPPORTED`.

    """
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(name_or_path, dtype=DTYPES[dtype])
    pipeline_kind(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_kind(pipe: Any) -> str:
    """``"sdxl"`` or ``"sd"``; any other pipeline raises ``ValueError``."""
    import diffusers

    if isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, diffusers.StableDiffusionPipeline):
        return "sd"
    raise ValueError(f"pipeline: {type(pipe).__name__} is not supported; expected a {SUPPORTED}")


@torch.inference_mode()
def encode_prompts(pipe: Any, prompts: list[str]) -> dict[str, Tensor]:
    """The conditioning ``pipe(prompt=prompts)`` computes for its positive branch, as pipeline keyword arguments.

    Returns:
        ``{"prompt_embeds": (B, L, D)}``, plus ``"pooled_prompt_embeds": (B, P)`` for SDXL.

    """
    device = pipe._execution_device
    if pipeline_kind(pipe) == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"prompt_embeds": embeds}


@torch.inference_mode()
def unconditional(pipe: Any, batch_size: int) -> dict[str, Tensor]:
    """The negative conditioning the pipeline uses when no negative prompt is given, as keyword arguments.

    Stable Diffusion encodes the empty prompt; SDXL uses zeros when its
    ``force_zeros_for_empty_prompt`` is set (the default) and the empty
    prompt otherwise. Both come from the pipeline's own ``encode_prompt``.
    """
    device = pipe._execution_device
    prompts = [""] * batch_size
    if pipeline_kind(pipe) == "sdxl":
        _, negative, _, negative_pooled = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        return {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled}
    _, negative = pipe.encode_prompt(prompts, device, 1, True)
    return {"negative_prompt_embeds": negative}


def conditioning_layout(pipe: Any, num_tokens: int | None) -> ConditioningLayout:
    """How the pipeline's conditioning becomes one target vector.

    ``prompt_embeds`` contributes positions ``1 .. num_tokens`` (all after
    the start token when ``None``), written back into the empty prompt's
    encoding; SDXL's ``pooled_prompt_embeds`` contributes as a whole.
    """
    empty = {k: v.float().cpu() for k, v in encode_prompts(pipe, [""]).items()}
    parts: dict[str, int | SequenceTemplate] = {
        "prompt_embeds": SequenceTemplate(empty["prompt_embeds"][0], start=1, num_tokens=num_tokens)
    }
    if "pooled_prompt_embeds" in empty:
        parts["pooled_prompt_embeds"] = int(empty["pooled_prompt_embeds"].shape[1])
    return ConditioningLayout(parts)


def caption_targets(pipe: Any, layout: ConditioningLayout, captions: Sequence[str]) -> Tensor:
    """Target vectors of ``captions``: the pipeline's conditioning, packed by ``layout``. Shape: ``(B, layout.dim)``."""
    return layout.pack({k: v.float().cpu() for k, v in encode_prompts(pipe, list(captions)).items()})


def describe_layout(layout: ConditioningLayout) -> dict[str, dict[str, int | str]]:
    """JSON description of ``layout`` (its templates live in the weights file)."""
    out: dict[str, dict[str, int | str]] = {}
    for name, width in layout.widths.items():
        if name in layout.sequences:
            seq = layout.sequences[name]
            out[name] = {
                "kind": "sequence",
                "length": seq.length,
                "width": seq.width,
                "start": seq.start,
                "num_tokens": seq.num_tokens,
            }
        else:
            out[name] = {"kind": "vector", "dim": width}
    return out


def layout_from_description(description: dict[str, dict[str, Any]]) -> ConditioningLayout:
    """An empty layout of the described shape, ready for ``load_state_dict``."""
    parts: dict[str, int | SequenceTemplate] = {}
    for name, spec in description.items():
        if spec["kind"] == "sequence":
            template = torch.zeros(spec["length"], spec["width"])
            parts[name] = SequenceTemplate(template, start=spec["start"], num_tokens=spec["num_tokens"])
        else:
            parts[name] = int(spec["dim"])
    return ConditioningLayout(parts)


def pipeline_identity(name_or_path: str, pipe: Any) -> dict[str, Any]:
    """What the caption targets depend on: the weights (local directory fingerprint, else Hub name) and class."""
    from fusemix.encoders import fingerprint_path

    path = Path(name_or_path)
    weights = f"sha256:{fingerprint_path(path)}" if path.is_dir() else name_or_path
    return {
        "weights": weights,
        "source": str(name_or_path),
        "class": type(pipe).__name__,
        "dtype": str(pipe.dtype).removeprefix("torch."),
    }


def same_pipeline(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`pipeline_identity` records name the same weights and pipeline class (any dtype)."""
    return a["weights"] == b["weights"] and a["class"] == b["class"]


def json_normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with a saved record."""
    return json.loads(json.dumps(value))


# -- data ---------------------------------------------------------------------------------------------------------


def read_pairs(path: Path, *, need_audio: bool) -> tuple[list[Path], list[str]]:
    """Audio paths (resolved against the CSV's folder) and captions of a pairs CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"--pairs: {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        needed = {"audio", "caption"} if need_audio else {"caption"}
        if not needed <= columns:
            raise ValueError(f"--pairs: {path} needs the columns {sorted(needed)}, has {sorted(columns)}")
        rows = list(reader)
    if len(rows) < 4:
        raise ValueError(f"--pairs: {path} has {len(rows)} pairs; at least 4 are needed (training and validation)")
    captions = []
    for line, row in enumerate(rows, start=2):
        caption = (row.get("caption") or "").strip()
        if not caption:
            raise ValueError(f"--pairs: {path}:{line} has an empty caption")
        captions.append(caption)
    audio = [path.parent / row["audio"] for row in rows] if need_audio else []
    return audio, captions


CLIP_READER = "soundfile float32, mean of the channels, scipy.signal.resample_poly"
"""How :func:`load_clip` reads a clip (part of :attr:`AudioClips.items_id`: change it when the reading changes)."""


def load_clip(path: Path, sampling_rate: int) -> np.ndarray:
    """A mono float32 waveform of ``path`` at ``sampling_rate`` (channels averaged, polyphase resampling)."""
    import soundfile
    from scipy.signal import resample_poly

    if not path.is_file():
        raise FileNotFoundError(f"audio: {path} does not exist")
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != sampling_rate:
        g = math.gcd(int(rate), sampling_rate)
        mono = resample_poly(mono, sampling_rate // g, int(rate) // g).astype(np.float32)
    return mono


class AudioClips(Sequence):
    """Clips read from disk on access, so extraction never holds the whole data set in memory."""

    def __init__(self, paths: list[Path], sampling_rate: int) -> None:
        self.paths, self.sampling_rate = paths, sampling_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return load_clip(self.paths[index], self.sampling_rate)

    @property
    def items_id(self) -> str:
        """A name for these clips as read here (``extract_latents``' ``items_id``): their paths and how they load.

        A sha256 of the file paths, the sampling rate and :func:`load_clip`'s recipe: another list of files or
        another rate gets another name, so a store is never reused for other clips, while a rerun over a complete
        store reads none of them (without a name, it would decode and hash every clip). A file rewritten in place
        keeps its name: use another ``--run`` then.
        """
        listing = {"paths": [str(p) for p in self.paths], "sampling_rate": self.sampling_rate, "reader": CLIP_READER}
        digest = hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()
        return f"audio clips: {len(self.paths)} files, sha256 {digest}"


def extract_audio_latents(
    encoder: Any, paths: list[Path], out_dir: Path, *, batch_size: int, shard_size: int, progress: bool
) -> LatentStore:
    """The ``encoder``'s float32 latents of the clips at ``paths``, extracted once into the store ``out_dir``.

    The clips are named by :attr:`AudioClips.items_id`, so a rerun over the complete store opens it without
    reading a clip; an interrupted one resumes.
    """
    from fusemix.extract import extract_latents

    clips = AudioClips(paths, encoder.sampling_rate)
    store = extract_latents(
        encoder,
        clips,
        out_dir,
        modality="audio",
        batch_size=batch_size,
        shard_size=shard_size,
        dtype="float32",
        items_id=clips.items_id,
        progress=progress,
    )
    assert store is not None  # one worker always finishes the store
    return store


class StandardizedRows:
    """A read-only, row-indexable view of stored targets, standardised on the fly (no copy on disk)."""

    def __init__(self, source: Any, standardizer: TargetStandardizer) -> None:
        self.source = source
        self.shape = tuple(source.shape)
        self.dtype = np.dtype(np.float32)
        self.mean = standardizer.mean.numpy()
        self.scale = float(standardizer.scale)

    def __getitem__(self, index: Any) -> np.ndarray:
        rows = np.asarray(self.source[index], dtype=np.float32)
        return (rows - self.mean) / np.float32(self.scale)


def audio_encoder(path: str, device: str, *, progress: bool) -> Any:
    from fusemix.encoders import HFAudioEncoder

    return HFAudioEncoder(path, device=device, max_batch_size=16, progress=progress)


# -- train --------------------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict[str, Any]:
    from fusemix.encoders import CallableEncoder
    from fusemix.extract import extract_latents
    from fusemix.train import TrainConfig, fit

    run = Path(args.run)
    audio_paths, captions = read_pairs(Path(args.pairs), need_audio=args.audio_latents is None)
    count = len(captions)
    if args.audio_latents is None and args.audio_encoder is None:
        raise ValueError("--audio-encoder: needed unless --audio-latents gives precomputed latents")

    pipe = load_pipeline(args.pipeline, device=args.device, dtype=args.dtype)
    layout = conditioning_layout(pipe, args.num_tokens)
    identity = {**pipeline_identity(args.pipeline, pipe), "layout": describe_layout(layout)}
    caption_encoder = CallableEncoder(
        partial(caption_targets, pipe, layout), identity=identity, dim=layout.dim, max_batch_size=args.text_batch_size
    )
    targets = extract_latents(
        caption_encoder,
        captions,
        run / "text_targets",
        modality="text",
        batch_size=args.text_batch_size,
        shard_size=args.shard_size,
        dtype="float32",
        progress=not args.quiet,
    )
    del pipe, caption_encoder
    gc.collect()

    if args.audio_latents is not None:
        audio = np.load(args.audio_latents, mmap_mode="r", allow_pickle=False)
        if audio.ndim != 2 or audio.shape[0] != count:
            raise ValueError(f"--audio-latents: expected shape ({count}, D) to match --pairs, got {audio.shape}")
        audio_identity: dict[str, Any] = {"precomputed": Path(args.audio_latents).name}
    else:
        encoder = audio_encoder(args.audio_encoder, args.device, progress=not args.quiet)
        audio = extract_audio_latents(
            encoder,
            audio_paths,
            run / "audio_latents",
            batch_size=args.audio_batch_size,
            shard_size=args.shard_size,
            progress=not args.quiet,
        )
        audio_identity = json_normalised(dict(encoder.identity))
        del encoder
        gc.collect()

    standardizer = TargetStandardizer.fit(targets)
    paired = PairedLatents({"audio": audio, "text": StandardizedRows(targets, standardizer)})
    order = np.random.default_rng(args.seed).permutation(count)
    n_val = min(max(2, round(args.val_fraction * count)), count - 2)
    val, train_pairs = paired.subset(np.sort(order[:n_val])), paired.subset(np.sort(order[n_val:]))
    batch_size = min(args.batch_size, len(train_pairs) - len(train_pairs) % 2)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        shared_dim=layout.dim,
        depth=args.depth,
        dropout=args.dropout,
        seed=args.seed,
        eval_every=args.eval_every,
        checkpoint_every=0,
        device=args.device,
    )
    model = fixed_target_model(
        int(audio.shape[1]),
        layout.dim,
        source="audio",
        target="text",
        regression_weight=args.regression_weight,
        depth=args.depth,
        expansion=args.expansion,
        dropout=args.dropout,
    )
    pair = ("audio", "text")
    result = fit(train_pairs, config, val=val, val_pair=pair, model=model, out_dir=run / "fit", progress=not args.quiet)
    adapter = result.model.adapters["audio"].cpu().eval()
    metrics = dict(result.metrics or {})
    metrics["val_regression"] = validation_regression(adapter, val)
    metrics["val_pairs"], metrics["train_pairs"] = len(val), len(train_pairs)
    save_adapter(
        run / ADAPTER_DIR,
        adapter=adapter,
        layout=layout,
        standardizer=standardizer,
        info={
            "pipeline": identity,
            "audio_encoder": audio_identity,
            "audio_encoder_path": None if args.audio_latents is not None else str(args.audio_encoder),
            "train_config": config.to_dict(),
            "regression_weight": args.regression_weight,
            "metrics": metrics,
        },
    )
    if not args.quiet:
        print(json.dumps(metrics, indent=2))
    return metrics


@torch.no_grad()
def validation_regression(adapter: nn.Module, val: PairedLatents, chunk: int = 1024) -> float:
    """:class:`~fusemix.fixed_target.TargetRegressionLoss` over all validation pairs (0 perfect, 1 = their mean).

    Accumulated in float64 over chunks of pairs, so the validation targets are never all in memory.
    """
    error = spread_sum = 0.0
    total: Tensor | None = None
    for start in range(0, len(val), chunk):
        batch = val.gather(np.arange(start, min(start + chunk, len(val))))
        target = batch["text"].double()
        error += float((adapter(batch["audio"].float()).double() - target).pow(2).sum())
        spread_sum += float(target.pow(2).sum())
        total = target.sum(0) if total is None else total + target.sum(0)
    assert total is not None
    spread = spread_sum - float(total.pow(2).sum()) / len(val)
    return error / spread


def save_adapter(
    folder: Path,
    *,
    adapter: FusionAdapter,
    layout: ConditioningLayout,
    standardizer: TargetStandardizer,
    info: dict[str, Any],
) -> None:
    """Write the adapter, the layout's templates and the standardizer (safetensors) plus a JSON description."""
    import safetensors.torch

    blocks = list(adapter.blocks)
    description = {
        "format": FORMAT,
        "adapter": {
            "in_dim": adapter.in_dim,
            "out_dim": adapter.out_dim,
            "depth": len(blocks),
            "expansion": blocks[0].fc1.out_features // adapter.in_dim if blocks else 1,
            "dropout": float(blocks[0].drop.p) if blocks else 0.0,
        },
        "layout": describe_layout(layout),
        **info,
    }
    state = {f"adapter.{k}": v for k, v in adapter.state_dict().items()}
    state.update({f"layout.{k}": v for k, v in layout.state_dict().items()})
    state.update({f"standardizer.{k}": v for k, v in standardizer.state_dict().items()})
    with atomic_directory(folder) as tmp:
        safetensors.torch.save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / ADAPTER_WEIGHTS)
        )
        write_json_atomic(tmp / ADAPTER_CONFIG, description)


def load_adapter(folder: Path) -> tuple[FusionAdapter, ConditioningLayout, TargetStandardizer, dict[str, Any]]:
    """Read what :func:`save_adapter` wrote."""
    import safetensors.torch

    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"--run: {folder} has no {name}; run the train subcommand first")
    description = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if description.get("format") != FORMAT:
        raise ValueError(f"--run: {folder / ADAPTER_CONFIG} is not an audio-to-image adapter")
    spec = description["adapter"]
    adapter = FusionAdapter(
        spec["in_dim"], spec["out_dim"], depth=spec["depth"], expansion=spec["expansion"], dropout=spec["dropout"]
    )
    layout = layout_from_description(description["layout"])
    state = safetensors.torch.load_file(str(folder / ADAPTER_WEIGHTS))
    standardizer = TargetStandardizer(state["standardizer.mean"], state["standardizer.scale"])

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    adapter.load_state_dict(part("adapter."), strict=True)
    layout.load_state_dict(part("layout."), strict=True)
    return adapter.eval(), layout, standardizer, description


# -- generate -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def conditioning_from_audio(
    adapter: nn.Module, layout: ConditioningLayout, standardizer: TargetStandardizer, latents: Tensor
) -> dict[str, Tensor]:
    """Audio latents ``(B, D_audio)`` -> the pipeline's conditioning keyword arguments (float32, CPU)."""
    return layout.unpack(standardizer.inverse(adapter(latents.float())))


def generate(args: argparse.Namespace) -> list[Path]:
    adapter, layout, standardizer, description = load_adapter(Path(args.run) / ADAPTER_DIR)
    if args.audio_latents is not None:
        latents = torch.from_numpy(np.load(args.audio_latents, allow_pickle=False).astype(np.float32))
        if latents.ndim != 2 or latents.shape[1] != adapter.in_dim:
            raise ValueError(f"--audio-latents: expected shape (N, {adapter.in_dim}), got {tuple(latents.shape)}")
        names = [f"latent_{i:04d}" for i in range(len(latents))]
    else:
        if not args.audio:
            raise ValueError("--audio: give one or more sound files, or --audio-latents")
        path = args.audio_encoder or description.get("audio_encoder_path")
        if path is None:
            raise ValueError("--audio-encoder: the run was trained on precomputed latents; name the encoder")
        encoder = audio_encoder(path, args.device, progress=not args.quiet)
        if json_normalised(dict(encoder.identity)) != description["audio_encoder"]:
            raise ValueError(f"--audio-encoder: {path} is not the encoder the adapter was trained with")
        latents = encoder([load_clip(Path(a), encoder.sampling_rate) for a in args.audio])
        names = [Path(a).stem for a in args.audio]
        del encoder
    conditioning = conditioning_from_audio(adapter, layout, standardizer, latents)

    pipe = load_pipeline(args.pipeline, device=args.device, dtype=args.dtype)
    if not same_pipeline(pipeline_identity(args.pipeline, pipe), description["pipeline"]):
        raise ValueError(f"--pipeline: {args.pipeline} is not the pipeline the adapter was trained for")
    negative = unconditional(pipe, len(latents))
    dtype, device = negative["negative_prompt_embeds"].dtype, negative["negative_prompt_embeds"].device
    kwargs: dict[str, Any] = {k: v.to(device=device, dtype=dtype) for k, v in conditioning.items()}
    kwargs.update(negative)
    for key in ("num_inference_steps", "guidance_scale", "height", "width"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    images = pipe(generator=generator, output_type="pil", **kwargs).images
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in zip(names, images):
        target = out_dir / f"{name}.png"
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as f:
            image.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        written.append(target)
    if not args.quiet:
        print("\n".join(str(p) for p in written))
    return written


# -- command line -------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    top = argparse.ArgumentParser(
        prog="audio_to_image.py",
        description="Align audio into a frozen diffusers text-to-image pipeline's conditioning, then generate "
        f"images from sounds. Pipelines: {SUPPORTED}.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pipeline", required=True, help="diffusers pipeline: local directory or Hub name")
    common.add_argument("--run", required=True, help="run directory (latent stores and the trained adapter)")
    common.add_argument("--device", default=default_device, help=f"torch device (default: {default_device})")
    common.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="pipeline weights' dtype")
    common.add_argument("--seed", type=int, default=0, help="seed of the split and training / of the noise")
    common.add_argument("--quiet", action="store_true", help="no progress bars or summaries")

    t = commands.add_parser("train", parents=[common], help="encode the pairs and train the audio adapter")
    t.add_argument("--pairs", required=True, help="CSV with columns audio (path) and caption")
    t.add_argument("--audio-encoder", help="Whisper or CLAP checkpoint (local directory or Hub name)")
    t.add_argument("--audio-latents", help=".npy of precomputed audio latents, one row per CSV row")
    t.add_argument(
        "--num-tokens",
        type=_positive_int,
        default=None,
        help="prompt_embeds positions to predict after the start token (default: all of them)",
    )
    t.add_argument("--regression-weight", type=float, default=1.0, help="weight of the regression onto the target")
    t.add_argument("--epochs", type=_positive_int, default=100)
    t.add_argument("--batch-size", type=_positive_int, default=1024, help="pairs per step (before mixing)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=100)
    t.add_argument("--depth", type=int, default=4, help="residual blocks of the adapter (paper: 4)")
    t.add_argument("--expansion", type=_positive_int, default=4, help="hidden width multiplier (paper: 4)")
    t.add_argument("--dropout", type=float, default=0.6, help="dropout in the adapter (paper: 0.6)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of pairs held out for validation")
    t.add_argument("--eval-every", type=int, default=10, help="validate every this many epochs")
    t.add_argument("--text-batch-size", type=_positive_int, default=64, help="captions per text-encoder call")
    t.add_argument("--audio-batch-size", type=_positive_int, default=16, help="clips per audio-encoder call")
    t.add_argument("--shard-size", type=_positive_int, default=4096, help="rows per latent-store shard")

    g = commands.add_parser("generate", parents=[common], help="generate one image per sound")
    g.add_argument("--audio", nargs="*", default=[], help="sound files")
    g.add_argument("--audio-latents", help=".npy of precomputed audio latents instead of --audio")
    g.add_argument("--audio-encoder", help="audio encoder (default: the one recorded at training)")
    g.add_argument("--out-dir", required=True, help="where the PNGs go (one per sound, named after it)")
    g.add_argument("--num-inference-steps", type=_positive_int, default=None, help="default: the pipeline's")
    g.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
    g.add_argument("--height", type=_positive_int, default=None, help="default: the pipeline's")
    g.add_argument("--width", type=_positive_int, default=None, help="default: the pipeline's")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "train":
        if not 0 < args.val_fraction < 1:
            raise SystemExit(f"--val-fraction: expected a number in (0, 1), got {args.val_fraction}")
        train(args)
    else:
        generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
