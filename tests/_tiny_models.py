"""Tiny randomly initialised Hugging Face checkpoints, saved like a user's local model directory.

Each builder writes the model with ``save_pretrained`` plus the matching
tokenizer / image processor / feature extractor config, so that the encoders
load them exactly as they would load a downloaded checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] a an the dog puppy cat kitten is on in table beach spreadsheet "
    "photo of query passage : , . red blue runs sleeps"
).split()


def build_bert(directory: Path) -> Path:
    import transformers

    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizer.from_pretrained(directory).save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(directory)
    return directory


def build_dinov2(directory: Path, *, num_register_tokens: int = 0) -> Path:
    import transformers

    torch.manual_seed(0)
    common = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14
    )
    if num_register_tokens:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=num_register_tokens, **common)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    model.save_pretrained(directory)
    # DINOv2's processor (resize shortest edge, center crop, ImageNet normalisation), scaled down.
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(directory)
    return directory


def build_whisper(directory: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    transformers.WhisperModel(config).save_pretrained(directory)
    transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160).save_pretrained(
        directory
    )
    return directory


def build_clap(directory: Path, *, fused: bool) -> Path:
    """CLAP with a 2-stage HTS-AT (8 -> 16 channels) on 64 mel bins and a 1 s window at 48 kHz (hop 960).

    Constraints found in transformers' CLAP code: ``spec_size`` must be a
    multiple of the mel bins (the tower folds time into frequency by
    ``spec_size // num_mel_bins``) and ``spec_size * that ratio`` must be at
    least the window's mel frames (here 51 <= 64); ``hidden_size`` must equal
    ``patch_embeds_hidden_size * 2 ** (len(depths) - 1)`` (the projection's
    input); the feature extractor's fusion truncation hard-codes 64 mel bins.
    """
    import transformers

    torch.manual_seed(0)
    text_config = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        projection_dim=12,
        max_position_embeddings=40,
    )
    audio_config = dict(
        spec_size=64,
        num_mel_bins=64,
        window_size=4,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        patch_embeds_hidden_size=8,
        hidden_size=16,
        projection_dim=12,
        enable_fusion=fused,
        fusion_type="aff_2d" if fused else None,
    )
    config = transformers.ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=12)
    transformers.ClapModel(config).save_pretrained(directory)
    transformers.ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48000,
        hop_length=960,
        max_length_s=1,
        fft_window_size=1024,
        truncation="fusion" if fused else "rand_trunc",
    ).save_pretrained(directory)
    return directory


def build_sentence_transformer(directory: Path, bert_directory: Path) -> Path:
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    transformer = Transformer(str(bert_directory))
    pooling = Pooling(32, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(directory))
    return directory
