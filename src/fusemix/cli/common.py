"""What the commands of ``fusemix`` share: errors, argument types, and opening latents and pairs.

A :class:`CommandError` is a user error the command line found itself; ``main``
reports it as one line and exits with status 2. Latents are named on the
command line as ``MODALITY=PATH`` (a latent store written by ``fusemix
extract``, or a ``.npy`` file) and pairs as a CSV or ``.npz`` of row indices;
``fusemix train`` records what it trained on in ``latents.json``, which
``fusemix train`` (on resume) and ``fusemix evaluate`` check new latents
against.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import csv
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusemix.data import PairedLatents
from fusemix.store import LatentStore, StoreError
from fusemix.tables import markdown_table

PROG = "fusemix"
ITEMS_FILE = "items.jsonl"
"""Written by ``fusemix extract`` next to the store: line ``i`` is the item (JSON string) of row ``i``."""
LATENTS_FILE = "latents.json"
"""Written by ``fusemix train`` into ``--out`` and the model directory: modalities, dims, encoder identities."""
ENCODER_DESCRIPTION = "encoder_description"
"""Key of a store's metadata under which ``fusemix extract`` records its encoder's description
(:func:`fusemix.encoder_descriptions.describe_encoder`); ``fusemix train`` writes it to ``model/encoders.json``."""


class CommandError(Exception):
    """A user error found by the command line itself; reported as one line, exit status 2."""


class UserCodeError(Exception):
    """An exception raised inside the user's code (an encoder, the function that builds it), chained to it.

    Not a user error of the command line: it is not caught, so Python prints
    the original traceback, then this one line naming the code's flag.
    """


LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
)
"""What fusemix raises for a user error (a bad argument, a file in the way): one line, exit status 2."""


def flag(name: str) -> str:
    """The command-line flag of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def error_message(err: BaseException) -> str:
    """An exception's message on one line (a ``KeyError``'s without the quotes ``str`` adds)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str) else str(err)
    return " ".join(message.split()) or type(err).__name__


_VALUE = r"""'[^']*'|"[^"]*"|\([^()]*\)|\[[^\[\]]*\]|[\w.+-]+"""
"""A Python value as a library message writes it after ``name=``: a quoted string, a tuple or list, a word or number."""


def _flag_value(option: str, value: str) -> str:
    """``name=value`` as the flag that sets it: ``--x VALUE``, ``--x`` / ``--no-x`` for booleans, ``none`` for None."""
    if value == "True":
        return option
    if value == "False":
        return "--no-" + option.removeprefix("--")
    if value == "None":
        return f"{option} none"
    if value[:1] in "([":
        value = " ".join(part.strip().strip("'\"") for part in value[1:-1].split(",") if part.strip())
    elif value[:1] in "'\"":
        value = value[1:-1]
    return f"{option} {value}"


VERBATIM: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("verbatim", default=())
"""The user's own argument values (paths) in the running command, which :func:`in_flag_terms` never rewrites."""


def verbatim_values(args: argparse.Namespace) -> tuple[str, ...]:
    """The paths among a command's argument values: ``Path`` values and strings naming a path, nested ones too.

    Example:
        >>> args = argparse.Namespace(out=Path("out_dir"), latents=[("text", "lat/text")], pairing="halves")
        >>> verbatim_values(args)
        ('out_dir', 'lat/text')

    """
    found: list[str] = []

    def visit(value: object) -> None:
        if isinstance(value, Path):
            found.append(str(value))
        elif isinstance(value, str) and ("/" in value or os.sep in value or os.path.exists(value)):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for value in vars(args).values():
        visit(value)
    return tuple(dict.fromkeys(found))


