"""Run a full-scale preset: read the datasets, extract latents once, train, evaluate, report.

Everything heavy is the library's: :func:`fusemix.extract.extract_latents`
(resumable, cached), :class:`fusemix.data.PairedLatents`,
:func:`fusemix.train.fit` (checkpoints, exact resume) and
:func:`fusemix.train.evaluate_retrieval`. This module only wires the
datasets and encoders of a :class:`~replication.presets.Preset` to them.

Folders::

    <cache-dir>/<dataset>/<encoder slug>/{items,captions}/    latent stores
    <out-dir>/<preset>/<run>/                                  fit() output (checkpoint, logs, model)
    <out-dir>/<preset>/results.{json,md}                       the report
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusemix.data import PairedLatents
from fusemix.extract import extract_latents
from fusemix.store import LatentStore
from fusemix.train import TrainConfig, evaluate_retrieval, fit

from . import report
from .presets import EncoderChoice, Preset, Run


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
            (images, or audio clips at that encoder's sampling rate), one per unique item.
        captions: Every caption.
        caption_to_item: Index into the items of each caption's image / clip.
    """

    name: str
    items_for: Callable[[Any], Sequence[Any]]
    captions: list[str]
    caption_to_item: np.ndarray


def check_data(preset: Preset, data_root: Path) -> None:
    """Raise :class:`MissingDataError` listing everything ``preset`` needs but ``data_root`` lacks."""
    if preset.task == "image-text":
        from .image_text_data import check_image_text_data

        lines = check_image_text_data(data_root, sorted(set(preset.train_sets) | set(preset.eval_sets)))
    else:
        from .audio_text_data import check_audio_text_data

        needed = [f"{n}/{AUDIO_SPLITS[n][0]}" for n in preset.train_sets]
        needed += [f"{n}/{AUDIO_SPLITS[n][1]}" for n in preset.eval_sets if f"{n}/{AUDIO_SPLITS[n][1]}" not in needed]
        lines = check_audio_text_data(data_root, needed)
    if lines:
        raise MissingDataError(lines)


def load_datasets(preset: Preset, data_root: Path) -> tuple[Dataset, list[Dataset]]:
    """Read the training union and the evaluation sets of ``preset`` from ``data_root``."""
    if preset.task == "image-text":
        return _image_text_datasets(preset, data_root)
    return _audio_text_datasets(preset, data_root)


def _image_text_datasets(preset: Preset, root: Path) -> tuple[Dataset, list[Dataset]]:
    from . import image_text_data as itd

    readers: dict[str, Callable[[str], itd.CaptionDataset]] = {
        "coco": lambda split: itd.read_coco(root / "coco", split),
        "flickr30k": lambda split: itd.read_flickr30k(root / "flickr30k", split),
        "cc3m": lambda split: itd.read_cc3m(root / "cc3m"),
        "sbu": lambda split: itd.read_sbu(root / "sbu"),
        "vg": lambda split: itd.read_visual_genome(root / "vg"),
    }
    union = itd.concat([readers[name]("train") for name in preset.train_sets], name="+".join(preset.train_sets))

    def wrap(ds: itd.CaptionDataset, name: str) -> Dataset:
        files = ds.image_files()
        return Dataset(name, lambda encoder: files, list(ds.captions), np.asarray(ds.caption_to_image, dtype=np.int64))

    train = wrap(union, f"train-{union.name}")
    evals = [wrap(readers[name]("test"), f"{name}-test") for name in preset.eval_sets]
    return train, evals


AUDIO_SPLITS: dict[str, tuple[str, str]] = {"audiocaps": ("train", "test"), "clotho": ("development", "evaluation")}
"""Dataset to its (training, test) split names."""

WHISPER_MAX_SECONDS = 30.0
"""Whisper's encoder takes at most 30 s; longer clips (some Clotho clips) are cropped to their first 30 s."""


