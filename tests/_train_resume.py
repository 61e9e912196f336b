"""A small deterministic training run for the resume tests; run as a script it can SIGKILL itself.

Usage: ``python _train_resume.py OUT_DIR KILL_AT_STEP`` trains in OUT_DIR and
kills its own process (SIGKILL, no cleanup) right after optimizer step
KILL_AT_STEP. With a third argument ``pause`` it instead prints ``paused``
there and sleeps until killed (a run that holds OUT_DIR). The tests import
:func:`run` to train or resume in-process.
"""

import os
import signal
import sys
import time

import numpy as np
import torch

from fusemix.data import PairedLatents
from fusemix.train import TrainConfig, fit

torch.set_num_threads(1)  # the same thread count in every process keeps CPU results bit-identical

CONFIG = TrainConfig(
    epochs=4,
    batch_size=32,
    lr=3e-3,
    warmup_steps=3,
    shared_dim=8,
    depth=1,
    expansion=2,
    dropout=0.3,
    checkpoint_every=1,
    eval_every=2,
    log_every=2,
    device="cpu",
)
STEPS_PER_EPOCH = 6


def make_data(num_train: int = 192, num_val: int = 40) -> tuple[PairedLatents, PairedLatents]:
    rng = np.random.default_rng(0)
    concepts = rng.standard_normal((num_train + num_val, 4))
    image = np.tanh(concepts @ rng.standard_normal((4, 12))).astype(np.float32)
    text = np.tanh(concepts @ rng.standard_normal((4, 10))).astype(np.float32)
    split = slice(0, num_train), slice(num_train, None)
    return tuple(PairedLatents({"image": image[s], "text": text[s]}) for s in split)


def run(out_dir, kill_at_step=None, config=CONFIG, pause=False):
    train, val = make_data()

    def kill(state):
        if state.step == kill_at_step and pause:
            print("paused", flush=True)
            time.sleep(600)
        if state.step == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    return fit(train, config, val=val, out_dir=out_dir, progress=False, callbacks=[kill])


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), pause=sys.argv[3:] == ["pause"])
