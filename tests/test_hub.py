"""fusemix.hub: save_pretrained and AlignedModel.from_pretrained round trips, the card, push_to_hub to a fake Hub."""

from __future__ import annotations

import inspect
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fusemix import FusionModel
from fusemix.aligned import AlignedModel
from fusemix.encoders import CallableEncoder, HFTextEncoder
from fusemix.hub import CARD_FILE, HUB_FILES, download, model_card, push_to_hub, save_pretrained

TEXTS = ["a dog", "the red cat", "a puppy on the beach"]


def word_stats(texts):
    """A stand-in text encoder (no transformers needed): a few counts per text."""
    return torch.tensor([[len(t), t.count("a"), t.count(" "), t.count("e"), 1.0] for t in texts], dtype=torch.float32)


@pytest.fixture
def pixels():
    torch.manual_seed(1)
    return CallableEncoder(torch.nn.Linear(6, 5), identity={"name": "pixel-probe"}, dim=5)


@pytest.fixture
def words():
    return CallableEncoder(word_stats, identity={"name": "word-stats"}, dim=5)


@pytest.fixture
def aligned(pixels, words):
    torch.manual_seed(0)
    model = FusionModel.from_dims({"image": 5, "text": 5}, shared_dim=4, depth=1)
    return AlignedModel(model, {"image": pixels, "text": words}, train_config={"epochs": 3, "batch_size": 8})


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from _tiny_models import build_bert

    return build_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def assert_no_pickle(folder: Path) -> None:
    """Every file is safetensors, JSON or Markdown: nothing a pickle loader would read."""
    for file in folder.iterdir():
        data = file.read_bytes()
        assert not data.startswith(b"\x80"), f"{file.name} looks like a pickle"
        if file.suffix == ".json":
            json.loads(data)
        elif file.suffix == ".safetensors":
            header = int.from_bytes(data[:8], "little")
            json.loads(data[8 : 8 + header])


def test_save_and_reopen_a_directory(tmp_path, aligned, pixels, words):
    folder = save_pretrained(aligned, tmp_path / "shared", metrics={"i2t_R@1": 12.5}, train_pairs=1384,
                             dataset="OpenMoji drawings", license="mit")  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == sorted(HUB_FILES)
    assert_no_pickle(folder)
    again = AlignedModel.from_pretrained(folder, encoders={"image": pixels, "text": words})
    torch.testing.assert_close(again["text"].encode(TEXTS), aligned["text"].encode(TEXTS))
    images = [torch.randn(6) for _ in range(4)]
    torch.testing.assert_close(again["image"].encode(images), aligned["image"].encode(images))
    assert again.train_config == {"epochs": 3, "batch_size": 8}
    assert AlignedModel.from_pretrained(folder, encoders={"text": words}, modalities=["text"]).encoders.keys() == {
        "text"
    }


def test_a_saved_hugging_face_text_encoder_is_rebuilt(tmp_path, aligned, bert_dir, one_thread):
    text = HFTextEncoder(bert_dir, pooling="mean", device="cpu")
    model = FusionModel.from_dims({"image": 5, "text": 32}, shared_dim=4, depth=1)
    folder = save_pretrained(AlignedModel(model, {"text": text}), tmp_path / "bert-model")
    card = (folder / CARD_FILE).read_text()
    assert '| text | hf-text | `tiny-bert` (local directory) | pooling="mean"' in card
    again = AlignedModel.from_pretrained(folder, device="cpu")  # nothing passed: rebuilt from encoders.json
    assert isinstance(again["text"].encoder, HFTextEncoder) and again["text"].encoder.pooling == "mean"
    torch.testing.assert_close(again["text"].encode(TEXTS), model.eval().embed("text", text(TEXTS)))


def test_saving_again_keeps_descriptions_of_encoders_not_loaded(tmp_path, aligned, words):
    first = save_pretrained(aligned, tmp_path / "first")
    text_only = AlignedModel.from_pretrained(
        first, encoders={"text": words}, modalities=["text"]
    )  # no image encoder loaded
    second = text_only.save_pretrained(tmp_path / "second")
    assert json.loads((second / "encoders.json").read_text()) == json.loads((first / "encoders.json").read_text())


