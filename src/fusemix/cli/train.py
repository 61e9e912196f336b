"""``fusemix train``: train fusion adapters on stored latents with :func:`fusemix.train.fit`.

Settings come from the :class:`~fusemix.train.TrainConfig` defaults, then a
TOML/YAML ``--config`` file (``[train]`` and ``[data]`` tables), then the
flags. The run folder gets the model (with ``encoders.json``, the encoders
that the training stores record), a checkpoint (rerunning resumes from it),
logs, curves and ``latents.json`` (what the model was trained on).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusemix._fileio import directory_lock, write_json_atomic
from fusemix._latent_identity import describe_identity, latent_identity
from fusemix._optional import require
from fusemix._resume import ConfigMismatchError
from fusemix._run_files import CHECKPOINT_DIR, MODEL_DIR, RUN_LOCK
from fusemix._selection import check_selection_target
from fusemix.cli.common import (
    LATENTS_FILE,
    PROG,
    CommandError,
    Latents,
    add_latents_arguments,
    check_one_item_per_key,
    check_output_folder,
    check_same_latents,
    error_message,
    flag,
    in_flag_terms,
    latents_map,
    latents_spec,
    library_errors,
    metrics_table,
    open_all,
    pair_spec,
    paired_latents,
    read_latents_record,
    read_pairs,
    workers,
)
from fusemix.cli.config_flags import (
    add_config_flags,
    config_fields,
    config_flag_names,
    field_default,
    format_value,
    value_from_native,
)
from fusemix.data import PairedLatents
from fusemix.train_config import TrainConfig

if TYPE_CHECKING:
    from fusemix.train import FitResult

SUMMARY = "train fusion adapters on stored latents"
DATA_KEYS: tuple[str, ...] = ("latents", "pairs", "val_latents", "val_pairs", "val_pair", "out")
"""Keys of the ``[data]`` table of ``--config``."""
_TRAIN_FLAGS: tuple[str, ...] = (*DATA_KEYS, "config", "resume", "no_progress", "help")
LIBRARY_NAMES: dict[str, str] = {
    **config_flag_names(TrainConfig),
    "train": "--latents",
    "val": "--val-latents",
    "val_pair": "--val-pair",
    "out_dir": "--out",
    "resume": "--resume",
}
"""The arguments of :func:`~fusemix.train.fit` and the TrainConfig fields its errors name, and their flags here."""

DESCRIPTION = """\
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

