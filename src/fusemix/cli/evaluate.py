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
    ITEMS_FILE,
    LATENTS_FILE,
    CommandError,
    Latents,
    add_latents_arguments,
    check_one_item_per_key,
    check_output_file,
    check_same_latents,
    latents_map,
    library_errors,
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
captions counts as found when any of its captions ranks within K. The same
caption for several images is refused unless --identical-keys says how to
score it."""

EPILOG = """\
example:
  fusemix evaluate --model runs/demo/model \\
      --latents image=test/image --latents text=test/text --pairs test_pairs.csv \\
      --pair image,text --ks 1 5 10 --json runs/demo/test_metrics.json

--latents and --pairs take the same forms as in 'fusemix train'. When the model
was trained by 'fusemix train', the latents must come from the same encoders.

identical captions (the same text for several images): --identical-keys text
counts every copy as a hit for each of their images, in both directions; the
copies are found by the lines of the key store's items.jsonl.
  fusemix evaluate --model runs/demo/model --latents image=test/image \\
      --latents text=test/text --pairs test_pairs.csv --identical-keys text"""

IDENTICAL_KEYS = ("refuse", "row", "text")
"""Choices of ``--identical-keys``."""
LIBRARY_NAMES = {
    "pair": "--pair",
    "key_groups": "--identical-keys",
    "ks": "--ks",
    "batch_size": "--batch-size",
    "chunk_size": "--chunk-size",
    "device": "--device",
}
"""The arguments of :func:`~fusemix.evaluation.evaluate_retrieval` its errors name, and their flags here."""


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
    parser.add_argument(
        "--identical-keys",
        choices=IDENTICAL_KEYS,
        default="refuse",
        help="keys that are the same (e.g. one caption of several images): 'refuse' (default): every key row is "
        "its own item, and one paired with several queries is an error; 'row': a key row shared by several "
        f"queries is a hit for each of them; 'text': keys whose items (lines of the key store's {ITEMS_FILE}, "
        "written by 'fusemix extract') are equal are hits for each other's queries",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics to FILE as JSON")


def _model_folder(path: Path) -> Path:
    if (path / MODEL_CONFIG).is_file():
        return path
    if (path / MODEL_DIR / MODEL_CONFIG).is_file():
        return path / MODEL_DIR
    if not path.is_dir():
        raise CommandError(f"--model: {path}: no such folder")
    raise CommandError(f"--model: {path} holds no {MODEL_CONFIG}; give the model/ folder of a 'fusemix train' run")


def _key_groups(choice: str, key: str, latents: Latents) -> str | list[str] | None:
    """``key_groups`` of :func:`~fusemix.evaluation.evaluate_retrieval` for ``--identical-keys``: labels for ``text``.

    ``text`` reads the key store's ``items.jsonl``: line ``i + 1`` (the JSON of
    the item, as ``fusemix extract`` wrote it) labels row ``i``, so rows of
    equal items share a label.
    """
    if choice == "refuse":
        return None
    if choice == "row":
        return "row"
    file = latents.path / ITEMS_FILE
    if latents.encoder is None:
        raise CommandError(
            f"--identical-keys: 'text' groups the {key} rows by the items 'fusemix extract' lists in {ITEMS_FILE} next "
            f"to a store, but --latents {key} is a .npy file ({latents.path}); give a store, or use 'row'"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandError(
            f"--identical-keys: 'text' groups the {key} rows by the items listed in {file}, which does not exist (the "
            f"store was not written by 'fusemix extract'); write one line per row, or use 'row'"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"--identical-keys: {file}: unreadable ({err})") from err
    lines = _item_lines(text)
    rows = int(latents.array.shape[0])
    if len(lines) != rows:
        raise CommandError(
            f"--identical-keys: {file} lists {len(lines)} items, but the {key} store {latents.path} holds {rows} rows; "
            "it belongs to another store"
        )
    return lines


def _item_lines(text: str) -> list[str]:
    """The lines of an ``items.jsonl`` (one JSON item per row)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _identical_keys_note(key: str, latents: Latents, used_rows: np.ndarray) -> str | None:
    """A note when the key rows scored one item each include identical items (by the store's ``items.jsonl``).

    Each copy is then its own item, and one ranked above the query's own
    counts against it; ``--identical-keys text`` is the alternative. Nothing
    is said when the store lists no items (or another store's).
    """
    if latents.encoder is None:
        return None
    try:
        lines = _item_lines((latents.path / ITEMS_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) != int(latents.array.shape[0]):
        return None
    items = [lines[row] for row in np.unique(used_rows[used_rows >= 0]).tolist()]
    copies = len(items) - len(set(items))
    if not copies:
        return None
    return (
        f"note: {copies} of the {len(items)} {key} items are copies of another (equal lines of "
        f"{latents.path / ITEMS_FILE}); each is scored as its own item, so a copy ranked above a query's own counts "
        "as a miss; --identical-keys text counts equal items as hits"
    )


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
    data = paired_latents("--latents", "--pairs", latents, rows)
    if args.identical_keys == "refuse":
        check_one_item_per_key(
            "--pairs",
            data,
            *pair,
            f"for one {pair[1]} shared by several {pair[0]} items (identical captions) give --identical-keys row or "
            f"text, or score --pair {pair[1]},{pair[0]}",
        )
    key_groups = _key_groups(args.identical_keys, pair[1], latents[pair[1]])
    note = None if key_groups is not None else _identical_keys_note(pair[1], latents[pair[1]], data.row_index(pair[1]))
    with library_errors(LIBRARY_NAMES):
        metrics = evaluate_retrieval(
            model,
            data,
            pair,
            key_groups=key_groups,
            ks=args.ks,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            device=device,
        )
    query_rows, key_rows = (len(np.unique(data.row_index(m))) for m in pair)
    grouping = "" if key_groups is None else f", identical {pair[1]} items grouped by {args.identical_keys}"
    print(
        f"{pair[0]} -> {pair[1]}: {query_rows} {pair[0]} and {key_rows} {pair[1]} items{grouping}, model {folder}",
        file=sys.stderr,
    )
    if note is not None:
        print(note, file=sys.stderr)
    whole = [k for k in args.ks if k >= min(query_rows, key_rows)]
    if whole:
        print(
            f"note: --ks {' '.join(map(str, whole))}: K reaches the number of items ranked ({key_rows} {pair[1]} "
            f"for each {pair[0]}, {query_rows} {pair[0]} for each {pair[1]}); a recall at such a K is 100 by "
            "construction in that direction",
            file=sys.stderr,
        )
    print(metrics_table(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, metrics)
        print(f"metrics written to {args.json}", file=sys.stderr)
    return 0
