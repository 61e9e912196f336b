"""Worker for tests/test_distributed.py, run under ``torchrun --nproc_per_node=2``.

Computes the loss and gradients of a small FusionModel under DDP on this
rank's slice of a global batch and writes rank 0's view to ``OUT``.
"""

import datetime
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fusemix import ContrastiveLoss, FusionModel, SigLIPLoss


def build(loss_name: str, gather: bool, local: bool) -> FusionModel:
    torch.manual_seed(0)
    if loss_name == "contrastive":
        loss = ContrastiveLoss(gather_distributed=gather, local_loss=local)
    else:
        loss = SigLIPLoss(gather_distributed=gather, local_loss=local, chunk_size=3)
    return FusionModel.from_dims({"image": 6, "text": 5}, shared_dim=4, depth=1, dropout=0.0, loss=loss).double()


CASES = [(loss, mode) for loss in ("contrastive", "siglip") for mode in ("global", "local")]


def main() -> None:
    data, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    arrays = np.load(data)
    per_rank = arrays["image"].shape[0] // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    batch = {k: torch.from_numpy(arrays[k][rows]) for k in ("image", "text")}
    results = {}
    for loss_name, mode in CASES:
        model = DistributedDataParallel(build(loss_name, gather=True, local=mode == "local"))
        loss = model(batch)
        loss.backward()
        value = loss.detach().clone()
        dist.all_reduce(value)
        value /= world
        grads = {n: p.grad.tolist() for n, p in model.module.named_parameters()}
        results[f"{loss_name}-{mode}"] = {"loss": value.item(), "grads": grads}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # torch 2.13's c10d clients can abort in C++ static destructors at interpreter exit on a loaded machine
    # ("terminate called without an active exception"), after every result is written; leave without them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
