"""Audio encoder over a Hugging Face ``transformers`` Whisper or CLAP (HTS-AT) checkpoint."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusemix._checks import check_choice, check_positive_int
from fusemix.encoders._hf import HFEncoder
from fusemix.encoders.base import check_bool

AudioKind = Literal["whisper", "clap", "auto"]
AUDIO_KINDS: tuple[str, ...] = ("whisper", "clap", "auto")
ClapOutput = Literal["projection", "pooled"]
CLAP_OUTPUTS: tuple[str, ...] = ("projection", "pooled")


class HFAudioEncoder(HFEncoder):
    """Frozen ``transformers`` audio encoder (Whisper's encoder or CLAP's HTS-AT) with its own feature extractor.

    **Whisper** (``kind="whisper"``): the checkpoint's feature extractor turns
    each clip into a log-mel spectrogram padded to Whisper's fixed 30 s
    window, and ``WhisperModel.get_encoder()`` (the decoder is dropped) maps
    it to ``(B, 1500, d_model)`` frames. The latent is the mean over the
    frames that cover actual audio: a clip of ``n`` samples fills
    ``m = ceil(n / hop_length)`` mel frames (those whose STFT window is
    centred inside the clip; the same count as the feature extractor's
    attention mask) and the encoder's stride-2 convolution halves that, so
    the first ``ceil(m / 2)`` encoder frames are averaged (for 16 kHz audio
    and a hop of 160 samples: 50 frames per second). The padded frames still
    feed the encoder's attention, as in Whisper itself; they just do not
    enter the mean. Clips longer than the 30 s window are refused: split them
    first.

    **CLAP** (``kind="clap"``): the checkpoint's feature extractor (repeat-pad
    to its ``max_length_s``, ``rand_trunc`` or ``fusion`` truncation for
    longer clips) feeds the HTS-AT audio tower. ``clap_output="projection"``
    (default) returns the audio projection, i.e.
    ``ClapModel.get_audio_features`` before its L2 normalisation (pass
    ``normalize=True`` to get exactly CLAP's joint-space embedding);
    ``"pooled"`` returns the audio tower's pooled output before the
    projection. The text tower is dropped after loading. Two details make the latents
    deterministic and independent of the batch: each clip is featurised
    alone with numpy's global random generator temporarily seeded with
    ``crop_seed`` (the random crops of long clips; the generator's previous
    state is restored afterwards) and ``is_longer`` is true exactly for clips
    longer than ``max_length_s``, as in LAION-CLAP's inference (the feature
    extractor otherwise marks a random short clip as longer whenever no clip
    of the batch is).

    Items are mono waveforms: 1-D floating numpy arrays (or tensors) of
    samples in ``[-1, 1]`` at the model's sampling rate (Whisper: 16 kHz,
    LAION-CLAP: 48 kHz). The encoder does not resample: load files with
    ``fusemix.audio.AudioFiles(paths, sampling_rate=encoder.sampling_rate)``
    (or ``fusemix.audio.load_audio``), which resample with soxr;
    ``sampling_rate`` only lets you state your data's rate so a mismatch
    fails loudly.

    Args:
        name_or_path: Hugging Face Hub id or local directory written by ``save_pretrained``.
        kind: ``"whisper"``, ``"clap"`` or ``"auto"`` (from the config's ``model_type``).
        sampling_rate: Sampling rate of your clips in Hz; if given it must
            equal the model's, else ``ValueError``.
        clap_output: CLAP only: ``"projection"`` (default) or ``"pooled"``.
        crop_seed: CLAP only: seed for the random crops of long clips (default 0).
        normalize: L2-normalise every latent.
        device: Where the model runs; ``None`` picks CUDA when available, else the CPU.
        dtype: Weights' dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``;
            pooling runs in float32 either way.
        max_batch_size: Clips per forward pass (``None``: the whole list at once).
        progress: Show the libraries' progress bars and INFO logs while the
            model loads; ``False`` silences them.

    Attributes:
        kind: ``"whisper"`` or ``"clap"``.
        sampling_rate: The model's sampling rate in Hz.
        identity: Class, model (directory name and fingerprint, or Hub id and
            revision), kind, sampling rate, pooling or CLAP output and crop
            seed, normalize and dtype.
        dim: Whisper's ``d_model``; CLAP's ``projection_dim`` or the audio tower's width.

    Shape:
        - Input: a sequence of ``B`` waveforms of any lengths.
        - Output: ``(B, dim)``, ``float32`` on the CPU.

    Example:
        >>> whisper = HFAudioEncoder("openai/whisper-large-v3", sampling_rate=16000)  # doctest: +SKIP
        >>> whisper([np.zeros(16000, dtype=np.float32)]).shape  # doctest: +SKIP
        torch.Size([1, 1280])

    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        kind: AudioKind = "auto",
        sampling_rate: int | None = None,
        clap_output: ClapOutput | None = None,
        crop_seed: int | None = None,
        normalize: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int | None = 32,
        progress: bool = True,
    ) -> None:
        check_choice("kind", kind, AUDIO_KINDS)
        if sampling_rate is not None:
            check_positive_int("sampling_rate", sampling_rate)
        if clap_output is not None:
            check_choice("clap_output", clap_output, CLAP_OUTPUTS)
        if crop_seed is not None and (
            isinstance(crop_seed, bool) or not isinstance(crop_seed, int) or not 0 <= crop_seed < 2**32
        ):
            raise ValueError(f"crop_seed: expected an int in [0, 2**32), got {crop_seed!r}")
        check_bool("normalize", normalize)
        super().__init__(name_or_path, device=device, dtype=dtype, max_batch_size=max_batch_size, progress=progress)
        model_type = self._from_pretrained(self.transformers.AutoConfig).model_type
        if kind == "auto":
            if model_type not in ("whisper", "clap"):
                raise ValueError(f"kind: {self!r} has model_type {model_type!r}; supported: Whisper and CLAP")
            kind = model_type
        elif kind != model_type:
            raise ValueError(f"kind: {kind!r} does not match the checkpoint's model_type {model_type!r}")
        if kind == "whisper" and (clap_output is not None or crop_seed is not None):
            raise ValueError("clap_output, crop_seed: only apply to CLAP models; this is a Whisper model")
        self.kind: str = kind
        self.normalize = normalize
        self.feature_extractor = self._from_pretrained(self.transformers.AutoFeatureExtractor)
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"sampling_rate: {self!r} expects audio at {self.sampling_rate} Hz, got {sampling_rate} Hz; "
                "load them with fusemix.audio.load_audio(path, sampling_rate=...), which resamples"
            )
        identity = {**self._base_identity(), "kind": kind, "sampling_rate": self.sampling_rate}
        if kind == "whisper":
            whisper = self._from_pretrained(self.transformers.WhisperModel)
            self.model = self._prepare_model(whisper.get_encoder())
            self.frame_stride = int(self.model.conv1.stride[0] * self.model.conv2.stride[0])
            self.dim: int | None = int(self.model.config.d_model)
            identity["pooling"] = "mean_valid_frames"
        else:
            self.clap_output: str = clap_output or "projection"
            self.crop_seed: int = 0 if crop_seed is None else crop_seed
            clap = self._from_pretrained(self.transformers.ClapModel)
            # keep the audio tower and its projection; the text tower is dropped
            self.model = self._prepare_model(
                nn.ModuleDict({"audio_model": clap.audio_model, "audio_projection": clap.audio_projection})
            )
            config = clap.config.audio_config
            pooled_dim = int(config.patch_embeds_hidden_size * 2 ** (len(config.depths) - 1))
            self.dim = int(config.projection_dim) if self.clap_output == "projection" else pooled_dim
            identity.update(output=self.clap_output, crop_seed=self.crop_seed)
        identity["normalize"] = normalize
        self.identity: dict[str, Any] = identity

    def _encode_batch(self, batch: list[Any], offset: int) -> Tensor:
        clips = [_as_clip(item, index) for index, item in enumerate(batch, start=offset)]
        pooled = self._encode_whisper(clips, offset) if self.kind == "whisper" else self._encode_clap(clips)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def _encode_whisper(self, clips: list[np.ndarray], offset: int) -> Tensor:
        extractor = self.feature_extractor
        for index, clip in enumerate(clips, start=offset):
            if clip.size > extractor.n_samples:
                raise ValueError(
                    f"items[{index}]: clip lasts {clip.size / self.sampling_rate:.2f} s; Whisper's encoder takes at "
                    f"most {extractor.n_samples / self.sampling_rate:g} s: split it into chunks first"
                )
        features = extractor(clips, sampling_rate=self.sampling_rate, return_tensors="pt")["input_features"]
        hidden = self.model(**self._to_model({"input_features": features})).last_hidden_state.float()
        valid = torch.tensor(
            [math.ceil(math.ceil(clip.size / extractor.hop_length) / self.frame_stride) for clip in clips],
            device=hidden.device,
        )
        mask = (torch.arange(hidden.shape[1], device=hidden.device) < valid[:, None]).unsqueeze(-1).float()
        return (hidden * mask).sum(dim=1) / valid[:, None].float()

    def _encode_clap(self, clips: list[np.ndarray]) -> Tensor:
        extractor = self.feature_extractor
        features, is_longer = [], []
        for clip in clips:
            with _seeded_numpy(self.crop_seed):
                extracted = extractor(clip, sampling_rate=self.sampling_rate, return_tensors="np")
            features.append(extracted["input_features"][0])
            is_longer.append(bool(extracted["is_longer"][0][0]) and clip.size > extractor.nb_max_samples)
        inputs = self._to_model(
            {"input_features": torch.from_numpy(np.stack(features)), "is_longer": torch.tensor(is_longer)[:, None]}
        )
        pooled = self.model["audio_model"](**inputs).pooler_output
        if self.clap_output == "projection":
            return self.model["audio_projection"](pooled).float()
        return pooled.float()


def _as_clip(item: object, index: int) -> np.ndarray:
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"items[{index}]: expected a 1-D numpy array of samples, got {type(item).__name__}")
    if not np.issubdtype(item.dtype, np.floating):
        raise TypeError(
            f"items[{index}]: expected floating samples in [-1, 1], got dtype {item.dtype}; "
            "convert integer PCM first (e.g. x / 32768 for int16)"
        )
    if item.ndim != 1:
        raise ValueError(f"items[{index}]: expected a mono 1-D waveform, got shape {item.shape}; mix down first")
    if item.size == 0:
        raise ValueError(f"items[{index}]: empty audio clip (0 samples)")
    if not np.isfinite(item).all():
        raise ValueError(f"items[{index}]: audio clip contains NaN or Inf")
    return np.ascontiguousarray(item, dtype=np.float32)


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block, then restore its previous state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
