"""The ``fusemix`` command line: ``fusemix extract | train | evaluate`` (also ``python -m fusemix``).

- ``fusemix extract`` encodes a dataset once with a frozen encoder into a
  latent store (:func:`fusemix.extract.extract_latents`), resumably, and
  writes ``items.jsonl`` next to it: line ``i`` is the item (text, or file
  path) of row ``i``.
- ``fusemix train`` trains fusion adapters on stored latents
  (:func:`fusemix.train.fit`); every :class:`~fusemix.train.TrainConfig`
  field is a flag, and a TOML/YAML ``--config`` file can hold them all.
- ``fusemix evaluate`` scores cross-modal retrieval with a trained model and
  prints a Markdown table (optionally a JSON file).

Results go to stdout, progress bars and notes to stderr. Exit status: 0 on
success; 2 on a user error (bad flag, missing file, mismatched data...), with
one line ``fusemix <command>: error: ...`` on stderr; 1 when training
diverges; 130 when interrupted (rerun the same command to resume). Other
exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fusemix
from fusemix.checkpoint import MODEL_CONFIG, describe_model, load_model, write_json_atomic, write_text_atomic
from fusemix.data import PairedLatents
from fusemix.extract import SPEC, encoder_identity_of, extract_latents, finalize_store
from fusemix.store import MANIFEST, SHARD_DIR, LatentStore, StoreError
from fusemix.train import CHECKPOINT_DIR, MODEL_DIR, TrainConfig, evaluate_retrieval, fit

PROG = "fusemix"
ITEMS_FILE = "items.jsonl"
"""Written by ``fusemix extract`` next to the store: line ``i`` is the item (JSON string) of row ``i``."""
LATENTS_FILE = "latents.json"
"""Written by ``fusemix train`` into ``--out`` and the model directory: modalities, dims, encoder identities."""

ENCODERS: tuple[str, ...] = ("hf-text", "hf-image", "hf-audio", "sentence-transformers", "python")
INPUT_TYPES: tuple[str, ...] = ("text", "image", "audio", "path")
IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS: tuple[str, ...] = (".aif", ".aiff", ".flac", ".mp3", ".ogg", ".wav")
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl")

_ENCODER_INPUT = {"hf-text": "text", "sentence-transformers": "text", "hf-image": "image", "hf-audio": "audio"}
_COMMON_OPTIONS = {"device", "model_dtype", "max_batch_size"}
_ENCODER_OPTIONS: dict[str, set[str]] = {
    "hf-text": {"pooling", "prefix", "max_length", "normalize", *_COMMON_OPTIONS},
    "hf-image": {"pooling", "normalize", *_COMMON_OPTIONS},
    "hf-audio": {"audio_kind", "clap_output", "crop_seed", "normalize", *_COMMON_OPTIONS},
    "sentence-transformers": {"prefix", "normalize", *_COMMON_OPTIONS},
    "python": set(_COMMON_OPTIONS),
}
_ADAPTER_OPTIONS = sorted(set().union(*_ENCODER_OPTIONS.values()))
_DATA_KEYS: tuple[str, ...] = ("latents", "pairs", "val_latents", "val_pairs", "val_pair", "out")
_TRAIN_FLAGS: tuple[str, ...] = (*_DATA_KEYS, "config", "resume", "no_progress", "help")


class CommandError(Exception):
    """A user error found by the command line itself; reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------------
