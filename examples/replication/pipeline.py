"""Run a full-scale preset: read the datasets, extract latents once, train, select, evaluate, report.

Everything heavy is the library's: :func:`fusemix.extract.extract_latents`
(resumable, cached), :class:`fusemix.data.PairedLatents`,
:func:`fusemix.train.fit` (checkpoints, exact resume, model selection) and
:func:`fusemix.train.evaluate_retrieval`. This module wires the datasets
(:mod:`replication.preset_data`), the encoders and latents
(:mod:`replication.latent_cache`) of a :class:`~replication.presets.Preset`
to them, under a pipeline (:mod:`replication.fidelity`) and a model
selection (:mod:`replication.selection`).

Folders::

    <cache-dir>/<dataset>/<encoder slug>/<variant>/{items,captions}/    latent stores
    <out-dir>/<preset>/<run>/                                          fit() output (checkpoint, logs, model)
    <out-dir>/<preset>/results.{json,md}                               the report
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fusemix.train import TrainConfig, evaluate_retrieval, fit

from . import report
from .fidelity import FAITHFUL, Fidelity
from .latent_cache import LatentCache, fraction_subset
from .preset_data import check_data, load_datasets
from .presets import ENCODER_SLUGS, Preset, Run
from .selection import Selection, SelectionMode


def run_preset(
    preset: Preset,
    *,
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    fidelity: Fidelity = FAITHFUL,
    selection: SelectionMode = "validation",
    config_overrides: Mapping[str, Any] | None = None,
    model_overrides: Mapping[str, str] | None = None,
    device: str | None = None,
    runs: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every run of ``preset`` (or those named in ``runs``) and write the report.

    Each run trains with the preset's recipe under ``fidelity`` (its ``amp``)
    and keeps the epoch with the best query-to-text mean recall (the authors'
    metric) on the validation split of the first evaluation set, or on the
    first test set with ``selection="authors"``; then every test set is
    scored with the kept model.

    Args:
        preset: The experiment.
        data_root: Where the datasets live (see :mod:`replication.image_text_data`).
        cache_dir: Where latents are extracted to (reused across runs and presets).
        out_dir: Where training output and the report go.
        fidelity: The pipeline: :data:`~replication.fidelity.FAITHFUL` (the
            authors') or :data:`~replication.fidelity.FAST`.
        selection: ``"validation"`` or ``"authors"`` (see :mod:`replication.selection`).
        config_overrides: :class:`~fusemix.train.TrainConfig` fields overriding
            the preset's, the selection's and the pipeline's.
        model_overrides: Encoder slug to a hub name or local directory replacing the preset's model.
        device: Device for encoders and training (``None``: CUDA when available).
        runs: Names of the runs to make; all when ``None``.
        progress: Show progress bars.

    Returns:
        The report (also written to ``<out_dir>/<preset>/results.json``).
    """
    _check_model_overrides(model_overrides or {})
    chosen = _chosen_runs(preset, runs)
    validation = selection == "validation"
    check_data(preset, data_root, validation=validation)
    query, key = preset.modalities
    cache = LatentCache(cache_dir, fidelity=fidelity, caption_processor=preset.caption_processor,
                        model_overrides=model_overrides, device=device, progress=progress)  # fmt: skip
    data = load_datasets(preset, data_root, eval_captions=fidelity.eval_captions, validation=validation)
    monitor = data.val if data.val is not None else data.tests[0]
    defaults = Selection(selection, f"{query[0]}2t_mean", monitor.name).config_overrides()
    base = TrainConfig(**{**dict(preset.config), **defaults, "amp": fidelity.amp, **dict(config_overrides or {})})
    # What the report says follows the config trained with (--set selection=... / selection_metric=... included).
    chooser = Selection(selection, base.selection_metric, monitor.name, best=base.selection == "best")
    if device is not None:
        base = replace(base, device=device)
    records: list[dict[str, Any]] = []
    preset_dir = Path(out_dir) / preset.name
    for run in chosen:
        encoders = run.encoders or preset.encoders
        config = replace(base, **dict(run.config))
        train = fraction_subset(cache.paired(data.train, encoders, query), run.train_fraction)
        tests = {ds.name: cache.paired(ds, encoders, query) for ds in data.tests}
        val = cache.paired(monitor, encoders, query)
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
        result = fit(train, config, val=val, val_pair=(query, key), out_dir=preset_dir / _slug(run.name),
                     progress=progress)  # fmt: skip
        seconds = time.perf_counter() - start
        chosen_epoch = result.selected
        selected = None if chosen_epoch is None else {
            "epoch": chosen_epoch.epoch, "metric": chosen_epoch.metric, "value": chosen_epoch.value}  # fmt: skip
        for name, paired in tests.items():
            metrics = evaluate_retrieval(result.model, paired, (query, key), chunk_size=config.eval_chunk_size)
            records.append({"method": run.name, "eval_set": name, "train_size": len(train), "seed": config.seed,
                            "metrics": metrics, "seconds": round(seconds, 1), "selected": selected})  # fmt: skip
    return write_preset_report(preset, records, preset_dir, [ds.name for ds in data.tests], fidelity, chooser)


def _check_model_overrides(overrides: Mapping[str, str]) -> None:
    unknown = sorted(set(overrides) - ENCODER_SLUGS)
    if unknown:
        raise ValueError(f"model_overrides: unknown encoder slug(s) {unknown}; the slugs are {sorted(ENCODER_SLUGS)}")


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
    preset: Preset,
    records: list[dict[str, Any]],
    out: Path,
    eval_sets: Sequence[str],
    fidelity: Fidelity,
    selection: Selection,
) -> dict[str, Any]:
    """Print and write the preset's tables (ours beside the published references).

    The report says which pipeline made the latents and how each run's epoch
    was chosen; rows whose epoch was chosen on a test set carry a warning in
    their label.
    """
    labels = {run.name: selection.label(run.name) for run in preset.runs}
    query = preset.modalities[0][0]
    keys = (
        f"{query}2t_R@1",
        f"{query}2t_R@5",
        f"{query}2t_R@10",
        f"t2{query}_R@1",
        f"t2{query}_R@5",
        f"t2{query}_R@10",
    )
    sections = [f"## {preset.name}: {preset.description}", "", _pipeline_note(fidelity), "", selection.note(), ""]
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
    result = {"preset": preset.name, "description": preset.description, "pipeline": asdict(fidelity),
              "selection": selection.describe(), "runs": records, "tables": text,
              "references": [r.__dict__ | {"metrics": dict(r.metrics)} for r in refs]}  # fmt: skip
    report.write_json(out / "results.json", result)
    (out / "results.md").write_text(text)
    print(f"Wrote {out / 'results.json'} and {out / 'results.md'}", flush=True)
    return result


def _pipeline_note(fidelity: Fidelity) -> str:
    if fidelity.authors_preprocessing:
        return (
            f"Pipeline: {fidelity.name} (the authors' preprocessing where published, {fidelity.latent_dtype} latents, "
            f"training amp={fidelity.amp!r})."
        )
    return (
        f"Pipeline: {fidelity.name} (each encoder's own processor, {fidelity.latent_dtype} latents, training "
        f"amp={fidelity.amp!r}); see the docs page 'Differences from the authors' code'."
    )


def default_cache_dir() -> Path:
    """``$FUSEMIX_CACHE``, else ``$XDG_CACHE_HOME/fusemix``, else ``~/.cache/fusemix``."""
    if os.environ.get("FUSEMIX_CACHE"):
        return Path(os.environ["FUSEMIX_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fusemix"
