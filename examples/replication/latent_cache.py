"""Latents of a preset's datasets, extracted once per (dataset, encoder, pipeline) and reused by every run.

Folders::

    <cache-dir>/<dataset>/<encoder slug>/<variant>/{items,captions}/    latent stores

``<variant>`` names what changes the latents besides the encoder
(:attr:`~replication.fidelity.Fidelity.variant`): ``authors-float32`` for the
faithful pipeline, ``encoder-float16`` for the fast one. An encoder replaced
with ``--model`` gets the slug ``<slug>-custom``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusemix.data import PairedLatents
from fusemix.extract import extract_latents
from fusemix.store import LatentStore

from .encoders import build_encoder
from .fidelity import Fidelity
from .preset_data import Dataset
from .presets import EncoderChoice


class LatentCache:
    """Extracts each (dataset, encoder) pair once into ``cache_dir`` and opens the stores.

    Args:
        cache_dir: Root of the cache.
        fidelity: The pipeline: latent dtype, encoder dtype on CUDA, whether
            the authors' preprocessing applies.
        caption_processor: The preset's caption preprocessing (e.g.
            :func:`fusemix.preprocess.blip_caption`): the text encoders apply
            it to every caption when ``fidelity.authors_preprocessing``, and
            record it in their identity.
        model_overrides: Encoder slug to a hub name or local directory.
        device: Where the encoders run (``None``: CUDA when available).
        batch_size: Items per extraction batch.
        progress: Show progress bars.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        fidelity: Fidelity,
        caption_processor: Callable[[str], str] | None = None,
        model_overrides: Mapping[str, str] | None = None,
        device: str | None = None,
        batch_size: int = 256,
        progress: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.fidelity = fidelity
        self.caption_processor = caption_processor
        self.model_overrides = dict(model_overrides or {})
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._encoders: dict[str, Any] = {}

    def _encoder(self, choice: EncoderChoice) -> Any:
        if choice.slug not in self._encoders:
            model = self.model_overrides.get(choice.slug)
            self._encoders[choice.slug] = build_encoder(
                choice, self.fidelity, model=model, device=self.device, caption_processor=self.caption_processor,
                progress=self.progress,
            )  # fmt: skip
        return self._encoders[choice.slug]

    def folder(self, dataset: Dataset, choice: EncoderChoice) -> Path:
        """Where the stores of ``dataset`` encoded by ``choice`` live."""
        slug = choice.slug if choice.slug not in self.model_overrides else f"{choice.slug}-custom"
        return self.cache_dir / dataset.name / slug / self.fidelity.variant

    def latents(self, dataset: Dataset, modality: str, choices: Sequence[EncoderChoice]) -> np.ndarray | LatentStore:
        """Latents of ``dataset``'s items (``modality != "text"``) or captions, one encoder or several concatenated."""
        stores = []
        for choice in choices:
            texts = modality == "text"
            encoder = self._encoder(choice)
            stores.append(
                extract_latents(
                    encoder,
                    dataset.captions if texts else dataset.items_for(encoder),
                    self.folder(dataset, choice) / ("captions" if texts else "items"),
                    modality=modality,
                    batch_size=self.batch_size,
                    dtype=self.fidelity.latent_dtype,
                    progress=self.progress,
                    metadata={"dataset": dataset.name, "pipeline": self.fidelity.name},
                )  # fmt: skip
            )
        if len(stores) == 1:
            return stores[0]
        return np.concatenate([s.to_numpy(np.float32) for s in stores], axis=1)

    def paired(self, dataset: Dataset, encoders: Mapping[str, Sequence[EncoderChoice]], query: str) -> PairedLatents:
        """The dataset as :class:`PairedLatents`: one pair per caption, the item of each caption on the query side."""
        latents = {m: self.latents(dataset, m, encoders[m]) for m in (query, "text")}
        return PairedLatents(latents, rows={query: dataset.caption_to_item})


def fraction_subset(paired: PairedLatents, fraction: float, seed: int = 0) -> PairedLatents:
    """A fixed seeded subset of ``fraction`` of the pairs (all of them for 1.0)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction: expected a value in (0, 1], got {fraction}")
    if fraction == 1:
        return paired
    count = min(len(paired), max(4, round(fraction * len(paired))))
    chosen = np.sort(np.random.default_rng(seed).choice(len(paired), size=count, replace=False))
    return paired.subset(chosen)
