"""Readers of the paper's audio-text datasets (AudioCaps, Clotho), on miniature copies in the real on-disk formats."""

from __future__ import annotations

import doctest
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixtures_audio_text as fx
import fusemix
from _examples import import_example
from fusemix.audio import AudioFileError

atd = import_example("replication.audio_text_data")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fx.make_data_root(tmp_path_factory.mktemp("audio_text"))


def _captions_of(dataset, clip: int) -> list[str]:
    return [c for c, i in zip(dataset.captions, dataset.caption_to_audio) if i == clip]


# --------------------------------------------------------------------------- Clotho


@pytest.mark.parametrize("split", atd.CLOTHO_SPLITS)
def test_clotho_five_captions_per_clip_in_file_order(data_root, split):
    spec = fx.CLOTHO_SPEC[split]
    ds = atd.read_clotho(data_root / "clotho", split)
    assert ds.name == f"clotho/{split}"
    assert ds.num_clips == len(spec) and ds.num_captions == 5 * len(spec) and ds.skipped == {}
    assert np.bincount(ds.caption_to_audio).tolist() == [5] * len(spec)
    for clip, (file_name, _) in enumerate(spec):
        assert _captions_of(ds, clip) == [fx.clotho_caption(split, clip, k) for k in range(5)]
        assert unicodedata.normalize("NFC", ds.audio_paths[clip].stem) == Path(file_name).stem
        assert ds.audio_paths[clip].is_file()


def test_clotho_name_matching_nfd_and_converted_suffix(data_root):
    ds = atd.read_clotho(data_root / "clotho", "evaluation")
    nfd, flac = ds.audio_paths
    assert nfd.name == unicodedata.normalize("NFD", "Café terrace.wav") != "Café terrace.wav"
    assert flac.name == "Traffic jam.flac"


