"""The datasets of a preset, read from ``--data-root``: the training union, a validation split and the test sets.

Each split becomes a :class:`Dataset`: its unique items (images or clips,
loaded lazily for a given encoder), its captions and the item of each
caption. The validation split is the ``val`` split of the first evaluation
set (Flickr30K ``val`` for the image-text presets, AudioCaps ``val`` for
audio-text), read only when the epochs are selected on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from .presets import Preset


class MissingDataError(FileNotFoundError):
    """Datasets a preset needs are not under ``--data-root``; ``lines`` says what and where."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("missing data:\n" + "\n".join(f"  - {line}" for line in self.lines))


@dataclass(frozen=True)
class Dataset:
    """Items of one dataset split, ready for encoding.

    Attributes:
        name: Cache folder name, e.g. ``"coco-test"``.
        items_for: Given an encoder, the lazily loaded query-modality items
            (decoded RGB images, which the image encoder prepares itself; or
            audio clips at the encoder's sampling rate), one per unique item.
        captions: Every caption, as read (raw).
        caption_to_item: Index into the items of each caption's image / clip.
    """

    name: str
    items_for: Callable[[Any], Sequence[Any]]
    captions: list[str]
    caption_to_item: np.ndarray


class Splits(NamedTuple):
    """Split names of a dataset: training, validation, test."""

    train: str
    val: str
    test: str


SPLITS: dict[str, Splits] = {
    "coco": Splits("train", "val", "test"),
    "flickr30k": Splits("train", "val", "test"),
    "audiocaps": Splits("train", "val", "test"),
    "clotho": Splits("development", "validation", "evaluation"),
}
"""Dataset to its split names (COCO and Flickr30K: Karpathy splits; Clotho v2.1)."""

WHISPER_MAX_SECONDS = 30.0
"""Whisper's encoder takes at most 30 s; longer clips (some Clotho clips) are cropped to their first 30 s."""


class PresetData(NamedTuple):
    """What a preset trains and evaluates on.

    Attributes:
        train: The training union.
        tests: The test splits, in the preset's order.
        val: The validation split of the first evaluation set, or ``None`` when not read.
    """

    train: Dataset
    tests: list[Dataset]
    val: Dataset | None


def check_data(preset: Preset, data_root: Path, *, validation: bool) -> None:
    """Raise :class:`MissingDataError` listing everything ``preset`` needs but ``data_root`` lacks.

    Args:
        preset: The experiment.
        data_root: The ``--data-root`` folder.
        validation: Also check the validation split of the first evaluation set.
    """
    if preset.task == "image-text":
        from .image_text_data import check_image_text_data

        # The Karpathy files hold every split, val included, and its images sit beside the test images.
        lines = check_image_text_data(data_root, sorted(set(preset.train_sets) | set(preset.eval_sets)))
    else:
        from .audio_text_data import check_audio_text_data

        needed = [f"{n}/{SPLITS[n].train}" for n in preset.train_sets]
        needed += [f"{n}/{SPLITS[n].test}" for n in preset.eval_sets]
        if validation:
            needed.append(f"{preset.eval_sets[0]}/{SPLITS[preset.eval_sets[0]].val}")
        lines = check_audio_text_data(data_root, list(dict.fromkeys(needed)))
    if lines:
        raise MissingDataError(lines)


def load_datasets(
    preset: Preset, data_root: Path, *, eval_captions: Literal["protocol"] | None, validation: bool
) -> PresetData:
    """Read the training union, the test sets and (with ``validation``) the validation split of ``preset``.

    Args:
        preset: The experiment.
        data_root: The ``--data-root`` folder.
        eval_captions: ``max_captions_per_image`` of the Karpathy ``val`` and
            ``test`` splits (``None``: every caption, ``"protocol"``: the first
            five); AudioCaps and Clotho have five captions per clip either way.
        validation: Read the ``val`` split of the first evaluation set.
    """
    if preset.task == "image-text":
        read = _image_text_reader(data_root, eval_captions)
    else:
        read = _audio_text_reader(data_root)
    union = read.union(preset.train_sets)
    tests = [read.split(name, SPLITS[name].test, f"{name}-test") for name in preset.eval_sets]
    first = preset.eval_sets[0]
    val = read.split(first, SPLITS[first].val, f"{first}-val") if validation else None
    return PresetData(union, tests, val)


class _Reader(NamedTuple):
    union: Callable[[Sequence[str]], Dataset]
    split: Callable[[str, str, str], Dataset]


def _image_text_reader(root: Path, eval_captions: Literal["protocol"] | None) -> _Reader:
    from . import image_text_data as itd

    def read(name: str, split: str) -> itd.CaptionDataset:
        if name == "coco":
            return itd.read_coco(root / "coco", split, max_captions_per_image=eval_captions)
        if name == "flickr30k":
            return itd.read_flickr30k(root / "flickr30k", split, max_captions_per_image=eval_captions)
        readers = {"cc3m": itd.read_cc3m, "sbu": itd.read_sbu, "vg": itd.read_visual_genome}
        return readers[name](root / name)

    def wrap(ds: itd.CaptionDataset, name: str) -> Dataset:
        def items_for(encoder: Any) -> Sequence[Any]:
            return ds.image_files()  # decoded pixels: the image encoder prepares them (processor or transform)

        return Dataset(name, items_for, list(ds.captions), ds.caption_to_image)

    def union(names: Sequence[str]) -> Dataset:
        joined = itd.concat([read(name, "train") for name in names])  # the web datasets have no splits
        return wrap(joined, f"train-{'+'.join(names)}")

    return _Reader(union, lambda name, split, label: wrap(read(name, split), label))


def _audio_text_reader(root: Path) -> _Reader:
    from . import audio_text_data as atd

    def read(name: str, split: str) -> atd.AudioCaptionDataset:
        reader = {"audiocaps": atd.read_audiocaps, "clotho": atd.read_clotho}[name]
        # Header checks only; the rate matters for min_seconds, which is not used here.
        dataset, failed = atd.drop_unusable_audio(reader(root / name, split), sampling_rate=16000)
        if failed:
            print(f"{name}/{split}: dropped {len(failed)} unusable clip(s) with their captions", flush=True)
        return dataset

    def wrap(ds: atd.AudioCaptionDataset, name: str) -> Dataset:
        def items_for(encoder: Any) -> Sequence[Any]:
            # Each audio encoder gets the clips resampled to its own rate (Whisper 16 kHz, CLAP 48 kHz).
            return ds.audio_files(sampling_rate=encoder.sampling_rate, max_seconds=WHISPER_MAX_SECONDS)

        return Dataset(name, items_for, list(ds.captions), ds.caption_to_audio)

    def union(names: Sequence[str]) -> Dataset:
        joined = atd.concat([read(name, SPLITS[name].train) for name in names])
        return wrap(joined, f"train-{'+'.join(names)}")

    return _Reader(union, lambda name, split, label: wrap(read(name, split), label))
