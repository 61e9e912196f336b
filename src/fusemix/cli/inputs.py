"""What ``--input`` lists (``fusemix extract``, ``fusemix embed``), and reading the image and audio files it names.

``--input`` is a text file (one item per line: texts, or file paths relative
to it), a folder of image or audio files (searched recursively, sorted by
relative path) or a CSV/TSV/JSONL manifest whose ``--column`` holds the texts
or the file paths.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusemix._optional import require
from fusemix.cli.common import CommandError, open_text
from fusemix.encoders.callable_spec import INPUT_TYPES

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS: tuple[str, ...] = (".aif", ".aiff", ".flac", ".mp3", ".ogg", ".wav")
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl")


def add_input_arguments(group: argparse._ActionsContainer, *, input_type_help: str) -> None:
    """Add ``--input``, ``--column``, ``--input-type`` (with ``input_type_help``) and ``--extensions``."""
    group.add_argument(
        "--input",
        type=Path,
        required=True,
        metavar="PATH",
        help="text file (one item per line), folder of image/audio files, or CSV/TSV/JSONL manifest (with --column)",
    )
    group.add_argument("--column", metavar="NAME", help="manifest column holding the texts or the file paths")
    group.add_argument("--input-type", choices=INPUT_TYPES, help=input_type_help)
    group.add_argument(
        "--extensions",
        nargs="+",
        metavar="EXT",
        help="file extensions to take from a folder (default: the image or audio ones listed below; every file "
        "for --input-type path)",
    )


@dataclass(frozen=True)
class Inputs:
    """What ``--input`` lists: texts, or file paths relative to ``base``."""

    items: list[str]
    base: Path | None
    source: dict[str, Any]


def _read_lines(path: Path) -> list[str]:
    with open_text("--input", path) as file:
        lines = file.read().split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    while lines and not lines[-1].strip():  # blank lines at the end (an editor's extra newline) shift no row
        lines.pop()
    empty = [number for number, line in enumerate(lines, start=1) if not line.strip()]
    if empty:
        raise CommandError(
            f"--input: {path}: line {empty[0]} is empty ({len(empty)} empty line(s) before the last item); every "
            "line is one item, so remove them"
        )
    return lines


def _read_manifest_column(path: Path, column: str) -> list[str]:
    values: list[str] = []
    if path.suffix.lower() == ".jsonl":
        with open_text("--input", path) as file:
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
    with open_text("--input", path) as file:
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


def read_inputs(
    path: Path, input_type: str, *, column: str | None = None, extensions: Sequence[str] | None = None
) -> Inputs:
    """The items ``--input`` lists, checked: texts, or existing file paths (relative to ``Inputs.base``).

    Raises:
        CommandError: If the input cannot be read, lists nothing, has empty
            items, or names files that do not exist (the message names them),
            or ``extensions`` are given for an input that is not a folder.

    """
    source: dict[str, Any] = {"input": str(path.resolve()), "input_type": input_type, "column": column}
    if not path.exists():
        raise CommandError(f"--input: {path}: no such file or folder")
    if extensions and not path.is_dir():
        raise CommandError("--extensions: applies to a folder --input only")
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
        return Inputs(items, path.absolute(), source)
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
        return Inputs(items, None, source)
    base = path.absolute().parent
    missing = [item for item in items if not (base / item).is_file()]
    if missing:
        raise CommandError(
            f"--input: {len(missing)} of the {len(items)} files listed in {path} do not exist "
            f"(first: {base / missing[0]}); paths are relative to the folder of {path.name}"
        )
    return Inputs(items, base, source)


def file_reader(input_type: str, encoder: object) -> Callable[[Path], Any]:
    """How the files of ``input_type`` are read for ``encoder``: images, audio at its ``sampling_rate``, or paths.

    Args:
        input_type: ``"image"``, ``"audio"`` or ``"path"`` (the absolute path, as a ``str``).
        encoder: The encoder the items go to; an ``int`` ``sampling_rate``
            attribute makes audio be read at that rate (else at the file's own).

    """
    if input_type == "image":
        return image_reader()
    if input_type == "audio":
        rate = getattr(encoder, "sampling_rate", None)
        return audio_reader(rate if isinstance(rate, int) else None)
    return str


def image_reader() -> Callable[[Path], Any]:
    """Read an image file as an RGB PIL image (Pillow needed: ``pip install "fusemix[hf]"``)."""
    image_module = require("PIL.Image", extra="hf", user="reading images")

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


def audio_reader(sampling_rate: int | None) -> Callable[[Path], np.ndarray]:
    """Read mono float32 waveforms at ``sampling_rate`` (the file's own when ``None``) with ``load_audio``."""
    soundfile = require("soundfile", extra="audio", user="reading audio files")
    require("soxr", extra="audio", user="resampling audio files")
    from fusemix.audio import AudioFileError, load_audio

    def read(path: Path) -> np.ndarray:
        try:
            rate = sampling_rate or soundfile.info(str(path)).samplerate
            return load_audio(path, sampling_rate=rate)
        except (AudioFileError, FileNotFoundError, RuntimeError) as err:
            raise CommandError(f"cannot read the audio file: {err}") from err

    return read


class FileEncoder:
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
