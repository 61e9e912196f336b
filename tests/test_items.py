"""Fingerprints of extracted items: deterministic across processes, sensitive to content, blind to batching."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from fusemix._items import ItemsDigest, UnfingerprintableItem

Image = pytest.importorskip("PIL.Image")

MIXED = """
import pathlib
import numpy as np
import torch
from PIL import Image
ITEMS = [
    "a dog", b"bytes", pathlib.Path("images/0001.png"), None, True, 7, -(10**40), 2.5, np.float32(1.5),
    np.arange(6, dtype=np.int16).reshape(2, 3), torch.arange(4, dtype=torch.bfloat16),
    Image.new("RGB", (3, 2), (10, 20, 30)), {"image": Image.new("P", (2, 2)), "caption": ("x", 1)},
]
"""


def fingerprint(items, batch_size: int = 1000) -> str:
    digest = ItemsDigest()
    for first in range(0, len(items), batch_size):
        digest.update(items[first : first + batch_size], first=first)
    return digest.value()


def test_the_same_items_give_the_same_fingerprint_in_another_process():
    namespace: dict = {}
    exec(MIXED, namespace)  # noqa: S102 (the same source runs in the child)
    here = fingerprint(namespace["ITEMS"])
    code = (
        MIXED + "from fusemix._items import ItemsDigest\nd = ItemsDigest()\nd.update(ITEMS, first=0)\nprint(d.value())"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == here and here.startswith("sha256:") and len(here) == 7 + 64


def test_batching_does_not_change_the_fingerprint():
    items = [f"caption {i}" for i in range(10)]
    assert fingerprint(items, 1) == fingerprint(items, 3) == fingerprint(items, 10)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (["ab", "c"], ["a", "bc"]),  # no two items run together
        (["1"], [1]),
        ([1], [True]),
        ([1.0], [1]),
        ([b"x"], ["x"]),
        ([pathlib.Path("x")], ["x"]),
        ([np.zeros(2, np.float32)], [np.zeros(2, np.float64)]),
        ([np.zeros((2, 1))], [np.zeros((1, 2))]),
        ([torch.zeros(2)], [np.zeros(2, np.float32)]),
        ([torch.zeros(2, dtype=torch.float16)], [torch.zeros(2, dtype=torch.bfloat16)]),
        ([{"a": 1}], [{"b": 1}]),
        ([("a", "b")], [("a",), ("b",)]),
        ([None], [[]]),
    ],
)
def test_different_items_give_different_fingerprints(one, other):
    assert fingerprint(one) != fingerprint(other)


def test_an_image_fingerprint_follows_its_pixels_mode_and_palette():
    image = Image.new("RGB", (4, 4), (0, 0, 0))
    changed = image.copy()
    changed.putpixel((3, 3), (0, 0, 1))
    palette = Image.new("P", (2, 2))
    repainted = palette.copy()
    repainted.putpalette([255, 0, 0] * 256)
    assert fingerprint([image]) == fingerprint([image.copy()])
    assert len({fingerprint([x]) for x in (image, changed, image.convert("L"), palette, repainted)}) == 5


def test_an_item_without_a_byte_form_is_named_with_its_number():
    class Record:
        pass

    digest = ItemsDigest()
    with pytest.raises(UnfingerprintableItem, match=r"items: item 12 holds a .*Record, .*pass items_id="):
        digest.update(["fine", {"nested": Record()}], first=11)
    for item, what in ((np.array([object()]), "NumPy array of Python objects"), (torch.zeros(2).to_sparse(), "sparse")):
        with pytest.raises(TypeError, match=what):
            ItemsDigest().update([item], first=0)
