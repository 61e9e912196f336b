"""Audio files to waveforms for the audio encoders: decode, mix down, resample, crop or pad.

:func:`load_audio` turns one file into what :class:`~fusemix.encoders.HFAudioEncoder`
takes: a mono ``float32`` waveform in ``[-1, 1]`` at the model's sampling rate.
:class:`AudioFiles` does that lazily for a list of files (a sequence for
:func:`~fusemix.extract.extract_latents`), and :func:`validate_audio_files`
checks a list of files up front.

**Libraries.** Files are decoded with `soundfile <https://python-soundfile.readthedocs.io>`_
(libsndfile: WAV, FLAC, OGG/Vorbis, Opus, and MP3 from libsndfile 1.1 on; not
AAC/M4A) and resampled with `soxr <https://github.com/dofuuz/python-soxr>`_ at
its ``"HQ"`` quality: what ``librosa.load`` does by default (librosa >= 0.10,
``res_type="soxr_hq"``), which LAION-CLAP's examples load audio with. Install
both with ``pip install "fusemix[audio]"``. soxr's output holds
``floor(n * sampling_rate / file_rate + 1/2)`` samples for ``n`` input samples.

**Bad files never shift rows.** An extraction stores one latent per item, in
order, so a file that cannot be read must not simply be dropped on the fly.
The intended flow is to check the files first, drop the bad ones from the
dataset (with their captions), and then extract from the clean list::

    check = validate_audio_files(paths, sampling_rate=16000, on_error="skip")  # warns, lists failures
    paths = [paths[i] for i in check.good]          # and drop their captions too
    extract_latents(encoder, AudioFiles(paths, sampling_rate=16000), out_dir, modality="audio")

:func:`validate_audio_files` reads only each file's header by default (fast:
existence, format, length); ``decode=True`` also decodes every file, which
catches corrupt or truncated compressed data and NaN/Inf samples. A file that
passes the full check loads with :func:`load_audio` under the same settings.
:class:`AudioFiles` with ``on_error="skip"`` returns ``None`` for a bad file
(recording why in :attr:`AudioFiles.failed` and warning); ``None`` is not a
waveform, so an encoder refuses it and the extraction stops instead of
misaligning rows.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, NamedTuple, overload

import numpy as np

from fusemix._checks import check_choice, check_positive, check_positive_int
from fusemix._optional import progress_bar, require

TooShort = Literal["raise", "pad"]
OnError = Literal["raise", "skip"]

RESAMPLER = "soxr HQ"
"""The resampler :func:`load_audio` uses (recorded in :attr:`AudioFiles.settings`)."""

_FORMATS = (
    "soundfile reads WAV, FLAC, OGG/Vorbis, Opus and (libsndfile >= 1.1) MP3, not AAC/M4A; "
    "convert other formats first, e.g. 'ffmpeg -i clip.m4a clip.flac'"
)


class AudioFileError(OSError):
    """An audio file exists but cannot be used; the message starts with its path.

    Raised for files that are empty, in an unknown format, corrupt or
    truncated, hold no samples or NaN/Inf samples, or are shorter than a
    requested ``min_seconds``.
    """


class AudioCheck(NamedTuple):
    """Result of :func:`validate_audio_files`.

    Attributes:
        good: Indices of the usable files, ascending, ``int64``. Shape: ``(G,)``.
        failed: Index -> reason for every other file; each reason starts with the file's path.
    """

    good: np.ndarray
    failed: dict[int, str]


def resampled_length(num_samples: int, file_rate: int, sampling_rate: int) -> int:
    """Number of samples :func:`load_audio` gets from ``num_samples`` at ``file_rate`` (before cropping or padding).

    Example:
        >>> resampled_length(44100, 44100, 16000), resampled_length(3, 44100, 16000)
        (16000, 1)

    """
    return (2 * num_samples * sampling_rate + file_rate) // (2 * file_rate)


def _check_settings(sampling_rate: int, max_seconds: float | None, min_seconds: float | None, too_short: str) -> None:
    check_positive_int("sampling_rate", sampling_rate)
    check_choice("too_short", too_short, ("raise", "pad"))
    if max_seconds is not None:
        check_positive("max_seconds", max_seconds)
        if round(max_seconds * sampling_rate) < 1:
            raise ValueError(f"max_seconds: {max_seconds} s is less than one sample at {sampling_rate} Hz")
    if min_seconds is not None:
        check_positive("min_seconds", min_seconds)
    if max_seconds is not None and min_seconds is not None and min_seconds > max_seconds:
        raise ValueError(f"min_seconds: {min_seconds} s exceeds max_seconds ({max_seconds} s)")


def _info(soundfile: ModuleType, path: Path) -> Any:
    """The file's header (``soundfile.info``), with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: empty file (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except RuntimeError as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise AudioFileError(f"{path}: cannot read audio ({exc}); {_FORMATS}") from exc
    if info.frames <= 0:
        raise AudioFileError(f"{path}: holds no samples (0 frames)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioFileError(f"{path}: invalid header ({info.samplerate} Hz, {info.channels} channel(s))")
    return info


def _decode(soundfile: ModuleType, path: Path, frames: int = -1) -> np.ndarray:
    """Up to ``frames`` frames (``-1``: all) as ``float32``, ``(frames, channels)``; refuses no or non-finite samples.

    Reads to the end of the data rather than trusting the header's frame count.
    """
    try:
        data, _ = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except RuntimeError as exc:
        raise AudioFileError(f"{path}: cannot decode audio, the file is corrupt or truncated ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: holds no samples (0 frames decoded)")
    finite = np.isfinite(data)
    if not finite.all():
        raise AudioFileError(f"{path}: {int(data.size - finite.sum())} sample(s) are NaN or Inf")
    return data


def _too_short(path: Path, frames: int, file_rate: int, sampling_rate: int, min_seconds: float | None) -> str | None:
    """Why a clip of ``frames`` frames at ``file_rate`` is too short, or ``None``."""
    if resampled_length(frames, file_rate, sampling_rate) < 1:
        return f"{path}: {frames} sample(s) at {file_rate} Hz leave no sample at {sampling_rate} Hz"
    if min_seconds is not None and frames < min_seconds * file_rate:
        return (
            f"{path}: lasts {frames / file_rate:.3f} s, shorter than min_seconds={min_seconds} "
            "(pass too_short='pad' to zero-pad it instead)"
        )
    return None


def load_audio(
    path: str | PathLike[str],
    *,
    sampling_rate: int,
    mono: bool = True,
    max_seconds: float | None = None,
    min_seconds: float | None = None,
    too_short: TooShort = "raise",
) -> np.ndarray:
    """Decode an audio file and resample it to ``sampling_rate``.

    Integer PCM is scaled to ``[-1, 1)``; float files keep their values.
    Channels are averaged for ``mono=True`` (before resampling). Clips shorter
    than a model's window need nothing here: Whisper's and CLAP's feature
    extractors pad them (:class:`~fusemix.encoders.HFAudioEncoder` averages
    only the Whisper frames that cover real audio). ``min_seconds`` is for
    encoders that need a minimum length, or to refuse clips too short to mean
    anything; zero padding a clip for Whisper makes the padding count as audio.

    Args:
        path: The audio file.
        sampling_rate: Output rate in Hz, e.g. 16000 for Whisper, 48000 for LAION-CLAP.
        mono: Average the channels into one (default). ``False`` keeps them.
        max_seconds: Keep only the first ``round(max_seconds * sampling_rate)``
            samples (e.g. 30 for Whisper's window). Only about that much of the
            file is decoded.
        min_seconds: Minimum duration of the file. Shorter files raise
            :class:`AudioFileError` (``too_short="raise"``) or are zero-padded
            at the end to ``round(min_seconds * sampling_rate)`` samples
            (``too_short="pad"``). Files long enough are returned with at
            least that many samples (a one-sample rounding shortfall of the
            resampler is zero-padded).
        too_short: ``"raise"`` or ``"pad"``; see ``min_seconds``.

    Returns:
        ``float32`` samples. Shape: ``(samples,)`` if ``mono``, else ``(channels, samples)``.

    Raises:
        FileNotFoundError: No file at ``path``.
        AudioFileError: The file is empty, in an unknown format, corrupt,
            holds no samples or NaN/Inf samples, or is too short.
        ImportError: soundfile (or, when the rates differ, soxr) is not installed.

    Example:
        >>> import tempfile, soundfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     stereo = np.zeros((44100, 2), dtype=np.float32)
        ...     soundfile.write(f"{tmp}/clip.wav", stereo, 44100)
        ...     wave = load_audio(f"{tmp}/clip.wav", sampling_rate=16000)
        >>> wave.shape, wave.dtype
        ((16000,), dtype('float32'))

    """
    _check_settings(sampling_rate, max_seconds, min_seconds, too_short)
    if not isinstance(mono, bool):
        raise TypeError(f"mono: expected a bool, got {type(mono).__name__}")
    soundfile = require("soundfile", extra="audio", user="load_audio")
    path = Path(path)
    info = _info(soundfile, path)
    file_rate = int(info.samplerate)
    # with a cap, decode a little more than kept so the resampler sees the context at the cut
    frames = -1 if max_seconds is None else math.ceil(max_seconds * file_rate) + file_rate // 10
    data = _decode(soundfile, path, frames)
    problem = _too_short(path, data.shape[0], file_rate, sampling_rate, None if too_short == "pad" else min_seconds)
    if problem is not None:
        raise AudioFileError(problem)
    if mono:
        data = data.mean(axis=1, keepdims=True, dtype=np.float32)
    if file_rate != sampling_rate:
        data = require("soxr", extra="audio", user="load_audio").resample(data, file_rate, sampling_rate, quality="HQ")
    if max_seconds is not None:
        data = data[: round(max_seconds * sampling_rate)]
    if min_seconds is not None and data.shape[0] < round(min_seconds * sampling_rate):
        data = np.pad(data, ((0, round(min_seconds * sampling_rate) - data.shape[0]), (0, 0)))
    wave = data[:, 0] if mono else data.T
    return np.ascontiguousarray(wave, dtype=np.float32)


def _problem(
    soundfile: ModuleType, path: Path, sampling_rate: int, min_seconds: float | None, decode: bool
) -> str | None:
    """Why ``path`` cannot be loaded with these settings, or ``None``."""
    try:
        info = _info(soundfile, path)
        frames = _decode(soundfile, path).shape[0] if decode else info.frames
    except (FileNotFoundError, AudioFileError) as exc:
        return str(exc)
    return _too_short(path, frames, int(info.samplerate), sampling_rate, min_seconds)


def validate_audio_files(
    paths: Sequence[str | PathLike[str]],
    *,
    sampling_rate: int,
    min_seconds: float | None = None,
    too_short: TooShort = "raise",
    decode: bool = False,
    on_error: OnError = "raise",
    progress: bool = True,
) -> AudioCheck:
    """Check which files :func:`load_audio` can load with these settings, before extracting from them.

    Every file is checked (none stops the scan); then ``on_error`` decides.

    Args:
        paths: Audio files. Length: ``N``.
        sampling_rate: The rate the files will be loaded at.
        min_seconds: As in :func:`load_audio`: with ``too_short="raise"``,
            shorter files fail; with ``"pad"`` they pass.
        too_short: As in :func:`load_audio`.
        decode: Also decode every file (slower: reads all the audio). Without
            it only headers are read: existence, format, length.
        on_error: ``"raise"``: raise :class:`AudioFileError` if any file
            fails, naming how many and the first. ``"skip"``: warn with the
            same summary and return the failures.
        progress: Show a tqdm progress bar on a terminal (without tqdm installed: a warning and no bar).

    Returns:
        An :class:`AudioCheck`: the usable indices and index -> reason for the rest.

    Example:
        >>> import tempfile, soundfile, warnings
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     soundfile.write(f"{tmp}/ok.wav", np.zeros(800, dtype=np.float32), 16000)
        ...     with warnings.catch_warnings(record=True):
        ...         check = validate_audio_files([f"{tmp}/ok.wav", f"{tmp}/gone.wav"], sampling_rate=16000,
        ...                                      on_error="skip", progress=False)
        >>> check.good.tolist(), [reason.endswith("audio file not found") for reason in check.failed.values()]
        ([0], [True])

    """
    if isinstance(paths, (str, PathLike)):
        raise TypeError("paths: expected a sequence of paths, got a single path")
    _check_settings(sampling_rate, None, min_seconds, too_short)
    check_choice("on_error", on_error, ("raise", "skip"))
    if not isinstance(decode, bool):
        raise TypeError(f"decode: expected a bool, got {type(decode).__name__}")
    soundfile = require("soundfile", extra="audio", user="validate_audio_files")
    minimum = None if too_short == "pad" else min_seconds
    failed: dict[int, str] = {}
    files = [Path(p) for p in paths]
    with progress_bar(
        progress, user="validate_audio_files", total=len(files), desc="checking audio files", unit="file", disable=None
    ) as bar:
        for index, path in enumerate(files):
            problem = _problem(soundfile, path, sampling_rate, minimum, decode)
            if problem is not None:
                failed[index] = problem
            if bar is not None:
                bar.update()
    good = np.array([i for i in range(len(files)) if i not in failed], dtype=np.int64)
    if failed:
        summary = f"{len(failed)} of {len(files)} audio file(s) cannot be used (first: {next(iter(failed.values()))})"
        if on_error == "raise":
            raise AudioFileError(f"paths: {summary}; pass on_error='skip' to leave them out")
        warnings.warn(f"paths: {summary}; they are left out", stacklevel=2)
    return AudioCheck(good, failed)


class AudioFiles(Sequence[np.ndarray | None]):
    """Mono waveforms of a list of audio files, loaded only when indexed (for resumable extraction by index).

    Each item is :func:`load_audio` of its path with the settings given here.

    Args:
        paths: Audio files. Length: ``N``.
        sampling_rate: Rate of the waveforms in Hz (the encoder's).
        max_seconds: See :func:`load_audio` (e.g. 30 for Whisper, which refuses longer clips).
        min_seconds: See :func:`load_audio`.
        too_short: See :func:`load_audio`.
        on_error: ``"raise"`` (default): a missing or unusable file raises
            (``FileNotFoundError`` / :class:`AudioFileError`, naming it).
            ``"skip"``: indexing it returns ``None``, records the reason in
            :attr:`failed` and warns. An encoder refuses ``None``, so a bad
            file still stops an extraction; run :meth:`validate` first and
            drop the failures to extract from clean data.

    Attributes:
        paths: The audio files.
        failed: Index -> reason, for files that failed so far (``on_error="skip"``).
        settings: The loading settings, JSON-serialisable (for the extraction's metadata).

    Shape:
        - Item: ``(samples,)``, ``float32``.

    Example:
        >>> files = AudioFiles(["missing.wav"], sampling_rate=16000, on_error="skip")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     item = files[0]
        >>> len(files), item, list(files.failed)
        (1, None, [0])

    """

    def __init__(
        self,
        paths: Sequence[str | PathLike[str]],
        *,
        sampling_rate: int,
        max_seconds: float | None = None,
        min_seconds: float | None = None,
        too_short: TooShort = "raise",
        on_error: OnError = "raise",
    ) -> None:
        if isinstance(paths, (str, PathLike)):
            raise TypeError("paths: expected a sequence of paths, got a single path")
        _check_settings(sampling_rate, max_seconds, min_seconds, too_short)
        check_choice("on_error", on_error, ("raise", "skip"))
        self.paths = [Path(p) for p in paths]
        self.sampling_rate = sampling_rate
        self.max_seconds = max_seconds
        self.min_seconds = min_seconds
        self.too_short: TooShort = too_short
        self.on_error: OnError = on_error
        self.failed: dict[int, str] = {}
        self.settings: dict[str, Any] = {
            "sampling_rate": sampling_rate,
            "mono": True,
            "max_seconds": max_seconds,
            "min_seconds": min_seconds,
            "too_short": too_short,
            "resampler": RESAMPLER,
        }

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray | None: ...

    @overload
    def __getitem__(self, index: slice) -> AudioFiles: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | None | AudioFiles:
        if isinstance(index, slice):
            return AudioFiles(
                self.paths[index],
                sampling_rate=self.sampling_rate,
                max_seconds=self.max_seconds,
                min_seconds=self.min_seconds,
                too_short=self.too_short,
                on_error=self.on_error,
            )
        if isinstance(index, bool):
            raise TypeError("index: expected an int or a slice, got bool")
        try:
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"index: expected an int or a slice, got {type(index).__name__}") from None
        if not -len(self.paths) <= position < len(self.paths):
            raise IndexError(f"index: {position} is out of range for {len(self.paths)} audio file(s)")
        position %= len(self.paths)
        try:
            return load_audio(
                self.paths[position],
                sampling_rate=self.sampling_rate,
                max_seconds=self.max_seconds,
                min_seconds=self.min_seconds,
                too_short=self.too_short,
            )
        except (FileNotFoundError, AudioFileError) as exc:
            if self.on_error == "raise":
                raise
            self.failed[position] = str(exc)
            warnings.warn(f"{exc}; item {position} is None", stacklevel=2)
            return None

    def validate(self, *, decode: bool = False, on_error: OnError = "raise", progress: bool = True) -> AudioCheck:
        """Check every file with these settings (see :func:`validate_audio_files`).

        Example:
            >>> import warnings
            >>> with warnings.catch_warnings(record=True):
            ...     check = AudioFiles(["gone.wav"], sampling_rate=16000).validate(on_error="skip", progress=False)
            >>> check.good.tolist(), check.failed[0]
            ([], 'gone.wav: audio file not found')

        """
        return validate_audio_files(
            self.paths,
            sampling_rate=self.sampling_rate,
            min_seconds=self.min_seconds,
            too_short=self.too_short,
            decode=decode,
            on_error=on_error,
            progress=progress,
        )
