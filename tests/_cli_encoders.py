"""Encoder factories that tests/test_cli.py hands to ``fusemix extract --encoder python --callable``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusemix.encoders import CallableEncoder


def colour_statistics(images: list) -> np.ndarray:
    """Mean and standard deviation of each RGB channel of PIL images. Shape: (len(images), 6)."""
    arrays = [np.asarray(image, dtype=np.float32) / 255.0 for image in images]
    return np.stack([np.concatenate([a.mean(axis=(0, 1)), a.std(axis=(0, 1))]) for a in arrays])


def build_image_encoder():
    """A plain function: the command line wraps it in a CallableEncoder."""
    return colour_statistics


def letter_counts(texts: list[str]) -> torch.Tensor:
    """How often each of the letters a..h occurs in each text. Shape: (len(texts), 8)."""
    return torch.tensor([[text.count(letter) for letter in "abcdefgh"] for text in texts], dtype=torch.float32)


def build_text_encoder(version: str = "v0") -> CallableEncoder:
    """An encoder with its own identity, used as it is."""
    return CallableEncoder(letter_counts, identity={"name": "letter-counts", "version": version}, dim=8)


def build_broken_encoder():
    """An encoder with a bug: the command line must not hide its traceback."""

    def broken(items: list) -> torch.Tensor:
        raise RuntimeError("bug inside the user's encoder")

    return broken


class Loudness:
    """Duration (s) and mean loudness of 16 kHz clips of any lengths; ``sampling_rate`` makes fusemix check files."""

    identity = {"name": "loudness"}
    sampling_rate = 16000

    def __call__(self, clips: list[np.ndarray]) -> torch.Tensor:
        return torch.tensor([[clip.size / 16000, float(np.abs(clip).mean())] for clip in clips], dtype=torch.float32)


def build_audio_encoder() -> Loudness:
    """An encoder with its own identity; CallableEncoder would try to stack clips of different lengths."""
    return Loudness()


def clip_durations(clips: list[np.ndarray]) -> np.ndarray:
    """Number of samples of each clip. Shape: (len(clips), 1)."""
    return np.array([[clip.size] for clip in clips], dtype=np.float32)


def build_plain_audio_encoder():
    """A plain function over waveforms: the command line passes it the list of clips as it is."""
    return clip_durations


def build_path_encoder() -> CallableEncoder:
    """Size in bytes and absoluteness of the files it is given the paths of."""

    def describe(paths: list[str]) -> torch.Tensor:
        return torch.tensor([[Path(p).stat().st_size, Path(p).is_absolute()] for p in paths], dtype=torch.float32)

    return CallableEncoder(describe, identity="file-size")
