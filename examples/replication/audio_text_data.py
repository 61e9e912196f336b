"""Readers for the audio-text datasets of the FuseMix paper: AudioCaps and Clotho.

The paper's audio-text experiment trains on AudioCaps + Clotho and reports
text->audio and audio->text Recall@1/5/10 on the test split of each. Users
bring the datasets; every reader here returns an :class:`AudioCaptionDataset`
(unique clips, captions, and the clip of each caption), ready for encoding each
clip once and each caption once, and for
``fusemix.retrieval_metrics(audio_emb, text_emb, dataset.caption_to_audio, names=("a", "t"))``.

Expected layout under ``--data-root`` (every reader also takes explicit paths)::

    audiocaps/train.csv  audiocaps/val.csv  audiocaps/test.csv
                            audiocap_id,youtube_id,start_time,caption
                            (https://github.com/cdjkim/audiocaps, folder dataset/)
    audiocaps/audio/train/  audiocaps/audio/val/  audiocaps/audio/test/
                            the 10 s YouTube segments you downloaded, named as below
    clotho/clotho_captions_development.csv  (and _validation.csv, _evaluation.csv)
                            file_name,caption_1,...,caption_5 (Clotho v2.1)
    clotho/development/  clotho/validation/  clotho/evaluation/
                            the .wav files of the split's audio archive
                            (Clotho v2.1: https://zenodo.org/record/4783391)

**AudioCaps** rows are captions of 10 s segments (``youtube_id`` from
``start_time`` seconds). Captions are grouped into clips by ``(youtube_id,
start_time)``: one caption per clip in ``train`` (49,838 rows), five in ``val``
(495 clips) and ``test`` (975 clips, 4,875 captions). Clips keep the order of
their first row. The audio is not distributed; download tools name the files
differently, so a clip's file is looked up under these names, in this order,
with any suffix of :data:`AUDIO_SUFFIXES`:

====================================  =====================================================
``{youtube_id}_{start_time}``         aac-datasets (``.flac``, 32 kHz mono) and many scripts;
                                      ``start_time`` as written in the CSV, e.g. ``abc_30``
``Y{youtube_id}_{start}_{end}``       AudioSet segment names, 3 decimals:
                                      ``Yabc_30.000_40.000``
``Y{youtube_id}``, ``{youtube_id}``   one file per video; used only when the video has a
                                      single ``start_time`` in the split
``{audiocap_id}``                     audiocaps-download (``.ogg`` by default) and yt-dlp
                                      scripts that save one file per caption row; the clip
                                      takes the first of its rows' files that exists
====================================  =====================================================

Clips whose file is absent (videos taken down: about 8-10 % of AudioCaps by 2023)
are skipped and counted in :attr:`AudioCaptionDataset.skipped`, never fatal
unless ``missing_audio="raise"``; a file with the right name but a format
soundfile cannot read (``.m4a``, ``.webm``, ...) is counted separately. A split
with no file found at all raises ``FileNotFoundError`` (a naming mismatch, not
takedowns). Results on a partial test set are not comparable with papers that
had more clips: :meth:`AudioCaptionDataset.describe` reports the counts.

**Clotho** (v2.1) gives five captions per clip in
``clotho_captions_{split}.csv``: ``development`` (3,839 clips),
``validation`` (1,045) and ``evaluation`` (1,045 clips, 5,225 captions; the
test set); the Zenodo page counts 3,840 and 1,046 audio files, the CSVs list
one fewer each. The paper-style training set is AudioCaps ``train`` +
Clotho ``development`` (:data:`TRAIN_COMPONENTS`; add ``"clotho/validation"``
for more data). File names are matched exactly, then after Unicode NFC
normalisation (archives extracted on macOS store decomposed accents), then by
name with another audio suffix (e.g. clips converted to ``.flac``). Listed
files that are missing raise ``FileNotFoundError`` unless
``missing_audio="skip"``: a benchmark with silently missing test clips is a
different benchmark.

Captions are stripped of surrounding whitespace; empty ones are dropped and
counted. Audio loads lazily with :meth:`AudioCaptionDataset.audio_files`
(:class:`fusemix.audio.AudioFiles`: mono, resampled to the encoder's rate).
Check the files before extracting with :func:`drop_unusable_audio`, so that a
corrupt clip is dropped with its captions up front instead of stopping the
extraction (see :mod:`fusemix.audio`). Whisper takes at most 30 s: pass
``max_seconds=30`` for Clotho (clips of 15-30 s).
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fusemix.audio import AudioFiles, OnError, TooShort, validate_audio_files

from .captions import CaptionedFiles, CaptionsBuilder, FileNames
from .checks import check_choice
from .files import missing_dir, missing_file, require_dir, require_file

AUDIOCAPS_SPLITS = ("train", "val", "test")
"""Split names of AudioCaps (files ``{split}.csv`` and ``audio/{split}/``)."""

CLOTHO_SPLITS = ("development", "validation", "evaluation")
"""Split names of Clotho (files ``clotho_captions_{split}.csv`` and ``{split}/``)."""

COMPONENTS = (
    "audiocaps",
    "clotho",
    *(f"audiocaps/{split}" for split in AUDIOCAPS_SPLITS),
    *(f"clotho/{split}" for split in CLOTHO_SPLITS),
)
"""Names understood by :func:`check_audio_text_data` (a bare dataset name means all its splits)."""

TRAIN_COMPONENTS = ("audiocaps/train", "clotho/development")
"""The training union: AudioCaps train + Clotho development."""

EVAL_COMPONENTS = ("audiocaps/test", "clotho/evaluation")
"""The retrieval benchmarks: AudioCaps test (975 clips x 5 captions) and Clotho evaluation (1,045 x 5)."""

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")
"""Audio file suffixes looked up, in order of preference (lower case; soundfile reads them, MP3 from libsndfile 1.1)."""

UNREADABLE_SUFFIXES = (".m4a", ".aac", ".mp4", ".webm", ".mkv", ".wma")
"""Audio or video suffixes soundfile cannot read: such a file is reported as needing conversion, not as missing."""

AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIOCAPS_SEGMENT_SECONDS = 10.0
CLOTHO_CAPTION_COLUMNS = tuple(f"caption_{k}" for k in range(1, 6))

_AUDIOCAPS_CSV_SOURCE = "https://github.com/cdjkim/audiocaps (folder dataset/)"
_AUDIOCAPS_AUDIO_SOURCE = (
    "YouTube (the 10 s from start_time of each youtube_id), e.g. with aac-datasets "
    "(https://github.com/Labbeti/aac-datasets), audiocaps-download "
    "(https://github.com/MorenoLaQuatra/audiocaps-download) or yt-dlp + ffmpeg; "
    "file names as in the docstring of audio_text_data.py"
)
_CLOTHO_SOURCE = "Clotho v2.1 at https://zenodo.org/record/4783391"

MissingAudio = Literal["raise", "skip"]


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class AudioCaptionDataset(CaptionedFiles):
    """Unique audio clips, their captions, and the clip of each caption.

    Attributes:
        name: Short label used in messages and in the keys of ``skipped``.
        audio_paths: One path per unique clip. Length: ``num_clips``.
        captions: Caption strings. Length: ``num_captions``.
        caption_to_audio: Index into ``audio_paths`` of each caption, ``int64``.
            Shape: ``(num_captions,)``.
        skipped: Number of items left out while reading, by ``"name: reason"``.

    Every clip has at least one caption, so the dataset can be ranked with
    ``fusemix.retrieval_metrics`` as is. The checks, :meth:`describe`,
    :meth:`without_audio` and :func:`concat` are those of
    :class:`~replication.captions.CaptionedFiles`.

    Example:
        >>> ds = AudioCaptionDataset("toy", [Path("a.wav"), Path("b.wav")], ["x", "y", "z"], np.array([0, 1, 1]))
        >>> ds.num_clips, ds.num_captions, ds.caption_to_audio.dtype
        (2, 3, dtype('int64'))
        >>> AudioCaptionDataset("toy", ["a.wav"], ["x"], np.array([0]), {"toy: clips missing": 2}).describe()
        'toy: 1 clip(s), 1 caption(s); skipped: toy: clips missing = 2'

    """

    name: str
    audio_paths: list[Path]
    captions: list[str]
    caption_to_audio: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    names: ClassVar[FileNames] = FileNames("clip", "audio_paths", "caption_to_audio")

    @property
    def num_clips(self) -> int:
        """Number of unique audio clips."""
        return self.num_files

    def audio_files(
        self,
        *,
        sampling_rate: int,
        max_seconds: float | None = None,
        min_seconds: float | None = None,
        too_short: TooShort = "raise",
        on_error: OnError = "raise",
    ) -> AudioFiles:
        """The clips as a lazily loading sequence of mono waveforms (see :class:`fusemix.audio.AudioFiles`).

        Example:
            >>> files = AudioCaptionDataset("toy", ["a.wav"], ["x"], np.array([0])).audio_files(sampling_rate=16000)
            >>> len(files), files.settings["sampling_rate"]
            (1, 16000)

        """
        return AudioFiles(
            self.audio_paths,
            sampling_rate=sampling_rate,
            max_seconds=max_seconds,
            min_seconds=min_seconds,
            too_short=too_short,
            on_error=on_error,
        )

    def without_audio(self, indices: Sequence[int] | np.ndarray, reason: str) -> tuple[AudioCaptionDataset, np.ndarray]:
        """Drop clips (and all their captions), e.g. those :func:`drop_unusable_audio` found unusable.

        Args:
            indices: Clip indices to drop. Shape: ``(K,)``.
            reason: Why, recorded in ``skipped`` with the number of dropped clips.

        Returns:
            The smaller dataset, and the kept clip indices of this one (to
            select their latents). Shape of the latter: ``(num_clips - K,)``.

        Example:
            >>> ds = AudioCaptionDataset("toy", ["a.wav", "b.wav"], ["x", "y", "z"], np.array([0, 1, 1]))
            >>> small, kept = ds.without_audio([0], "unusable")
            >>> small.captions, small.caption_to_audio.tolist(), kept.tolist(), small.skipped
            (['y', 'z'], [0, 0], [1], {'toy: unusable': 1})

        """
        return self.without_files(indices, reason)


def concat(datasets: Sequence[AudioCaptionDataset], *, name: str | None = None) -> AudioCaptionDataset:
    """Join datasets into one (the training union): clips and captions appended, indices offset.

    Caption ``j`` of the ``k``-th dataset points to clip
    ``offset_k + caption_to_audio_k[j]``, with ``offset_k`` the number of clips
    of the datasets before it. Clips are not de-duplicated across datasets.

    Args:
        datasets: At least one dataset.
        name: Name of the result; defaults to the names joined with ``"+"``.

    Returns:
        The union; ``skipped`` counts are summed by key.

    Example:
        >>> a = AudioCaptionDataset("a", ["1.wav"], ["x", "y"], np.array([0, 0]))
        >>> b = AudioCaptionDataset("b", ["2.wav", "3.wav"], ["z", "w"], np.array([1, 0]))
        >>> both = concat([a, b])
        >>> both.name, both.caption_to_audio.tolist()
        ('a+b', [0, 0, 2, 1])

    """
    return AudioCaptionDataset.concat(datasets, name=name)


def _builder(name: str) -> CaptionsBuilder[AudioCaptionDataset]:
    return CaptionsBuilder(AudioCaptionDataset, name)


# --------------------------------------------------------------------------- file helpers


def _read_csv(path: Path, columns: Sequence[str], what: str, source: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header holding at least ``columns``; ragged rows raise ``ValueError``."""
    require_file(path, what, source)
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        try:
            header = reader.fieldnames or []
            absent = [column for column in columns if column not in header]
            if absent:
                raise ValueError(
                    f"{path}: expected a header with columns {','.join(columns)}, got {','.join(header) or 'nothing'} "
                    f"(missing: {', '.join(absent)})"
                )
            rows = []
            for row in reader:
                if None in row or None in row.values():  # more fields than the header, or fewer
                    fields = sum(value is not None for key, value in row.items() if key is not None)
                    fields += len(row.get(None, ()))
                    raise ValueError(
                        f"{path}: line {reader.line_num} has {fields} field(s), the header has {len(header)}"
                    )
                rows.append((reader.line_num, row))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
        except csv.Error as exc:
            raise ValueError(f"{path}: not valid CSV at line {reader.line_num} ({exc})") from exc
    return rows


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