def in_flag_terms(
    message: str, names: Mapping[str, str], *, leading: bool = True, keep: Sequence[str] | None = None
) -> str:
    """``message`` of a fusemix error with the Python names in it replaced by the command's flags.

    Library messages start with the argument they are about and give advice
    in Python spellings (``pass val= or use selection='last'``); a command
    line user needs its flags. ``names`` maps each argument or config field
    to its flag; ``"name[]"`` may map the subscript form to a template with
    ``{key}`` (default ``"FLAG {key}"``). Replaced are: ``name=value`` (as
    ``FLAG VALUE``: quotes dropped, ``True`` as ``FLAG``, ``False`` as
    ``--no-...``, ``None`` as ``none``; ``name=`` alone as ``FLAG``),
    ``name['key']``, a bare name with an underscore (``out_dir``), and with
    ``leading`` the name that starts the message (``lr: ...``). Elsewhere a
    one-word name is left alone: ``loss``, ``device`` or ``train`` are plain
    words too. Never rewritten: a name inside a path (``runs/out_dir``) or in
    double quotes (a JSON key of an encoder's identity), and the whole tokens
    of ``keep`` (default :data:`VERBATIM`: the command's own paths, so that
    ``--out out_dir`` stays ``out_dir``).

    Example:
        >>> names = {"out_dir": "--out", "val": "--val-latents", "selection": "--selection", "rows": "--pairs",
        ...          "rows[]": "--pairs column {key!r}", "per_sample_lambda": "--per-sample-lambda"}
        >>> in_flag_terms("val: selection='best' needs val; pass val= or use selection='last'", names)
        '--val-latents: --selection best needs val; pass --val-latents or use --selection last'
        >>> in_flag_terms("rows['text']: bad (see runs/out_dir); train in another out_dir", names)
        "--pairs column 'text': bad (see runs/out_dir); train in another --out"
        >>> in_flag_terms("per_sample_lambda=False, selection=None", names)
        '--no-per-sample-lambda, --selection none'
        >>> in_flag_terms('out_dir: out_dir holds {"out_dir": 1}', names, keep=["out_dir"])
        '--out: out_dir holds {"out_dir": 1}'

    """
    plain = {name: option for name, option in names.items() if not name.endswith("[]")}
    if not plain:
        return message
    kept = [literal for literal in (VERBATIM.get() if keep is None else keep) if literal]
    if kept:  # the leading "name:" is the argument, not the user's value: translate it first
        head = re.match(r"[\w.]+(?=:)", message) if leading else None
        if head is not None and head[0] in plain:
            return plain[head[0]] + in_flag_terms(message[head.end() :], names, leading=False, keep=kept)
        return _with_kept(message, kept, lambda text: in_flag_terms(text, names, leading=leading, keep=()))
    alternatives = "|".join(re.escape(name) for name in sorted(plain, key=len, reverse=True))
    pattern = re.compile(
        rf"(?<![\w.\-/\\\"])(?P<name>{alternatives})"
        rf"(?:(?P<keyword>=(?P<value>{_VALUE})?)|\[(?P<quote>['\"])(?P<key>[^'\"\]]*)(?P=quote)\])?"
        r"(?![\w\-/\\\[=\"])"
    )

    def replace(found: re.Match[str]) -> str:
        name, option = found["name"], plain[found["name"]]
        if found["keyword"] is not None:
            return option if found["value"] is None else _flag_value(option, found["value"])
        if found["key"] is not None:
            return names.get(f"{name}[]", option + " {key}").format(key=found["key"])
        if "_" in name or (leading and found.start() == 0 and message[found.end() : found.end() + 1] == ":"):
            return option
        return found[0]

    return pattern.sub(replace, message)


def _with_kept(message: str, kept: Sequence[str], rewrite: Any) -> str:
    """``rewrite(message)`` with every whole-token occurrence of ``kept`` held out of it and put back after."""
    alternatives = "|".join(re.escape(literal) for literal in sorted(kept, key=len, reverse=True))
    token = re.compile(rf"(?<![\w.\-/\\])(?:{alternatives})(?![\w\-/\\])")
    held: list[str] = []

    def hold(found: re.Match[str]) -> str:
        held.append(found[0])
        return f"\x00{len(held) - 1}\x00"

    rewritten = rewrite(token.sub(hold, message))
    return re.sub(r"\x00(\d+)\x00", lambda found: held[int(found[1])], rewritten)


