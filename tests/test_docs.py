"""Docs as tests: every Python block of docs/ runs, the API reference covers ``fusemix.__all__``, the site builds."""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import fusemix

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.relative_to(DOCS).parts)

_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\.\s+(?P<name>code-block|code|sourcecode)::\s*(?P<lang>\S*)\s*$")
_PYTHON_ALIASES = {"py", "py3", "python3", "pycon", "ipython", "ipython3"}
_SKIP = re.compile(r"^\s*\.\.\s+skip-test(?::\s*\S.*)?\s*$")
_DOCTEST_LINE = re.compile(r"^\s*>>>")


@dataclass(frozen=True)
class Snippet:
    """One Python block of a page: where it starts (1-based line of its first code line) and its code."""

    line: int
    code: str
    skip: bool

    @property
    def is_doctest(self) -> bool:
        return self.code.lstrip().startswith(">>>")


def extract_snippets(text: str, source: str = "<rst>") -> list[Snippet]:
    """The ``.. code-block:: python`` blocks of an rST page, in order.

    A block preceded by an rST comment ``.. skip-test`` (optionally ``.. skip-test: reason``) is marked to skip.

    Raises:
        ValueError: On a Python block spelt another way (``.. code::``, ``py``, ``pycon``, ...), which the tests
            would miss, or a ``>>>`` line outside a Python block.

    """
    lines = text.splitlines()
    snippets: list[Snippet] = []
    inside: set[int] = set()
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        lang = match.group("lang").lower()
        if lang in _PYTHON_ALIASES or (lang == "python" and match.group("name") != "code-block"):
            raise ValueError(f"{source}:{i + 1}: write Python examples as '.. code-block:: python' so they are run")
        indent = len(match.group("indent"))
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = bool(_SKIP.match(previous))
        j = i + 1
        while j < len(lines) and lines[j].strip().startswith(":") and _indent(lines[j]) > indent:
            j += 1  # directive options
        body: list[str] = []
        start = j
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
            body.append(lines[j])
            j += 1
        inside.update(range(i, j))  # '>>>' inside any code block is deliberate
        if lang == "python":
            first = next((k for k, line in enumerate(body) if line.strip()), None)
            if first is None:
                raise ValueError(f"{source}:{i + 1}: empty Python block")
            code = textwrap.dedent("\n".join(body[first:])).rstrip() + "\n"
            snippets.append(Snippet(line=start + first + 1, code=code, skip=skip))
        i = j
    stray = [k + 1 for k, line in enumerate(lines) if _DOCTEST_LINE.match(line) and k not in inside]
    if stray:
        raise ValueError(f"{source}:{stray[0]}: '>>>' outside a '.. code-block:: python' block is never run")
    return snippets


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def run_snippets(snippets: list[Snippet], source: str) -> int:
    """Run the blocks in order in one namespace; return how many ran. Tracebacks point at the page's lines."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    ran = 0
    for snippet in snippets:
        if snippet.skip:
            continue
        if snippet.is_doctest:
            test = doctest.DocTestParser().get_doctest(snippet.code, namespace, source, source, snippet.line - 1)
            report: list[str] = []
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            result = runner.run(test, out=report.append, clear_globs=False)
            assert result.failed == 0, f"{source}:{snippet.line}: doctest failed\n" + "".join(report)
        else:
            exec(compile("\n" * (snippet.line - 1) + snippet.code, source, "exec"), namespace)  # noqa: S102
        ran += 1
    return ran


# -- the extractor itself ------------------------------------------------------------------------


SAMPLE = """\
Title
=====

.. code-block:: python

   x = 1

   y = x + 1

Text.

.. skip-test: needs a CUDA device

.. code-block:: python
   :caption: not run

   torch.zeros(1, device="cuda")

.. code-block:: bash

   >>> not python

- A list item with a block:

  .. code-block:: python

     if y:
         z = 3
