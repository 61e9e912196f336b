"""fusemix.audio: decoding, mix-down, resampling, cropping/padding, validation and lazy loading of audio files."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixtures_audio_text as fx
from fusemix import audio
from fusemix.audio import AudioFileError, AudioFiles, load_audio, resampled_length, validate_audio_files


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)])


# --------------------------------------------------------------------------- load_audio: numbers


def test_resampling_44k1_to_16k_keeps_the_frequency_and_the_length(tmp_path):
    path = fx.write_tone(tmp_path / "a440.wav", 440.0, 2.0, 44100)
    n = 2 * 44100
    wave = load_audio(path, sampling_rate=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - round(n * 16000 / 44100)) <= 1
    assert wave.size == resampled_length(n, 44100, 16000)
    assert abs(_peak_hz(wave, 16000) - 440.0) <= 16000 / wave.size  # within one FFT bin (0.5 Hz)
    # amplitude preserved (0.5 sine -> RMS 0.354) away from the edges
    assert np.sqrt(np.mean(wave[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resampling_removes_content_above_the_new_nyquist(tmp_path):
    path = fx.write_tone(tmp_path / "high.wav", 12000.0, 1.0, 44100, subtype="FLOAT")  # above 8 kHz
    wave = load_audio(path, sampling_rate=16000)
    assert np.sqrt(np.mean(wave[500:-500] ** 2)) < 1e-3  # only the faint noise is left


def test_flac_at_32k_upsampled_to_48k(tmp_path):
    path = fx.write_tone(tmp_path / "clip.flac", 1000.0, 0.5, 32000)
    wave = load_audio(path, sampling_rate=48000)
    assert wave.size == resampled_length(16000, 32000, 48000) == 24000
    assert abs(_peak_hz(wave, 48000) - 1000.0) <= 48000 / wave.size


def test_same_rate_returns_the_decoded_samples_exactly(tmp_path):
    pcm = (np.random.default_rng(1).integers(-32768, 32767, size=3000)).astype(np.int16)
    path = tmp_path / "pcm16.wav"
    soundfile.write(path, pcm, 16000, subtype="PCM_16")
    wave = load_audio(path, sampling_rate=16000)
    np.testing.assert_array_equal(wave, pcm.astype(np.float32) / 32768)


def test_mono_downmix_is_the_channel_mean(tmp_path):
    stereo = fx.tone(440.0, 0.3, 16000, channels=2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, sampling_rate=16000), stereo.mean(axis=1), atol=1e-7)
    both = load_audio(path, sampling_rate=16000, mono=False)
    assert both.shape == (2, stereo.shape[0]) and both.dtype == np.float32
    np.testing.assert_array_equal(both, stereo.T)


def test_downmix_happens_before_resampling_and_matches_resampling_each_channel(tmp_path):
    path = fx.write_tone(tmp_path / "stereo.wav", 440.0, 0.5, 44100, channels=2, subtype="FLOAT")
    mono = load_audio(path, sampling_rate=16000)
    channels = load_audio(path, sampling_rate=16000, mono=False)
    assert channels.shape == (2, mono.size)
    np.testing.assert_allclose(mono, channels.mean(axis=0), atol=1e-5)  # resampling is linear


@given(
    n=st.integers(1, 5000),
    rates=st.sampled_from([(44100, 16000), (32000, 16000), (48000, 16000), (44100, 48000), (22050, 32000)]),
)
def test_resampled_length_is_round_half_up(n, rates):
    file_rate, rate = rates
    expected = resampled_length(n, file_rate, rate)
    assert expected == int(np.floor(n * rate / file_rate + 0.5))
    assert abs(expected - n * rate / file_rate) <= 0.5


@pytest.mark.parametrize(("file_rate", "n"), [(44100, 441), (32000, 999), (48000, 1), (22050, 7)])
def test_load_audio_length_matches_resampled_length(tmp_path, file_rate, n):
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.full(n, 0.1, dtype=np.float32), file_rate)
    if resampled_length(n, file_rate, 16000) == 0:
        with pytest.raises(AudioFileError, match="leave no sample at 16000 Hz"):
            load_audio(path, sampling_rate=16000)
    else:
        assert load_audio(path, sampling_rate=16000).size == resampled_length(n, file_rate, 16000)


# --------------------------------------------------------------------------- cropping and padding


def test_max_seconds_crops_to_the_prefix_of_the_full_clip(tmp_path):
    path = fx.write_tone(tmp_path / "long.wav", 440.0, 2.0, 44100, subtype="FLOAT")
    full = load_audio(path, sampling_rate=16000)
    cropped = load_audio(path, sampling_rate=16000, max_seconds=0.5)
    assert cropped.size == 8000
    np.testing.assert_allclose(cropped, full[:8000], atol=1e-5)
    assert load_audio(path, sampling_rate=16000, max_seconds=5.0).size == full.size  # shorter than the cap


def test_min_seconds_raises_naming_the_file_or_pads_with_zeros(tmp_path):
    path = fx.write_tone(tmp_path / "short.wav", 440.0, 0.2, 44100)
    with pytest.raises(AudioFileError, match=r"short\.wav: lasts 0\.200 s, shorter than min_seconds=1"):
        load_audio(path, sampling_rate=16000, min_seconds=1.0)
    padded = load_audio(path, sampling_rate=16000, min_seconds=1.0, too_short="pad")
    plain = load_audio(path, sampling_rate=16000)
    assert padded.size == 16000
    np.testing.assert_array_equal(padded[: plain.size], plain)
    assert not padded[plain.size :].any()
    long_enough = load_audio(path, sampling_rate=16000, min_seconds=0.2)
    assert long_enough.size >= 3200


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sampling_rate": 0}, ValueError, "sampling_rate"),
        ({"sampling_rate": 16000.0}, TypeError, "sampling_rate"),
        ({"sampling_rate": 16000, "max_seconds": -1}, ValueError, "max_seconds"),
        ({"sampling_rate": 16000, "max_seconds": 1e-6}, ValueError, "max_seconds: .* less than one sample"),
        ({"sampling_rate": 16000, "min_seconds": 2.0, "max_seconds": 1.0}, ValueError, "min_seconds"),
        ({"sampling_rate": 16000, "too_short": "crop"}, ValueError, "too_short"),
        ({"sampling_rate": 16000, "mono": 1}, TypeError, "mono"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, error, match):
    path = fx.write_tone(tmp_path / "ok.wav", 440.0, 0.2, 16000)
    with pytest.raises(error, match=match):
        load_audio(path, **kwargs)


# --------------------------------------------------------------------------- errors naming the file


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (fx.write_garbage, "cannot read audio .*Format not recognised.*convert other formats first"),
        (fx.write_empty, r"empty file \(0 bytes\)"),
        (fx.write_zero_frames, "holds no samples"),
        (fx.write_truncated_flac, "cannot decode audio, the file is corrupt or truncated"),
        (fx.write_nan_wav, "10 sample[(]s[)] are NaN or Inf"),
    ],
)
def test_unusable_files_raise_naming_the_file(tmp_path, writer, message):
    path = writer(tmp_path / ("bad.flac" if writer is fx.write_truncated_flac else "bad.wav"))
    with pytest.raises(AudioFileError, match=message) as info:
        load_audio(path, sampling_rate=16000)
    assert str(info.value).startswith(str(path))
    assert isinstance(info.value, OSError)


def test_unknown_format_and_missing_file(tmp_path):
    text = tmp_path / "notes.xyz"
    text.write_text("hello")
    with pytest.raises(AudioFileError, match=r"notes\.xyz: cannot read audio"):
        load_audio(text, sampling_rate=16000)
    with pytest.raises(FileNotFoundError, match=r"gone\.wav: audio file not found"):
        load_audio(tmp_path / "gone.wav", sampling_rate=16000)


@pytest.mark.parametrize("module", ["soundfile", "soxr"])
def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, module):
    path = fx.write_tone(tmp_path / "ok.wav", 440.0, 0.2, 44100)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf'load_audio needs .*{module}.*pip install "fusemix\[audio\]"'):
        load_audio(path, sampling_rate=16000)


# --------------------------------------------------------------------------- validate_audio_files


def _mixed_files(tmp_path):
    return [
        fx.write_tone(tmp_path / "good.wav", 440.0, 0.5, 44100, channels=2),
        fx.write_garbage(tmp_path / "garbage.wav"),
        tmp_path / "missing.wav",
        fx.write_tone(tmp_path / "good.flac", 440.0, 0.3, 32000),
        fx.write_empty(tmp_path / "empty.wav"),
        fx.write_truncated_flac(tmp_path / "truncated.flac"),
        fx.write_nan_wav(tmp_path / "nan.wav"),
        fx.write_tone(tmp_path / "short.wav", 440.0, 0.2, 16000),
    ]


def test_validate_header_only_and_with_decoding(tmp_path):
    paths = _mixed_files(tmp_path)
    with pytest.warns(UserWarning, match="paths: 3 of 8 audio file"):
        header = validate_audio_files(paths, sampling_rate=16000, on_error="skip", progress=False)
    assert header.good.tolist() == [0, 3, 5, 6, 7] and header.good.dtype == np.int64
    assert sorted(header.failed) == [1, 2, 4]
    assert all(header.failed[i].startswith(str(paths[i])) for i in header.failed)
    with pytest.warns(UserWarning, match="paths: 5 of 8"):
        decoded = validate_audio_files(paths, sampling_rate=16000, decode=True, on_error="skip", progress=False)
    assert decoded.good.tolist() == [0, 3, 7]
    assert "corrupt or truncated" in decoded.failed[5] and "NaN or Inf" in decoded.failed[6]
    # whatever passes the full check loads with the same settings; whatever fails does not
    for i, path in enumerate(paths):
        if i in decoded.failed:
            with pytest.raises((FileNotFoundError, AudioFileError)):
                load_audio(path, sampling_rate=16000)
        else:
            assert load_audio(path, sampling_rate=16000).size > 0


def test_validate_min_seconds_follows_too_short(tmp_path):
    paths = _mixed_files(tmp_path)[:1] + [tmp_path / "short.wav"]
    fx.write_tone(paths[1], 440.0, 0.2, 16000)
    with pytest.warns(UserWarning):
        check = validate_audio_files(paths, sampling_rate=16000, min_seconds=0.4, on_error="skip", progress=False)
    assert check.good.tolist() == [0] and "shorter than min_seconds=0.4" in check.failed[1]
    padded = validate_audio_files(paths, sampling_rate=16000, min_seconds=0.4, too_short="pad", progress=False)
    assert padded.good.tolist() == [0, 1] and padded.failed == {}


def test_validate_raise_reports_count_and_first_failure(tmp_path):
    paths = _mixed_files(tmp_path)
    with pytest.raises(AudioFileError, match=r"paths: 3 of 8 audio file\(s\) cannot be used \(first: .*garbage\.wav"):
        validate_audio_files(paths, sampling_rate=16000, progress=False)
    ok = validate_audio_files(paths[:1], sampling_rate=16000, progress=False)
    assert ok.good.tolist() == [0] and ok.failed == {}
    with pytest.raises(TypeError, match="paths: expected a sequence"):
        validate_audio_files(str(paths[0]), sampling_rate=16000)
    with pytest.raises(ValueError, match="on_error"):
        validate_audio_files(paths, sampling_rate=16000, on_error="ignore")


# --------------------------------------------------------------------------- AudioFiles


def test_audio_files_are_loaded_lazily_one_index_at_a_time(tmp_path, monkeypatch):
    paths = [fx.write_tone(tmp_path / f"{k}.wav", 200.0 + 100 * k, 0.2, 44100) for k in range(4)]
    calls = []
    real = audio.load_audio
    monkeypatch.setattr(audio, "load_audio", lambda path, **kw: calls.append(path) or real(path, **kw))
    files = AudioFiles(paths + [tmp_path / "not-yet-there.wav"], sampling_rate=16000)  # nothing is opened here
    assert len(files) == 5 and calls == []
    wave = files[2]
    assert calls == [paths[2]] and wave.shape == (resampled_length(8820, 44100, 16000),)
    assert files[-2] is not None and calls[-1] == paths[3]
    tail = files[1:3]
    assert isinstance(tail, AudioFiles) and tail.paths == paths[1:3] and len(calls) == 2
    assert tail.settings == files.settings
    np.testing.assert_array_equal(tail[1], wave)
    capped = AudioFiles(paths, sampling_rate=16000, max_seconds=0.1, min_seconds=0.1)
    assert capped[0].size == 1600 and capped[1:][0].size == 1600
    padded = AudioFiles(paths, sampling_rate=16000, min_seconds=1.0, too_short="pad")
    assert padded[0].size == 16000 and not padded[0][wave.size + 1 :].any()


def test_audio_files_raise_or_skip(tmp_path):
    paths = [fx.write_tone(tmp_path / "ok.wav", 440.0, 0.2, 16000), fx.write_garbage(tmp_path / "bad.wav")]
    strict = AudioFiles(paths, sampling_rate=16000)
    with pytest.raises(AudioFileError, match=r"bad\.wav"):
        strict[1]
    lenient = AudioFiles(paths, sampling_rate=16000, on_error="skip")
    with pytest.warns(UserWarning, match=r"bad\.wav: cannot read audio.*item 1 is None"):
        assert lenient[1] is None
    assert list(lenient.failed) == [1] and lenient.failed[1].startswith(str(paths[1]))
    assert lenient[0] is not None and list(lenient.failed) == [1]
    with warnings.catch_warnings(record=True):
        check = lenient.validate(on_error="skip", progress=False)
    assert check.good.tolist() == [0]


def test_audio_files_index_checks_and_settings(tmp_path):
    files = AudioFiles([tmp_path / "a.wav"], sampling_rate=48000, max_seconds=10.0)
    with pytest.raises(IndexError, match="index: 1 is out of range for 1 audio file"):
        files[1]
    with pytest.raises(TypeError, match="index"):
        files[True]
    with pytest.raises(TypeError, match="index"):
        files["0"]
    with pytest.raises(TypeError, match="paths: expected a sequence"):
        AudioFiles(tmp_path / "a.wav", sampling_rate=16000)
    assert files.settings == {
        "sampling_rate": 48000,
        "mono": True,
        "max_seconds": 10.0,
        "min_seconds": None,
        "too_short": "raise",
        "resampler": "soxr HQ",
    }


# --------------------------------------------------------------------------- end to end with a Whisper encoder


def test_load_audio_feeds_a_tiny_whisper_encoder(tmp_path):
    from _tiny_models import build_whisper
    from fusemix.encoders import HFAudioEncoder
    from fusemix.extract import extract_latents

    paths = [
        fx.write_tone(tmp_path / "a.wav", 440.0, 1.0, 44100, channels=2),
        fx.write_tone(tmp_path / "b.flac", 880.0, 0.3, 32000),
        fx.write_tone(tmp_path / "c.ogg", 300.0, 0.5, 44100),
    ]
    encoder = HFAudioEncoder(build_whisper(tmp_path / "whisper"), sampling_rate=16000, device="cpu")
    files = AudioFiles(paths, sampling_rate=16000, max_seconds=30.0)
    latents = encoder([files[i] for i in range(len(files))])
    assert latents.shape == (3, 32) and torch.isfinite(latents).all()
    assert not torch.allclose(latents[0], latents[1])
    store = extract_latents(
        encoder, files, tmp_path / "store", modality="audio", batch_size=2, dtype="float32", progress=False
    )
    assert store is not None and len(store) == 3
    np.testing.assert_allclose(np.asarray(store[:]), latents.numpy(), atol=1e-5)
