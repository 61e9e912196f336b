"""fusemix.preprocess: LAVIS's blip_caption on hand-written cases, the DINOv2 eval transform against torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, IMAGENET_MEAN, IMAGENET_STD, ResizeCenterCrop, blip_caption

PIL_Image = pytest.importorskip("PIL.Image")

REFERENCE = Path(__file__).parent / "fixtures" / "dinov2"

# --------------------------------------------------------------------------- blip_caption

# (raw caption, what LAVIS's blip_caption returns), worked out by hand from its rules.
CAPTION_CASES = [
    ("A dog. Running!", "a dog running"),
    ('He said "hi" (twice)', "he said hi twice"),
    ("Time: 10:30; place ~ home * #1", "time 10 30 place home 1"),
    ("1.5 m tall", "1 5 m tall"),
    ("a,b don't co-op", "a,b don't co-op"),  # commas, apostrophes and hyphens stay
    ("  padded  ", "padded"),
    ("CAFÉ Crème", "café crème"),
    ("a \n b", "a b"),  # a run of whitespace becomes one space
    ("end.\n", "end"),
    ("end\n\n", "end"),
    ("tab\there", "tab\there"),  # a single tab is not a run: it stays
    ("end\t", "end\t"),  # and is not stripped
    ("\nleading", "\nleading"),  # only trailing newlines are stripped
    ("~*#:;", ""),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CAPTION_CASES)
def test_blip_caption_hand_written_cases(raw, expected):
    assert blip_caption(raw) == expected


def test_blip_caption_keeps_at_most_max_words():
    words = [f"w{i}" for i in range(60)]
    assert blip_caption(" ".join(words)) == " ".join(words[:50])
    assert blip_caption(" ".join(words[:50])) == " ".join(words[:50])
    assert blip_caption("Many   spaces. between words", max_words=3) == "many spaces between"
    # Words are counted after cleaning: the dots become separators first.
    assert blip_caption("a.b.c.d", max_words=2) == "a b"


@given(st.text(max_size=80))
def test_blip_caption_is_idempotent_and_clean(raw):
    once = blip_caption(raw)
    assert blip_caption(once) == once
    assert not set('.!"()*#:;~') & set(once)
    assert "  " not in once and not once.startswith(" ") and not once.endswith(" ")


def test_blip_caption_refuses_bad_arguments():
    with pytest.raises(TypeError, match="^text"):
        blip_caption(b"bytes")
    with pytest.raises(ValueError, match="^max_words"):
        blip_caption("x", max_words=0)
    with pytest.raises(TypeError, match="^max_words"):
        blip_caption("x", max_words=2.5)


# --------------------------------------------------------------------------- ResizeCenterCrop


def _reference_cases() -> list[tuple[str, str, int, int, str]]:
    meta = json.loads((REFERENCE / "reference.json").read_text())
    return [(name, *case) for name, cases in meta["cases"].items() for case in cases]


def test_reference_was_made_by_torchvision():
    versions = json.loads((REFERENCE / "reference.json").read_text())["versions"]
    assert versions["torchvision"].startswith("0.29.1") and versions["torch"].startswith("2.14.1")


@pytest.mark.parametrize(("name", "key", "resize", "crop", "interpolation"), _reference_cases())
def test_transform_matches_torchvision_on_real_images(name, key, resize, crop, interpolation):
    """torchvision 0.29.1 (Pillow 13) made the reference: Resize -> CenterCrop -> ToTensor -> Normalize."""
    expected = np.load(REFERENCE / "reference.npz")[f"{Path(name).stem}/{key}"]
    transform = ResizeCenterCrop(crop, resize=resize, interpolation=interpolation)
    with PIL_Image.open(REFERENCE / name) as image:
        from_pil = transform(image)
        pixels = np.asarray(image.convert("RGB"))
    from_array = transform(pixels)
    assert from_pil.dtype == torch.float32 and from_pil.shape == (3, crop, crop)
    assert np.abs(from_pil.numpy() - expected).max() <= 1e-6
    assert torch.equal(from_pil, from_array)


def test_authors_transform_is_the_reference_settings():
    assert DINOV2_EVAL_TRANSFORM.identity == {
        "transform": "resize-center-crop",
        "resize": 224,
        "size": 224,
        "interpolation": "bicubic",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    name, key, resize, crop, interpolation = _reference_cases()[0]
    assert (resize, crop, interpolation) == (224, 224, "bicubic")
    with PIL_Image.open(REFERENCE / name) as image:
        out = DINOV2_EVAL_TRANSFORM(image)
    assert np.abs(out.numpy() - np.load(REFERENCE / "reference.npz")[f"{Path(name).stem}/{key}"]).max() <= 1e-6


def test_transform_geometry_follows_torchvision_rules():
    transform = ResizeCenterCrop(4, resize=6)
    # Short side to 6, long side int(6 * 9 / 4) = 13 (truncated); crop offset round(4.5) = 4 (half to even).
    assert transform.resized_size(9, 4) == (13, 6)
    assert transform.resized_size(4, 9) == (6, 13)
    # An image already at the resize size is only cropped: columns 2..5 of a 9-wide ramp, since the offset
    # round((9 - 4) / 2) = round(2.5) is 2 (rounding half up would start at column 3).
    ramp = np.broadcast_to(np.arange(9, dtype=np.uint8)[None, :, None] * 28, (6, 9, 3)).copy()
    out = ResizeCenterCrop(4, resize=6, mean=(0, 0, 0), std=(1, 1, 1))(ramp)
    assert out.shape == (3, 4, 4)
    assert torch.equal(out[0, 0], torch.tensor([2, 3, 4, 5], dtype=torch.float32).mul(28).div(255))
    grey = ResizeCenterCrop(2, mean=(0, 0, 0), std=(1, 1, 1))(np.full((2, 2), 51, dtype=np.uint8))
    assert torch.allclose(grey, torch.full((3, 2, 2), 0.2))


def test_transform_refuses_bad_input():
    with pytest.raises(ValueError, match="^resize"):
        ResizeCenterCrop(224, resize=200)
    with pytest.raises(ValueError, match="^interpolation"):
        ResizeCenterCrop(224, interpolation="lanczos")
    with pytest.raises(ValueError, match="^std"):
        ResizeCenterCrop(224, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="^mean"):
        ResizeCenterCrop(224, mean=(0.5, 0.5))
    with pytest.raises(TypeError, match="^image"):
        DINOV2_EVAL_TRANSFORM(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="^image"):
        DINOV2_EVAL_TRANSFORM(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="^image"):
        DINOV2_EVAL_TRANSFORM("photo.jpg")