"""


def test_extract_snippets_finds_blocks_lines_and_skips() -> None:
    snippets = extract_snippets(SAMPLE)
    assert [s.line for s in snippets] == [6, 17, 27]
    assert snippets[0].code == "x = 1\n\ny = x + 1\n"
    assert [s.skip for s in snippets] == [False, True, False]
    assert snippets[2].code == "if y:\n    z = 3\n"
    assert run_snippets(snippets, "sample.rst") == 2  # the skipped block (it would fail: no torch here) did not run


@pytest.mark.parametrize(
    "text",
    [".. code-block:: py\n\n   x = 1\n", ".. code:: python\n\n   x = 1\n", ".. code-block:: pycon\n\n   >>> 1\n"],
)
def test_extract_snippets_refuses_python_it_would_not_run(text: str) -> None:
    with pytest.raises(ValueError, match="code-block:: python"):
        extract_snippets(text)


def test_extract_snippets_refuses_stray_doctest_lines() -> None:
    with pytest.raises(ValueError, match=r"<rst>:3: '>>>'"):
        extract_snippets("Text::\n\n   >>> 1 + 1\n   2\n")


def test_run_snippets_reports_the_page_line_of_a_failure() -> None:
    snippets = extract_snippets("T\n=\n\n.. code-block:: python\n\n   a = 1\n   assert a == 2\n")
    with pytest.raises(AssertionError) as info:
        run_snippets(snippets, "page.rst")
    assert ("page.rst", 7) in [(frame.filename, frame.lineno) for frame in traceback.extract_tb(info.tb)]


def test_run_snippets_runs_doctest_blocks_in_the_shared_namespace() -> None:
    block = ".. code-block:: python\n\n"
    snippets = extract_snippets(block + "   a = 20\n\n" + block + "   >>> a + 1\n   21\n")
    assert run_snippets(snippets, "page.rst") == 2
    wrong = extract_snippets(".. code-block:: python\n\n   >>> 1 + 1\n   3\n")
    with pytest.raises(AssertionError, match="doctest failed"):
        run_snippets(wrong, "page.rst")


# -- the pages -----------------------------------------------------------------------------------


@pytest.fixture
def docs_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run page code in an empty directory, offline, single-threaded (small tensors; shared CPUs), then restore."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_docs_have_pages_with_code() -> None:
    counts = {p.relative_to(DOCS).as_posix(): len(extract_snippets(p.read_text(), str(p))) for p in PAGES}
    assert counts.get("quickstart.rst", 0) >= 2 and counts.get("concepts.rst", 0) >= 1
    assert counts.get("guide/core.rst", 0) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_code_runs(page: Path, docs_sandbox: None) -> None:
    snippets = extract_snippets(page.read_text(encoding="utf-8"), str(page))
    torch.manual_seed(0)
    ran = run_snippets(snippets, str(page))
    assert ran == sum(not s.skip for s in snippets)


# -- the API reference ---------------------------------------------------------------------------

_API_ENTRY = re.compile(
    r"^\s*\.\.\s+(?:auto(?:class|function|data|exception|attribute|method|module)|currentmodule|"
    r"py:(?:class|function|data|exception|attribute|method|module|currentmodule))::\s*(\S+)",
    re.MULTILINE,
)


def documented_names(api_rst: str) -> set[str]:
    """Fully qualified names that ``api.rst`` documents, resolving ``currentmodule`` / ``automodule``."""
    names: set[str] = set()
    module = ""
    for match in _API_ENTRY.finditer(api_rst):
        directive, name = match.group(0).split("::")[0].strip(), match.group(1)
        if directive.endswith(("currentmodule", "automodule", "py:module")):
            module = name
            continue
        names.add(name if name.startswith("fusemix.") or not module else f"{module}.{name}")
    return names


def test_documented_names_resolves_the_current_module() -> None:
    text = ".. currentmodule:: fusemix\n.. autoclass:: A\n.. py:data:: fusemix.b\n"
    text += ".. automodule:: fusemix.x\n.. autofunction:: c\n"
    assert documented_names(text) == {"fusemix.A", "fusemix.b", "fusemix.x.c"}


def test_api_reference_covers_every_public_name() -> None:
    documented = documented_names((DOCS / "api.rst").read_text(encoding="utf-8"))
    missing = sorted(name for name in fusemix.__all__ if f"fusemix.{name}" not in documented)
    assert not missing, f"docs/api.rst has no entry for these names of fusemix.__all__: {missing}"


# -- helpers of the build ------------------------------------------------------------------------


def _load_markdown_include() -> ModuleType:
    """The docs' Sphinx extension, imported under the name ``conf.py`` gives it."""
    pytest.importorskip("docutils", reason="docutils comes with Sphinx: pip install -e '.[docs]'")
    if "markdown_include" not in sys.modules:
        spec = importlib.util.spec_from_file_location("markdown_include", DOCS / "_ext" / "markdown_include.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["markdown_include"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["markdown_include"]


MARKDOWN = """\
# Changelog

Format of [Keep a Changelog](https://keepachangelog.com/) with `code`s, snake_case, a*b, |pipe|, \\*stars\\*,
*em*, **strong**, ``` a``b ``` and https://example.com/a_b.

## [0.1.0] - 2024-01-01

### Added
- `FuseMix`: one lambda, *shared*;
  continued `i2t_R@1`
  - nested item
- back out
1. first
2. second

```python
x = 1  # *not* markup
```

[0.1.0]: https://example.com/v0.1.0
"""


def test_markdown_include_converts_the_changelog_subset() -> None:
    rst = _load_markdown_include().markdown_to_rst(MARKDOWN)
    from docutils import core as docutils_core

    settings = {"report_level": 5, "halt_level": 5, "doctitle_xform": False}
    doctree = docutils_core.publish_doctree(rst, settings_overrides=settings)
    messages = [m.astext() for m in doctree.findall(lambda n: n.tagname == "system_message")]
    assert not messages, messages
    first = doctree.next_node(lambda n: n.tagname == "paragraph").astext()
    assert first == (
        "Format of Keep a Changelog with codes, snake_case, a*b, |pipe|, *stars*, em, strong, a``b and "
        "https://example.com/a_b."
    )
    refs = {n.astext(): n["refuri"] for n in doctree.findall(lambda n: n.tagname == "reference")}
    assert refs == {
        "Keep a Changelog": "https://keepachangelog.com/",
        "https://example.com/a_b": "https://example.com/a_b",
        "0.1.0": "https://example.com/v0.1.0",
    }
    titles = [n.astext() for n in doctree.findall(lambda n: n.tagname == "title")]
    assert titles == ["Changelog", "0.1.0 - 2024-01-01", "Added"]
    bullets = list(doctree.findall(lambda n: n.tagname == "bullet_list"))
    assert len(bullets) == 2 and bullets[1].parent.parent is bullets[0]  # the nested list sits in the first item
    top_items = [item.next_node(lambda n: n.tagname == "paragraph").astext() for item in bullets[0].children]
    assert top_items == ["FuseMix: one lambda, shared; continued i2t_R@1", "back out"]
    enumerated = doctree.next_node(lambda n: n.tagname == "enumerated_list")
    assert [item.astext() for item in enumerated.children] == ["first", "second"]
    assert doctree.next_node(lambda n: n.tagname == "literal_block").astext() == "x = 1  # *not* markup"


@pytest.mark.parametrize(
    ("markdown", "line"),
    [("Text\n\n> quote\n", 3), ("| a | b |\n", 1), ("<div>x</div>\n", 1), ("Title\n=====\n", 2), ("```\nx\n", 1)],
)
def test_markdown_include_refuses_what_it_cannot_convert(markdown: str, line: int) -> None:
    module = _load_markdown_include()
    with pytest.raises(module.MarkdownError) as info:
        module.markdown_to_rst(markdown)
    assert info.value.line == line


def test_concepts_figure_script_draws_an_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "figure.svg"
    script = DOCS / "_scripts" / "make_concepts_figure.py"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, timeout=120)
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml") and "<svg" in out.read_text(encoding="utf-8")
    assert (DOCS / "_static" / "fusemix_shared_lambda.svg").is_file()  # the committed copy the docs include


