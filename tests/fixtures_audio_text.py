"""Miniature AudioCaps and Clotho datasets written in the exact on-disk formats of the real ones.

``make_audiocaps`` / ``make_clotho`` write one dataset under a folder and return
it. The content is fixed by the module-level specs, so tests compute what a
correct reader must return without calling it. Captions name their clip
(``"test clip 1 caption 3"``) so a wrong caption-to-clip mapping is visible.
Waveforms are short sines plus a little noise (0.2-2 s, 44.1 or 32 kHz,
mono or stereo, WAV / FLAC / OGG), written with soundfile.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import numpy as np
import soundfile

# --------------------------------------------------------------------------- waveform files


def tone(freq: float, seconds: float, rate: int, channels: int = 1, *, seed: int = 0) -> np.ndarray:
    """A sine at ``freq`` Hz (channel ``c`` at amplitude ``0.5 / (c + 1)``) plus faint noise; ``(frames, channels)``."""
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal((t.size, channels)) * 1e-3
    wave = np.stack([np.sin(2 * np.pi * freq * t) * 0.5 / (c + 1) for c in range(channels)], axis=1)
    return (wave + noise).astype(np.float32)


def write_tone(path: Path, freq: float, seconds: float, rate: int, channels: int = 1, *, subtype: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(freq, seconds, rate, channels), rate, subtype=subtype)
    return path


def write_garbage(path: Path) -> Path:
    """Bytes that are no audio format (a "corrupt" download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"<html>This video is no longer available</html>\n" * 20)
    return path


def write_empty(path: Path) -> Path:
    """A 0-byte file (an interrupted download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_zero_frames(path: Path, rate: int = 44100) -> Path:
    """A valid WAV header with no samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros((0, 1), dtype=np.float32), rate)
    return path


def write_truncated_flac(path: Path) -> Path:
    """A FLAC file cut in half: its header reads fine, decoding fails."""
    write_tone(path, 440.0, 1.0, 44100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_nan_wav(path: Path) -> Path:
    """A float WAV with NaN samples: header and decoding succeed, the samples are unusable."""
    wave = tone(440.0, 0.5, 16000)
    wave[100:110] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, 16000, subtype="FLOAT")
    return path


# --------------------------------------------------------------------------- AudioCaps

# (audiocap_id, youtube_id, start_time, caption, how the clip's file is named) per CSV row, in file order.
# File naming: a pattern of the reader, "m4a" (present but unreadable by soundfile), "corrupt" (named
# {youtube_id}_{start_time}.wav but not audio) or None (missing: video taken down).
AUDIOCAPS_TRAIN = [
    ("91139", "r1nicOVtvkQ", "130", "A woman talks nearby as water pours", "youtube_start"),
    ("58146", "UDGBjjwyaqE", "20", "Multiple clanging and clanking sounds", "audioset"),
    ("11542", "LTfJHs4fKp8", "0", "A dog barks and a man speaks", "audiocap_id"),
    ("107691", "Jj3VPFvHaYo", "30", "Rain falls on a tin roof", "Y_youtube"),
    ("61111", "aP1vtQ7pMDY", "10", "An engine revs, then idles", "youtube"),
    ("8283", "MWIVMqOKHRk", "40", "Birds chirp in the distance", None),
    ("51234", "ZxYwVuTsRqP", "60", "A crowd cheers loudly", "m4a"),
]

# val: clip 0 is fine, clip 1's file is corrupt (the reader finds it; validation rejects it).
AUDIOCAPS_VAL_CLIPS = [("vAlIdClip01", "50", "youtube_start"), ("vAlIdClip02", "0", "corrupt")]

# test: (youtube_id, start_time, naming); 5 captions each, rows interleaved (see audiocaps_test_rows).
# Clips 0 and 1 are two segments of the same video; clip 2 is missing.
AUDIOCAPS_TEST_CLIPS = [
    ("SaMeViDeO01", "30", "youtube_start"),
    ("SaMeViDeO01", "100", "audiocap_id_3rd"),  # named by the audiocap_id of its 3rd caption row
    ("TaKeNdOwN02", "0", None),
]
# A decoy named {youtube_id}.wav for the video with two segments: it must not be used for either.
AUDIOCAPS_TEST_DECOY = "SaMeViDeO01.wav"

# (rate, channels, suffix) used for each pattern's file
_AUDIOCAPS_FORMATS = {
    "youtube_start": (44100, 2, ".wav"),
    "audioset": (32000, 1, ".flac"),
    "audiocap_id": (32000, 1, ".ogg"),
    "audiocap_id_3rd": (44100, 1, ".wav"),
    "Y_youtube": (44100, 1, ".wav"),
    "youtube": (32000, 2, ".flac"),
}


def audiocaps_test_caption(clip: int, k: int) -> str:
    return f"test clip {clip} caption {k}"


def audiocaps_val_caption(clip: int, k: int) -> str:
    return f"val clip {clip} caption {k}"


def audiocaps_test_rows() -> list[tuple[str, str, str, str]]:
    """Rows of test.csv: caption k of every clip, then caption k + 1, ... (clips interleaved)."""
    rows = []
    for k in range(5):
        for clip, (youtube_id, start, _) in enumerate(AUDIOCAPS_TEST_CLIPS):
            rows.append((str(100 + 10 * clip + k), youtube_id, start, audiocaps_test_caption(clip, k)))
    return rows


