"""Helpers for ``torch.distributed``: rank information, launcher detection and an all-gather that keeps gradients.

Under data parallelism each rank holds a slice of the global batch. Contrastive
losses need negatives from every rank, so features are gathered with
:func:`gather_with_grad`. Its backward sums the gradients every rank computes
for a slice and hands them to the slice's owner, which is what makes the
losses exact under ``DistributedDataParallel``'s gradient averaging (see
:class:`~fusemix.ContrastiveLoss`).

``launch_environment()`` reads where this process sits in a job started by
``torchrun`` (or any launcher that sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), and
``init_from_environment()`` joins that job; :func:`fusemix.train.fit` uses
both, so a training script needs no change to run on several processes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process sits in a data-parallel job.

    Attributes:
        world_size: Number of processes (1: not distributed).
        rank: This process's global rank, in ``[0, world_size)``.
        local_rank: Its rank on this machine (picks the GPU), or ``None``
            when neither the launcher nor the caller said.
        initialized: Whether a process group is already initialised.

    Example:
        >>> place = ProcessPlace(world_size=4, rank=2, local_rank=0, initialized=False)
        >>> place.is_main
        False

    """

    world_size: int
    rank: int
    local_rank: int | None
    initialized: bool

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files."""
        return self.rank == 0


def _int_variable(name: str, minimum: int) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an integer environment variable, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def launch_environment() -> ProcessPlace:
    """Where this process sits: from an initialised process group, else from the launcher's variables.

    An initialised process group wins (its world size and rank; the local
    rank from ``LOCAL_RANK`` when set). Otherwise ``WORLD_SIZE``, ``RANK``
    and ``LOCAL_RANK`` as set by ``torchrun``; without ``WORLD_SIZE`` this is
    a single process.

    Returns:
        The :class:`ProcessPlace`.

    Raises:
        ValueError: If a variable is not an integer, or ``RANK`` is missing or
            not below ``WORLD_SIZE``.

    Example:
        >>> place = launch_environment()  # plain python, no launcher
        >>> place.world_size, place.rank, place.is_main
        (1, 0, True)

    """
    local_rank = _int_variable("LOCAL_RANK", 0)
    if is_distributed():
        return ProcessPlace(get_world_size(), get_rank(), local_rank, initialized=True)
    world_size = _int_variable("WORLD_SIZE", 1)
    if world_size is None or world_size == 1:
        return ProcessPlace(1, 0, local_rank, initialized=False)
    rank = _int_variable("RANK", 0)
    if rank is None or rank >= world_size:
        raise ValueError(
            f"RANK: expected an integer in [0, WORLD_SIZE={world_size}) set by the launcher, "
            f"got {os.environ.get('RANK')!r}; launch with torchrun"
        )
    return ProcessPlace(world_size, rank, local_rank, initialized=False)


def init_from_environment(device: torch.device, timeout_s: float) -> None:
    """Join the job a launcher started: ``init_process_group`` from the ``env://`` variables.

    The backend is NCCL for a CUDA ``device`` and Gloo otherwise. Every
    collective that waits longer than ``timeout_s`` seconds (a rank that
    died or stalled) fails with an error instead of hanging.

    Args:
        device: The device this process trains on.
        timeout_s: Collective timeout in seconds.

    Raises:
        RuntimeError: If ``torch.distributed`` is unavailable or the
            launcher left a rendezvous variable unset.

    """
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE: set to more than 1, but this torch build has no torch.distributed")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"{missing[0]}: not set, but WORLD_SIZE={os.environ.get('WORLD_SIZE')}; launch with torchrun, "
            "or call torch.distributed.init_process_group yourself before training"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def barrier(device: torch.device) -> None:
    """Wait until every rank gets here (nothing when not distributed)."""
    if get_world_size() == 1:
        return
    if device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather_tensors(x: Tensor, device: torch.device) -> list[Tensor]:
    """Every rank's 1-D tensor ``x`` (lengths may differ across ranks), on the CPU, in rank order.

    Args:
        x: This rank's values. Shape: ``(L,)``.
        device: Device the process group communicates on.

    Returns:
        ``world_size`` CPU tensors; entry ``r`` is rank ``r``'s ``x``. Just
        ``[x]`` when not distributed.

    Example:
        >>> all_gather_tensors(torch.tensor([3, 1, 2]), torch.device("cpu"))  # one process
        [tensor([3, 1, 2])]

    """
    if get_world_size() == 1:
        return [x.detach().cpu()]
    lengths = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(get_world_size())]
    dist.all_gather(lengths, torch.tensor([x.numel()], dtype=torch.int64, device=device))
    longest = max(int(n) for n in lengths)
    padded = torch.zeros(longest, dtype=x.dtype, device=device)
    padded[: x.numel()] = x.detach().to(device)
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return [p[: int(n)].cpu() for p, n in zip(parts, lengths)]


def all_reduce_sum(x: Tensor) -> Tensor:
    """``x`` summed over ranks, in place (``x`` itself when not distributed).

    Example:
        >>> all_reduce_sum(torch.tensor(2.5))  # one process
        tensor(2.5000)

    """
    if get_world_size() > 1:
        dist.all_reduce(x)
    return x