def _audio_text_datasets(preset: Preset, root: Path) -> tuple[Dataset, list[Dataset]]:
    from . import audio_text_data as atd

    readers = {"audiocaps": atd.read_audiocaps, "clotho": atd.read_clotho}

    def read(name: str, split: str) -> Any:
        # Header checks only; the rate matters for min_seconds, which is not used here.
        dataset, failed = atd.drop_unusable_audio(readers[name](root / name, split), sampling_rate=16000)
        if failed:
            print(f"{name}/{split}: dropped {len(failed)} unusable clip(s) with their captions", flush=True)
        return dataset

    def wrap(ds: Any, name: str) -> Dataset:
        def items_for(encoder: Any) -> Sequence[Any]:
            # Each audio encoder gets the clips resampled to its own rate (Whisper 16 kHz, CLAP 48 kHz).
            return ds.audio_files(sampling_rate=encoder.sampling_rate, max_seconds=WHISPER_MAX_SECONDS)

        return Dataset(name, items_for, list(ds.captions), np.asarray(ds.caption_to_audio, dtype=np.int64))

    union = atd.concat([read(n, AUDIO_SPLITS[n][0]) for n in preset.train_sets], name="+".join(preset.train_sets))
    train = wrap(union, f"train-{union.name}")
    evals = [wrap(read(n, AUDIO_SPLITS[n][1]), f"{n}-test") for n in preset.eval_sets]
    return train, evals


def build_encoder(choice: EncoderChoice, *, model: str | None = None, device: str | None = None) -> Any:
    """The :mod:`fusemix.encoders` adapter for ``choice`` (``model`` overrides its hub name)."""
    from fusemix import encoders

    name = model or choice.model
    options = dict(choice.options)
    if device is not None:
        options["device"] = device
        if device.startswith("cuda"):
            options.setdefault("dtype", "float16")
    factory = {
        "hf-image": encoders.HFImageEncoder,
        "hf-text": encoders.HFTextEncoder,
        "hf-audio": encoders.HFAudioEncoder,
    }
    return factory[choice.kind](name, **options)


class LatentCache:
    """Extracts each (dataset, encoder) pair once into ``cache_dir`` and opens the stores."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        model_overrides: Mapping[str, str] | None = None,
        device: str | None = None,
        batch_size: int = 256,
        progress: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.model_overrides = dict(model_overrides or {})
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._encoders: dict[str, Any] = {}

    def _encoder(self, choice: EncoderChoice) -> Any:
        if choice.slug not in self._encoders:
            model = self.model_overrides.get(choice.slug)
            self._encoders[choice.slug] = build_encoder(choice, model=model, device=self.device)
        return self._encoders[choice.slug]

    def _folder(self, dataset: Dataset, choice: EncoderChoice) -> Path:
        slug = choice.slug if choice.slug not in self.model_overrides else f"{choice.slug}-custom"
        return self.cache_dir / dataset.name / slug

    def latents(self, dataset: Dataset, modality: str, choices: Sequence[EncoderChoice]) -> np.ndarray | LatentStore:
        """Latents of ``dataset``'s items (``modality != "text"``) or captions, one encoder or several concatenated."""
        stores = []
        for choice in choices:
            texts = modality == "text"
            out = self._folder(dataset, choice) / ("captions" if texts else "items")
            encoder = self._encoder(choice)
            items = dataset.captions if texts else dataset.items_for(encoder)
            stores.append(
                extract_latents(
                    encoder,
                    items,
                    out,
                    modality=modality,
                    batch_size=self.batch_size,
                    progress=self.progress,
                    metadata={"dataset": dataset.name},
                )  # fmt: skip
            )
        if len(stores) == 1:
            return stores[0]
        return np.concatenate([s.to_numpy(np.float32) for s in stores], axis=1)

    def paired(self, dataset: Dataset, encoders: Mapping[str, Sequence[EncoderChoice]], query: str) -> PairedLatents:
        """The dataset as :class:`PairedLatents`: one pair per caption, the item of each caption on the query side."""
        latents = {m: self.latents(dataset, m, encoders[m]) for m in (query, "text")}
        return PairedLatents(latents, rows={query: dataset.caption_to_item})