class _AudioFolder:
    """The audio files of one folder, found by name stem (Unicode NFC) and suffix."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.by_stem: dict[str, dict[str, str]] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file():
                    stem, suffix = os.path.splitext(entry.name)
                    self.by_stem.setdefault(_nfc(stem), {})[suffix.lower()] = entry.name

    def find(self, stem: str, preferred: str | None = None) -> tuple[Path | None, str | None]:
        """The file named ``stem`` + an audio suffix (``preferred`` first), else an unreadable audio suffix seen."""
        suffixes = self.by_stem.get(_nfc(stem), {})
        for suffix in ((preferred,) if preferred else ()) + AUDIO_SUFFIXES:
            if suffix in suffixes:
                return self.folder / suffixes[suffix], None
        return None, next((suffix for suffix in UNREADABLE_SUFFIXES if suffix in suffixes), None)

    def sample(self, count: int = 3) -> list[str]:
        return sorted(name for names in self.by_stem.values() for name in names.values())[:count]


def _report_missing(
    builder: CaptionsBuilder[AudioCaptionDataset],
    missing: list[str],
    missing_captions: int,
    unreadable: dict[str, int],
    missing_audio: MissingAudio,
    where: Path,
) -> None:
    builder.skip_missing(
        missing, missing_audio, where=where, what="clip(s)", argument="missing_audio", reason="clips missing on disk"
    )
    builder.skip("captions of clips missing on disk", missing_captions)
    for suffix, count in sorted(unreadable.items()):
        builder.skip(f"clips in a format soundfile cannot read ({suffix}; convert to .flac or .wav)", count)


# --------------------------------------------------------------------------- AudioCaps


@dataclass
class _AudioCapsClip:
    youtube_id: str
    start_text: str
    start: float
    audiocap_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)

    def stems(self, single_start: bool) -> list[str]:
        start = f"{int(self.start)}" if self.start.is_integer() else self.start_text
        names = [
            f"{self.youtube_id}_{start}",
            f"Y{self.youtube_id}_{self.start:.3f}_{self.start + AUDIOCAPS_SEGMENT_SECONDS:.3f}",
        ]
        if single_start:
            names += [f"Y{self.youtube_id}", self.youtube_id]
        return names + self.audiocap_ids


def _audiocaps_clips(
    rows: list[tuple[int, dict[str, str]]], path: Path, builder: CaptionsBuilder[AudioCaptionDataset]
) -> list[_AudioCapsClip]:
    clips: dict[tuple[str, float], _AudioCapsClip] = {}
    for line, row in rows:
        youtube_id = row["youtube_id"].strip()
        start_text = row["start_time"].strip()
        if not youtube_id:
            raise ValueError(f"{path}: line {line}: empty youtube_id")
        try:
            start = float(start_text)
        except ValueError:
            raise ValueError(f"{path}: line {line}: start_time {start_text!r} is not a number") from None
        clip = clips.setdefault((youtube_id, start), _AudioCapsClip(youtube_id, start_text, start))
        clip.audiocap_ids.append(row["audiocap_id"].strip())
        caption = row["caption"].strip()
        if caption:
            clip.captions.append(caption)
        else:
            builder.skip("empty captions")
    return list(clips.values())


def read_audiocaps(
    root: Path,
    split: str,
    *,
    csv_file: Path | None = None,
    audio_dir: Path | None = None,
    missing_audio: MissingAudio = "skip",
) -> AudioCaptionDataset:
    """Read one AudioCaps split: ``root/{split}.csv`` with audio in ``root/audio/{split}/``.

    Captions are grouped into clips by ``(youtube_id, start_time)``; each
    clip's file is found by the names listed in the module docstring.

    Args:
        root: The ``audiocaps`` folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        csv_file: The caption CSV, if not ``root/{split}.csv``.
        audio_dir: The audio folder, if not ``root/audio/{split}``.
        missing_audio: ``"skip"`` (default: count clips without a file) or
            ``"raise"`` (``FileNotFoundError``).

    Returns:
        The split as an :class:`AudioCaptionDataset` named ``"audiocaps/{split}"``.

    Raises:
        FileNotFoundError: The CSV or audio folder is missing, no clip of
            the split has a file, or clips are missing and ``missing_audio="raise"``.
        ValueError: The CSV is malformed (message names file and line).

    Example:
        >>> test = read_audiocaps(Path("data/audiocaps"), "test")  # doctest: +SKIP
        >>> test.describe()  # doctest: +SKIP
        'audiocaps/test: 893 clip(s), 4,465 caption(s); skipped: audiocaps/test: clips missing on disk = 82, ...'

    """
    check_choice("split", split, AUDIOCAPS_SPLITS)
    check_choice("missing_audio", missing_audio, ("raise", "skip"))
    root = Path(root)
    csv_path = Path(csv_file) if csv_file is not None else root / f"{split}.csv"
    folder = Path(audio_dir) if audio_dir is not None else root / "audio" / split
    rows = _read_csv(csv_path, AUDIOCAPS_COLUMNS, "AudioCaps caption CSV", _AUDIOCAPS_CSV_SOURCE)
    audio = _AudioFolder(require_dir(folder, f"AudioCaps {split} audio", _AUDIOCAPS_AUDIO_SOURCE))
    builder = _builder(f"audiocaps/{split}")
    clips = _audiocaps_clips(rows, csv_path, builder)
    starts_per_video: dict[str, int] = {}
    for clip in clips:
        starts_per_video[clip.youtube_id] = starts_per_video.get(clip.youtube_id, 0) + 1
    missing: list[str] = []
    missing_captions = 0
    unreadable: dict[str, int] = {}
    for clip in clips:
        if not clip.captions:
            builder.skip("clips without a caption")
            continue
        found, bad_suffix = None, None
        for stem in clip.stems(single_start=starts_per_video[clip.youtube_id] == 1):
            path, suffix = audio.find(stem)
            if path is not None:
                found = path
                break
            bad_suffix = bad_suffix or suffix
        if found is not None:
            builder.add(found, clip.captions)
        elif bad_suffix is not None:
            unreadable[bad_suffix] = unreadable.get(bad_suffix, 0) + 1
        else:
            missing.append(f"{clip.youtube_id} from {clip.start_text} s")
            missing_captions += len(clip.captions)
    if clips and not builder.paths:
        first = clips[0].stems(single_start=True)
        present = audio.sample()
        raise FileNotFoundError(
            f"{folder}: none of the {len(clips)} clip(s) of {csv_path.name} has an audio file; the first would be "
            f"one of {', '.join(first)} with a suffix in {', '.join(AUDIO_SUFFIXES)}; the folder holds "
            + (", ".join(present) + ", ..." if present else "no file")
        )
    _report_missing(builder, missing, missing_captions, unreadable, missing_audio, folder)
    return builder.build()


# --------------------------------------------------------------------------- Clotho


def read_clotho(
    root: Path,
    split: str,
    *,
    captions_csv: Path | None = None,
    audio_dir: Path | None = None,
    missing_audio: MissingAudio = "raise",
) -> AudioCaptionDataset:
    """Read one Clotho split: ``root/clotho_captions_{split}.csv`` with audio in ``root/{split}/``.

    Args:
        root: The ``clotho`` folder.
        split: ``"development"``, ``"validation"`` or ``"evaluation"`` (the test set).
        captions_csv: The caption CSV, if not ``root/clotho_captions_{split}.csv``.
        audio_dir: The audio folder, if not ``root/{split}``.
        missing_audio: ``"raise"`` (default: ``FileNotFoundError`` naming the
            first missing file) or ``"skip"`` (drop and count).

    Returns:
        The split as an :class:`AudioCaptionDataset` named ``"clotho/{split}"``,
        clips in file order, each with its captions in column order.

    Raises:
        FileNotFoundError: The CSV or the audio folder is missing, or listed
            files are missing and ``missing_audio="raise"``.
        ValueError: The CSV is malformed or lists a file twice.

    Example:
        >>> read_clotho(Path("data/clotho"), "evaluation").describe()  # doctest: +SKIP
        'clotho/evaluation: 1,045 clip(s), 5,225 caption(s)'

    """
    check_choice("split", split, CLOTHO_SPLITS)
    check_choice("missing_audio", missing_audio, ("raise", "skip"))
    root = Path(root)
    csv_path = Path(captions_csv) if captions_csv is not None else root / f"clotho_captions_{split}.csv"
    folder = Path(audio_dir) if audio_dir is not None else root / split
    rows = _read_csv(csv_path, ("file_name", *CLOTHO_CAPTION_COLUMNS), "Clotho caption CSV", _CLOTHO_SOURCE)
    audio = _AudioFolder(require_dir(folder, f"Clotho {split} audio", _CLOTHO_SOURCE))
    builder = _builder(f"clotho/{split}")
    seen: set[str] = set()
    missing: list[str] = []
    missing_captions = 0
    unreadable: dict[str, int] = {}
    for line, row in rows:
        file_name = row["file_name"].strip()
        if not file_name:
            raise ValueError(f"{csv_path}: line {line}: empty file_name")
        if file_name in seen:
            raise ValueError(f"{csv_path}: line {line}: {file_name!r} is listed twice")
        seen.add(file_name)
        texts = [row[column].strip() for column in CLOTHO_CAPTION_COLUMNS]
        captions = [text for text in texts if text]
        builder.skip("empty captions", len(texts) - len(captions))
        if not captions:
            builder.skip("clips without a caption")
            continue
        stem, suffix = os.path.splitext(file_name)
        path, bad_suffix = audio.find(stem, suffix.lower() if suffix.lower() in AUDIO_SUFFIXES else None)
        if path is not None:
            builder.add(path, captions)
        elif bad_suffix is not None:
            unreadable[bad_suffix] = unreadable.get(bad_suffix, 0) + 1
        else:
            missing.append(file_name)
            missing_captions += len(captions)
    _report_missing(builder, missing, missing_captions, unreadable, missing_audio, folder)
    return builder.build()


# --------------------------------------------------------------------------- by component name


def read_audio_text(root: Path, component: str, *, missing_audio: MissingAudio | None = None) -> AudioCaptionDataset:
    """Read one split by its component name (``"audiocaps/test"``, ``"clotho/development"``, ...) under ``root``.

    Args:
        root: The ``--data-root`` folder (layout in the module docstring).
        component: ``"{dataset}/{split}"``, a name of :data:`COMPONENTS` with a split.
        missing_audio: Passed on; ``None`` keeps each reader's default
            (AudioCaps skips missing clips, Clotho raises).

    Returns:
        The split.

    Example:
        >>> train = concat([read_audio_text(Path("data"), c) for c in TRAIN_COMPONENTS])  # doctest: +SKIP

    """
    check_choice("component", component, COMPONENTS[2:])
    dataset, split = component.split("/")
    options: dict[str, Any] = {} if missing_audio is None else {"missing_audio": missing_audio}
    reader = read_audiocaps if dataset == "audiocaps" else read_clotho
    return reader(Path(root) / dataset, split, **options)


def drop_unusable_audio(
    dataset: AudioCaptionDataset,
    *,
    sampling_rate: int,
    min_seconds: float | None = None,
    too_short: TooShort = "raise",
    decode: bool = False,
    on_error: OnError = "skip",
    progress: bool = True,
) -> tuple[AudioCaptionDataset, dict[int, str]]:
    """Check every clip with :func:`fusemix.audio.validate_audio_files` and drop those that cannot be loaded.

    Run it before extraction: the dropped clips leave with their captions, so
    latents and captions stay aligned. Arguments as in
    :func:`~fusemix.audio.validate_audio_files` (``on_error="skip"`` warns and
    drops; ``"raise"`` stops on any bad file).

    Returns:
        The dataset without the unusable clips (counted in ``skipped`` as
        ``"unusable audio files"``), and clip index (of ``dataset``) -> reason.

    Example:
        >>> clean, failed = drop_unusable_audio(read_clotho(Path("data/clotho"), "evaluation"),  # doctest: +SKIP
        ...                                     sampling_rate=16000, decode=True)

    """
    check = validate_audio_files(
        dataset.audio_paths,
        sampling_rate=sampling_rate,
        min_seconds=min_seconds,
        too_short=too_short,
        decode=decode,
        on_error=on_error,
        progress=progress,
    )
    smaller, _ = dataset.without_audio(sorted(check.failed), "unusable audio files")
    return smaller, check.failed


# --------------------------------------------------------------------------- layout check


def _check_split(root: Path, dataset: str, split: str) -> list[str]:
    component = f"{dataset}/{split}"
    if dataset == "audiocaps":
        folder = root / "audiocaps"
        return missing_file(
            component, folder / f"{split}.csv", "AudioCaps caption CSV", _AUDIOCAPS_CSV_SOURCE
        ) + missing_dir(component, folder / "audio" / split, f"AudioCaps {split} audio", _AUDIOCAPS_AUDIO_SOURCE)
    folder = root / "clotho"
    return missing_file(
        component, folder / f"clotho_captions_{split}.csv", "Clotho caption CSV", _CLOTHO_SOURCE
    ) + missing_dir(component, folder / split, f"Clotho {split} audio, from the split's .7z archive", _CLOTHO_SOURCE)


def _splits_of(names: Iterable[str]) -> list[tuple[str, str]]:
    splits: list[tuple[str, str]] = []
    for name in names:
        check_choice("needed", name, COMPONENTS)
        dataset, _, split = name.partition("/")
        for one in [split] if split else (AUDIOCAPS_SPLITS if dataset == "audiocaps" else CLOTHO_SPLITS):
            if (dataset, one) not in splits:
                splits.append((dataset, one))
    return splits


def check_audio_text_data(root: Path, needed: Sequence[str]) -> list[str]:
    """List every file or folder the audio-text preset needs under ``root`` and cannot find.

    Only the layout is checked (files exist, folders are not empty), not the
    content, so this is instant even for the full datasets.

    Args:
        root: The ``--data-root`` folder (layout in the module docstring).
        needed: Names from :data:`COMPONENTS`, e.g. ``TRAIN_COMPONENTS + EVAL_COMPONENTS``;
            ``"audiocaps"`` or ``"clotho"`` alone means every split.

    Returns:
        One human-readable line per missing item (what, where, where to get
        it), starting with the component name; empty when all is in place.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     lines = check_audio_text_data(Path(tmp), ["clotho/evaluation"])
        >>> [line.split(" (")[0].replace(tmp, "ROOT") for line in lines]
        ['clotho/evaluation: ROOT/clotho/clotho_captions_evaluation.csv', 'clotho/evaluation: ROOT/clotho/evaluation/']

    """
    if isinstance(needed, str):
        raise TypeError("needed: expected a sequence of component names, got a single string")
    root = Path(root)
    lines: list[str] = []
    for dataset, split in _splits_of(needed):
        lines += _check_split(root, dataset, split)
    return lines
