"""A small run whose validation metric peaks early, then falls and climbs again: for the selection tests.

Usage: ``python _selection_run.py OUT_DIR KILL_AT_STEP [PATIENCE]`` trains in
OUT_DIR and kills its own process (SIGKILL, no cleanup) right after optimizer
step KILL_AT_STEP. The tests import :func:`run` to train or resume in-process.

With this data and config, ``i2t_mean`` on the validation
pairs improves at epochs 0, 1, 7 and 8 (0-based) and ties its best at epoch 9;
the tests read the curve from a reference run and check these facts where
they rely on them.
"""

import os
import signal
import sys
from dataclasses import replace

import numpy as np

from fusemix.data import PairedLatents
from fusemix.train import TrainConfig, fit

CONFIG = TrainConfig(
    epochs=12,
    batch_size=32,
    lr=5e-2,
    warmup_steps=1,
    shared_dim=8,
    depth=1,
    expansion=2,
    dropout=0.2,
    eval_every=1,
    checkpoint_every=3,
    log_every=3,
    device="cpu",
    threads=1,  # the same thread count in every process keeps CPU results bit-identical
    selection="best",
    selection_metric="i2t_mean",
)
STEPS_PER_EPOCH = 2


def make_data(num_train: int = 64, num_val: int = 40) -> tuple[PairedLatents, PairedLatents]:
    """Noisy views of shared 4-d concepts: few training pairs and a high lr, so validation recall is not monotone."""
    rng = np.random.default_rng(0)
    concepts = rng.standard_normal((num_train + num_val, 4))
    image = np.tanh(concepts @ rng.standard_normal((4, 12))) + rng.standard_normal((num_train + num_val, 12))
    text = np.tanh(concepts @ rng.standard_normal((4, 10))) + rng.standard_normal((num_train + num_val, 10))
    split = slice(0, num_train), slice(num_train, None)
    return tuple(
        PairedLatents({"image": image[s].astype(np.float32), "text": text[s].astype(np.float32)}) for s in split
    )


def run(out_dir, kill_at_step=None, config=CONFIG, callbacks=()):
    train, val = make_data()

    def kill(state):
        if state.step == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    return fit(train, config, val=val, out_dir=out_dir, progress=False, callbacks=[kill, *callbacks])


if __name__ == "__main__":
    patience = int(sys.argv[3]) if len(sys.argv) > 3 else None
    run(sys.argv[1], int(sys.argv[2]), config=replace(CONFIG, patience=patience))
