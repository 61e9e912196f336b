"""The authors' latent-loading pipeline, reproduced for the loader and training benchmarks.

What the released FuseMix code (``layer6ai-labs/fusemix``, built on LAVIS)
does with pre-extracted latents, step by step:

- extraction (``lavis/tasks/feature_extraction.py``) keeps every sample's
  latent as its own float32 tensor in a Python ``dict`` keyed by the sample's
  index (each tensor a row view of the extraction batch's output) and saves
  the dict with ``torch.save``; training loads it back with ``torch.load``,
  so the dict, one tensor per sample, is what sits in memory;
- ``FeaturePairDataset.__getitem__`` (``lavis/datasets/datasets/
  feature_pair_dataset.py``) looks up ``vis_feats[str(index)]`` and
  ``text_feats[str(index)]``, passes each through the ``feat_train``
  processor (``embed + noise_std * torch.rand_like(embed)``; ``noise_std``
  is 0 in every released config, but the noise is still drawn and added)
  and returns ``{"vis_embed", "text_embed", "instance_id": str(index)}``;
- its ``collater`` is ``default_collate``, which stacks the per-sample
  tensors and lists the ids;
- LAVIS's ``RunnerBase.create_loaders`` wraps it in
  ``DataLoader(batch_size=B, num_workers=N, pin_memory=True, shuffle=True,
  collate_fn=dataset.collater, drop_last=True)`` (the released configs use
  ``num_workers: 8``) and, through ``PrefetchLoader``, copies each batch to
  the GPU with ``non_blocking=True``; a new iterator (and so new worker
  processes) is made every epoch.

This module rebuilds exactly that from an in-memory ``(N, D)`` latent matrix
(the ``torch.load`` step is left out: it is a one-off cost, not per batch).
Nothing here is used by the ``fusemix`` package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate


def default_workers() -> int:
    """The released configs' ``num_workers: 8``, capped by the cores this process may use."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, usable))


def per_sample_dict(latents: Tensor) -> dict[str, Tensor]:
    """Latents as the authors' extraction keeps them: ``{str(i): row i}``, each a view of ``latents`` (float32).

    Args:
        latents: Float32 latents. Shape: ``(N, D)``.

    Returns:
        One 1-D tensor per sample. Shape of each: ``(D,)``.

    """
    if latents.dtype != torch.float32:
        raise TypeError(f"latents: the authors' extraction stores float32, got {latents.dtype}")
    return {str(i): row for i, row in enumerate(latents)}


class FeaturePairDataset(Dataset):
    """``FeaturePairDataset`` with the ``feat_train`` processor, as in the authors' code.

    Args:
        vis_feats: ``{str(index): image latent}``.
        text_feats: ``{str(index): text latent}``, the same keys.
        noise_std: The processor's noise scale (0 in every released config).

    """

    def __init__(self, vis_feats: dict[str, Tensor], text_feats: dict[str, Tensor], noise_std: float = 0.0) -> None:
        if len(vis_feats) != len(text_feats):
            raise ValueError(f"text_feats: has {len(text_feats)} samples, vis_feats {len(vis_feats)}")
        self.vis_feats = vis_feats
        self.text_feats = text_feats
        self.noise_std = noise_std

    def __len__(self) -> int:
        return len(self.vis_feats)

    def _process(self, embed: Tensor) -> Tensor:
        return embed + self.noise_std * torch.rand_like(embed)

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        return {
            "vis_embed": self._process(self.vis_feats[str(index)]),
            "text_embed": self._process(self.text_feats[str(index)]),
            "instance_id": str(index),
        }


def authors_loader(dataset: FeaturePairDataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """The LAVIS training ``DataLoader`` over ``dataset`` (``pin_memory`` only where there is a GPU to pin for)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        shuffle=True,
        collate_fn=default_collate,
        drop_last=True,
    )


def authors_batches(loader: DataLoader, device: torch.device) -> Iterator[dict[str, Tensor]]:
    """One epoch of ``loader`` (a new iterator, so new workers), each batch on ``device`` as ``{"image", "text"}``.

    The copy to a GPU is ``non_blocking``, as LAVIS's ``PrefetchLoader`` does it.
    """
    for batch in loader:
        yield {
            "image": batch["vis_embed"].to(device, non_blocking=True),
            "text": batch["text_embed"].to(device, non_blocking=True),
        }
