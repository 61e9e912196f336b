import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusemix import ContrastiveLoss
from fusemix.distributed import gather_with_grad, get_rank, get_world_size

sys.path.insert(0, str(Path(__file__).parent))
from _dist_loss_worker import CASES, build  # noqa: E402

WORKER = Path(__file__).parent / "_dist_loss_worker.py"


def test_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((12, 6)), "text": rng.standard_normal((12, 5))}
    np.savez(tmp_path / "batch.npz", **batch)
    out = tmp_path / "ranks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(WORKER), str(tmp_path / "batch.npz"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {f"{loss}-{mode}" for loss, mode in CASES}
    for loss_name, mode in CASES:
        reference = build(loss_name, gather=False, local=False)
        loss = reference({k: torch.from_numpy(v) for k, v in batch.items()})
        loss.backward()
        got = results[f"{loss_name}-{mode}"]
        assert got["loss"] == pytest.approx(loss.item(), abs=1e-9), (loss_name, mode)
        for name, p in reference.named_parameters():
            np.testing.assert_allclose(np.array(got["grads"][name]), p.grad.numpy(), atol=1e-6, rtol=0, err_msg=name)


def test_single_process_helpers_are_identities():
    x = torch.randn(3, 2)
    assert get_rank() == 0 and get_world_size() == 1
    assert gather_with_grad(x) is x
    # gather_distributed without a process group is the ordinary loss.
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(ContrastiveLoss(gather_distributed=True, local_loss=True)(a, b), ContrastiveLoss()(a, b))
