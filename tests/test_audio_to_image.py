"""examples/audio_to_image.py on tiny diffusers pipelines built from configs (offline, CPU)."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
soundfile = pytest.importorskip("soundfile")
pytest.importorskip("scipy")

from _examples import import_example  # noqa: E402
from _tiny_models import build_whisper  # noqa: E402
from fusemix.data import PairedLatents  # noqa: E402
from fusemix.fixed_target import TargetRegressionLoss, TargetStandardizer, fixed_target_model  # noqa: E402
from fusemix.train import TrainConfig, fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "audio_to_image.py"
MAX_TOKENS = 32


a2i = import_example("audio_to_image")


def _clip_tokenizer(directory: Path) -> transformers.CLIPTokenizer:
    """A character-level CLIP BPE tokenizer: letters, letters ending a word, no merges."""
    directory.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=MAX_TOKENS
    )


def _clip_config(vocab_size: int, hidden: int) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden,
    )


def _vae() -> diffusers.AutoencoderKL:
    return diffusers.AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )


def _unet(cross_attention_dim: int, **conditioning: object) -> diffusers.UNet2DConditionModel:
    """A two-level UNet of widths 4 and 8 on 8x8 latents; ``conditioning`` adds SDXL's extra embeddings."""
    return diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
        attention_head_dim=2,
        **conditioning,
    )


def _scheduler() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd(directory: Path) -> Path:
    """A Stable Diffusion pipeline (CLIP text encoder of width 32, 32 tokens) saved like a downloaded one."""
    torch.manual_seed(0)
    tokenizer = _clip_tokenizer(directory.parent / f"{directory.name}-tokenizer")
    text_encoder = transformers.CLIPTextModel(_clip_config(len(tokenizer), 32))
    unet = _unet(cross_attention_dim=32)
    diffusers.StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(directory)
    return directory


def build_tiny_sdxl(directory: Path) -> Path:
    """An SDXL pipeline: two CLIP text encoders (widths 16 and 32, the second with a projection), text_time UNet."""
    torch.manual_seed(0)
    tokenizer = _clip_tokenizer(directory.parent / f"{directory.name}-tokenizer")
    text_encoder = transformers.CLIPTextModel(_clip_config(len(tokenizer), 16))
    text_encoder_2 = transformers.CLIPTextModelWithProjection(_clip_config(len(tokenizer), 32))
    unet = _unet(
        cross_attention_dim=16 + 32,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 32,
    )
    diffusers.StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("pipelines") / "sd")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


CAPTIONS = ["a dog barks", "a cat meows", "rain falls", "a bell rings", "wind blows", "a baby cries"]


def _train_quickly(layout_dim: int, targets: torch.Tensor, audio: torch.Tensor):
    standardizer = TargetStandardizer.fit(targets)
    model = fixed_target_model(audio.shape[1], layout_dim, depth=1, dropout=0.0)
    data = PairedLatents({"audio": audio.numpy(), "text": standardizer(targets).numpy()})
    config = TrainConfig(epochs=3, batch_size=6, warmup_steps=1, seed=0, device="cpu", eval_every=0)
    return fit(data, config, model=model, progress=False).model.adapters["audio"].eval(), standardizer


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_adapter_output_is_the_conditioning_the_pipeline_takes_and_generates(kind, sd_dir, tmp_path):
    path = sd_dir if kind == "sd" else build_tiny_sdxl(tmp_path / "sdxl")
    pipe = a2i.load_pipeline(str(path), device="cpu", dtype="float32")
    assert a2i.pipeline_kind(pipe) == kind
    reference = a2i.encode_prompts(pipe, CAPTIONS)
    expected_keys = {"prompt_embeds"} | ({"pooled_prompt_embeds"} if kind == "sdxl" else set())
    assert set(reference) == expected_keys
    width = 32 if kind == "sd" else 16 + 32  # SDXL concatenates both encoders' penultimate states
    assert reference["prompt_embeds"].shape == (len(CAPTIONS), MAX_TOKENS, width)
    if kind == "sdxl":
        assert reference["pooled_prompt_embeds"].shape == (len(CAPTIONS), 32)

    # position 0 (the start token) is the same for every prompt (causal attention), so the empty prompt's
    # encoding supplies it and the layout round-trips the pipeline's own conditioning exactly
    layout = a2i.conditioning_layout(pipe, None)
    torch.testing.assert_close(reference["prompt_embeds"][:, 0], reference["prompt_embeds"][:1, 0].expand(6, -1))
    targets = a2i.caption_targets(pipe, layout, CAPTIONS)
    assert targets.shape == (len(CAPTIONS), layout.dim)
    for name, value in layout.unpack(targets).items():
        torch.testing.assert_close(value, reference[name])

    audio = torch.randn(len(CAPTIONS), 10)
    adapter, standardizer = _train_quickly(layout.dim, targets, audio)
    conditioning = a2i.conditioning_from_audio(adapter, layout, standardizer, audio[:2])
    for name, value in conditioning.items():
        assert value.shape == (2, *reference[name].shape[1:]) and value.dtype == reference[name].dtype
    negative = a2i.unconditional(pipe, 2)
    assert {k.removeprefix("negative_") for k in negative} == expected_keys
    for name, value in negative.items():
        assert value.shape == conditioning[name.removeprefix("negative_")].shape
    out = pipe(**conditioning, **negative, num_inference_steps=2, height=16, width=16, output_type="np")
    assert out.images.shape == (2, 16, 16, 3) and np.isfinite(out.images).all()


