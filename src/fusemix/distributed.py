"""Helpers for ``torch.distributed``: rank information and an all-gather that keeps gradients.

Under data parallelism each rank holds a slice of the global batch. Contrastive
losses need negatives from every rank, so features are gathered with
:func:`gather_with_grad`. Its backward sums the gradients every rank computes
for a slice and hands them to the slice's owner, which is what makes the
losses exact under ``DistributedDataParallel``'s gradient averaging (see
:class:`~fusemix.ContrastiveLoss`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def check_equal_batch_sizes(batch_size: int, device: torch.device) -> None:
    """Raise ``ValueError`` on every rank if local batch sizes differ across ranks.

    ``all_gather`` needs equal shapes; with unequal ones some backends hang or
    fail with an opaque message, so the sizes are compared first (one tiny
    collective).

    Args:
        batch_size: This rank's local batch size.
        device: Device the process group communicates on.
    """
    sizes = torch.zeros(get_world_size(), dtype=torch.int64, device=device)
    sizes[get_rank()] = batch_size
    dist.all_reduce(sizes)
    if bool((sizes != sizes[0]).any()):
        raise ValueError(
            f"features: local batch sizes differ across ranks ({sizes.tolist()}); every rank must pass the same "
            "number of rows (use drop_last=True in the batcher)"
        )


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients.

    Rank ``r``'s rows occupy ``[r * B, (r + 1) * B)`` of the result. The
    backward pass sums, over ranks, the gradient with respect to each slice
    and returns it to the slice's owner.

    Args:
        x: This rank's features. Shape: ``(B, D)``, the same ``B`` on every rank.

    Returns:
        The global features. Shape: ``(world_size * B, D)``; ``x`` itself when
        not distributed.
    """
    if get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)
