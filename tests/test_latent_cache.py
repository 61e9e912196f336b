"""examples/replication/latent_cache.py: images named by their files, so a rerun over a complete cache decodes none."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from _examples import import_example
from fusemix.images import ImageFiles

pytest.importorskip("PIL")

latent_cache = import_example("replication.latent_cache")
preset_data = import_example("replication.preset_data")
presets = import_example("replication.presets")
fidelity = import_example("replication.fidelity")

CHOICE = presets.EncoderChoice(slug="mean-rgb", kind="hf-image", model="mean-rgb")


class CountingImages(ImageFiles):
    """Images that note the index of every item they decode."""

    def __init__(self, paths, decoded):
        super().__init__(paths)
        self.decoded = decoded

    def __getitem__(self, index):
        self.decoded.append(index)
        return super().__getitem__(index)


def mean_rgb(images):
    """A stand-in image encoder: the mean colour of each image."""
    return torch.tensor(np.stack([image.reshape(-1, 3).mean(0) for image in images]), dtype=torch.float32)


def dataset(paths, decoded):
    return preset_data.Dataset("toy-test", lambda encoder: CountingImages(paths, decoded), ["x"] * len(paths),
                               np.arange(len(paths)))  # fmt: skip


@pytest.fixture
def images(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(latent_cache, "build_encoder", lambda *args, **kwargs: mean_rgb)
    paths = []
    for i in range(5):
        paths.append(tmp_path / "data" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 3), (40 * i, 10, 200 - 30 * i)).save(paths[-1])
    return paths


def test_a_rerun_over_a_complete_cache_decodes_no_image(images, tmp_path):
    decoded = []
    cache = latent_cache.LatentCache(tmp_path / "cache", fidelity=fidelity.FAST, progress=False)
    first = cache.latents(dataset(images, decoded), "image", [CHOICE])
    assert sorted(decoded) == [0, 1, 2, 3, 4]  # each image decoded once, to encode it
    again = latent_cache.LatentCache(tmp_path / "cache", fidelity=fidelity.FAST, progress=False)
    reused = again.latents(dataset(images, decoded), "image", [CHOICE])
    assert sorted(decoded) == [0, 1, 2, 3, 4] and np.array_equal(reused.to_numpy(), first.to_numpy())
    with pytest.raises(ValueError, match=r"items: differ .* records items_id 'toy-test: 5 files, sha256 "):
        again.latents(dataset(images[1:] + images[:1], decoded), "image", [CHOICE])  # another order: other items
    assert sorted(decoded) == [0, 1, 2, 3, 4]


def test_module_docstring_examples():
    result = doctest.testmod(latent_cache, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 3