# -- the build -----------------------------------------------------------------------------------


def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[docs]')")
    pytest.importorskip("furo", reason="the furo theme is not installed (pip install -e '.[docs]')")
    env = {k: v for k, v in os.environ.items() if k != "FUSEMIX_DOCS_INTERSPHINX"}  # offline build
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr}\n{result.stdout}"
    api = (out / "api.html").read_text(encoding="utf-8")
    missing = [name for name in fusemix.__all__ if f'id="fusemix.{name}"' not in api]
    assert not missing, f"api.html has no entry for {missing}"
    for page in PAGES:
        assert (out / page.relative_to(DOCS).with_suffix(".html")).is_file(), f"{page} was not built"


# -- the README ------------------------------------------------------------------------------------


def _readme_python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 2, "the README should have two Python blocks: the training loop and the aligned space"
    return blocks


def test_readme_training_loop_runs_on_stand_in_latents() -> None:
    """The README's usage block, with the names it leaves to the reader bound to small random latents."""
    blocks = _readme_python_blocks()
    gen = torch.Generator().manual_seed(0)
    namespace = {
        "batches": [(torch.randn(8, 1536, generator=gen), torch.randn(8, 1024, generator=gen)) for _ in range(2)],
        "test_img": torch.randn(3, 1536, generator=gen),
        "test_txt": torch.randn(6, 1024, generator=gen),
        "text_to_image": torch.tensor([0, 0, 1, 1, 2, 2]),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    finally:
        torch.set_num_threads(threads)
    assert set(namespace["metrics"]) >= {"i2t_R@1", "t2i_R@1", "mean"}


def test_readme_aligned_space_block_runs_on_a_tiny_trained_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's aligned-space block, offline: a run trained with tiny Hugging Face encoders, a gallery store
    embedded from raw images, search, zero-shot and push_to_hub against a stubbed Hub client."""
    pytest.importorskip("transformers")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny_models import build_bert, build_dinov2
    from fusemix.aligned import AlignedModel, embed_store
    from fusemix.data import PairedLatents
    from fusemix.encoders import HFImageEncoder, HFTextEncoder
    from fusemix.train import TrainConfig, fit

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    text = HFTextEncoder(build_bert(tmp_path / "bert"), pooling="mean", device="cpu", progress=False)
    image = HFImageEncoder(build_dinov2(tmp_path / "dinov2"), device="cpu", progress=False)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(12)]
    captions = ["a red apple", "a small dog", "the blue car", "a photo of fruit"] * 3
    data = PairedLatents({"image": image(pictures).numpy(), "text": text(captions).numpy()})
    config = TrainConfig(epochs=2, batch_size=12, shared_dim=8, depth=1, dropout=0.0, warmup_steps=1, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(data, config, out_dir="runs/mine", encoders={"image": image, "text": text}, progress=False)
        embed_store(AlignedModel.from_pretrained("runs/mine")["image"], pictures, "gallery/image", progress=False)
        uploads: list[dict] = []
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: uploads.append(kw))
        namespace = {"my_images": pictures[:3]}
        exec(compile(_readme_python_blocks()[1], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    finally:
        torch.set_num_threads(threads)
    assert namespace["rows"].shape == (1, 5) and namespace["scores"].shape == (1, 5)
    assert namespace["labels"].shape == (3,) and set(namespace["labels"].tolist()) <= {0, 1}
    assert [u["repo_id"] for u in uploads] == ["me/my-aligned-space"]
