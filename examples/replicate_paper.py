"""Replicate the experiments of "Data-Efficient Multimodal Fusion on a Single GPU" (FuseMix, CVPR 2024).

With no arguments this runs a real, offline, CPU-sized replication that works
on a fresh machine: frozen EfficientNet-Lite0 and all-MiniLM-L6-v2 encoders,
OpenMoji drawings paired with their names, FuseMix against no augmentation,
closed-form CCA and FuseMix from a CCA warm start with the structure term
(``--grid full`` adds latent noise, FuseMix with independent lambdas and the
single combinations), at three training-set sizes and five seeds; every
trained method trains by the same rule (full batches, the step with the best
validation recall kept, early stopping). A few minutes on 2 CPU cores once
the latents are cached.

``--preset NAME`` runs an experiment of the paper at full scale for people
who have the datasets (``--data-root``) and a GPU, by default through the
authors' pipeline (``--faithful``: their caption and image preprocessing,
float32 latents and training, every caption of an evaluation image), keeping
the epoch with the best image->text mean recall on a validation split.
``--no-faithful`` is the faster pipeline (float16, each encoder's own
processor); ``--authors-selection`` keeps the best epoch on the first test
set, as the authors' code does (optimistic; the report says so).

Examples::

    python examples/replicate_paper.py
    python examples/replicate_paper.py --quick
    python examples/replicate_paper.py --grid full --adapter paper
    python examples/replicate_paper.py --list-presets
    python examples/replicate_paper.py --preset image-text --data-root /data --device cuda
    python examples/replicate_paper.py --preset ablation-augmentation --data-root /data --run none --run fusemix
    python examples/replicate_paper.py --preset image-text --data-root /data --authors-selection
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replication.fidelity import FAITHFUL, FAST  # noqa: E402
from replication.offline import ADAPTERS, GRIDS  # noqa: E402
from replication.pipeline import default_cache_dir, run_preset  # noqa: E402
from replication.preset_data import MissingDataError  # noqa: E402
from replication.presets import ENCODER_SLUGS, PRESETS  # noqa: E402

from fusemix.train import TrainConfig  # noqa: E402


def _preset_list() -> str:
    width = max(len(name) for name in PRESETS)
    return "\n".join(f"  {name:<{width}}  {preset.description}" for name, preset in PRESETS.items())


def _parse_assignment(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{what}: expected NAME=VALUE, got {text!r}")
    return name, value


def _field_kinds(name: str) -> tuple[type, ...]:
    """The types a TrainConfig field accepts, from its annotation (``int | None`` -> ``(int,)``)."""
    hint = get_type_hints(TrainConfig)[name]
    members = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    return tuple(get_origin(member) or member for member in members if member is not type(None))


def _config_value(name: str, text: str) -> object:
    """Parse ``--set name=value`` for a TrainConfig field, by the types its annotation allows."""
    known = {f.name for f in fields(TrainConfig)}
    if name not in known:
        raise argparse.ArgumentTypeError(f"--set: {name!r} is not a TrainConfig field; known: {sorted(known)}")
    if text.lower() in ("none", "null"):
        return None
    kinds = _field_kinds(name)
    if bool in kinds and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                pass
    if tuple in kinds:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            pass
    if str in kinds:
        return text
    expected = " or ".join("true or false" if kind is bool else kind.__name__ for kind in kinds)
    raise argparse.ArgumentTypeError(f"--set {name}: expected {expected}, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replicate_paper.py",
        description=__doc__.split("Examples::")[0],
        epilog="presets:\n" + _preset_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a full-scale experiment of the paper (needs data)")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument("--data-root", type=Path, help="folder holding the datasets a preset reads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where latents are cached (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="where results go (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    parser.add_argument("--run", action="append", dest="runs", help="only this run of the preset (repeatable)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="SLUG=PATH",
        help="replace an encoder of the preset by a hub name or local directory, e.g. bge-large=/models/bge; "
        f"slugs: {', '.join(sorted(ENCODER_SLUGS))}",
    )
    parser.add_argument(
        "--faithful",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="presets: the authors' pipeline (their caption and image preprocessing, float32 encoders, latents and "
        "training, every caption of an evaluation image); --no-faithful: the faster one (each encoder's own "
        "processor, float16, bf16 autocast on CUDA, five captions per evaluation image) (default: faithful)",
    )
    parser.add_argument(
        "--authors-selection",
        action="store_true",
        help="presets: keep the epoch with the best image->text mean recall on the first TEST set, as the authors' "
        "code does, to compare with their numbers (optimistic; the report marks it). Default: the best epoch on "
        "the validation split of the first evaluation set",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a TrainConfig field, e.g. --set epochs=100 --set batch_size=20480",
    )
    parser.add_argument("--seeds", type=int, default=None, help="default run: number of seeds (default 5)")
    parser.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="default",
        help="default run: the methods to run, 'default' (%(default)s) or 'full' (every method; longer)",
    )
    parser.add_argument(
        "--adapter",
        choices=sorted(ADAPTERS),
        default="small",
        help="default run: adapter shape, 'small' (depth 1, hidden 128, 128-d) or 'paper' (depth 4, expansion 4, "
        "512-d: the authors' fusion adapter, far slower on a CPU)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="default run: worker processes (default: one per CPU, at most 8)"
    )
    parser.add_argument("--quick", action="store_true", help="default run: a seconds-long check of the same code path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print(_preset_list())
        return 0
    cache_dir = args.cache_dir or default_cache_dir()
    progress = not args.no_progress
    try:
        overrides = {}
        for text in args.set:
            name, value = _parse_assignment(text, "--set")
            overrides[name] = _config_value(name, value)
        models = dict(_parse_assignment(text, "--model") for text in args.model)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))

    if args.preset is None:
        from replication.offline import OfflineConfig, quick_config, run_offline

        if args.data_root or args.runs or args.model or not args.faithful or args.authors_selection:
            parser.error(
                "--data-root, --run, --model, --no-faithful and --authors-selection apply to --preset runs only"
            )
        out_dir = args.out_dir / "offline"
        if args.quick:
            config = quick_config(cache_dir, out_dir, progress=progress)
        else:
            config = OfflineConfig(
                cache_dir=cache_dir, out_dir=out_dir, methods=GRIDS[args.grid], adapter=args.adapter, progress=progress
            )
        if args.seeds is not None:
            config.seeds = tuple(range(args.seeds))
        if args.workers is not None:
            if args.workers < 1:
                parser.error(f"--workers: expected at least 1, got {args.workers}")
            config.workers = args.workers
        if overrides:
            config.train = replace(config.train, **overrides)
        run_offline(config)
        return 0

    if args.data_root is None:
        parser.error(f"--preset {args.preset} needs --data-root (the folder holding its datasets)")
    unknown = sorted(set(models) - ENCODER_SLUGS)
    if unknown:
        parser.error(f"--model: unknown encoder slug(s) {unknown}; the slugs are {', '.join(sorted(ENCODER_SLUGS))}")
    try:
        run_preset(
            PRESETS[args.preset],
            data_root=args.data_root,
            cache_dir=cache_dir,
            out_dir=args.out_dir,
            fidelity=FAITHFUL if args.faithful else FAST,
            selection="authors" if args.authors_selection else "validation",
            config_overrides=overrides,
            model_overrides=models,
            device=args.device,
            runs=args.runs,
            progress=progress,
        )
    except MissingDataError as error:
        print(f"replicate_paper.py: --preset {args.preset} cannot start, data is missing under {args.data_root}:")
        for line in error.lines:
            print(f"  - {line}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