def test_clotho_missing_file_raises_or_is_skipped(tmp_path):
    root = fx.make_clotho(tmp_path / "clotho")
    (root / "development" / "rain_on_roof.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"development: 1 clip\(s\) are missing \(first: rain_on_roof\.wav\)"):
        atd.read_clotho(root, "development")
    ds = atd.read_clotho(root, "development", missing_audio="skip")
    assert ds.num_clips == 2 and ds.num_captions == 10
    assert _captions_of(ds, 1) == [fx.clotho_caption("development", 2, k) for k in range(5)]
    assert ds.skipped == {
        "clotho/development: clips missing on disk": 1,
        "clotho/development: captions of clips missing on disk": 5,
    }


def test_clotho_bad_csv_and_missing_folders(tmp_path):
    root = fx.make_clotho(tmp_path / "clotho")
    csv_path = root / "clotho_captions_validation.csv"
    csv_path.write_text("file_name,caption_1,caption_2\nx.wav,a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"clotho_captions_validation\.csv: expected a header .*missing: caption_3"):
        atd.read_clotho(root, "validation")
    csv_path.write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\nx.wav,a,b,c,d,e\nx.wav,a,b,c,d,e\n"
    )
    with pytest.raises(ValueError, match=r"line 3: 'x\.wav' is listed twice"):
        atd.read_clotho(root, "validation")
    csv_path.write_text("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\nx.wav,a,b\n")
    with pytest.raises(ValueError, match=r"line 2 has 3 field\(s\), the header has 6"):
        atd.read_clotho(root, "validation")
    csv_path.write_text(
        'file_name,caption_1,caption_2,caption_3,caption_4,caption_5\nx.wav,"two\nlines",b,c,d,e\ny.wav,a,b,c,d,e,f\n'
    )
    with pytest.raises(ValueError, match=r"line 4 has 7 field\(s\), the header has 6"):  # unquoted comma
        atd.read_clotho(root, "validation")
    shutil.rmtree(root / "evaluation")
    with pytest.raises(FileNotFoundError, match=r"evaluation: Clotho evaluation audio folder not found .*zenodo"):
        atd.read_clotho(root, "evaluation")
    (root / "clotho_captions_development.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"clotho_captions_development\.csv: Clotho caption CSV not found"):
        atd.read_clotho(root, "development")
    with pytest.raises(ValueError, match="split"):
        atd.read_clotho(root, "test")


def test_clotho_empty_captions_are_dropped_and_counted(tmp_path):
    root = tmp_path / "clotho"
    fx.write_tone(root / "evaluation" / "a.wav", 440.0, 0.2, 44100)
    fx.write_tone(root / "evaluation" / "b.wav", 440.0, 0.2, 44100)
    (root / "clotho_captions_evaluation.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        'a.wav, one ,,"three, with comma",  ,five\nb.wav,,,,,\n'
    )
    ds = atd.read_clotho(root, "evaluation")
    assert ds.captions == ["one", "three, with comma", "five"] and ds.num_clips == 1
    assert ds.skipped == {"clotho/evaluation: empty captions": 7, "clotho/evaluation: clips without a caption": 1}


# --------------------------------------------------------------------------- AudioCaps


def test_audiocaps_train_naming_patterns_missing_and_unreadable(data_root):
    ds = atd.read_audiocaps(data_root / "audiocaps", "train")
    found = [row for row in fx.AUDIOCAPS_TRAIN if row[4] not in (None, "m4a")]
    assert ds.num_clips == ds.num_captions == len(found) == 5
    assert ds.captions == [row[3] for row in found]
    assert [p.name for p in ds.audio_paths] == [
        fx.audiocaps_file_name(naming, [acid], yid, start) for acid, yid, start, _, naming in found
    ]
    assert ds.skipped == {
        "audiocaps/train: clips missing on disk": 1,
        "audiocaps/train: captions of clips missing on disk": 1,
        "audiocaps/train: clips in a format soundfile cannot read (.m4a; convert to .flac or .wav)": 1,
    }
    assert ds.describe().startswith("audiocaps/train: 5 clip(s), 5 caption(s); skipped: ")


def test_audiocaps_test_groups_five_interleaved_captions_per_segment(data_root):
    ds = atd.read_audiocaps(data_root / "audiocaps", "test")
    # clips 0 and 1 are two segments of one video; clip 2 is missing
    assert ds.num_clips == 2 and ds.num_captions == 10
    for clip in range(2):
        assert _captions_of(ds, clip) == [fx.audiocaps_test_caption(clip, k) for k in range(5)]
    rows = fx.audiocaps_test_rows()
    third_id_of_clip_1 = [r[0] for r in rows if r[1] == "SaMeViDeO01" and r[2] == "100"][2]
    assert [p.name for p in ds.audio_paths] == ["SaMeViDeO01_30.wav", f"{third_id_of_clip_1}.wav"]
    assert fx.AUDIOCAPS_TEST_DECOY not in [p.name for p in ds.audio_paths]  # ambiguous: two segments
    assert ds.skipped == {
        "audiocaps/test: clips missing on disk": 1,
        "audiocaps/test: captions of clips missing on disk": 5,
    }


def test_audiocaps_missing_audio_raise_and_nothing_found(tmp_path):
    root = fx.make_audiocaps(tmp_path / "audiocaps")
    with pytest.raises(FileNotFoundError, match=r"test: 1 clip\(s\) are missing \(first: TaKeNdOwN02 from 0 s\)"):
        atd.read_audiocaps(root, "test", missing_audio="raise")
    for path in (root / "audio" / "val").iterdir():
        path.rename(path.with_name("renamed_" + path.name))
    with pytest.raises(FileNotFoundError) as info:
        atd.read_audiocaps(root, "val")
    message = str(info.value)
    assert "none of the 2 clip(s) of val.csv has an audio file" in message
    assert "vAlIdClip01_50, YvAlIdClip01_50.000_60.000, YvAlIdClip01, vAlIdClip01, 500" in message
    assert "renamed_vAlIdClip01_50.wav" in message
    shutil.rmtree(root / "audio" / "train")
    with pytest.raises(FileNotFoundError, match=r"train: AudioCaps train audio folder not found .*YouTube"):
        atd.read_audiocaps(root, "train")


def test_audiocaps_bad_csv(tmp_path):
    root = fx.make_audiocaps(tmp_path / "audiocaps")
    (root / "test.csv").write_text("id,youtube_id,start_time,caption\n1,abc,0,x\n")
    with pytest.raises(ValueError, match=r"test\.csv: expected a header .*missing: audiocap_id"):
        atd.read_audiocaps(root, "test")
    (root / "test.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,SaMeViDeO01,thirty,x\n")
    with pytest.raises(ValueError, match=r"test\.csv: line 2: start_time 'thirty' is not a number"):
        atd.read_audiocaps(root, "test")


def test_audiocaps_val_corrupt_clip_is_found_then_dropped_by_validation(data_root):
    ds = atd.read_audiocaps(data_root / "audiocaps", "val")
    assert ds.num_clips == 2 and ds.num_captions == 10
    with pytest.warns(UserWarning, match=r"1 of 2 audio file\(s\) cannot be used"):
        clean, failed = atd.drop_unusable_audio(ds, sampling_rate=16000, progress=False)
    assert list(failed) == [1] and "vAlIdClip02_0.wav: cannot read audio" in failed[1]
    assert clean.num_clips == 1 and clean.captions == [fx.audiocaps_val_caption(0, k) for k in range(5)]
    assert clean.skipped == {"audiocaps/val: unusable audio files": 1}
    with pytest.raises(AudioFileError, match="pass on_error='skip'"):
        atd.drop_unusable_audio(ds, sampling_rate=16000, on_error="raise", progress=False)


def test_clotho_empty_and_zero_frame_files_are_dropped_by_validation(data_root):
    for split, bad in (("development", "broken_upload.wav: empty file"), ("validation", "holds no samples")):
        ds = atd.read_clotho(data_root / "clotho", split)
        with pytest.warns(UserWarning):
            clean, failed = atd.drop_unusable_audio(ds, sampling_rate=16000, decode=True, progress=False)
        assert len(failed) == 1 and bad in next(iter(failed.values()))
        assert clean.num_clips == ds.num_clips - 1 and clean.num_captions == ds.num_captions - 5
        waves = clean.audio_files(sampling_rate=16000)
        assert all(w.ndim == 1 and w.dtype == np.float32 and w.size > 0 for w in waves)


# --------------------------------------------------------------------------- by component, union, metrics


def test_read_audio_text_by_component_and_training_union(data_root):
    parts = [atd.read_audio_text(data_root, c) for c in atd.TRAIN_COMPONENTS]
    assert [p.name for p in parts] == ["audiocaps/train", "clotho/development"]
    union = atd.concat(parts)
    assert union.name == "audiocaps/train+clotho/development"
    assert union.num_clips == 5 + 3 and union.num_captions == 5 + 15
    assert union.caption_to_audio[5:].tolist() == [5] * 5 + [6] * 5 + [7] * 5
    assert union.skipped["audiocaps/train: clips missing on disk"] == 1
    evaluation = [atd.read_audio_text(data_root, c) for c in atd.EVAL_COMPONENTS]
    assert [(d.num_clips, d.num_captions) for d in evaluation] == [(2, 10), (2, 10)]
    with pytest.raises(FileNotFoundError):
        atd.read_audio_text(data_root / "nowhere", "clotho/evaluation")
    with pytest.raises(ValueError, match="component"):
        atd.read_audio_text(data_root, "clotho")


def test_caption_to_audio_works_with_retrieval_metrics(data_root):
    ds = atd.read_clotho(data_root / "clotho", "development")
    audio_emb = torch.eye(ds.num_clips)
    text_emb = audio_emb[torch.from_numpy(ds.caption_to_audio)] + 0.01
    metrics = fusemix.retrieval_metrics(audio_emb, text_emb, ds.caption_to_audio, names=("a", "t"))
    assert metrics["a2t_R@1"] == metrics["t2a_R@1"] == 100.0


@given(sizes=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=4), min_size=1, max_size=4))
def test_concat_keeps_every_caption_with_its_clip(sizes):
    datasets = []
    for d, counts in enumerate(sizes):
        paths = [f"{d}/{c}.wav" for c in range(len(counts))]
        captions = [f"{d}/{c}#{k}" for c, n in enumerate(counts) for k in range(n)]
        index = np.repeat(np.arange(len(counts)), counts)
        datasets.append(atd.AudioCaptionDataset(f"d{d}", paths, captions, index))
    union = atd.concat(datasets)
    clip_of_caption = [str(union.audio_paths[i]) for i in union.caption_to_audio]
    assert clip_of_caption == [c.split("#")[0] + ".wav" for c in union.captions]