def test_save_replaces_a_directory_whole(tmp_path, aligned):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    save_pretrained(aligned, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(HUB_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging directory left behind


def test_model_card(aligned):
    card = model_card(aligned, name="me/fusemix-toy", metrics={"i2t_R@1": 12.5, "mean": 30}, train_pairs=1384,
                      dataset="OpenMoji drawings", license="mit")  # fmt: skip
    meta = card_metadata(card)
    assert meta["library_name"] == "fusemix" and meta["license"] == "mit"
    assert {"fusemix", "multimodal", "image", "text"} <= set(meta["tags"])
    assert "base_model" not in meta  # no encoder lives on the Hub
    assert "# me/fusemix-toy" in card and "1,384 training pairs; OpenMoji drawings" in card
    assert "| i2t_R@1 | 12.50 |" in card and "| mean | 30.00 |" in card
    assert "| text | custom (`fusemix.encoders.callables.CallableEncoder`)" in card
    assert '| image | custom (`fusemix.encoders.callables.CallableEncoder`) | identity `{"encoder"' in card
    assert '"batch_size": 8' in card and 'AlignedModel.from_pretrained("me/fusemix-toy")' in card
    assert "@inproceedings{vouitsis2024fusemix" in card
    with pytest.raises(TypeError, match=r"metrics\['x'\]: expected a finite number"):
        model_card(aligned, name="x", metrics={"x": float("nan")})


def test_model_card_names_hub_encoders_as_base_models(aligned):
    hub_text = {
        "kind": "hf-text",
        "location": "BAAI/bge-large-en-v1.5",
        "local": False,
        "options": {"pooling": "cls", "normalize": True},
        "identity": {"encoder": "HFTextEncoder", "model": "BAAI/bge-large-en-v1.5", "revision": None},
    }
    hub_only = AlignedModel(aligned.model, {}, encoder_descriptions={"text": hub_text})
    card = model_card(hub_only, name="x/y")
    assert card_metadata(card)["base_model"] == ["BAAI/bge-large-en-v1.5"]
    assert "No encoder is recorded for image" in card and "Training configuration\n\nNot recorded." in card


class FakeHub:
    """Records what push_to_hub would send: the repository it creates and the files of the folder it uploads."""

    def __init__(self):
        self.repos = []
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, **kwargs):
        check_against_huggingface_hub("upload_folder", kwargs)
        folder = Path(kwargs["folder_path"])
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
        self.uploads.append({**kwargs, "files": files})
        return f"https://hub.example/{kwargs['repo_id']}/commit/0001"


def check_against_huggingface_hub(method: str, kwargs: dict) -> None:
    """When huggingface_hub is installed, the call must also fit the real HfApi method's signature."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        return
    inspect.signature(getattr(HfApi, method)).bind(None, **kwargs)


def test_push_to_hub_uploads_exactly_the_saved_files(aligned, tmp_path):
    hub = FakeHub()
    url = push_to_hub(aligned, "me/fusemix-toy", private=True, metrics={"t2i_R@1": 9.0}, train_pairs=10, api=hub)
    assert url == "https://hub.example/me/fusemix-toy/commit/0001"
    assert hub.repos == [("me/fusemix-toy", {"private": True, "exist_ok": True, "repo_type": "model"})]
    check_against_huggingface_hub("create_repo", {"repo_id": "me/fusemix-toy", **hub.repos[0][1]})
    (upload,) = hub.uploads
    assert upload["repo_id"] == "me/fusemix-toy" and upload["repo_type"] == "model" and not upload["create_pr"]
    assert sorted(upload["files"]) == sorted(HUB_FILES) and upload["allow_patterns"] == list(HUB_FILES)
    card = upload["files"][CARD_FILE].decode()
    assert "# me/fusemix-toy" in card and "| t2i_R@1 | 9.00 |" in card
    saved = save_pretrained(aligned, tmp_path / "local")
    for name in ("model.safetensors", "encoders.json"):
        assert upload["files"][name] == (saved / name).read_bytes()
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is gone


def test_push_to_hub_with_the_real_client_class(aligned, monkeypatch):
    """The default client is huggingface_hub.HfApi (given the token); its two methods are stubbed: no network."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    hub = FakeHub()
    tokens = []

    def fake_init(self, *args, token=None, **kwargs):
        tokens.append(token)

    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", fake_init)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: hub.create_repo(repo, **kw))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: hub.upload_folder(**kw))
    push_to_hub(aligned, "me/toy", token="hf_secret", create_pr=True, revision="dev")
    assert tokens == ["hf_secret"] and hub.uploads[0]["create_pr"] and hub.uploads[0]["revision"] == "dev"


def cache_as_downloaded(aligned: AlignedModel, tmp_path: Path, repo_id: str) -> None:
    """Put ``aligned``, saved, in ``tmp_path / "cache"`` as huggingface_hub keeps a download of ``repo_id``."""
    saved = save_pretrained(aligned, tmp_path / "saved")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(saved, repo / "snapshots" / commit)


def test_from_pretrained_downloads_from_the_hub_cache(aligned, tmp_path, pixels, words):
    """A Hub id goes through the real huggingface_hub.snapshot_download, here from a local cache, offline."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cache_as_downloaded(aligned, tmp_path, "me/fusemix-toy")
    again = AlignedModel.from_pretrained("me/fusemix-toy", cache_dir=tmp_path / "cache", local_files_only=True,
                            encoders={"image": pixels, "text": words})  # fmt: skip
    torch.testing.assert_close(again["text"].encode(TEXTS), aligned["text"].encode(TEXTS))
    with pytest.raises(huggingface_hub.utils.LocalEntryNotFoundError):
        AlignedModel.from_pretrained("me/not-cached", cache_dir=tmp_path / "cache", local_files_only=True)


def test_a_quiet_download_needs_no_transformers_and_restores_the_hub_switch(aligned, tmp_path, monkeypatch):
    """``progress=False`` turns huggingface_hub's bars off for the download only, with transformers not installed."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cache_as_downloaded(aligned, tmp_path, "me/quiet")
    monkeypatch.setitem(sys.modules, "transformers", None)  # "import transformers" now fails
    seen = []
    real = huggingface_hub.snapshot_download

    def watched(*args, **kwargs):
        seen.append(huggingface_hub.utils.are_progress_bars_disabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", watched)
    huggingface_hub.utils.enable_progress_bars()
    for progress in (False, True):
        folder = download("me/quiet", cache_dir=tmp_path / "cache", local_files_only=True, progress=progress)
        assert (folder / "fusemix.json").is_file()
    assert seen == [True, False]  # off during the quiet download, on during the other
    assert not huggingface_hub.utils.are_progress_bars_disabled()


def test_without_huggingface_hub_the_extra_is_named(aligned, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # "import huggingface_hub" now fails
    with pytest.raises(ImportError, match=r'pip install "fusemix\[hub\]"'):
        AlignedModel.from_pretrained("me/fusemix-toy")
    with pytest.raises(ImportError, match=r"fusemix\[hub\]"):
        push_to_hub(aligned, "me/fusemix-toy")
    assert push_to_hub(aligned, "me/fusemix-toy", api=FakeHub()).endswith("/commit/0001")  # an injected client works


@pytest.mark.parametrize("path", ["./missing", "/no/such/dir", "a/b/c"])
def test_paths_that_do_not_exist_are_not_taken_for_hub_ids(path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        AlignedModel.from_pretrained(path)


@pytest.mark.parametrize("repo_id", ["toy", "a/b/c", "/toy", ""])
def test_push_to_hub_needs_a_namespace(aligned, repo_id):
    with pytest.raises(ValueError, match="namespace/name"):
        push_to_hub(aligned, repo_id, api=FakeHub())


def test_save_pretrained_needs_an_aligned_model(tmp_path):
    with pytest.raises(TypeError, match="aligned: expected an AlignedModel"):
        save_pretrained(FusionModel.from_dims({"a": 2, "b": 2}, shared_dim=2, depth=1), tmp_path / "x")
