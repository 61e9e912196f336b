"""fusemix: multimodal alignment of frozen unimodal encoders with FuseMix, on one GPU.

The core (mixing, adapters, losses, metrics) imports nothing from the I/O half
of the package.
"""

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

__version__ = "0.1.0.dev0"

__all__ = [
    "AlphaSchedule",
    "CCAAligner",
    "ClosedFormAligner",
    "ConditioningLayout",
    "ContrastiveLoss",
    "CosineAlphaSchedule",
    "ExponentialAlphaSchedule",
    "FixedTargetLoss",
    "FuseMix",
    "FusionAdapter",
    "FusionModel",
    "IdentityAdapter",
    "LatentNoise",
    "LinearAdapter",
    "MixParams",
    "PairwiseContrastiveLoss",
    "ProcrustesAligner",
    "ResidualMLPBlock",
    "SequenceTemplate",
    "SigLIPLoss",
    "StructureLoss",
    "TargetRegressionLoss",
    "TargetStandardizer",
    "__version__",
    "aligner_input_norm",
    "fixed_target_model",
    "metrics_from_ranks",
    "mix_latents",
    "mix_masks",
    "recall_at_k",
    "retrieval_metrics",
    "retrieval_ranks",
    "sample_mix_params",
    "similarity_ranks",
    "warm_start",
]