EPILOG = """\
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fusemix train``: data, run, and one flag per TrainConfig field."""
    data = parser.add_argument_group("data (flags replace the [data] entries of --config)")
    add_latents_arguments(data, required=False)
    data.add_argument(
        "--val-latents",
        action="append",
        type=latents_spec,
        metavar="MODALITY=PATH",
        help="validation latents, same form as --latents (scored every --eval-every epochs and at the end)",
    )
    data.add_argument("--val-pairs", type=Path, metavar="FILE", help="validation pairs, same form as --pairs")
    data.add_argument(
        "--val-pair",
        type=pair_spec,
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
    clash = sorted(set(_TRAIN_FLAGS) & {field.name for field, _ in config_fields(TrainConfig)})
    if clash:  # a new TrainConfig field named like a data flag would silently shadow it
        raise RuntimeError(f"TrainConfig fields {clash} clash with 'fusemix train' flags; rename the flags")
    add_config_flags(
        parser,
        TrainConfig,
        "training settings (TrainConfig fields; flags override [train] of --config, which overrides the defaults)",
    )


def _load_config_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise CommandError(f"--config: {path} is a folder; give the settings file (.toml, .yaml or .yml)")
    if not path.is_file():
        raise CommandError(f"--config: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib as toml_module  # Python >= 3.11
        except ImportError:
            toml_module = require("tomli", extra="train", user="reading a TOML --config on Python < 3.11")
        try:
            return toml_module.loads(path.read_text(encoding="utf-8"))
        except (toml_module.TOMLDecodeError, UnicodeDecodeError) as err:
            raise CommandError(f"--config: {path}: not valid TOML ({err})") from err
    if suffix in (".yaml", ".yml"):
        yaml = require("yaml", extra="train", user="reading a YAML --config")
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
class TrainSettings:
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
    fields = dict((field.name, hint) for field, hint in config_fields(TrainConfig))
    _unknown_keys(f"{where}: [train]", list(train_table), list(fields))
    train = {}
    for key, value in train_table.items():
        try:
            train[key] = value_from_native(fields[key], value)
        except ValueError as err:
            raise CommandError(f"{where}: [train] {key}: {err}") from err
    _unknown_keys(f"{where}: [data]", list(data_table), DATA_KEYS)
    base = path.parent
    data: dict[str, Any] = {}
    for key, value in data_table.items():
        if key in ("latents", "val_latents"):
            if not isinstance(value, dict) or not all(isinstance(p, str) for p in value.values()) or not value:
                raise CommandError(f'{where}: [data] {key}: expected a table of modality = "path", got {value!r}')
            data[key] = latents_map(f"{where}: [data] {key}", list(value.items()), base)
        elif key == "val_pair":
            text = ",".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
            if not isinstance(text, str):
                raise CommandError(f'{where}: [data] val_pair: expected "query,key", got {value!r}')
            try:
                data[key] = pair_spec(text)
            except argparse.ArgumentTypeError as err:
                raise CommandError(f"{where}: [data] val_pair: {err}") from None
        else:
            if not isinstance(value, str) or not value:
                raise CommandError(f"{where}: [data] {key}: expected a path, got {value!r}")
            resolved = Path(value).expanduser()
            data[key] = resolved if resolved.is_absolute() else base / resolved
    return train, data


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """Merge the defaults, ``--config`` and the flags into the settings ``fusemix train`` runs with."""
    file_train, file_data = _read_config(args.config) if args.config is not None else ({}, {})
    values = {field.name: field_default(field) for field, _ in config_fields(TrainConfig)}
    values.update(file_train)
    for field, hint in config_fields(TrainConfig):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if typing.get_origin(hint) is tuple else value
    try:
        config = TrainConfig(**values)
    except (TypeError, ValueError) as err:  # values were checked against the field types: a range or cross-field one
        raise CommandError(in_flag_terms(error_message(err), LIBRARY_NAMES)) from err
    latents = latents_map("--latents", args.latents) if args.latents else file_data.get("latents")
    if not latents or len(latents) < 2:
        raise CommandError(
            "--latents: give MODALITY=PATH for at least two modalities (or a [data] latents table in --config)"
        )
    val_latents = latents_map("--val-latents", args.val_latents) if args.val_latents else file_data.get("val_latents")
    val_pairs = args.val_pairs or file_data.get("val_pairs")
    val_pair = args.val_pair or file_data.get("val_pair")
    if val_latents is None and (val_pairs is not None or val_pair is not None):
        raise CommandError("--val-latents: --val-pairs and --val-pair need validation latents")
    out = args.out or file_data.get("out")
    if out is None:
        raise CommandError("--out: name the run folder (or set [data] out in --config)")
    return TrainSettings(
        config=config,
        latents=latents,
        pairs=args.pairs or file_data.get("pairs"),
        val_latents=val_latents,
        val_pairs=val_pairs,
        val_pair=val_pair,
        out=Path(out),
    )


def _check_validation(train: Mapping[str, Latents], val: Mapping[str, Latents]) -> None:
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


def _latents_record(settings: TrainSettings, train: Mapping[str, Latents]) -> dict[str, Any]:
    """The ``latents.json`` of a run: per modality its description and content identity, and the data's paths."""
    return {
        "format": "fusemix-cli-latents",
        "version": 1,
        "modalities": {
            modality: {**item.describe(), "content": latent_identity(item.array)} for modality, item in train.items()
        },
        "pairs": None if settings.pairs is None else str(settings.pairs),
        "val_latents": None if settings.val_latents is None else {m: str(p) for m, p in settings.val_latents.items()},
        "val_pairs": None if settings.val_pairs is None else str(settings.val_pairs),
    }


def _check_same_content(out: Path, previous: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Refuse to resume on latents whose content differs from what ``latents.json`` of ``out`` records.

    A record from before content identities were kept is not compared on them.
    """
    trained = previous.get("modalities", {})
    for modality, entry in record["modalities"].items():
        before = trained.get(modality, {}).get("content")
        if before is not None and before != entry["content"]:
            raise CommandError(
                f"--latents {modality}: other latents than the run in {out} was trained on "
                f"({describe_identity(entry['content'])} now, {describe_identity(before)} there: same dim and "
                "encoder, other values, e.g. a shuffled or re-extracted store); give the same latents, or another --out"
            )


def _open_data(settings: TrainSettings) -> tuple[dict[str, Latents], PairedLatents, PairedLatents | None]:
    """The training latents as opened, the training pairs and the validation pairs (``None`` without them)."""
    train_latents = open_all("--latents", settings.latents)
    train_rows = read_pairs("--pairs", settings.pairs) if settings.pairs is not None else None
    train = paired_latents("--latents", "--pairs", train_latents, train_rows)
    if settings.val_latents is None:
        return train_latents, train, None
    val_latents = open_all("--val-latents", settings.val_latents)
    _check_validation(train_latents, val_latents)
    val_rows = read_pairs("--val-pairs", settings.val_pairs) if settings.val_pairs is not None else None
    val = paired_latents("--val-latents", "--val-pairs", val_latents, val_rows)
    if settings.val_pair is not None:
        missing = [m for m in settings.val_pair if m not in val_latents]
        if missing:
            raise CommandError(f"--val-pair: {missing[0]!r} is not one of {list(val_latents)}")
    query, key = settings.val_pair or tuple(val_latents)[:2]
    check_one_item_per_key("--val-pairs", val, query, key, f"score --val-pair {key},{query} instead")
    return train_latents, train, val


def _encoder_descriptions(latents: Mapping[str, Latents]) -> dict[str, dict[str, Any]] | None:
    """The encoder descriptions the training stores record (``fusemix extract`` writes one), checked; ``None`` if none.

    ``fit`` writes them to ``model/encoders.json``, so that
    ``AlignedModel.from_pretrained(run)`` rebuilds the encoders.
    """
    from fusemix.encoder_descriptions import describe_encoders

    described: dict[str, dict[str, Any]] = {}
    for modality, item in latents.items():
        description = item.encoder_description
        if description is None:
            continue
        try:
            described.update(describe_encoders({modality: description}))
        except (TypeError, ValueError) as err:
            raise CommandError(f"--latents {modality}: {item.path} records a bad encoder description ({err})") from err
    return described or None


def _out_held(out: Path, main_process: bool) -> contextlib.AbstractContextManager[Any]:
    """The lock on ``--out`` that rank 0 holds for the whole command (``fit`` takes the same lock inside it)."""
    if not main_process:
        return contextlib.nullcontext()
    out.mkdir(parents=True, exist_ok=True)
    return directory_lock(out, RUN_LOCK, argument="--out", activity="training run")


def run(args: argparse.Namespace) -> int:
    """Run ``fusemix train``; the exit status (1 when training diverges)."""
    from fusemix.train import fit  # here, so that the parser (and 'fusemix evaluate') does not load the trainer

    settings = train_settings(args)
    train_latents, train, val = _open_data(settings)
    with library_errors(LIBRARY_NAMES):  # before --out is touched: --selection best needs validation data
        check_selection_target(settings.config, val, settings.val_pair)
    encoders = _encoder_descriptions(train_latents)
    out = check_output_folder("--out", settings.out)
    main_process = workers()[0] == 0  # under torchrun, rank 0 alone writes and reports (as fit does)
    checkpoint = out / CHECKPOINT_DIR
    with _out_held(out, main_process):
        record = _latents_record(settings, train_latents)
        if checkpoint.is_dir():
            if not args.resume:
                raise CommandError(
                    f"--no-resume: {out} holds a training checkpoint; pick another --out, or drop --no-resume to "
                    "continue it"
                )
            previous = read_latents_record(out / LATENTS_FILE)
            if previous is not None:
                check_same_latents("--latents", previous, train_latents)
                _check_same_content(out, previous, record)
            if main_process:
                print(f"{PROG} train: resuming from {checkpoint}", file=sys.stderr)
        if main_process:
            write_json_atomic(out / LATENTS_FILE, record)
        with library_errors(LIBRARY_NAMES):
            try:
                result = fit(
                    train,
                    settings.config,
                    val=val,
                    val_pair=settings.val_pair,
                    out_dir=out,
                    resume=args.resume,
                    progress=not args.no_progress,
                    encoders=encoders,
                )
            except ConfigMismatchError as err:
                raise CommandError(_other_settings(out, err)) from err
        if main_process:
            write_json_atomic(out / MODEL_DIR / LATENTS_FILE, record)
    if main_process:
        _report(settings, train, result)
    return 0


def _other_settings(out: Path, err: ConfigMismatchError) -> str:
    """The refusal to resume the run in ``out`` with other settings, naming them as the flags that set them."""
    differences = "; ".join(
        f"{flag(name)}: {format_value(before)} in {out}, {format_value(now)} now"
        for name, (now, before) in err.differences.items()
    )
    return f"{differences}; rerun with the settings of the run in {out} to resume it, or choose another --out"


def _report(settings: TrainSettings, train: PairedLatents, result: FitResult) -> None:
    """Print what was trained (as trained: after an early stop or a batch cut), where it went, and the metrics."""
    out, config = settings.out, result.config
    epochs = [r for r in result.history if r.get("kind") == "epoch"]
    batch = f"batches of {config.batch_size} pairs"
    if config.batch_size != settings.config.batch_size:
        batch += f" (--batch-size {settings.config.batch_size} cut to the {len(train)} training pairs)"
    stopped = f", stopped early by --patience {config.patience}" if result.stopped_early else ""
    print(
        f"trained {len(train)} pairs of {', '.join(train.modalities)} for {len(epochs)} of {config.epochs} epochs "
        f"({result.steps} steps, {batch}){stopped}"
    )
    if result.selected is not None:
        chosen = result.selected
        print(
            f"selected:   epoch {chosen.epoch + 1} (step {chosen.step}), the best {chosen.metric} on the validation "
            f"data: {chosen.value:.2f}"
        )
    print(f"model:      {out / MODEL_DIR}")
    print(f"checkpoint: {out / CHECKPOINT_DIR}")
    print(f"logs:       {out / 'log.jsonl'}, {out / 'log.csv'}")
    if (out / "curves.png").is_file():
        print(f"curves:     {out / 'curves.png'}")
    if epochs:
        print(f"final training loss: {epochs[-1]['loss']:.4f}")
    if result.metrics is None:
        print("no validation data (--val-latents): no retrieval metrics")
    else:
        print()
        print(metrics_table(result.metrics))
