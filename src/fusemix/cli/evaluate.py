"""``fusemix evaluate``: score cross-modal retrieval (Recall@K) with a trained model.

The model folder is one written by ``fusemix train`` (or any
:func:`~fusemix.checkpoint.save_model` folder); latents given with the
``latents.json`` it was trained on must come from the same encoders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from fusemix._fileio import write_json_atomic
from fusemix._run_files import MODEL_DIR
from fusemix.checkpoint import MODEL_CONFIG, describe_model, load_model
from fusemix.cli.common import (
    LATENTS_FILE,
    CommandError,
    add_latents_arguments,
    check_output_file,
    check_same_latents,
    latents_map,
    metrics_table,
    open_all,
    pair_spec,
    paired_latents,
    positive_int,
    read_latents_record,
    read_pairs,
)
from fusemix.evaluation import evaluate_retrieval

SUMMARY = "score retrieval with a trained model"

DESCRIPTION = """\
Score cross-modal retrieval with a trained model: embed the latents of two
modalities, rank every item of one against all items of the other and print
Recall@K in both directions (in percent) as a Markdown table on stdout, e.g.
i2t_R@1 (image -> text) and t2i_R@1 (text -> image). An image with several
captions counts as found when any of its captions ranks within K."""

EPILOG = """\
example:
  fusemix evaluate --model runs/demo/model \\
      --latents image=test/image --latents text=test/text --pairs test_pairs.csv \\
      --pair image,text --ks 1 5 10 --json runs/demo/test_metrics.json

--latents and --pairs take the same forms as in 'fusemix train'. When the model
was trained by 'fusemix train', the latents must come from the same encoders."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fusemix evaluate`` to its parser."""
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="DIR",
        help="model folder (the model/ of a 'fusemix train' run, or any save_model folder); a run folder works too",
    )
    add_latents_arguments(parser, required=True)
    parser.add_argument(
        "--pair",
        type=pair_spec,
        metavar="QUERY,KEY",
        help="the two modalities to score, e.g. image,text (default: the first two --latents)",
    )
    parser.add_argument(
        "--ks",
        type=positive_int,
        nargs="+",
        default=[1, 5, 10],
        metavar="K",
        help="Recall@K cut-offs (default: 1 5 10)",
    )
    parser.add_argument(
        "--chunk-size", type=positive_int, metavar="N", help="queries scored at once (default: automatic)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8192, metavar="N", help="rows embedded at once (default: 8192)"
    )
    parser.add_argument("--device", default="auto", help="where to embed: auto (CUDA when available), cpu, cuda:0...")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics to FILE as JSON")


def _model_folder(path: Path) -> Path:
    if (path / MODEL_CONFIG).is_file():
        return path
    if (path / MODEL_DIR / MODEL_CONFIG).is_file():
        return path / MODEL_DIR
    if not path.is_dir():
        raise CommandError(f"--model: {path}: no such folder")
    raise CommandError(f"--model: {path} holds no {MODEL_CONFIG}; give the model/ folder of a 'fusemix train' run")


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    """Run ``fusemix evaluate``; the exit status."""
    folder = _model_folder(args.model)
    if args.json is not None:
        check_output_file("--json", args.json)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            raise CommandError(f"--device: {args.device!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device: {args.device!r} requested, but CUDA is not available")
    model = load_model(folder, device=device)
    dims = describe_model(model)["dims"]
    latents = open_all("--latents", latents_map("--latents", args.latents))
    for modality, item in latents.items():
        if modality not in dims:
            raise CommandError(f"--latents {modality}: the model has no adapter for it (it has {list(dims)})")
        if item.dim != dims[modality]:
            raise CommandError(f"--latents {modality}: dim {item.dim}, but the model takes dim {dims[modality]}")
    record = read_latents_record(folder / LATENTS_FILE)
    if record is not None:
        check_same_latents("--latents", record, latents)
    if len(latents) < 2:
        raise CommandError("--latents: give the latents of at least two modalities")
    pair = args.pair or (list(latents)[0], list(latents)[1])
    missing = [m for m in pair if m not in latents]
    if missing:
        raise CommandError(f"--pair: {missing[0]!r} is not one of the --latents {list(latents)}")
    rows = read_pairs("--pairs", args.pairs) if args.pairs is not None else None
    data = paired_latents("--latents, --pairs", latents, rows)
    metrics = evaluate_retrieval(
        model, data, pair, ks=args.ks, batch_size=args.batch_size, chunk_size=args.chunk_size, device=device
    )
    query_rows, key_rows = (len(np.unique(data.row_index(m))) for m in pair)
    print(
        f"{pair[0]} -> {pair[1]}: {query_rows} {pair[0]} and {key_rows} {pair[1]} items, model {folder}",
        file=sys.stderr,
    )
    print(metrics_table(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, metrics)
        print(f"metrics written to {args.json}", file=sys.stderr)
    return 0