def test_dataset_validation_and_without_audio():
    with pytest.raises(ValueError, match="caption_to_audio: has 1 entries but there are 2 captions"):
        atd.AudioCaptionDataset("x", ["a.wav"], ["p", "q"], np.array([0]))
    with pytest.raises(ValueError, match=r"audio_paths: 1 clip\(s\) have no caption"):
        atd.AudioCaptionDataset("x", ["a.wav", "b.wav"], ["p"], np.array([0]))
    with pytest.raises(TypeError, match="caption_to_audio: expected integer"):
        atd.AudioCaptionDataset("x", ["a.wav"], ["p"], np.array([0.0]))
    ds = atd.AudioCaptionDataset("x", ["a.wav", "b.wav", "c.wav"], ["p", "q", "r", "s"], np.array([2, 0, 2, 1]))
    small, kept = ds.without_audio([2], "unusable")
    assert kept.tolist() == [0, 1] and small.captions == ["q", "s"] and small.caption_to_audio.tolist() == [0, 1]
    with pytest.raises(ValueError, match="indices"):
        ds.without_audio([3], "x")
    with pytest.raises(TypeError, match=r"datasets\[0\]"):
        atd.concat(["not a dataset"])


# --------------------------------------------------------------------------- layout check


def test_check_audio_text_data_lists_every_missing_item(tmp_path, data_root):
    lines = atd.check_audio_text_data(tmp_path, ["audiocaps", "clotho/evaluation"])
    assert len(lines) == 2 * 3 + 2
    assert lines[0].startswith(f"audiocaps/train: {tmp_path}/audiocaps/train.csv (AudioCaps caption CSV) is missing")
    assert "github.com/cdjkim/audiocaps" in lines[0]
    assert lines[1].startswith(f"audiocaps/train: {tmp_path}/audiocaps/audio/train/ (AudioCaps train audio) is missing")
    assert "aac-datasets" in lines[1]
    assert all("zenodo.org/record/4783391" in line for line in lines[6:])
    assert atd.check_audio_text_data(data_root, atd.COMPONENTS) == []
    assert atd.check_audio_text_data(tmp_path, ["clotho/evaluation", "clotho"])[:2] == lines[6:]
    (tmp_path / "clotho" / "evaluation").mkdir(parents=True)
    assert "evaluation/ (Clotho evaluation audio, from the split's .7z archive) is empty" in "\n".join(
        atd.check_audio_text_data(tmp_path, ["clotho/evaluation"])
    )
    with pytest.raises(ValueError, match="needed"):
        atd.check_audio_text_data(tmp_path, ["wavcaps"])
    with pytest.raises(TypeError, match="needed"):
        atd.check_audio_text_data(tmp_path, "clotho")


def test_module_docstring_examples():
    result = doctest.testmod(atd, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 10
