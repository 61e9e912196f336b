"""A slow, deterministic extraction for tests/test_extract.py.

Run as ``python _extract_sleepy.py OUT_DIR DELAY_SECONDS``: the test kills the
process with SIGKILL part-way, then resumes the same extraction in-process
with :func:`run` and compares the result with an uninterrupted run.
"""

import sys
import time

import numpy as np
import torch

from fusemix.extract import extract_latents

COUNT, DIM, BATCH, SHARD = 96, 6, 4, 8
IDENTITY = {"name": "sine-encoder", "dim": DIM}


class SineEncoder:
    """Latents ``sin(item * k / 7)`` for ``k = 1..DIM``; records the items it was called on."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[int] = []

    def __call__(self, batch: list[int]) -> torch.Tensor:
        self.seen.extend(batch)
        if self.delay:
            time.sleep(self.delay)
        angles = np.asarray(batch, dtype=np.float64)[:, None] * np.arange(1, DIM + 1) / 7.0
        return torch.from_numpy(np.sin(angles).astype(np.float32))


def run(out_dir: str, encoder: SineEncoder):
    return extract_latents(
        encoder,
        list(range(COUNT)),
        out_dir,
        modality="toy",
        batch_size=BATCH,
        shard_size=SHARD,
        encoder_identity=IDENTITY,
        progress=False,
        metadata={"source": "test"},
    )


if __name__ == "__main__":
    run(sys.argv[1], SineEncoder(delay=float(sys.argv[2])))
