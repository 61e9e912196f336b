"""What a training checkpoint records to resume a run, and the checks a resume makes before it continues.

A resume continues only the run the checkpoint was made by: the same config
(up to :data:`~fusemix.train_config.RESULT_NEUTRAL_FIELDS`), the same
training (and, with ``selection="best"``, validation) data, the same number
of processes, and a checkpoint every rank sees alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusemix._latent_identity import describe_identity, latent_identity
from fusemix._paired import PairedLatents
from fusemix._run_files import CHECKPOINT_DIR
from fusemix.checkpoint import TrainingCheckpoint
from fusemix.distributed import ProcessPlace, all_gather_tensors
from fusemix.train_config import RESULT_NEUTRAL_FIELDS, TrainConfig

CHECKPOINT_FORMAT = "fusemix-training-checkpoint"
"""The ``format`` of a training checkpoint's ``state.json``."""


def pairing_fingerprint(data: PairedLatents) -> str:
    """SHA-256 of which rows form each pair (modality names and row indices, ``-1`` for absent rows).

    A resumed run compares it with the checkpoint's, so that resuming on other
    pairs of the same size (another pairs file, another pattern of missing
    rows) is refused instead of silently training on different data.
    """
    digest = hashlib.sha256()
    for modality in data.modalities:
        digest.update(modality.encode() + b"\0")
        digest.update(np.ascontiguousarray(data.row_index(modality), dtype="<i8").tobytes())
    return digest.hexdigest()


def data_identity(data: PairedLatents) -> dict[str, Any]:
    """What a checkpoint records to recognise its training or validation data.

    The number of pairs, the dims, the pairing fingerprint and, per modality,
    the content identity of its latents (:func:`~fusemix._latent_identity.latent_identity`:
    a store's shard hashes from its manifest, or a hash of an array's bytes).
    :func:`check_same_data` compares it on resume.
    """
    return {
        "num_pairs": len(data),
        "dims": data.dims,
        "pairing": pairing_fingerprint(data),
        "latents": {modality: latent_identity(source) for modality, source in data.latents.items()},
    }


def check_same_data(name: str, saved: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    """Refuse to resume with ``name`` data (``"train"`` or ``"val"``) other than the checkpoint's.

    A checkpoint written before a field was recorded (the pairing, the
    latents' content) is not compared on it.

    Args:
        name: The argument of :func:`~fusemix.train.fit` the data came in.
        saved: Its :func:`data_identity` in the checkpoint.
        current: Its :func:`data_identity` now.
        where: The checkpoint directory, for the message.

    """
    if saved["num_pairs"] != current["num_pairs"] or saved["dims"] != current["dims"]:
        raise ValueError(
            f"{name}: has {current['num_pairs']} pairs with dims {current['dims']}, but the checkpoint in {where} "
            f"was made with {saved['num_pairs']} pairs with dims {saved['dims']}; resume with the same {name} data, "
            "or train in another out_dir"
        )
    if "pairing" in saved and saved["pairing"] != current["pairing"]:
        raise ValueError(
            f"{name}: pairs its rows differently from the {name} data the checkpoint in {where} was made with (same "
            "number of pairs and dims, other row indices or missing rows); resume with the same pairs, or "
            "train in another out_dir"
        )
    for modality, identity in current["latents"].items():
        before = saved.get("latents", {}).get(modality)
        if before is not None and before != identity:
            raise ValueError(
                f"{name}: its {modality!r} latents differ from those the checkpoint in {where} was made with "
                f"({describe_identity(identity)} now, {describe_identity(before)} there: same number of pairs "
                f"and dims, other values, e.g. a shuffled or re-extracted store); resume with the same {name} "
                "latents, or train in another out_dir"
            )


def resume_neutral_fields(config: TrainConfig) -> frozenset[str]:
    """The fields a resume may change: ``RESULT_NEUTRAL_FIELDS``, less ``eval_every`` with ``selection="best"``."""
    return RESULT_NEUTRAL_FIELDS - {"eval_every"} if config.selection == "best" else RESULT_NEUTRAL_FIELDS


class ConfigMismatchError(ValueError):
    """:func:`compare_config`'s refusal, with what differs for a caller that words it its own way.

    Attributes:
        checkpoint: The checkpoint directory.
        differences: Each differing field (in the order of the config) to ``(now, in the checkpoint)``, as
            :meth:`~fusemix.train_config.TrainConfig.to_dict` writes the values.

    """

    def __init__(self, message: str, checkpoint: Path, differences: dict[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.differences = differences


def compare_config(saved: Mapping[str, Any], config: TrainConfig, where: Path) -> None:
    """Refuse to resume with a config whose result-changing fields differ from the checkpoint's ``saved`` config.

    Raises:
        ConfigMismatchError: A ``ValueError`` naming the differing fields.

    """
    current = config.to_dict()
    saved_config = TrainConfig.from_dict(saved).to_dict()
    neutral = resume_neutral_fields(config)
    differences = {
        k: (current[k], saved_config[k]) for k in current if k not in neutral and current[k] != saved_config[k]
    }
    if differences:
        differ = [f"{k}={now!r} (checkpoint: {before!r})" for k, (now, before) in differences.items()]
        raise ConfigMismatchError(
            f"config: differs from the checkpoint in {where}: {', '.join(differ)}; resume with the checkpoint's "
            "config (TrainConfig.from_dict of its state.json 'config'), or train in another out_dir",
            where,
            differences,
        )


def check_ranks_agree(
    out_dir: Path | None, ckpt: TrainingCheckpoint | None, place: ProcessPlace, device: torch.device
) -> None:
    """Refuse (on every rank) to go on when the ranks got different ``out_dir`` or saw different checkpoints."""
    if place.world_size == 1:
        return
    view = [-1, -1] if ckpt is None else [int(ckpt.state.get("epoch", -1)), int(ckpt.state.get("step", -1))]
    mine = torch.tensor([int(out_dir is not None), *view], dtype=torch.int64)
    views = [v.tolist() for v in all_gather_tensors(mine, device)]
    if all(v == views[0] for v in views):
        return
    if len({v[0] for v in views}) > 1:
        given = [r for r, v in enumerate(views) if v[0]]
        raise ValueError(
            f"out_dir: given on ranks {given} only; pass the same out_dir on every rank (only rank 0 writes to it)"
        )
    seen = ", ".join(
        f"rank {r}: " + ("no checkpoint" if v[1] < 0 else f"epoch {v[1]}, step {v[2]}") for r, v in enumerate(views)
    )
    raise ValueError(
        f"out_dir: the ranks see different checkpoints in {out_dir / CHECKPOINT_DIR} ({seen}); out_dir must "
        "be on a filesystem that every rank reads (one machine, or a shared filesystem)"
    )
