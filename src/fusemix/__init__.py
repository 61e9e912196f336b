"""fusemix: multimodal alignment of frozen unimodal encoders with FuseMix, on one GPU.

The core (mixing, adapters, losses, metrics, model, aligners) imports nothing
from the I/O half of the package (store, extraction, encoders, training,
checkpoints, command line), and ``import fusemix`` loads the core only: torch
and numpy, nothing optional. The I/O names most programs need are here too
(``fusemix.fit``, ``fusemix.extract_latents``, ``fusemix.LatentStore``, ...):
each imports its module on first use and is the same object as
``fusemix.<module>.<name>``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from fusemix.adapters import FusionAdapter, IdentityAdapter, LinearAdapter, ResidualMLPBlock
from fusemix.aligners import CCAAligner, ClosedFormAligner, ProcrustesAligner
from fusemix.fixed_target import (
    ConditioningLayout,
    FixedTargetLoss,
    SequenceTemplate,
    TargetRegressionLoss,
    TargetStandardizer,
    fixed_target_model,
)
from fusemix.losses import ContrastiveLoss, PairwiseContrastiveLoss, SigLIPLoss
from fusemix.metrics import metrics_from_ranks, recall_at_k, retrieval_metrics, retrieval_ranks, similarity_ranks
from fusemix.mixing import (
    AlphaSchedule,
    CosineAlphaSchedule,
    ExponentialAlphaSchedule,
    FuseMix,
    LatentNoise,
    MixParams,
    mix_latents,
    mix_masks,
    sample_mix_params,
)
from fusemix.model import FusionModel
from fusemix.regularizers import StructureLoss
from fusemix.warmstart import aligner_input_norm, warm_start

if TYPE_CHECKING:
    from fusemix.checkpoint import load_model, save_model
    from fusemix.data import LatentBatcher, PairedLatents
    from fusemix.evaluation import evaluate_retrieval
    from fusemix.extract import extract_latents
    from fusemix.store import LatentStore, write_store
    from fusemix.train import FitResult, fit
    from fusemix.train_config import TrainConfig

__version__ = "0.1.0.dev0"

_IO_NAMES: dict[str, str] = {
    "FitResult": "fusemix.train",
    "LatentBatcher": "fusemix.data",
    "LatentStore": "fusemix.store",
    "PairedLatents": "fusemix.data",
    "TrainConfig": "fusemix.train_config",
    "evaluate_retrieval": "fusemix.evaluation",
    "extract_latents": "fusemix.extract",
    "fit": "fusemix.train",
    "load_model": "fusemix.checkpoint",
    "save_model": "fusemix.checkpoint",
    "write_store": "fusemix.store",
}
"""Names of the I/O half reachable from ``fusemix``, and the module each is imported from on first use."""


def __getattr__(name: str) -> Any:
    module = _IO_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'fusemix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_IO_NAMES})


__all__ = [
    "AlphaSchedule",
    "CCAAligner",
    "ClosedFormAligner",
    "ConditioningLayout",
    "ContrastiveLoss",
    "CosineAlphaSchedule",
    "ExponentialAlphaSchedule",
    "FitResult",
    "FixedTargetLoss",
    "FuseMix",
    "FusionAdapter",
    "FusionModel",
    "IdentityAdapter",
    "LatentBatcher",
    "LatentNoise",
    "LatentStore",
    "LinearAdapter",
    "MixParams",
    "PairedLatents",
    "PairwiseContrastiveLoss",
    "ProcrustesAligner",
    "ResidualMLPBlock",
    "SequenceTemplate",
    "SigLIPLoss",
    "StructureLoss",
    "TargetRegressionLoss",
    "TargetStandardizer",
    "TrainConfig",
    "__version__",
    "aligner_input_norm",
    "evaluate_retrieval",
    "extract_latents",
    "fit",
    "fixed_target_model",
    "load_model",
    "metrics_from_ranks",
    "mix_latents",
    "mix_masks",
    "recall_at_k",
    "retrieval_metrics",
    "retrieval_ranks",
    "sample_mix_params",
    "save_model",
    "similarity_ranks",
    "warm_start",
    "write_store",
]
