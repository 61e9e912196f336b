"""Model directories saved by an earlier fusemix (tests/fixtures/model_dirs) still load, run and describe alike."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fusemix.checkpoint import describe_model, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "model_dirs"
NAMES = ("contrastive_structure", "fixed_target_siglip", "logit_scale_linear")


@pytest.mark.parametrize("name", NAMES)
def test_old_model_directory_loads_and_gives_the_recorded_outputs(name, tmp_path):
    folder = shutil.copytree(FIXTURES / name, tmp_path / name)
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    model = load_model(folder)
    assert not model.training
    batch = {k: torch.tensor(v) for k, v in expected["inputs"].items()}
    with torch.no_grad():
        for modality, rows in expected["embeddings"].items():
            torch.testing.assert_close(model.embed(modality, batch[modality]), torch.tensor(rows))
        parts = model(batch, return_dict=True)
    assert sorted(parts) == sorted(expected["loss"])
    for key, value in expected["loss"].items():
        assert float(parts[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("name", NAMES)
def test_old_model_directory_describes_itself_as_it_was_saved(name, tmp_path):
    folder = shutil.copytree(FIXTURES / name, tmp_path / name)
    stored = json.loads((folder / "fusemix.json").read_text())
    described = describe_model(load_model(folder))
    for key in ("fusemix_version", "train_config"):
        stored.pop(key)
        described.pop(key, None)
    assert described == stored