def test_other_pipelines_are_refused():
    with pytest.raises(ValueError, match="is not supported"):
        a2i.pipeline_kind(object())


def test_help_lists_both_subcommands_and_their_flags():
    text = a2i.parser().format_help()
    assert "train" in text and "generate" in text
    train_help = a2i.parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--pipeline", "--pairs", "--audio-encoder", "--audio-latents", "--num-tokens", "--regression-weight"):
        assert flag in train_help


def _write_pairs(folder: Path, count: int) -> Path:
    """Tones whose pitch follows the caption, at 22.05 kHz (the example resamples to Whisper's 16 kHz)."""
    clips = folder / "clips"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["audio,caption"]
    for i in range(count):
        k = i % 4
        t = np.arange(11025) / 22050
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(clips / f"clip{i}.wav", wave.astype(np.float32), 22050)
        lines.append(f"clips/clip{i}.wav,{CAPTIONS[k]}{' loudly' if i % 8 < 4 else ''}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_example_trains_and_generates_end_to_end_offline(sd_dir, tmp_path):
    pairs = _write_pairs(tmp_path / "data", 12)
    whisper = build_whisper(tmp_path / "whisper")
    run = tmp_path / "run"
    common = ["--pipeline", str(sd_dir), "--run", str(run), "--device", "cpu", "--quiet"]
    trained = _run(
        "train", *common, "--pairs", str(pairs), "--audio-encoder", str(whisper), "--epochs", "2",
        "--batch-size", "8", "--depth", "1", "--dropout", "0", "--warmup-steps", "1", "--val-fraction", "0.25",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    description = json.loads((run / "adapter" / "audio_to_image.json").read_text())
    assert description["layout"]["prompt_embeds"] == {
        "kind": "sequence", "length": MAX_TOKENS, "width": 32, "start": 1, "num_tokens": MAX_TOKENS - 1,
    }  # fmt: skip
    metrics = description["metrics"]
    assert metrics["val_pairs"] == 3 and metrics["train_pairs"] == 9 and "a2t_R@1" in metrics
    assert (run / "text_targets" / "manifest.json").is_file() and (run / "audio_latents" / "manifest.json").is_file()

    out = tmp_path / "images"
    generated = _run(
        "generate", *common, "--audio", str(pairs.parent / "clips" / "clip0.wav"),
        str(pairs.parent / "clips" / "clip1.wav"), "--out-dir", str(out), "--num-inference-steps", "2",
        "--height", "16", "--width", "16",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-3000:]
    from PIL import Image

    for name in ("clip0", "clip1"):
        with Image.open(out / f"{name}.png") as image:
            assert image.size == (16, 16)


def test_example_refuses_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train subcommand first"):
        a2i.load_adapter(tmp_path / "nothing")
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,text\na.wav,x\n")
    with pytest.raises(ValueError, match="columns"):
        a2i.read_pairs(bad, need_audio=True)
    with pytest.raises(FileNotFoundError, match="--pairs"):
        a2i.read_pairs(tmp_path / "missing.csv", need_audio=False)
    with pytest.raises(SystemExit):
        a2i.main(["train", "--pipeline", "p", "--run", "r", "--pairs", "x.csv", "--val-fraction", "1.5"])


def test_validation_regression_streams_the_same_value_as_the_loss():
    adapter = torch.nn.Linear(5, 3)
    audio, text = torch.randn(11, 5), torch.randn(11, 3) + 4.0
    val = PairedLatents({"audio": audio.numpy(), "text": text.numpy()})
    with torch.no_grad():
        expected = float(TargetRegressionLoss()(adapter(audio), text))
    assert a2i.validation_regression(adapter, val, chunk=4) == pytest.approx(expected, rel=1e-5)


class _ClipStats:
    """A stand-in audio encoder at 16 kHz: each clip's length and mean magnitude."""

    sampling_rate = 16000
    identity = {"name": "clip stats"}

    def __call__(self, clips):
        return torch.tensor([[float(len(c)), float(np.abs(c).mean())] for c in clips])


def test_a_rerun_over_the_complete_audio_store_reads_no_clip(tmp_path, monkeypatch):
    paths, _ = a2i.read_pairs(_write_pairs(tmp_path / "data", 5), need_audio=True)
    reads = []
    load = a2i.load_clip
    monkeypatch.setattr(a2i, "load_clip", lambda path, rate: reads.append(path) or load(path, rate))

    def extract(clip_paths):
        return a2i.extract_audio_latents(
            _ClipStats(), clip_paths, tmp_path / "audio", batch_size=2, shard_size=2, progress=False
        )

    first = extract(paths)
    assert reads == paths  # each clip read once, to encode it
    again = extract(paths)
    assert reads == paths and np.array_equal(again.to_numpy(), first.to_numpy())  # reused without a read
    with pytest.raises(ValueError, match=r"items: differ .* records items_id 'audio clips: 5 files, sha256"):
        extract(paths[1:] + paths[:1])  # other clips in the same store are refused, still unread
    assert reads == paths