def audiocaps_val_rows() -> list[tuple[str, str, str, str]]:
    return [
        (str(500 + 10 * clip + k), youtube_id, start, audiocaps_val_caption(clip, k))
        for clip, (youtube_id, start, _) in enumerate(AUDIOCAPS_VAL_CLIPS)
        for k in range(5)
    ]


def audiocaps_stem(naming: str, audiocap_ids: list[str], youtube_id: str, start: str) -> str:
    if naming == "youtube_start":
        return f"{youtube_id}_{start}"
    if naming == "audioset":
        return f"Y{youtube_id}_{float(start):.3f}_{float(start) + 10:.3f}"
    if naming == "audiocap_id":
        return audiocap_ids[0]
    if naming == "audiocap_id_3rd":
        return audiocap_ids[2]
    if naming == "Y_youtube":
        return f"Y{youtube_id}"
    if naming == "youtube":
        return youtube_id
    raise ValueError(naming)


def audiocaps_file_name(naming: str, audiocap_ids: list[str], youtube_id: str, start: str) -> str:
    return audiocaps_stem(naming, audiocap_ids, youtube_id, start) + _AUDIOCAPS_FORMATS[naming][2]


def _write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _write_audiocaps_clip(folder: Path, naming: str | None, ids: list[str], youtube_id: str, start: str, seed: int):
    if naming is None:
        return
    if naming == "m4a":
        write_garbage(folder / f"{youtube_id}_{start}.m4a")
        return
    if naming == "corrupt":
        write_garbage(folder / f"{youtube_id}_{start}.wav")
        return
    rate, channels, _ = _AUDIOCAPS_FORMATS[naming]
    seconds = 0.2 + 0.3 * (seed % 6)
    write_tone(folder / audiocaps_file_name(naming, ids, youtube_id, start), 220.0 + 55 * seed, seconds, rate, channels)


def make_audiocaps(root: Path) -> Path:
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    _write_csv(root / "train.csv", header, [row[:4] for row in AUDIOCAPS_TRAIN])
    for seed, (audiocap_id, youtube_id, start, _, naming) in enumerate(AUDIOCAPS_TRAIN):
        _write_audiocaps_clip(root / "audio" / "train", naming, [audiocap_id], youtube_id, start, seed)
    for split, rows, clips in (
        ("val", audiocaps_val_rows(), AUDIOCAPS_VAL_CLIPS),
        ("test", audiocaps_test_rows(), AUDIOCAPS_TEST_CLIPS),
    ):
        _write_csv(root / f"{split}.csv", header, rows)
        for seed, (youtube_id, start, naming) in enumerate(clips):
            ids = [row[0] for row in rows if row[1] == youtube_id and row[2] == start]
            _write_audiocaps_clip(root / "audio" / split, naming, ids, youtube_id, start, seed)
    write_tone(root / "audio" / "test" / AUDIOCAPS_TEST_DECOY, 1000.0, 0.2, 16000)
    return root


# --------------------------------------------------------------------------- Clotho

# split -> [(file_name as in the CSV, what is on disk)]; five captions per clip (clotho_caption).
# On disk: "stereo"/"mono" WAVs at 44.1 kHz, "empty" (0 bytes), "zero_frames", "nfd" (the name stored in
# Unicode NFD, as macOS writes it), "flac" (converted: stem.flac instead of the CSV's .wav).
CLOTHO_SPEC = {
    "development": [
        ("Birds chirping, morning.wav", "stereo"),
        ("rain_on_roof.wav", "mono"),
        ("broken_upload.wav", "empty"),
    ],
    "validation": [("Kitchen ambience 2.wav", "mono"), ("silence_no_frames.wav", "zero_frames")],
    "evaluation": [("Café terrace.wav", "nfd"), ("Traffic jam.wav", "flac")],
}


def clotho_caption(split: str, clip: int, k: int) -> str:
    """Captions with commas and quotes, to exercise the CSV quoting."""
    return f'{split} clip {clip}, caption {k}: a "sound" is heard'


def make_clotho(root: Path) -> Path:
    header = ["file_name", *(f"caption_{k}" for k in range(1, 6))]
    for split, clips in CLOTHO_SPEC.items():
        rows = [(name, *(clotho_caption(split, c, k) for k in range(5))) for c, (name, _) in enumerate(clips)]
        _write_csv(root / f"clotho_captions_{split}.csv", header, rows)
        folder = root / split
        for seed, (name, kind) in enumerate(clips):
            if kind in ("stereo", "mono"):
                write_tone(folder / name, 330.0 + 110 * seed, 1.0 + 0.5 * seed, 44100, 2 if kind == "stereo" else 1)
            elif kind == "empty":
                write_empty(folder / name)
            elif kind == "zero_frames":
                write_zero_frames(folder / name)
            elif kind == "nfd":
                write_tone(folder / unicodedata.normalize("NFD", name), 500.0, 0.5, 44100)
            elif kind == "flac":
                write_tone(folder / (Path(name).stem + ".flac"), 600.0, 0.8, 44100, 2)
    return root


def make_data_root(root: Path) -> Path:
    """Both datasets under ``root`` in the layout of ``--data-root``."""
    make_audiocaps(root / "audiocaps")
    make_clotho(root / "clotho")
    return root