def fraction_subset(paired: PairedLatents, fraction: float, seed: int = 0) -> PairedLatents:
    """A fixed seeded subset of ``fraction`` of the pairs (all of them for 1.0)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction: expected a value in (0, 1], got {fraction}")
    if fraction == 1:
        return paired
    count = min(len(paired), max(4, round(fraction * len(paired))))
    chosen = np.sort(np.random.default_rng(seed).choice(len(paired), size=count, replace=False))
    return paired.subset(chosen)


def run_preset(
    preset: Preset,
    *,
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    config_overrides: Mapping[str, Any] | None = None,
    model_overrides: Mapping[str, str] | None = None,
    device: str | None = None,
    runs: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every run of ``preset`` (or those named in ``runs``) and write the report.

    Args:
        preset: The experiment.
        data_root: Where the datasets live (see :mod:`replication.image_text_data`).
        cache_dir: Where latents are extracted to (reused across runs and presets).
        out_dir: Where training output and the report go.
        config_overrides: :class:`~fusemix.train.TrainConfig` fields overriding the preset's.
        model_overrides: Encoder slug to a hub name or local directory replacing the preset's model.
        device: Device for encoders and training (``None``: CUDA when available).
        runs: Names of the runs to make; all when ``None``.
        progress: Show progress bars.

    Returns:
        The report (also written to ``<out_dir>/<preset>/results.json``).
    """
    check_data(preset, data_root)
    chosen = _chosen_runs(preset, runs)
    query, key = preset.modalities
    cache = LatentCache(cache_dir, model_overrides=model_overrides, device=device, progress=progress)
    train_data, eval_data = load_datasets(preset, data_root)
    base = TrainConfig(**{**dict(preset.config), **dict(config_overrides or {})})
    if device is not None:
        base = replace(base, device=device)
    records: list[dict[str, Any]] = []
    preset_dir = Path(out_dir) / preset.name
    for run in chosen:
        encoders = run.encoders or preset.encoders
        config = replace(base, **dict(run.config))
        train = fraction_subset(cache.paired(train_data, encoders, query), run.train_fraction)
        evals = {ds.name: cache.paired(ds, encoders, query) for ds in eval_data}
        val_name = next(iter(evals))
        if config.batch_size > len(train):
            clipped = len(train) - len(train) % 2
            if clipped < 4:
                raise ValueError(
                    f"run '{run.name}': only {len(train)} training pairs; a FuseMix batch needs at least 4"
                )
            print(f"[{preset.name}] run '{run.name}': batch_size {config.batch_size} > pairs, using {clipped}")
            config = replace(config, batch_size=clipped)
        print(f"[{preset.name}] run '{run.name}': {len(train)} training pairs, dims {train.dims}", flush=True)
        start = time.perf_counter()
        result = fit(train, config, val=evals[val_name], val_pair=(query, key), out_dir=preset_dir / _slug(run.name),
                     progress=progress)  # fmt: skip
        seconds = time.perf_counter() - start
        for name, data in evals.items():
            metrics = evaluate_retrieval(result.model, data, (query, key), chunk_size=config.eval_chunk_size)
            records.append({"method": run.name, "eval_set": name, "train_size": len(train), "seed": config.seed,
                            "metrics": metrics, "seconds": round(seconds, 1)})  # fmt: skip
    return write_preset_report(preset, records, preset_dir, [ds.name for ds in eval_data])


def _chosen_runs(preset: Preset, names: Sequence[str] | None) -> list[Run]:
    if names is None:
        return list(preset.runs)
    known = {run.name: run for run in preset.runs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--run: {unknown} not in preset {preset.name!r}; its runs: {list(known)}")
    return [known[n] for n in names]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")


def write_preset_report(
    preset: Preset, records: list[dict[str, Any]], out: Path, eval_sets: Sequence[str]
) -> dict[str, Any]:
    """Print and write the preset's tables (ours beside the published references)."""
    labels = {run.name: run.name for run in preset.runs}
    query = preset.modalities[0][0]
    keys = (
        f"{query}2t_R@1",
        f"{query}2t_R@5",
        f"{query}2t_R@10",
        f"t2{query}_R@1",
        f"t2{query}_R@5",
        f"t2{query}_R@10",
    )
    sections = [f"## {preset.name}: {preset.description}", ""]
    for name in eval_sets:
        sections += [
            f"### {name}",
            "",
            report.recall_table(records, labels=labels, eval_set=name, metric_keys=keys),
            "",
        ]
    refs = [r for r in preset.references if any(name.startswith(r.eval_set) for name in eval_sets)]
    if refs:
        sections += ["### Published references", "", report.reference_table(refs, keys), ""]
    text = "\n".join(sections)
    print("\n" + text, flush=True)
    result = {"preset": preset.name, "description": preset.description, "runs": records, "tables": text,
              "references": [r.__dict__ | {"metrics": dict(r.metrics)} for r in refs]}  # fmt: skip
    report.write_json(out / "results.json", result)
    (out / "results.md").write_text(text)
    print(f"Wrote {out / 'results.json'} and {out / 'results.md'}", flush=True)
    return result


def default_cache_dir() -> Path:
    """``$FUSEMIX_CACHE``, else ``$XDG_CACHE_HOME/fusemix``, else ``~/.cache/fusemix``."""
    if os.environ.get("FUSEMIX_CACHE"):
        return Path(os.environ["FUSEMIX_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fusemix"
