"""Share trained models: ``save_pretrained`` / ``push_to_hub`` / ``download``, with a generated model card.

A saved model is a directory (or a Hugging Face Hub model repository) of
four files, none of them pickled:

============================ ===============================================================
``model.safetensors``        the adapters' and the loss's weights (safetensors)
``fusemix.json``             the model's description and its training configuration
``encoders.json``            which frozen encoder feeds each adapter
                             (:mod:`fusemix.encoder_descriptions`)
``README.md``                the model card: encoders, training data, metrics, configuration,
                             usage, citation; with Hub metadata (``library_name: fusemix``,
                             ``base_model``: the encoders that live on the Hub)
============================ ===============================================================

:meth:`fusemix.aligned.AlignedModel.from_pretrained` reads a local run or
model directory, or downloads those four files of a Hub repository with
:func:`download` (``huggingface_hub``, ``pip install "fusemix[hub]"``,
imported only then), and opens them with
:meth:`~fusemix.aligned.AlignedModel.from_directory`. Loading runs no code
from the repository: the encoders are rebuilt from their JSON descriptions
by fusemix's own classes.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from fusemix._optional import require
from fusemix._version import fusemix_version
from fusemix.encoder_descriptions import ENCODERS_FILE, describe_encoder
from fusemix.model import FusionModel

CARD_FILE = "README.md"
"""Name of the model card."""

HUB_FILES: tuple[str, ...] = ("model.safetensors", "fusemix.json", ENCODERS_FILE, CARD_FILE)
"""The files of a saved model, as uploaded to and downloaded from the Hub."""

CITATION = """\
@inproceedings{vouitsis2024fusemix,
  title     = {Data-Efficient Multimodal Fusion on a Single GPU},
  author    = {Vouitsis, No{\\"e}l and Liu, Zhaoyan and Gorti, Satya Krishna and Villecroze, Valentin and
               Cresswell, Jesse C. and Yu, Guangwei and Loaiza-Ganem, Gabriel and Volkovs, Maksims},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""


class SavableModel(Protocol):
    """What saving needs of a :class:`~fusemix.aligned.AlignedModel`: the model, its encoders and their records."""

    model: FusionModel
    encoders: Mapping[str, Any]
    encoder_descriptions: Mapping[str, Mapping[str, Any]]
    train_config: Mapping[str, Any] | None

    @property
    def modalities(self) -> list[str]: ...


def _hub(user: str) -> Any:
    return require("huggingface_hub", extra="hub", user=user)


def _descriptions(aligned: SavableModel) -> dict[str, dict[str, Any]]:
    """Descriptions of every modality's encoder: of the loaded ones, else those recorded when it was opened."""
    described = dict(aligned.encoder_descriptions)
    described.update({modality: describe_encoder(e.encoder) for modality, e in aligned.encoders.items()})
    return {modality: described[modality] for modality in aligned.modalities if modality in described}


def _yaml_string(text: str) -> str:
    """``text`` as a YAML scalar: bare when that is unambiguous, else a (JSON, hence YAML) quoted string."""
    return text if re.fullmatch(r"[A-Za-z][A-Za-z0-9_./-]*", text) else json.dumps(text, ensure_ascii=False)


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics: expected a mapping of metric name to number, got {type(metrics).__name__}")
    checked = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"metrics[{name!r}]: expected a finite number, got {value!r}")
        checked[str(name)] = float(value)
    return checked


def _encoder_row(modality: str, description: Mapping[str, Any]) -> str:
    if description["kind"] == "custom":
        identity = json.dumps(description["identity"], ensure_ascii=False)
        cls = description.get("class", "?")
        return f"| {modality} | custom (`{cls}`) | identity `{identity}` | pass it: `from_pretrained(encoders=...)` |"
    where = "local directory" if description["local"] else "Hub"
    model = description["identity"].get("model", description["location"])
    options = ", ".join(f"{key}={json.dumps(value)}" for key, value in description["options"].items())
    return f"| {modality} | {description['kind']} | `{model}` ({where}) | {options} |"


def model_card(
    aligned: SavableModel,
    *,
    name: str,
    metrics: Mapping[str, float] | None = None,
    train_pairs: int | None = None,
    dataset: str | None = None,
    license: str | None = None,
) -> str:
    """The ``README.md`` of a saved model: Hub metadata, encoders, data, metrics, configuration, usage, citation.

    Args:
        aligned: The model and its encoders.
        name: Title of the card (the repository id or directory name).
        metrics: Evaluation results, e.g. :func:`fusemix.retrieval_metrics`' dict.
        train_pairs: Number of training pairs.
        dataset: What the model was trained on (free text).
        license: License identifier for the Hub metadata, e.g. ``"mit"``.

    Returns:
        Markdown with a YAML front matter.

    """
    __version__ = fusemix_version()
    descriptions = _descriptions(aligned)
    checked = _check_metrics(metrics)
    base_models = sorted({d["location"] for d in descriptions.values() if d["kind"] != "custom" and not d["local"]})
    front = ["---", "library_name: fusemix", "tags:", "- fusemix", "- multimodal", "- feature-extraction"]
    front += [f"- {_yaml_string(m)}" for m in aligned.modalities]
    if license is not None:
        front.append(f"license: {_yaml_string(license)}")
    if base_models:
        front += ["base_model:", *(f"- {_yaml_string(m)}" for m in base_models)]
    front.append("---")
    shared = {getattr(a, "out_dim", None) for a in aligned.model.adapters.values()} - {None}
    space = f"a shared {shared.pop()}-d space" if len(shared) == 1 else "a shared space"
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        f"Fusion adapters trained with [fusemix](https://pypi.org/project/fusemix/) {__version__} (FuseMix, CVPR "
        f"2024) that map the frozen encoders' latents of {', '.join(aligned.modalities)} into {space}: "
        "retrieval, search and zero-shot classification across modalities.",
        "",
        "## Encoders",
        "",
        "| modality | kind | model | options |",
        "|---|---|---|---|",
        *(_encoder_row(m, d) for m, d in descriptions.items()),
    ]
    missing = [m for m in aligned.modalities if m not in descriptions]
    if missing:
        lines += ["", f"No encoder is recorded for {', '.join(missing)}: embed precomputed latents with `.embed()`."]
    lines += ["", "## Training data", ""]
    data = [f"{train_pairs:,} training pairs" if train_pairs is not None else None, dataset]
    lines.append("; ".join(part for part in data if part) or "Not recorded.")
    lines += ["", "## Metrics", ""]
    if checked:
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in checked.items())]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Training configuration", ""]
    if aligned.train_config:
        lines += ["```json", json.dumps(aligned.train_config, indent=2, sort_keys=True), "```"]
    else:
        lines.append("Not recorded.")
    example = "text" if "text" in aligned.modalities else aligned.modalities[0]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from fusemix.aligned import AlignedModel",
        "",
        f'aligned = AlignedModel.from_pretrained({json.dumps(name)})  # pip install "fusemix[hub]"',
        f"embeddings = aligned[{json.dumps(example)}].encode(items)  # unit norm, shared space",
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def save_pretrained(
    aligned: SavableModel,
    path: str | os.PathLike[str],
    *,
    metrics: Mapping[str, float] | None = None,
    train_pairs: int | None = None,
    dataset: str | None = None,
    license: str | None = None,
    name: str | None = None,
) -> Path:
    """Save a model, its encoder descriptions and a model card to a directory, whole.

    The directory is written into a staging sibling and swapped in (see
    :func:`fusemix.checkpoint.atomic_directory`): a reader sees the old
    directory or the new one, never a mix; an existing one is replaced.

    Args:
        aligned: The model and its encoders.
        path: The directory to write.
        metrics: Evaluation results for the card.
        train_pairs: Number of training pairs, for the card.
        dataset: What it was trained on, for the card.
        license: License identifier, for the card's metadata.
        name: Title of the card (default: the directory's name).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If ``aligned`` is not an :class:`~fusemix.aligned.AlignedModel`,
            holds custom adapters or losses, or ``metrics`` are not numbers.
        ImportError: If safetensors is not installed.

    """
    from fusemix.checkpoint import atomic_directory, save_model, write_text_atomic

    if not isinstance(getattr(aligned, "model", None), FusionModel):
        raise TypeError(f"aligned: expected an AlignedModel, got {type(aligned).__name__}")
    path = Path(path)
    card = model_card(
        aligned,
        name=name or path.resolve().name,
        metrics=metrics,
        train_pairs=train_pairs,
        dataset=dataset,
        license=license,
    )
    descriptions = _descriptions(aligned)
    with atomic_directory(path) as staging:
        save_model(aligned.model, staging, config=aligned.train_config, encoders=descriptions or None)
        write_text_atomic(staging / CARD_FILE, card)
    return path


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a file path rather than a Hub id (``name`` or ``namespace/name``)."""
    return text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or "\\" in text


def download(
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    progress: bool = True,
) -> Path:
    """The local directory of a saved model: ``path_or_repo_id`` itself, or a Hub repository's files downloaded.

    :meth:`fusemix.aligned.AlignedModel.from_pretrained` opens what this returns.

    Args:
        path_or_repo_id: A local directory (a training run, a model
            directory, a :func:`save_pretrained` directory) or a Hub model
            id such as ``"user/fusemix-openmoji"``.
        revision: Hub branch, tag or commit (Hub only).
        cache_dir: Hub cache directory (Hub only; default: huggingface_hub's).
        token: Hub token for private repositories (Hub only).
        local_files_only: Use only the local Hub cache, never the network
            (Hub only; ``HF_HUB_OFFLINE=1`` does the same).
        progress: Show huggingface_hub's download bars and INFO logs;
            ``False`` turns them off for the download (Hub only).

    Returns:
        The directory.

    Raises:
        FileNotFoundError: If a path written as a local path is not a directory.
        ImportError: If a Hub id is given and huggingface_hub is not installed.

    """
    local = Path(path_or_repo_id).expanduser()
    if local.is_dir():
        return local
    text = os.fspath(path_or_repo_id)
    if isinstance(path_or_repo_id, os.PathLike) or _looks_like_path(text) or local.exists():
        raise FileNotFoundError(f"path_or_repo_id: {text}: no such directory")
    hub = _hub("from_pretrained of a Hub repository")
    from fusemix.encoders._loading import model_loading

    with model_loading(progress):
        folder = hub.snapshot_download(
            text,
            revision=revision,
            allow_patterns=list(HUB_FILES),
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            library_name="fusemix",
        )
    return Path(folder)


def push_to_hub(
    aligned: SavableModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload fusemix model",
    create_pr: bool = False,
    metrics: Mapping[str, float] | None = None,
    train_pairs: int | None = None,
    dataset: str | None = None,
    license: str | None = None,
    api: Any = None,
) -> str:
    """Upload a model to a Hugging Face Hub model repository (created if needed), in one commit.

    The model is saved with :func:`save_pretrained` into a temporary
    directory whose four files (:data:`HUB_FILES`, or three without encoder
    descriptions) are uploaded with ``api.upload_folder``.

    Args:
        aligned: The model and its encoders.
        repo_id: ``"user/name"`` or ``"organisation/name"``.
        private: Create the repository private (only when it does not exist yet).
        token: Hub token (default: the one ``huggingface-cli login`` stored).
        revision: Branch to commit to (default: the main branch).
        commit_message: The commit's message.
        create_pr: Open a pull request instead of committing to the branch.
        metrics: Evaluation results, for the model card.
        train_pairs: Number of training pairs, for the model card.
        dataset: What it was trained on, for the model card.
        license: License identifier, for the model card's metadata.
        api: An object with ``create_repo`` and ``upload_folder`` methods like
            ``huggingface_hub.HfApi`` (default: ``HfApi(token=token)``); for
            another endpoint or for tests.

    Returns:
        What ``upload_folder`` returns, as a string (the commit's URL for ``HfApi``).

    Raises:
        ImportError: If ``api`` is not given and huggingface_hub is not installed.
        ValueError: If ``repo_id`` is not of the form ``namespace/name``.

    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id: expected 'namespace/name', got {repo_id!r}")
    hub_api = _hub("push_to_hub").HfApi(token=token) if api is None else api
    hub_api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="fusemix-push-") as tmp:
        folder = save_pretrained(
            aligned,
            Path(tmp) / "model",
            metrics=metrics,
            train_pairs=train_pairs,
            dataset=dataset,
            license=license,
            name=repo_id,
        )
        result = hub_api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            allow_patterns=list(HUB_FILES),
        )
    return str(result)


__all__ = ["CARD_FILE", "HUB_FILES", "SavableModel", "download", "model_card", "push_to_hub", "save_pretrained"]
