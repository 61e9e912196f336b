"""fusemix.images: image files to RGB pixels, lazily, with an optional transform (the image side of fusemix.audio)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

import fixtures_image_text as fx  # noqa: E402
import fusemix.images  # noqa: E402
from fusemix.images import ImageFileError, ImageFiles, load_image  # noqa: E402
from fusemix.preprocess import DINOV2_EVAL_TRANSFORM  # noqa: E402


def test_load_image_converts_modes_to_rgb_hwc_uint8(tmp_path):
    grey = fx.write_image(tmp_path / "grey.jpg", 128, mode="L", size=(5, 3))
    rgba = fx.write_image(tmp_path / "rgba.png", (10, 20, 30, 0), mode="RGBA", size=(4, 2))
    palette = fx.write_image(tmp_path / "palette.png", 3, mode="P", size=(2, 2))
    for path, shape in [(grey, (3, 5, 3)), (rgba, (2, 4, 3)), (palette, (2, 2, 3))]:
        pixels = load_image(path)
        assert pixels.shape == shape and pixels.dtype == np.uint8 and pixels.flags.writeable
    assert load_image(rgba)[0, 0].tolist() == [10, 20, 30]
    assert np.ptp(load_image(grey), axis=2).max() == 0  # grey replicated to 3 channels


def test_load_image_errors_name_the_file(tmp_path):
    for path in fx.write_corrupt_images(tmp_path).values():
        with pytest.raises(ImageFileError, match=f"^{path}: cannot decode image"):
            load_image(path)
    with pytest.raises(FileNotFoundError, match="nothing.jpg: image file not found"):
        load_image(tmp_path / "nothing.jpg")


def test_image_files_is_lazy_and_records_unreadable(tmp_path):
    good = fx.write_image(tmp_path / "good.jpg", (200, 10, 10))
    bad = fx.write_corrupt_images(tmp_path)["truncated"]
    strict = ImageFiles([good, bad, tmp_path / "not-yet-there.jpg"])  # nothing opened yet
    assert len(strict) == 3
    assert strict[0].shape == (6, 8, 3) and strict[-3].shape == (6, 8, 3)
    with pytest.raises(ImageFileError, match="truncated.jpg"):
        strict[1]
    with pytest.raises(IndexError):
        strict[3]
    with pytest.raises(TypeError, match="^index"):
        strict["0"]
    lenient = ImageFiles([good, bad, tmp_path / "gone.jpg"], on_error="skip")
    with pytest.warns(UserWarning, match="is None"):
        items = list(lenient)
    assert [x is None for x in items] == [False, True, True]
    assert sorted(lenient.failed) == [1, 2]
    assert "truncated.jpg" in lenient.failed[1] and "gone.jpg" in lenient.failed[2]
    tail = lenient[1:]
    assert isinstance(tail, ImageFiles) and tail.paths == lenient.paths[1:] and tail.on_error == "skip"


def test_image_files_apply_the_transform_and_describe_it(tmp_path):
    path = fx.write_image(tmp_path / "wide.png", (90, 120, 200), size=(300, 250))
    plain, transformed = ImageFiles([path]), ImageFiles([path], transform=DINOV2_EVAL_TRANSFORM)
    assert plain.settings == {"mode": "RGB", "transform": None}
    assert transformed.settings == {"mode": "RGB", "transform": DINOV2_EVAL_TRANSFORM.identity}
    item = transformed[0]
    assert isinstance(item, torch.Tensor) and item.shape == (3, 224, 224)
    assert torch.equal(item, DINOV2_EVAL_TRANSFORM(plain[0]))
    assert torch.equal(transformed[0:1][0], item)  # slices keep the transform
    described = ImageFiles([path], transform=lambda pixels: pixels[:1]).settings["transform"]
    assert described == {"callable": "builtins.function"}


def test_image_files_refuse_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="^paths"):
        ImageFiles(str(tmp_path / "one.jpg"))
    with pytest.raises(ValueError, match="^on_error"):
        ImageFiles([], on_error="ignore")
    with pytest.raises(TypeError, match="^transform"):
        ImageFiles([], transform="bicubic")


def test_module_docstring_examples():
    result = doctest.testmod(fusemix.images, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 2