# Entry point and error reporting
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fusemix`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 on success, 2 for a user error (reported as one
        line on stderr), 1 when training diverges, 130 when interrupted.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        fusemix ...
        0

    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and argument errors exit through argparse
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    if args.command is None:
        print(f"{PROG}: error: choose a command: extract, train or evaluate (see '{PROG} --help')", file=sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # fit: the loss became NaN/Inf
        _print_error(prog, err)
        return 1
    except ImportError as err:
        if "pip install" not in str(err):  # fusemix's optional imports say how to install what is missing
            raise
        _print_error(prog, err)
        return 2
    except (CommandError, ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        _print_error(prog, err)
        return 2


def _print_error(prog: str, err: BaseException) -> None:
    message = err.args[0] if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str) else str(err)
    message = " ".join(message.split()) or type(err).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``fusemix <command>: error: ... (see ... --help)``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fusemix`` command line (its subcommands included).

    Example:
        >>> args = build_parser().parse_args(["evaluate", "--model", "run/model", "--latents", "text=t.npy"])
        >>> args.command, args.latents
        ('evaluate', [('text', 't.npy')])

    """
    parser = _Parser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        description=_TOP_DESCRIPTION,
        epilog=_TOP_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {fusemix.__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, summary, description, epilog, add_arguments, run in (
        ("extract", "encode a dataset once into a latent store", _EXTRACT_DESCRIPTION, _EXTRACT_EPILOG,
         _add_extract_arguments, _run_extract),
        ("train", "train fusion adapters on stored latents", _TRAIN_DESCRIPTION, _TRAIN_EPILOG,
         _add_train_arguments, _run_train),
        ("evaluate", "score retrieval with a trained model", _EVALUATE_DESCRIPTION, _EVALUATE_EPILOG,
         _add_evaluate_arguments, _run_evaluate),
    ):  # fmt: skip
        sub = commands.add_parser(
            name, help=summary, description=description, epilog=epilog, formatter_class=_HelpFormatter
        )
        add_arguments(sub)
        sub.set_defaults(command=name, run=run)
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# Help texts
# ---------------------------------------------------------------------------------------------------------------------

_TOP_DESCRIPTION = """\
Align frozen unimodal encoders with FuseMix (latent mixup), from the command line.

A run has three steps:
  1. fusemix extract    encode every item of a dataset once with a frozen encoder
                        (Hugging Face, sentence-transformers or your own) into a latent store
  2. fusemix train      train one fusion adapter per modality on the stored latents
  3. fusemix evaluate   score cross-modal retrieval (Recall@K) with the trained model
"""

_TOP_EPILOG = """\
Run 'fusemix COMMAND --help' for a command's options and an example.
Results go to stdout, progress and notes to stderr; a user error exits with status 2."""

_EXTRACT_DESCRIPTION = f"""\
Encode every input item once with a frozen pretrained encoder and store the latents
in --out, a fusemix latent store (.npy shards + manifest.json), with {ITEMS_FILE} next
to it: line i is the item of row i (the text, or the file path relative to the input).

Inputs (--input): a text file, one item per line (texts, or file paths relative to
the file); a folder of image or audio files, searched recursively and sorted by
relative path; or a CSV/TSV/JSONL manifest whose --column holds the texts or the
file paths (relative to the manifest). Images are read with Pillow and converted
to RGB (transparency composited onto white); audio with soundfile, mono, at the
encoder's sampling rate (fusemix does not resample).

Rerunning the same command resumes an interrupted run and does nothing on a
finished store. Under torchrun every process encodes its share of the shards."""

_EXTRACT_EPILOG = f"""\
examples:
  # captions, one per line, with BGE (CLS pooling, L2-normalised)
  fusemix extract --encoder hf-text --model BAAI/bge-large-en-v1.5 --pooling cls \\
      --normalize --input captions.txt --out latents/text

  # every image of a folder with DINOv2, 4 GPUs
  torchrun --nproc-per-node 4 -m fusemix extract --encoder hf-image \\
      --model facebook/dinov2-giant --input images/ --out latents/image

  # audio files named in a CSV column, with Whisper's encoder
  fusemix extract --encoder hf-audio --model openai/whisper-large-v3 \\
      --input clips.csv --column file --out latents/audio

  # your own encoder on images
  fusemix extract --encoder python --callable my_encoders.py:build --model weights.pt \\
      --input-type image --input images/ --out latents/image

folders: image extensions {" ".join(IMAGE_EXTENSIONS)};
  audio extensions {" ".join(AUDIO_EXTENSIONS)}; --extensions replaces them.
  Hidden files and folders are skipped; symbolic links to folders are not followed.

python encoders (--encoder python --callable MODULE:FUNCTION):
  MODULE is an importable module (the current folder is on the path) or a .py
  file. FUNCTION is called once, as FUNCTION() or FUNCTION(MODEL) when --model is
  given, and returns the encoder: a callable (function or torch.nn.Module) that
  maps a list of items to a (len(items), dim) floating tensor or numpy array.
  Items are str for --input-type text, RGB PIL images for image, 1-D float32
  numpy waveforms for audio and absolute file paths (str) for path.
  An encoder with an 'identity' dict attribute (any fusemix.encoders adapter,
  e.g. CallableEncoder(fn, identity={{...}})) is used as it is and its identity is
  recorded in the store; anything else is wrapped in CallableEncoder with the
  identity {{"callable": "MODULE:FUNCTION", "model": MODEL}} (a .py file by its
  module name: dir/my_encoders.py:build is my_encoders:build), and with --device,
  --model-dtype and --max-batch-size (except for audio: clips differ in length,
  so a plain function gets the list of clips as it is). Give your encoder an
  identity that changes with its weights: a store is only reused or resumed by
  the same identity. An encoder with a 'sampling_rate' attribute gets only audio
  files at that rate.

torchrun: each process (RANK of WORLD_SIZE) encodes the shards k with
  k % WORLD_SIZE == RANK; the last one to finish writes the manifest. If a
  process failed, rerun the same command in one process: finished shards are
  kept and only the missing ones are encoded before the store is finalized."""

_TRAIN_DESCRIPTION = """\
Train one fusion adapter per modality on stored latents with FuseMix and write to --out:
the model (model/, for 'fusemix evaluate'), a training checkpoint (checkpoint/), logs
(log.jsonl, log.csv) and curves.png. Rerunning the same command resumes from the
checkpoint and ends with the weights of an uninterrupted run. Under torchrun the
processes train data-parallel (--batch-size is the global batch); rank 0 writes.

The defaults are the paper's recipe (500 epochs of 40,960 pairs: meant for a GPU);
each is a flag below. Settings are taken from the defaults, then from --config (a
TOML or YAML file with a [train] table of the same settings and a [data] table),
then from the flags. Pairs are identity (row i of every modality) unless --pairs
says otherwise, e.g. for several captions per image."""

_TRAIN_EPILOG = """\
examples:
  fusemix train --latents image=latents/image --latents text=latents/text \\
      --val-latents image=val/image --val-latents text=val/text --val-pair image,text \\
      --out runs/demo --epochs 50 --batch-size 4096

  fusemix train --config train.toml --lr 5e-4    # flags override the file

--config file (TOML shown; YAML takes the same keys; relative paths are relative
to the file; every key is optional, unknown keys are an error):
  [data]
  latents = { image = "latents/image", text = "latents/text" }
  pairs = "pairs.csv"
  val_latents = { image = "val/image", text = "val/text" }
  val_pairs = "val_pairs.csv"
  val_pair = "image,text"
  out = "runs/coco"

  [train]
  epochs = 100
  batch_size = 8192
  augmentation = "fusemix"

--latents MODALITY=PATH: PATH is a store written by 'fusemix extract' (its encoder
  identity must be recorded) or a .npy file of shape (rows, dim). Flags replace the
  whole [data] latents table.
--pairs FILE: which rows form pair p. A CSV with a header of modality names and one
  row index per line, or an .npz of int arrays named by modality; a modality left
  out is paired by identity. E.g. 5 captions per image, caption p of image p // 5:
  a CSV with the single column 'image' holding 0,0,0,0,0,1,1,...
--val-pair QUERY,KEY: the two modalities scored (default: the first two); every
  KEY row must belong to one QUERY row (image,text for several captions per image)."""

_EVALUATE_DESCRIPTION = """\
Score cross-modal retrieval with a trained model: embed the latents of two
modalities, rank every item of one against all items of the other and print
Recall@K in both directions (in percent) as a Markdown table on stdout, e.g.
i2t_R@1 (image -> text) and t2i_R@1 (text -> image). An image with several
captions counts as found when any of its captions ranks within K."""

_EVALUATE_EPILOG = """\
example:
  fusemix evaluate --model runs/demo/model \\
      --latents image=test/image --latents text=test/text --pairs test_pairs.csv \\
      --pair image,text --ks 1 5 10 --json runs/demo/test_metrics.json

--latents and --pairs take the same forms as in 'fusemix train'. When the model
was trained by 'fusemix train', the latents must come from the same encoders."""


# ---------------------------------------------------------------------------------------------------------------------
# Argument types shared by the commands
# ---------------------------------------------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _positive_int_or_none(text: str) -> int | None:
    return None if text.strip().lower() == "none" else _positive_int(text)


def _latents_spec(text: str) -> tuple[str, str]:
    modality, sep, path = text.partition("=")
    if not sep or not modality.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected MODALITY=PATH (e.g. image=latents/image), got {text!r}")
    return modality.strip(), path.strip()


def _pair_spec(text: str) -> tuple[str, str]:
    names = [name.strip() for name in text.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise argparse.ArgumentTypeError(f"expected two different modalities QUERY,KEY (e.g. image,text), got {text!r}")
    return names[0], names[1]


def _add_latents_arguments(parser: argparse.ArgumentParser, *, required: bool, prefix: str = "") -> None:
    flag = f"--{prefix}latents"
    parser.add_argument(
        flag,
        action="append",
        type=_latents_spec,
        metavar="MODALITY=PATH",
        required=required,
        help="latents of one modality: a store folder written by 'fusemix extract' or a .npy file; repeat it once "
        "per modality",
    )
    parser.add_argument(
        f"--{prefix}pairs",
        type=Path,
        metavar="FILE",
        help="which rows form each pair: a CSV (one column of row indices per modality) or an .npz of int arrays; "
        "default: row i of every modality",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Opening latents and pairs (train, evaluate)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Latents:
    """One modality's latents as opened from the command line."""

    array: Any  # LatentStore or read-only np.memmap; shape (rows, dim)
    path: Path
    encoder: dict[str, Any] | None  # None for a bare .npy file

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def describe(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "encoder": self.encoder,
            "rows": int(self.array.shape[0]),
            "path": str(self.path.absolute()),
        }


def _latents_map(flag: str, specs: Sequence[tuple[str, str | Path]], base: Path | None = None) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for modality, path in specs:
        if modality in paths:
            raise CommandError(f"{flag}: modality {modality!r} is given twice")
        resolved = Path(path).expanduser()
        paths[modality] = resolved if base is None or resolved.is_absolute() else base / resolved
    return paths


def _open_latents(flag: str, modality: str, path: Path) -> _Latents:
    """Open a latent store (quick verification) or a ``.npy`` file for ``modality``."""
    where = f"{flag} {modality}"
    if path.suffix == ".npy":
        if not path.is_file():
            raise CommandError(f"{where}: {path}: no such file")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise CommandError(f"{where}: {path}: not a readable .npy array ({err})") from err
        if array.ndim != 2 or array.dtype.kind != "f" or min(array.shape) < 1:
            raise CommandError(
                f"{where}: {path}: expected a floating array of shape (rows, dim), got {array.dtype} {array.shape}"
            )
        return _Latents(array, path, None)
    if path.is_file():
        raise CommandError(f"{where}: {path}: expected a latent store folder (from 'fusemix extract') or a .npy file")
    try:
        store = LatentStore.open(path, expected_modality=modality)
    except (FileNotFoundError, StoreError) as err:
        raise CommandError(f"{where}: {err}") from err
    if not store.encoder:
        raise CommandError(
            f"{where}: {path} records no encoder identity; write stores with 'fusemix extract' or give "
            "extract_latents an encoder with an identity"
        )
    return _Latents(store, path, store.encoder)


def _open_all(flag: str, paths: Mapping[str, Path]) -> dict[str, _Latents]:
    return {modality: _open_latents(flag, modality, path) for modality, path in paths.items()}


def _read_pairs(flag: str, path: Path) -> dict[str, np.ndarray]:
    """Row indices per modality from a CSV (header of modality names) or an ``.npz`` of int arrays."""
    if not path.is_file():
        raise CommandError(f"{flag}: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (ValueError, OSError) as err:
            raise CommandError(f"{flag}: {path}: not a readable .npz archive ({err})") from err
        if not arrays:
            raise CommandError(f"{flag}: {path}: holds no arrays")
        for name, array in arrays.items():
            if array.ndim != 1 or array.dtype.kind not in "iu":
                raise CommandError(
                    f"{flag}: {path}: array {name!r} must be 1-D integer row indices, got {array.dtype} {array.shape}"
                )
        return {name: array.astype(np.int64) for name, array in arrays.items()}
    if suffix != ".csv":
        raise CommandError(f"{flag}: {path}: expected a .csv or .npz file")
    with _open_text(flag, path) as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if not header or not all(name.strip() for name in header):
            raise CommandError(f"{flag}: {path}: expected a header row of modality names")
        names = [name.strip() for name in header]
        if len(set(names)) != len(names):
            raise CommandError(f"{flag}: {path}: the header names a modality twice: {names}")
        columns: list[list[int]] = [[] for _ in names]
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise CommandError(f"{flag}: {path}:{reader.line_num}: expected {len(names)} values, got {len(row)}")
            for column, name, cell in zip(columns, names, row):
                try:
                    column.append(int(cell))
                except ValueError:
                    raise CommandError(
                        f"{flag}: {path}:{reader.line_num}: column {name!r}: expected a row index, got {cell!r}"
                    ) from None
    if not columns[0]:
        raise CommandError(f"{flag}: {path}: holds no pairs")
    return {name: np.asarray(column, dtype=np.int64) for name, column in zip(names, columns)}


def _paired(what: str, latents: Mapping[str, _Latents], rows: Mapping[str, np.ndarray] | None) -> PairedLatents:
    try:
        return PairedLatents({modality: item.array for modality, item in latents.items()}, rows)
    except (ValueError, TypeError) as err:
        raise CommandError(f"{what}: {err}") from err


@contextlib.contextmanager
def _open_text(flag: str, path: Path) -> Iterator[Any]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            yield file
    except UnicodeDecodeError as err:
        raise CommandError(f"{flag}: {path}: not UTF-8 text ({err})") from err


def markdown_table(metrics: Mapping[str, float]) -> str:
    """Metrics as a two-column Markdown table, values with two decimals.

    Example:
        >>> print(markdown_table({"i2t_R@1": 12.5, "mean": 40.0}))
        | metric | value |
        |---|---|
        | i2t_R@1 | 12.50 |
        | mean | 40.00 |

    """
    rows = [f"| {name} | {value:.2f} |" for name, value in metrics.items()]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


# ---------------------------------------------------------------------------------------------------------------------
# fusemix extract
# ---------------------------------------------------------------------------------------------------------------------


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("input")
    source.add_argument(
        "--input",
        type=Path,
        required=True,
        metavar="PATH",
        help="text file (one item per line), folder of image/audio files, or CSV/TSV/JSONL manifest (with --column)",
    )
    source.add_argument("--column", metavar="NAME", help="manifest column holding the texts or the file paths")
    source.add_argument(
        "--input-type",
        choices=INPUT_TYPES,
        help="what the items are; implied by --encoder except 'python', which needs it. 'path' hands the encoder "
        "the file paths themselves",
    )
    source.add_argument(
        "--extensions",
        nargs="+",
        metavar="EXT",
        help="file extensions to take from a folder (default: the image or audio ones listed below; every file "
        "for --input-type path)",
    )
    source.add_argument(
        "--read-threads",
        type=_positive_int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="threads decoding image/audio files (default: %(default)s)",
    )

    encoder = parser.add_argument_group("encoder (options that do not apply to --encoder are an error)")
    encoder.add_argument("--encoder", choices=ENCODERS, required=True, help="which encoder adapter to use")
    encoder.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="Hugging Face Hub id or local model folder (required except for 'python', where it is passed to FUNCTION)",
    )
    encoder.add_argument(
        "--callable", metavar="MODULE:FUNCTION", help="for --encoder python: the function that builds the encoder"
    )
    unset = argparse.SUPPRESS  # adapter options reach the adapter only when given; its own defaults apply otherwise
    encoder.add_argument(
        "--pooling",
        default=unset,
        help="hf-text: cls (default), mean or pooler; hf-image: cls (default), patch_mean or cls+patch_mean",
    )
    encoder.add_argument("--prefix", default=unset, help="hf-text, sentence-transformers: text put before every item")
    encoder.add_argument(
        "--max-length",
        type=_positive_int_or_none,
        default=unset,
        metavar="N",
        help="hf-text: truncate to N tokens (default 512; 'none': never truncate)",
    )
    encoder.add_argument(
        "--normalize", action="store_const", const=True, default=unset, help="L2-normalise every latent"
    )
    encoder.add_argument(
        "--device", default=unset, help="where the model runs, e.g. cpu, cuda, cuda:1 (default: CUDA when available)"
    )
    encoder.add_argument(
        "--model-dtype",
        choices=("float32", "float16", "bfloat16"),
        default=unset,
        help="dtype of the model's weights (default float32)",
    )
    encoder.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=unset,
        metavar="N",
        help="items per forward pass of the model (default 32; python: the whole --batch-size)",
    )
    encoder.add_argument(
        "--audio-kind", choices=("whisper", "clap", "auto"), default=unset, help="hf-audio: model kind (default auto)"
    )
    encoder.add_argument(
        "--clap-output",
        choices=("projection", "pooled"),
        default=unset,
        help="hf-audio, CLAP: audio projection (default) or the tower's pooled output",
    )
    encoder.add_argument(
        "--crop-seed", type=int, default=unset, metavar="SEED", help="hf-audio, CLAP: seed of long clips' crops"
    )

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="DIR", help="store folder (created if needed)")
    out.add_argument(
        "--modality", metavar="NAME", help="modality name recorded in the store (default: the --input-type)"
    )
    out.add_argument(
        "--batch-size", type=_positive_int, default=256, metavar="N", help="items per encoder call (default: 256)"
    )
    out.add_argument(
        "--shard-size", type=_positive_int, default=65536, metavar="N", help="rows per shard file (default: 65536)"
    )
    out.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="storage dtype of the latents (default: float16)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store (or unfinished run) in --out made from other items or settings",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class _Inputs:
    """What ``--input`` lists: texts, or file paths relative to ``base``."""

    items: list[str]
    base: Path | None
    source: dict[str, Any]


def _read_lines(path: Path) -> list[str]:
    with _open_text("--input", path) as file:
        lines = file.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    empty = [number for number, line in enumerate(lines, start=1) if not line.strip()]
    if empty:
        raise CommandError(
            f"--input: {path}: line {empty[0]} is empty ({len(empty)} empty line(s)); every line is one item, "
            "so remove them"
        )
    return lines


def _read_manifest_column(path: Path, column: str) -> list[str]:
    values: list[str] = []
    if path.suffix.lower() == ".jsonl":
        with _open_text("--input", path) as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CommandError(f"--input: {path}:{number}: not valid JSON ({err})") from err
                if not isinstance(record, dict):
                    raise CommandError(f"--input: {path}:{number}: expected a JSON object per line")
                if column not in record:
                    raise CommandError(f"--column: {path}:{number} has no key {column!r} (keys: {sorted(record)})")
                value = record[column]
                if not isinstance(value, str) or not value.strip():
                    raise CommandError(
                        f"--input: {path}:{number}: {column!r} must be a non-empty string, got {value!r}"
                    )
                values.append(value)
        return values
    with _open_text("--input", path) as file:
        reader = csv.DictReader(file, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames:
            raise CommandError(f"--input: {path}: empty manifest (expected a header row)")
        if column not in reader.fieldnames:
            raise CommandError(f"--column: {path} has no column {column!r} (columns: {reader.fieldnames})")
        for row in reader:
            value = row[column]
            if value is None or not value.strip():
                raise CommandError(f"--input: {path}:{reader.line_num}: {column!r} is empty")
            values.append(value)
    return values


def _list_folder(root: Path, extensions: Sequence[str] | None) -> list[str]:
    """Files under ``root`` (recursive, hidden entries skipped) with one of ``extensions``, by relative path."""
    found = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if extensions is None or os.path.splitext(name)[1].lower() in extensions:
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def _extensions(given: Sequence[str] | None, input_type: str) -> tuple[str, ...] | None:
    if given:
        names = [ext.strip().lower() for text in given for ext in text.split(",") if ext.strip()]
        return tuple(name if name.startswith(".") else f".{name}" for name in names)
    return {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS}.get(input_type)


def _read_inputs(
    path: Path, input_type: str, *, column: str | None = None, extensions: Sequence[str] | None = None
) -> _Inputs:
    """The items ``--input`` lists, checked: texts, or existing file paths (relative to ``_Inputs.base``).

    Raises:
        CommandError: If the input cannot be read, lists nothing, has empty
            items, or names files that do not exist (the message names them).

    """
    source: dict[str, Any] = {"input": str(path.resolve()), "input_type": input_type, "column": column}
    if not path.exists():
        raise CommandError(f"--input: {path}: no such file or folder")
    if path.is_dir():
        if column is not None:
            raise CommandError("--column: applies to a CSV/TSV/JSONL manifest, not to a folder")
        if input_type == "text":
            raise CommandError(
                f"--input: {path} is a folder; texts come from a text file (one per line) or a manifest --column"
            )
        wanted = _extensions(extensions, input_type)
        items = _list_folder(path, wanted)
        if not items:
            listed = "any extension" if wanted is None else " ".join(wanted)
            raise CommandError(f"--input: {path} holds no files with {listed} (set --extensions to change them)")
        return _Inputs(items, path.absolute(), source)
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        if column is None:
            what = "texts" if input_type == "text" else "file paths"
            raise CommandError(f"--column: name the column of {path.name} that holds the {what}")
        items = _read_manifest_column(path, column)
    elif suffix == ".json":
        raise CommandError(f"--input: {path}: JSON is not read; write a JSON Lines manifest (.jsonl) instead")
    else:
        if column is not None:
            raise CommandError(
                f"--column: applies to manifests ({', '.join(MANIFEST_SUFFIXES)}); {path.name} is read as a text "
                "file, one item per line"
            )
        items = _read_lines(path)
    if not items:
        raise CommandError(f"--input: {path}: lists no items")
    if input_type == "text":
        return _Inputs(items, None, source)
    base = path.absolute().parent
    missing = [item for item in items if not (base / item).is_file()]
    if missing:
        raise CommandError(
            f"--input: {len(missing)} of the {len(items)} files listed in {path} do not exist "
            f"(first: {base / missing[0]}); paths are relative to the folder of {path.name}"
        )
    return _Inputs(items, base, source)


def _require(module: str, what: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as err:  # soundfile raises OSError when libsndfile is missing
        raise CommandError(
            f'{what} needs the {module.split(".")[0]} package ({err}): pip install "fusemix[{extra}]"'
        ) from err


def _image_reader() -> Callable[[Path], Any]:
    image_module = _require("PIL.Image", "reading images", "hf")

    def read(path: Path) -> Any:
        try:
            with image_module.open(path) as image:
                image.load()
                return _to_rgb(image_module, image)
        except OSError as err:
            raise CommandError(f"{path}: cannot read the image ({err})") from err

    return read


def _to_rgb(image_module: Any, image: Any) -> Any:
    """RGB copy of a PIL image; transparent pixels are composited onto white rather than dropped."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = image_module.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = image_module.alpha_composite(white, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    rgb.info.pop("transparency", None)
    return rgb


def _audio_reader(sampling_rate: int | None) -> Callable[[Path], np.ndarray]:
    """Read mono float32 waveforms at ``sampling_rate`` (the file's own when ``None``) with ``load_audio``."""
    soundfile = _require("soundfile", "reading audio files", "audio")
    _require("soxr", "resampling audio files", "audio")
    from fusemix.audio import AudioFileError, load_audio

    def read(path: Path) -> np.ndarray:
        try:
            rate = sampling_rate or soundfile.info(str(path)).samplerate
            return load_audio(path, sampling_rate=rate)
        except (AudioFileError, FileNotFoundError, RuntimeError) as err:
            raise CommandError(f"cannot read the audio file: {err}") from err

    return read


class _FileEncoder:
    """Encoder over file paths: decodes each batch's files (in threads), then encodes the decoded items."""

    def __init__(self, encoder: Callable[[list[Any]], Any], read: Callable[[Path], Any], base: Path, pool: Any):
        self.encoder = encoder
        self.read = read
        self.base = base
        self.pool = pool

    def __call__(self, batch: list[str]) -> Any:
        paths = [self.base / item for item in batch]
        decoded = list(self.pool.map(self.read, paths)) if self.pool is not None else [self.read(p) for p in paths]
        return self.encoder(decoded)


def _callable_name(spec: str) -> str:
    """``MODULE:FUNCTION`` with a ``.py`` file written as its module name, wherever the file lies."""
    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        module_name = Path(module_name).stem
    return f"{module_name}:{attribute}"


def _load_callable(spec: str) -> Callable[..., Any]:
    """The object ``MODULE:FUNCTION`` names; MODULE is a module name or a ``.py`` file."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"--callable: expected MODULE:FUNCTION (e.g. my_encoders:build), got {spec!r}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        file = Path(module_name).expanduser().resolve()
        if not file.is_file():
            raise CommandError(f"--callable: {module_name}: no such file")
        name = f"_fusemix_callable_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:
            raise CommandError(f"--callable: {module_name}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        if str(file.parent) not in sys.path:  # let the file import its neighbours
            sys.path.insert(0, str(file.parent))
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            raise CommandError(
                f"--callable: no module named {module_name!r} (from the current folder or installed)"
            ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"--callable: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"--callable: {spec} is a {type(target).__name__}, not a function")
    return target


class _ListEncoder:
    """A user's plain callable given the list of items as it is (waveforms of different lengths), with an identity."""

    def __init__(self, fn: Callable[[list[Any]], Any], identity: dict[str, Any]) -> None:
        if isinstance(fn, torch.nn.Module):
            fn.eval().requires_grad_(False)
        self.fn = fn
        self.identity = identity
        self.sampling_rate = getattr(fn, "sampling_rate", None)

    def __call__(self, items: list[Any]) -> Any:
        return self.fn(items)


def _build_python_encoder(args: argparse.Namespace, options: Mapping[str, Any], input_type: str) -> Any:
    from fusemix.encoders import CallableEncoder

    if not args.callable:
        raise CommandError("--callable: --encoder python needs --callable MODULE:FUNCTION")
    factory = _load_callable(args.callable)
    encoder = factory() if args.model is None else factory(args.model)
    if isinstance(encoder, (str, bytes, Mapping)) or not callable(encoder):
        raise CommandError(
            f"--callable: {args.callable} returned a {type(encoder).__name__}; it must return the encoder, a callable "
            "mapping a list of items to a (len(items), dim) tensor"
        )
    if isinstance(getattr(encoder, "identity", None), Mapping):
        if options:
            raise CommandError(
                f"{_flag(sorted(options)[0])}: {args.callable} returned an encoder with its own identity; set the "
                "device, dtype and batch size there (these flags only configure a plain function or module)"
            )
        return encoder
    identity = {"callable": _callable_name(args.callable), "model": args.model}
    if input_type == "audio":  # CallableEncoder would stack the waveforms, which differ in length
        if options:
            raise CommandError(
                f"{_flag(sorted(options)[0])}: not for a plain audio function, which gets the list of waveforms as "
                "it is; move and batch inside it"
            )
        return _ListEncoder(encoder, identity)
    return CallableEncoder(
        encoder,
        identity=identity,
        max_batch_size=options.get("max_batch_size"),
        device=options.get("device"),
        dtype=options.get("model_dtype"),
    )


def _build_encoder(args: argparse.Namespace, options: dict[str, Any], input_type: str) -> Any:
    """The encoder ``--encoder`` and the adapter options describe (loads the model)."""
    if args.encoder == "python":
        return _build_python_encoder(args, options, input_type)
    if not args.model:
        raise CommandError(f"--model: --encoder {args.encoder} needs the Hub id or local folder of the model")
    from fusemix.encoders import HFAudioEncoder, HFImageEncoder, HFTextEncoder, SentenceTransformerEncoder

    kwargs = {{"model_dtype": "dtype", "audio_kind": "kind"}.get(name, name): value for name, value in options.items()}
    classes = {
        "hf-text": HFTextEncoder,
        "hf-image": HFImageEncoder,
        "hf-audio": HFAudioEncoder,
        "sentence-transformers": SentenceTransformerEncoder,
    }
    try:
        return classes[args.encoder](args.model, **kwargs)
    except OSError as err:  # transformers / sentence-transformers: the model cannot be found or loaded
        raise CommandError(f"--model: cannot load {args.model!r}: {err}") from err


def _workers() -> tuple[int, int]:
    """``(worker_index, num_workers)``: the process group's rank and size, else torchrun's RANK and WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return 0, 1
    try:
        index, count = int(rank or "0"), int(world or "1")
    except ValueError:
        raise CommandError(f"RANK/WORLD_SIZE: expected integers, got RANK={rank!r} WORLD_SIZE={world!r}") from None
    if not 0 <= index < count:
        raise CommandError(f"RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    return index, count


def _default_device(num_workers: int) -> str | None:
    """``cuda:LOCAL_RANK`` for a torchrun worker on a CUDA machine; ``None`` (the adapter's choice) otherwise."""
    local_rank = os.environ.get("LOCAL_RANK")
    if num_workers > 1 and local_rank is not None and local_rank.isdigit() and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return None


def _items_text(items: Sequence[str]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _remove_store(root: Path) -> None:
    """Delete what a store or an extraction keeps in ``root`` (manifest first, so it stops counting as complete)."""
    for name in (MANIFEST, SPEC, ITEMS_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    shutil.rmtree(root / SHARD_DIR, ignore_errors=True)


def _check_items_file(root: Path, text: str, overwrite: bool) -> None:
    """Refuse (or with ``overwrite`` clear) a store in ``root`` whose ``items.jsonl`` lists other items."""
    file = root / ITEMS_FILE
    try:
        old = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    if old == text:
        return
    if overwrite:
        _remove_store(root)
        return
    old_lines, new_lines = old.splitlines(), text.splitlines()
    row = next((i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b), min(len(old_lines), len(new_lines)))
    there = old_lines[row] if row < len(old_lines) else "(no row)"
    now = new_lines[row] if row < len(new_lines) else "(no row)"
    raise CommandError(
        f"--out: {root} holds latents of other items ({len(old_lines)} there, {len(new_lines)} now; row {row}: "
        f"{there} there, {now} now); pass --overwrite to replace them, or pick another --out"
    )


def _run_extract(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in _ADAPTER_OPTIONS if hasattr(args, name)}
    wrong = sorted(set(options) - _ENCODER_OPTIONS[args.encoder])
    if wrong:
        raise CommandError(f"{_flag(wrong[0])}: does not apply to --encoder {args.encoder}")
    if args.callable and args.encoder != "python":
        raise CommandError(f"--callable: only for --encoder python, not {args.encoder}")
    implied = _ENCODER_INPUT.get(args.encoder)
    if implied is None and args.input_type is None:
        raise CommandError(f"--input-type: --encoder python needs it: one of {', '.join(INPUT_TYPES)}")
    if implied is not None and args.input_type not in (None, implied):
        raise CommandError(f"--input-type: --encoder {args.encoder} reads {implied}, not {args.input_type}")
    input_type = args.input_type or implied
    modality = args.modality or (None if input_type == "path" else input_type)
    if not modality:
        raise CommandError("--modality: name the modality of the latents (--input-type path implies none)")
    if args.extensions and not args.input.is_dir():
        raise CommandError("--extensions: applies to a folder --input only")
    worker_index, num_workers = _workers()
    if args.overwrite and num_workers > 1:
        raise CommandError(
            "--overwrite: not with several workers (each would clear the others' shards); delete --out first"
        )
    inputs = _read_inputs(args.input, input_type, column=args.column, extensions=args.extensions)
    root: Path = args.out
    if root.exists() and not root.is_dir():
        raise CommandError(f"--out: {root} exists and is not a folder")
    items_text = _items_text(inputs.items)
    _check_items_file(root, items_text, args.overwrite)
    stamp_before = _manifest_stamp(root)
    if worker_index == 0 and stamp_before is None:  # record the items before any shard, to catch changed inputs
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / ITEMS_FILE, items_text)

    if "device" not in options and args.encoder != "python":
        device = _default_device(num_workers)
        if device is not None:
            options["device"] = device
    encoder = _build_encoder(args, options, input_type)
    identity = encoder_identity_of(encoder)
    metadata = {**inputs.source, "items_file": ITEMS_FILE}
    with contextlib.ExitStack() as stack:
        if inputs.base is None:
            run_encoder: Callable[[list[Any]], Any] = encoder
        else:
            read: Callable[[Path], Any] = str
            if input_type == "image":
                read = _image_reader()
            elif input_type == "audio":
                rate = getattr(encoder, "sampling_rate", None)
                read = _audio_reader(rate if isinstance(rate, int) else None)
            threads = 1 if input_type == "path" else args.read_threads
            pool = stack.enter_context(ThreadPoolExecutor(threads)) if threads > 1 else None
            run_encoder = _FileEncoder(encoder, read, inputs.base, pool)
        store = _extract(args, root, run_encoder, inputs.items, modality, identity, metadata, worker_index, num_workers)
    if store is None:
        print(
            f"{PROG} extract: worker {worker_index} of {num_workers} finished its shards; the last worker to finish "
            "writes the manifest (if a worker failed, rerun this command in one process to finish the store)",
            file=sys.stderr,
        )
        return 0
    if worker_index == 0 and not (root / ITEMS_FILE).is_file():
        write_text_atomic(root / ITEMS_FILE, items_text)
    unchanged = stamp_before is not None and stamp_before == _manifest_stamp(root)
    note = " (already complete: nothing to do)" if unchanged else ""
    print(f"{len(store)} {store.modality} latents of dim {store.dim} ({store.dtype.name}) in {root}{note}")
    print(f"row i of the store is line i + 1 of {root / ITEMS_FILE}")
    return 0


def _manifest_stamp(root: Path) -> tuple[int, int] | None:
    """Inode and modification time of ``root``'s manifest (a rewrite changes them), ``None`` without one."""
    try:
        info = (root / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def _extract(
    args: argparse.Namespace,
    root: Path,
    encoder: Callable[[list[Any]], Any],
    items: list[str],
    modality: str,
    identity: dict[str, Any],
    metadata: dict[str, Any],
    worker_index: int,
    num_workers: int,
) -> LatentStore | None:
    """Run :func:`extract_latents` for this worker; the complete store, or ``None`` while shards are missing."""
    try:
        store = extract_latents(
            encoder,
            items,
            root,
            modality=modality,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            dtype=args.dtype,
            encoder_identity=identity,
            num_workers=num_workers,
            worker_index=worker_index,
            progress=not args.no_progress and worker_index == 0,
            metadata=metadata,
            overwrite=args.overwrite,
        )
    except StoreError:
        # Two workers finishing together may both finalize; the one that loses the race finds the manifest written.
        if num_workers == 1 or not (root / MANIFEST).exists():
            raise
        store = LatentStore.open(root, expected_modality=modality, expected_encoder=identity)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        if worker_index == 0:
            finalize_store(root)
        torch.distributed.barrier()
        store = LatentStore.open(root)
    return store


# ---------------------------------------------------------------------------------------------------------------------
# fusemix train: TrainConfig fields as flags and config-file keys
# ---------------------------------------------------------------------------------------------------------------------


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _describe_type(hint: Any) -> str:
    if _is_union(hint):
        return " or ".join("none" if arg is type(None) else _describe_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"{len(typing.get_args(hint))} numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _value_from_text(hint: Any, text: str) -> Any:
    """Parse a flag's text (or a string in a config file) as a value of type ``hint``; ``ValueError`` if it is not."""
    if _is_union(hint):
        members = typing.get_args(hint)
        if type(None) in members and text.strip().lower() in ("none", "null"):
            return None
        for member in sorted((m for m in members if m is not type(None)), key=lambda m: m is str):
            with contextlib.suppress(ValueError):
                return _value_from_text(member, text)
        raise ValueError(f"expected {_describe_type(hint)}, got {text!r}")
    if hint is bool:
        word = text.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint is str:
        return text
    if typing.get_origin(hint) is tuple:
        parts = text.replace(",", " ").split()
        return _value_from_native(hint, parts)
    try:  # a field type this parser does not know: JSON, else the text itself
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _value_from_native(hint: Any, value: Any) -> Any:
    """Check (and convert) a value read from a TOML/YAML file as type ``hint``; ``ValueError`` if it does not fit."""
    if isinstance(value, str) and hint is not str:
        return _value_from_text(hint, value)
    if value is None:
        if _is_union(hint) and type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"expected {_describe_type(hint)}, got null")
    if _is_union(hint):
        for member in typing.get_args(hint):
            if member is not type(None):
                with contextlib.suppress(ValueError):
                    return _value_from_native(member, value)
        raise ValueError(f"expected {_describe_type(hint)}, got {value!r}")
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if typing.get_origin(hint) is tuple:
        members = typing.get_args(hint)
        if isinstance(value, (list, tuple)) and len(value) == len(members):
            return tuple(_value_from_native(member, item) for member, item in zip(members, value))
        raise ValueError(f"expected a list of {_describe_type(hint)}, got {value!r}")
    if hint not in (bool, int, float, str):
        return value
    raise ValueError(f"expected {_describe_type(hint)}, got {value!r}")


def _attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring, one plain-text line per name."""
    docs: dict[str, str] = {}
    lines = (inspect.getdoc(cls) or "").splitlines()
    inside, current = False, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        if not inside or not line.strip():
            continue
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None:
            docs[current] += " " + line.strip()
    return {name: _plain(text) for name, text in docs.items()}


def _plain(text: str) -> str:
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def _config_fields() -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(TrainConfig)
    return [(field, hints[field.name]) for field in dataclasses.fields(TrainConfig) if field.init]


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field, with its docstring line and default; unset flags stay unset."""
    group = parser.add_argument_group(
        "training settings (TrainConfig fields; flags override [train] of --config, which overrides the defaults)"
    )
    docs = _attribute_docs(TrainConfig)
    for field, hint in _config_fields():
        flag = _flag(field.name)
        default = _field_default(field)
        text = f"{docs.get(field.name, f'TrainConfig.{field.name}.')} (default: {_format_default(default)})"
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(hint) is tuple:
            members = typing.get_args(hint)
            group.add_argument(
                flag,
                nargs=len(members),
                type=_flag_type(members[0]),
                default=argparse.SUPPRESS,
                metavar=_metavar(members[0]),
                help=text,
            )
        else:
            group.add_argument(
                flag, type=_flag_type(hint), default=argparse.SUPPRESS, metavar=_metavar(hint), help=text
            )


def _flag_type(hint: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return _value_from_text(hint, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = _describe_type(hint)
    return parse


def _metavar(hint: Any) -> str:
    if _is_union(hint):
        return "|".join("none" if arg is type(None) else _metavar(arg) for arg in typing.get_args(hint))
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(hint, "VALUE")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (flags replace the [data] entries of --config)")
    _add_latents_arguments(data, required=False)
    data.add_argument(
        "--val-latents",
        action="append",
        type=_latents_spec,
        metavar="MODALITY=PATH",
        help="validation latents, same form as --latents (scored every --eval-every epochs and at the end)",
    )
    data.add_argument("--val-pairs", type=Path, metavar="FILE", help="validation pairs, same form as --pairs")
    data.add_argument(
        "--val-pair",
        type=_pair_spec,
        metavar="QUERY,KEY",
        help="the two modalities scored, e.g. image,text (default: the first two of --val-latents)",
    )
    data.add_argument("--out", type=Path, metavar="DIR", help="run folder: model, checkpoint, logs, curves")
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML (.toml) or YAML (.yaml, .yml) settings file")
    run.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the checkpoint in --out; with --no-resume a checkpoint there is an error (default: on)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    clash = sorted(set(_TRAIN_FLAGS) & {field.name for field, _ in _config_fields()})
    if clash:  # a new TrainConfig field named like a data flag would silently shadow it
        raise RuntimeError(f"TrainConfig fields {clash} clash with 'fusemix train' flags; rename the flags")
    _add_config_flags(parser)


def _load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CommandError(f"--config: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib as toml_module  # Python >= 3.11
        except ImportError:
            toml_module = _require("tomli", "reading a TOML --config on Python < 3.11", "train")
        try:
            return toml_module.loads(path.read_text(encoding="utf-8"))
        except (toml_module.TOMLDecodeError, UnicodeDecodeError) as err:
            raise CommandError(f"--config: {path}: not valid TOML ({err})") from err
    if suffix in (".yaml", ".yml"):
        yaml = _require("yaml", "reading a YAML --config", "train")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise CommandError(f"--config: {path}: not valid YAML ({err})") from err
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise CommandError(
                f"--config: {path}: expected a mapping with 'train' and 'data', got {type(loaded).__name__}"
            )
        return loaded
    raise CommandError(f"--config: {path}: expected a .toml, .yaml or .yml file")


def _unknown_keys(where: str, found: Sequence[str], known: Sequence[str]) -> None:
    unknown = [key for key in found if key not in known]
    if not unknown:
        return
    hints = [f"{key!r} -> {close[0]!r}" for key in unknown if (close := difflib.get_close_matches(key, known, 1))]
    suggestion = f" (did you mean: {', '.join(hints)}?)" if hints else ""
    raise CommandError(f"{where}: unknown keys {unknown}{suggestion}; known keys: {', '.join(known)}")


@dataclass
class _TrainSettings:
    """Everything ``fusemix train`` runs with, after merging defaults, ``--config`` and flags."""

    config: TrainConfig
    latents: dict[str, Path]
    pairs: Path | None
    val_latents: dict[str, Path] | None
    val_pairs: Path | None
    val_pair: tuple[str, str] | None
    out: Path


def _read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``([train] values, [data] values)`` of a config file, checked; data paths resolved against its folder."""
    where = f"--config {path}"
    loaded = _load_config_file(path)
    _unknown_keys(where, list(loaded), ("train", "data"))
    train_table, data_table = loaded.get("train", {}), loaded.get("data", {})
    for name, table in (("train", train_table), ("data", data_table)):
        if not isinstance(table, dict):
            raise CommandError(f"{where}: [{name}] must be a table of keys, got {type(table).__name__}")
    fields = dict((field.name, hint) for field, hint in _config_fields())
    _unknown_keys(f"{where}: [train]", list(train_table), list(fields))
    train = {}
    for key, value in train_table.items():
        try:
            train[key] = _value_from_native(fields[key], value)
        except ValueError as err:
            raise CommandError(f"{where}: [train] {key}: {err}") from err
    _unknown_keys(f"{where}: [data]", list(data_table), _DATA_KEYS)
    base = path.parent
    data: dict[str, Any] = {}
    for key, value in data_table.items():
        if key in ("latents", "val_latents"):
            if not isinstance(value, dict) or not all(isinstance(p, str) for p in value.values()) or not value:
                raise CommandError(f'{where}: [data] {key}: expected a table of modality = "path", got {value!r}')
            data[key] = _latents_map(f"{where}: [data] {key}", list(value.items()), base)
        elif key == "val_pair":
            text = ",".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
            if not isinstance(text, str):
                raise CommandError(f'{where}: [data] val_pair: expected "query,key", got {value!r}')
            try:
                data[key] = _pair_spec(text)
            except argparse.ArgumentTypeError as err:
                raise CommandError(f"{where}: [data] val_pair: {err}") from None
        else:
            if not isinstance(value, str) or not value:
                raise CommandError(f"{where}: [data] {key}: expected a path, got {value!r}")
            resolved = Path(value).expanduser()
            data[key] = resolved if resolved.is_absolute() else base / resolved
    return train, data


def _train_settings(args: argparse.Namespace) -> _TrainSettings:
    file_train, file_data = _read_config(args.config) if args.config is not None else ({}, {})
    values = {field.name: _field_default(field) for field, _ in _config_fields()}
    values.update(file_train)
    for field, hint in _config_fields():
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if typing.get_origin(hint) is tuple else value
    try:
        config = TrainConfig(**values)
    except TypeError as err:  # values were checked against the field types; this is a cross-field complaint
        raise CommandError(str(err)) from err
    latents = _latents_map("--latents", args.latents) if args.latents else file_data.get("latents")
    if not latents or len(latents) < 2:
        raise CommandError(
            "--latents: give MODALITY=PATH for at least two modalities (or a [data] latents table in --config)"
        )
    val_latents = _latents_map("--val-latents", args.val_latents) if args.val_latents else file_data.get("val_latents")
    val_pairs = args.val_pairs or file_data.get("val_pairs")
    val_pair = args.val_pair or file_data.get("val_pair")
    if val_latents is None and (val_pairs is not None or val_pair is not None):
        raise CommandError("--val-latents: --val-pairs and --val-pair need validation latents")
    out = args.out or file_data.get("out")
    if out is None:
        raise CommandError("--out: name the run folder (or set [data] out in --config)")
    return _TrainSettings(
        config=config,
        latents=latents,
        pairs=args.pairs or file_data.get("pairs"),
        val_latents=val_latents,
        val_pairs=val_pairs,
        val_pair=val_pair,
        out=Path(out),
    )


def _check_validation(train: Mapping[str, _Latents], val: Mapping[str, _Latents]) -> None:
    if set(val) != set(train):
        raise CommandError(f"--val-latents: has modalities {sorted(val)}, the training latents {sorted(train)}")
    for modality, item in val.items():
        reference = train[modality]
        if item.dim != reference.dim:
            raise CommandError(
                f"--val-latents {modality}: dim {item.dim}, but the training latents have dim {reference.dim}"
            )
        if item.encoder is not None and reference.encoder is not None and item.encoder != reference.encoder:
            raise CommandError(
                f"--val-latents {modality}: made by encoder {json.dumps(item.encoder)}, but the training latents by "
                f"{json.dumps(reference.encoder)}"
            )


def _latents_record(settings: _TrainSettings, train: Mapping[str, _Latents]) -> dict[str, Any]:
    return {
        "format": "fusemix-cli-latents",
        "version": 1,
        "modalities": {modality: item.describe() for modality, item in train.items()},
        "pairs": None if settings.pairs is None else str(settings.pairs),
        "val_latents": None if settings.val_latents is None else {m: str(p) for m, p in settings.val_latents.items()},
        "val_pairs": None if settings.val_pairs is None else str(settings.val_pairs),
    }


def _read_latents_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError(f"{path}: unreadable ({err})") from err
    if not isinstance(record, dict) or record.get("format") != "fusemix-cli-latents":
        raise CommandError(f"{path}: not a fusemix latents record")
    return record


def _check_same_latents(where: str, record: Mapping[str, Any], latents: Mapping[str, _Latents]) -> None:
    """Refuse latents whose dims or encoder identities differ from those a model was trained on."""
    trained = record.get("modalities", {})
    for modality, item in latents.items():
        if modality not in trained:
            continue
        dim, encoder = trained[modality].get("dim"), trained[modality].get("encoder")
        if dim != item.dim:
            raise CommandError(f"{where} {modality}: dim {item.dim}, but the model was trained on dim {dim}")
        if encoder is not None and item.encoder is not None and encoder != item.encoder:
            raise CommandError(
                f"{where} {modality}: made by encoder {json.dumps(item.encoder)}, but the model was trained on "
                f"latents of {json.dumps(encoder)}"
            )


def _run_train(args: argparse.Namespace) -> int:
    settings = _train_settings(args)
    train_latents = _open_all("--latents", settings.latents)
    train_rows = _read_pairs("--pairs", settings.pairs) if settings.pairs is not None else None
    train = _paired("training data (--latents, --pairs)", train_latents, train_rows)
    val = None
    if settings.val_latents is not None:
        val_latents = _open_all("--val-latents", settings.val_latents)
        _check_validation(train_latents, val_latents)
        val_rows = _read_pairs("--val-pairs", settings.val_pairs) if settings.val_pairs is not None else None
        val = _paired("validation data (--val-latents, --val-pairs)", val_latents, val_rows)
        if settings.val_pair is not None:
            missing = [m for m in settings.val_pair if m not in val_latents]
            if missing:
                raise CommandError(f"--val-pair: {missing[0]!r} is not one of {list(val_latents)}")
    out = settings.out
    record = _latents_record(settings, train_latents)
    main_process = _workers()[0] == 0  # under torchrun, rank 0 alone writes and reports (as fit does)
    checkpoint = out / CHECKPOINT_DIR
    if checkpoint.is_dir():
        if not args.resume:
            raise CommandError(
                f"--no-resume: {out} holds a training checkpoint; pick another --out, or drop --no-resume to "
                "continue it"
            )
        previous = _read_latents_record(out / LATENTS_FILE)
        if previous is not None:
            _check_same_latents("--latents", previous, train_latents)
        if main_process:
            print(f"{PROG} train: resuming from {checkpoint}", file=sys.stderr)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / LATENTS_FILE, record)
    result = fit(
        train,
        settings.config,
        val=val,
        val_pair=settings.val_pair,
        out_dir=out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if not main_process:
        return 0
    model_dir = out / MODEL_DIR
    write_json_atomic(model_dir / LATENTS_FILE, record)
    epochs = [r for r in result.history if r.get("kind") == "epoch"]
    print(f"trained {len(train)} pairs of {', '.join(train.modalities)} for {settings.config.epochs} epochs")
    print(f"model:      {model_dir}")
    print(f"checkpoint: {checkpoint}")
    print(f"logs:       {out / 'log.jsonl'}, {out / 'log.csv'}")
    if (out / "curves.png").is_file():
        print(f"curves:     {out / 'curves.png'}")
    if epochs:
        print(f"final training loss: {epochs[-1]['loss']:.4f}")
    if result.metrics is None:
        print("no validation data (--val-latents): no retrieval metrics")
    else:
        print()
        print(markdown_table(result.metrics))
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fusemix evaluate
# ---------------------------------------------------------------------------------------------------------------------


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="DIR",
        help="model folder (the model/ of a 'fusemix train' run, or any save_model folder); a run folder works too",
    )
    _add_latents_arguments(parser, required=True)
    parser.add_argument(
        "--pair",
        type=_pair_spec,
        metavar="QUERY,KEY",
        help="the two modalities to score, e.g. image,text (default: the first two --latents)",
    )
    parser.add_argument(
        "--ks",
        type=_positive_int,
        nargs="+",
        default=[1, 5, 10],
        metavar="K",
        help="Recall@K cut-offs (default: 1 5 10)",
    )
    parser.add_argument(
        "--chunk-size", type=_positive_int, metavar="N", help="queries scored at once (default: automatic)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8192, metavar="N", help="rows embedded at once (default: 8192)"
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
def _run_evaluate(args: argparse.Namespace) -> int:
    folder = _model_folder(args.model)
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
    latents = _open_all("--latents", _latents_map("--latents", args.latents))
    for modality, item in latents.items():
        if modality not in dims:
            raise CommandError(f"--latents {modality}: the model has no adapter for it (it has {list(dims)})")
        if item.dim != dims[modality]:
            raise CommandError(f"--latents {modality}: dim {item.dim}, but the model takes dim {dims[modality]}")
    record = _read_latents_record(folder / LATENTS_FILE)
    if record is not None:
        _check_same_latents("--latents", record, latents)
    if len(latents) < 2:
        raise CommandError("--latents: give the latents of at least two modalities")
    pair = args.pair or (list(latents)[0], list(latents)[1])
    missing = [m for m in pair if m not in latents]
    if missing:
        raise CommandError(f"--pair: {missing[0]!r} is not one of the --latents {list(latents)}")
    rows = _read_pairs("--pairs", args.pairs) if args.pairs is not None else None
    data = _paired("--latents, --pairs", latents, rows)
    metrics = evaluate_retrieval(
        model, data, pair, ks=args.ks, batch_size=args.batch_size, chunk_size=args.chunk_size, device=device
    )
    query_rows, key_rows = (len(np.unique(data.row_index(m))) for m in pair)
    print(
        f"{pair[0]} -> {pair[1]}: {query_rows} {pair[0]} and {key_rows} {pair[1]} items, model {folder}",
        file=sys.stderr,
    )
    print(markdown_table(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, metrics)
        print(f"metrics written to {args.json}", file=sys.stderr)
    return 0


__all__ = ["CommandError", "build_parser", "main", "markdown_table"]