@contextlib.contextmanager
def library_errors(names: Mapping[str, str]) -> Iterator[None]:
    """Report fusemix's user errors and warnings in the block in the command's terms (:func:`in_flag_terms`).

    One of :data:`LIBRARY_ERRORS` becomes a :class:`CommandError`; a
    ``FloatingPointError`` (the loss diverged) keeps its type, so that the
    command exits with 1, and its first word (the loss, not the ``--loss``
    setting). A :class:`CommandError` passes as it is. A warning printed in
    the block (``warnings.formatwarning``) names the flags too; a recorded
    one (``warnings.catch_warnings(record=True)``) keeps the library's words.
    """
    formatwarning = warnings.formatwarning

    def format_in_flag_terms(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        return formatwarning(in_flag_terms(str(message), names), category, *args, **kwargs)

    warnings.formatwarning = format_in_flag_terms
    try:
        yield
    except CommandError:
        raise
    except FloatingPointError as err:
        raise FloatingPointError(in_flag_terms(error_message(err), names, leading=False)) from err
    except LIBRARY_ERRORS as err:
        raise CommandError(in_flag_terms(error_message(err), names)) from err
    finally:
        warnings.formatwarning = formatwarning


@contextlib.contextmanager
def user_code_errors(code: str) -> Iterator[None]:
    """Let an exception raised inside the user's code in the block keep its traceback.

    One of :data:`LIBRARY_ERRORS` (or a ``TypeError``) raised outside
    fusemix's own code becomes a :class:`UserCodeError` naming ``code`` (e.g.
    ``--callable my_encoders.py:build``), which the command does not report
    as one line; fusemix's own refusals pass as they are.
    """
    try:
        yield
    except (*LIBRARY_ERRORS, TypeError) as err:
        if isinstance(err, CommandError) or raised_by_fusemix(err):
            raise
        raise UserCodeError(f"{code} raised {type(err).__name__}: {error_message(err)}") from err


def positive_int(text: str) -> int:
    """Argument type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def positive_int_or_none(text: str) -> int | None:
    """Argument type: an integer >= 1, or ``none``."""
    return None if text.strip().lower() == "none" else positive_int(text)


def latents_spec(text: str) -> tuple[str, str]:
    """Argument type: ``MODALITY=PATH`` as ``(modality, path)``."""
    modality, sep, path = text.partition("=")
    if not sep or not modality.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected MODALITY=PATH (e.g. image=latents/image), got {text!r}")
    return modality.strip(), path.strip()


def pair_spec(text: str) -> tuple[str, str]:
    """Argument type: ``QUERY,KEY``, two different modalities."""
    names = [name.strip() for name in text.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise argparse.ArgumentTypeError(f"expected two different modalities QUERY,KEY (e.g. image,text), got {text!r}")
    return names[0], names[1]


def add_latents_arguments(parser: argparse.ArgumentParser, *, required: bool, prefix: str = "") -> None:
    """Add ``--<prefix>latents MODALITY=PATH`` (repeated) and ``--<prefix>pairs FILE`` to ``parser``."""
    flag = f"--{prefix}latents"
    parser.add_argument(
        flag,
        action="append",
        type=latents_spec,
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


@dataclass
class Latents:
    """One modality's latents as opened from the command line."""

    array: Any  # LatentStore or read-only np.memmap; shape (rows, dim)
    path: Path
    encoder: dict[str, Any] | None  # None for a bare .npy file

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    @property
    def encoder_description(self) -> Any:
        """The encoder description the store records (``fusemix extract`` writes one); ``None`` if none."""
        return self.array.metadata.get(ENCODER_DESCRIPTION) if isinstance(self.array, LatentStore) else None

    def describe(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "encoder": self.encoder,
            "rows": int(self.array.shape[0]),
            "path": str(self.path.absolute()),
        }


def latents_map(flag: str, specs: Sequence[tuple[str, str | Path]], base: Path | None = None) -> dict[str, Path]:
    """Modality to path from ``MODALITY=PATH`` specs, relative paths resolved against ``base``; each modality once."""
    paths: dict[str, Path] = {}
    for modality, path in specs:
        if modality in paths:
            raise CommandError(f"{flag}: modality {modality!r} is given twice")
        resolved = Path(path).expanduser()
        paths[modality] = resolved if base is None or resolved.is_absolute() else base / resolved
    return paths


def open_latents(flag: str, modality: str, path: Path) -> Latents:
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
        return Latents(array, path, None)
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
    return Latents(store, path, store.encoder)


def open_all(flag: str, paths: Mapping[str, Path]) -> dict[str, Latents]:
    """:func:`open_latents` of every modality."""
    return {modality: open_latents(flag, modality, path) for modality, path in paths.items()}


_INT64_MAX = int(np.iinfo(np.int64).max)


def _read_npz_pairs(flag: str, path: Path) -> dict[str, np.ndarray]:
    """Row indices per modality from an ``.npz`` of 1-D int arrays; an unreadable archive is a user error."""
    if not zipfile.is_zipfile(path):
        raise CommandError(f"{flag}: {path}: not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CommandError(f"{flag}: {path}: not a readable .npz archive ({err})") from err
    if not arrays:
        raise CommandError(f"{flag}: {path}: holds no arrays")
    for name, array in arrays.items():
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise CommandError(
                f"{flag}: {path}: array {name!r} must be 1-D integer row indices, got {array.dtype} {array.shape}"
            )
        if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
            raise CommandError(f"{flag}: {path}: array {name!r} holds row index {int(array.max())}, beyond any store")
    return {name: array.astype(np.int64) for name, array in arrays.items()}


def _row_index(flag: str, where: str, name: str, cell: str) -> int:
    """One CSV cell as a row index; text and numbers beyond 64 bits are user errors naming the cell."""
    try:
        value = int(cell)
    except ValueError:
        raise CommandError(f"{flag}: {where}: column {name!r}: expected a row index, got {cell!r}") from None
    if abs(value) > _INT64_MAX:
        raise CommandError(f"{flag}: {where}: column {name!r}: row index {cell.strip()} is beyond any store")
    return value


def read_pairs(flag: str, path: Path) -> dict[str, np.ndarray]:
    """Row indices per modality from a CSV (header of modality names) or an ``.npz`` of int arrays."""
    if not path.is_file():
        raise CommandError(f"{flag}: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz_pairs(flag, path)
    if suffix != ".csv":
        raise CommandError(f"{flag}: {path}: expected a .csv or .npz file")
    with open_text(flag, path) as file:
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
                column.append(_row_index(flag, f"{path}:{reader.line_num}", name, cell))
    if not columns[0]:
        raise CommandError(f"{flag}: {path}: holds no pairs")
    return {name: np.asarray(column, dtype=np.int64) for name, column in zip(names, columns)}


def _check_parent_folders(flag: str, path: Path) -> None:
    """Refuse ``path`` when its nearest existing ancestor is a file (nothing can be created below it)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"{flag}: {parent} is not a folder, so {path} cannot be created")
            return


def check_output_folder(flag: str, path: Path) -> Path:
    """``path`` if it is a folder or can become one; a user error naming ``flag`` (a file in the way) otherwise."""
    if path.exists() and not path.is_dir():
        raise CommandError(f"{flag}: {path} exists and is not a folder")
    _check_parent_folders(flag, path)
    return path


def check_output_file(flag: str, path: Path) -> Path:
    """``path`` if a file can be written there; a user error naming ``flag`` (a folder in the way) otherwise."""
    if path.is_dir():
        raise CommandError(f"{flag}: {path} is a folder; give the path of the file to write")
    _check_parent_folders(flag, path)
    return path


def paired_latents(
    latents_flag: str, pairs_flag: str, latents: Mapping[str, Latents], rows: Mapping[str, np.ndarray] | None
) -> PairedLatents:
    """The :class:`~fusemix.data.PairedLatents` of opened latents and pair rows; a bad pairing is a user error.

    Its message names the flags the latents and rows came from: ``latents['text']`` is
    ``--latents text``, ``rows['text']`` the ``text`` column of ``--pairs``.
    """
    names = {"latents": latents_flag, "rows": pairs_flag, "rows[]": f"{pairs_flag} column {{key!r}}"}
    try:
        return PairedLatents({modality: item.array for modality, item in latents.items()}, rows)
    except (ValueError, TypeError) as err:
        raise CommandError(in_flag_terms(error_message(err), names)) from err


def check_one_item_per_key(flag: str, data: PairedLatents, query: str, key: str, advice: str) -> None:
    """Refuse, before anything is read or written, a ``key`` row paired with several ``query`` rows.

    Retrieval scores each ``key`` item against the one ``query`` item it
    belongs to; :meth:`~fusemix.data.PairedLatents.retrieval_task` refuses
    such pairs too, with advice for Python callers. ``advice`` says what to
    do on this command line.
    """
    query_rows, key_rows = data.row_index(query), data.row_index(key)
    both = (query_rows >= 0) & (key_rows >= 0)
    links = np.unique(np.stack([key_rows[both], query_rows[both]], axis=1), axis=0)  # (key row, query row), sorted
    shared = np.flatnonzero(links[1:, 0] == links[:-1, 0])
    if not shared.size:
        return
    row = int(links[shared[0], 0])
    owners = links[links[:, 0] == row, 1][:5].tolist()
    raise CommandError(
        f"{flag}: row {row} of {key!r} is paired with several rows of {query!r} ({owners}); each {key!r} item must "
        f"belong to one {query!r} item for retrieval; {advice}"
    )


_PACKAGE = Path(__file__).resolve().parents[1]


def raised_by_fusemix(err: BaseException) -> bool:
    """Whether ``err`` was raised in fusemix's own code (a check refusing what an encoder returned).

    A ``TypeError`` raised inside the user's encoder (its innermost frame is
    the encoder's code) is a bug there, and keeps its traceback.
    """
    trace = err.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and Path(trace.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


@contextlib.contextmanager
def open_text(flag: str, path: Path) -> Iterator[Any]:
    """Open a UTF-8 text file (a byte-order mark is skipped); undecodable text is a user error naming ``flag``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            yield file
    except UnicodeDecodeError as err:
        raise CommandError(f"{flag}: {path}: not UTF-8 text ({err})") from err


def metrics_table(metrics: Mapping[str, float]) -> str:
    """Metrics as a two-column Markdown table, values with two decimals.

    Example:
        >>> print(metrics_table({"i2t_R@1": 12.5, "mean": 40.0}))
        | metric | value |
        |---|---|
        | i2t_R@1 | 12.50 |
        | mean | 40.00 |

    """
    return markdown_table(["metric", "value"], [(name, f"{value:.2f}") for name, value in metrics.items()])


def workers() -> tuple[int, int]:
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


def read_latents_record(path: Path) -> dict[str, Any] | None:
    """The ``latents.json`` a ``fusemix train`` run wrote, or ``None`` if there is none."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise CommandError(f"{path}: unreadable ({reason})") from err
    if not isinstance(record, dict) or record.get("format") != "fusemix-cli-latents":
        raise CommandError(f"{path}: not a fusemix latents record")
    return record


def check_same_latents(where: str, record: Mapping[str, Any], latents: Mapping[str, Latents]) -> None:
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
