"""Release hygiene: the sdist and wheel that ``python -m build`` makes, their metadata, and CITATION.cff.

The build runs offline (``--no-isolation``: the setuptools already installed, no download) on a copy of the
project in a temporary folder, so it never writes ``build/`` or ``dist/`` into the checkout.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "fusemix"
_JUNK = shutil.ignore_patterns(
    ".git", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", "_build", ".pytest_cache", ".hypothesis",
    ".ruff_cache", ".mypy_cache", "results", "runs", ".fusemix_cache", ".venv", "venv",
)  # fmt: skip


def source_version() -> str:
    """``__version__`` as written in ``src/fusemix/__init__.py``: the one place the version is set."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("src/fusemix/__init__.py does not set __version__")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the sdist, then the wheel from it (what ``python -m build`` does), offline; the output folder."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    project = tmp_path_factory.mktemp("project") / "fusemix"
    shutil.copytree(REPO, project, ignore=_JUNK)
    out = project.parent / "dist"
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(project)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "Missing dependencies" in result.stdout + result.stderr:
        pytest.skip("the build backend (setuptools) is not installed here: " + result.stderr.strip()[-300:])
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> zipfile.ZipFile:
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return zipfile.ZipFile(wheels[0])


@pytest.fixture(scope="module")
def sdist(dist: Path) -> tarfile.TarFile:
    archives = sorted(dist.glob("*.tar.gz"))
    assert len(archives) == 1, archives
    return tarfile.open(archives[0])


def test_artifacts_are_named_by_the_source_version(dist: Path) -> None:
    version = source_version()
    assert sorted(p.name for p in dist.iterdir()) == [
        f"fusemix-{version}-py3-none-any.whl",
        f"fusemix-{version}.tar.gz",
    ]


def test_wheel_holds_the_package_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    dist_info = f"fusemix-{source_version()}.dist-info/"
    names = wheel.namelist()
    strays = [n for n in names if not n.startswith(("fusemix/", dist_info))]
    assert not strays, f"files outside the package in the wheel: {strays}"
    assert not [n for n in names if re.search(r"(^|/)(tests?|examples|docs|benchmarks)/|conftest|__pycache__", n)]
    source = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    packaged = {n for n in names if n.endswith(".py")}
    assert packaged == source, f"modules missing from the wheel: {sorted(source - packaged)}"
    assert "fusemix/py.typed" in names  # PEP 561: type checkers use the inline hints
    assert f"{dist_info}licenses/LICENSE" in names


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    dist_info = f"fusemix-{source_version()}.dist-info/"
    metadata = email.parser.Parser().parsestr(wheel.read(dist_info + "METADATA").decode("utf-8"))
    assert metadata["Name"] == "fusemix"
    assert metadata["Version"] == source_version()
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    core = sorted(r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r)
    assert [re.split(r"[<>=!~ ;]", r)[0] for r in core] == ["numpy", "torch"]  # the core needs nothing else
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"train", "hf", "sentence-transformers", "audio", "examples", "docs", "test"} <= extras
    assert metadata["Description-Content-Type"] == "text/markdown" and "fusemix" in metadata.get_payload()
    entry_points = wheel.read(dist_info + "entry_points.txt").decode("utf-8")
    assert re.search(r"^\[console_scripts\]\s*\nfusemix = fusemix\.cli:main$", entry_points, re.MULTILINE)
    assert "Root-Is-Purelib: true" in wheel.read(dist_info + "WHEEL").decode("utf-8")


def test_sdist_holds_the_sources_and_the_license(sdist: tarfile.TarFile) -> None:
    root = f"fusemix-{source_version()}/"
    names = {n.removeprefix(root) for n in sdist.getnames()}
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "PKG-INFO",
        "src/fusemix/py.typed",
        "src/fusemix/cli/__init__.py",
    ):
        assert needed in names, f"{needed} is missing from the sdist"
    pkg_info = email.parser.Parser().parsestr(sdist.extractfile(root + "PKG-INFO").read().decode("utf-8"))
    assert pkg_info["Version"] == source_version()


def test_sdist_test_suite_is_complete(sdist: tarfile.TarFile) -> None:
    root = f"fusemix-{source_version()}/"
    names = {n.removeprefix(root) for n in sdist.getnames()}
    shipped_tests = {n for n in names if n.startswith("tests/") and n.endswith(".py")}
    if not shipped_tests:
        return  # an sdist without tests is consistent too
    helpers = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").glob("*.py") if not p.name.startswith("test_")}
    wanted = helpers | {"CITATION.cff", "CHANGELOG.md", "examples/replicate_paper.py", "docs/conf.py"}
    assert not sorted(wanted - names), f"missing from the sdist: {sorted(wanted - names)}"


def test_version_is_set_in_one_place() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    project_table = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project_table, re.MULTILINE), "pyproject.toml sets a static version"
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project_table, re.MULTILINE)
    assert re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"fusemix.__version__"\s*\}', pyproject, re.MULTILINE)
    citation = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(rf"^version:\s*{re.escape(source_version())}\s*$", citation, re.MULTILINE), (
        "CITATION.cff's version differs from fusemix.__version__"
    )


def test_citation_names_the_paper_and_the_software() -> None:
    yaml = pytest.importorskip("yaml")
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["license"] == "MIT" and citation["message"] and citation["title"].startswith("fusemix")
    paper = citation["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2024
    assert paper["title"] == "Data-Efficient Multimodal Fusion on a Single GPU"
    assert [a["family-names"] for a in paper["authors"]] == [
        "Vouitsis", "Liu", "Gorti", "Villecroze", "Cresswell", "Yu", "Loaiza-Ganem", "Volkovs",
    ]  # fmt: skip
    assert "CVPR" in paper["conference"]["name"] and paper["url"] == "https://arxiv.org/abs/2312.10144"
    assert {i["value"] for i in paper["identifiers"]} >= {"arXiv:2312.10144", "10.48550/arXiv.2312.10144"}
