"""The files of a training run directory (``fit(out_dir=...)``, ``fusemix train --out``).

Named here, apart from the trainer, so that ``fusemix evaluate`` finds a run's
model without importing it::

    <out_dir>/model/            the returned model (fusemix.checkpoint.load_model)
    <out_dir>/checkpoint/       the training checkpoint a rerun resumes from
    <out_dir>/log.jsonl         one JSON record per log event
    <out_dir>/log.csv           the same records as a table
    <out_dir>/curves.png        loss and validation recall per epoch (with matplotlib)
    <out_dir>/.fusemix-run.lock held while a run trains there (see fusemix._fileio.directory_lock)
"""

from __future__ import annotations

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoint"
LOG_JSONL = "log.jsonl"
LOG_CSV = "log.csv"
CURVES_PNG = "curves.png"
RUN_LOCK = ".fusemix-run.lock"
