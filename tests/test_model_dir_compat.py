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


def test_a_new_adapter_registers_itself_and_needs_no_checkpoint_code(tmp_path):
    from torch import nn

    from fusemix import FusionModel, LinearAdapter
    from fusemix._registry import register_part
    from fusemix.checkpoint import save_model

    @register_part("adapter", "test-scaled-linear")
    class ScaledLinear(nn.Module):
        def __init__(self, in_dim: int, out_dim: int, scale: float) -> None:
            super().__init__()
            self.in_dim, self.out_dim, self.scale = in_dim, out_dim, scale
            self.proj = nn.Linear(in_dim, out_dim)

        def forward(self, x):
            return self.scale * self.proj(x)

        def to_config(self):
            return {"in_dim": self.in_dim, "out_dim": self.out_dim, "scale": self.scale}

        @classmethod
        def from_config(cls, config):
            return cls(config["in_dim"], config["out_dim"], config["scale"])

    model = FusionModel({"a": ScaledLinear(3, 2, 0.5), "b": LinearAdapter(4, 2)}).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded.adapters["a"]) is ScaledLinear and loaded.adapters["a"].scale == 0.5
    x = torch.randn(5, 3)
    torch.testing.assert_close(loaded.embed("a", x), model.embed("a", x))
    description = describe_model(loaded)
    assert description["adapters"]["a"] == {"type": "test-scaled-linear", "in_dim": 3, "out_dim": 2, "scale": 0.5}
    assert description["dims"] == {"a": 3, "b": 4} and description["shared_dim"] == 2
