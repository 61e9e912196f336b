"""The package's shape: what ``import fusemix`` loads, the lazy I/O names, and which module may import which.

The import lists come from reading every module's source with ``ast`` (imports
inside functions included), not from what a module says about itself.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fusemix

PACKAGE = Path(fusemix.__file__).parent

CORE = {
    "fusemix",
    "fusemix._checks",
    "fusemix._registry",
    "fusemix._version",
    "fusemix.adapters",
    "fusemix.aligners",
    "fusemix.distributed",
    "fusemix.fixed_target",
    "fusemix.losses",
    "fusemix.metrics",
    "fusemix.mixing",
    "fusemix.model",
    "fusemix.regularizers",
    "fusemix.schedules",
    "fusemix.tables",
    "fusemix.warmstart",
}
"""The core: tensors in, tensors out. ``fusemix`` itself reaches the I/O half only lazily (``__getattr__``)."""

IO = {
    "fusemix.aligned",
    "fusemix.encoder_descriptions",
    "fusemix.hub",
    "fusemix.search",
    "fusemix.zeroshot",
    "fusemix._batch_reads",
    "fusemix._fileio",
    "fusemix._latent_identity",
    "fusemix._items",
    "fusemix._optional",
    "fusemix._paired",
    "fusemix._resume",
    "fusemix._run",
    "fusemix._run_files",
    "fusemix._run_log",
    "fusemix._selection",
    "fusemix._store_format",
    "fusemix._store_reader",
    "fusemix._store_writer",
    "fusemix.audio",
    "fusemix.checkpoint",
    "fusemix.cli",
    "fusemix.data",
    "fusemix.encoders",
    "fusemix.evaluation",
    "fusemix.extract",
    "fusemix.images",
    "fusemix.preprocess",
    "fusemix.recipe",
    "fusemix.store",
    "fusemix.train",
    "fusemix.train_config",
}
"""The I/O half: files, stores, encoders, training runs, the command line (packages stand for their modules)."""

ALIASES = {"fusemix.__main__", "fusemix.projectors"}
"""Entry point and deprecated alias modules: outside both halves, and nothing in the package imports them."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(name: str) -> str:
    """The top-level module or package a module belongs to: ``fusemix.cli.train`` -> ``fusemix.cli``."""
    return ".".join(name.split(".")[:2])


def imported_modules(path: Path) -> set[str]:
    """Every ``fusemix`` module ``path`` imports when it runs, at any depth (``from m import x`` counts ``m.x`` too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _executed_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "fusemix" or m.startswith("fusemix.")}


def _executed_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (imports for type checkers, never run)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}
KNOWN = {m for m in MODULES if m in CORE | IO | ALIASES or unit(m) in IO}


def existing(names: set[str]) -> set[str]:
    """The names that are modules of the package (``from fusemix.x import y`` also yields ``fusemix.x.y``)."""
    return {n for n in names if n in MODULES}


def test_every_module_is_classified():
    assert set(MODULES) == KNOWN, f"classify these modules as CORE or IO: {sorted(set(MODULES) - KNOWN)}"
    assert not CORE & IO


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_module_imports_nothing_from_the_io_half(name):
    io_imports = sorted(m for m in existing(imported_modules(MODULES[name])) if unit(m) in IO)
    assert not io_imports, f"{name} (core) imports I/O modules {io_imports}"


def test_no_module_imports_the_package_top_or_an_alias():
    for name, path in MODULES.items():
        imports = imported_modules(path)
        assert "fusemix" not in imports or name.startswith("fusemix.__"), f"{name} imports the package top"
        assert not imports & ALIASES, f"{name} imports {sorted(imports & ALIASES)}"


def test_no_import_cycle_between_top_level_modules():
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = {unit(m) for m in existing(imported_modules(path))} - {unit(name)}
        graph.setdefault(unit(name), set()).update(edges)
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(f"import cycle: {' -> '.join([*trail[trail.index(node) :], node])}")
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_no_module_imports_another_modules_private_names():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fusemix"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{name} imports {private} from {node.module}"


def test_import_fusemix_loads_torch_and_numpy_only():
    probe = """
import json, sys
import numpy, torch
before = set(sys.modules)
import fusemix
added = {name.split(".")[0] for name in set(sys.modules) - before}
print(json.dumps(sorted(added - set(sys.stdlib_module_names))))
"""
    added = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert added == ["fusemix"], f"import fusemix also imports {added}"


def test_fusemix_evaluate_does_not_import_the_trainer():
    probe = """
import json, sys
from fusemix.cli import build_parser
import fusemix.cli.evaluate
build_parser().parse_args(["evaluate", "--model", "m", "--latents", "text=t.npy"])
print(json.dumps(sorted(m for m in sys.modules if m in ("fusemix.train", "fusemix._run", "fusemix.recipe"))))
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = json.loads(run.stdout)
    assert loaded == [], f"'fusemix evaluate' imports the trainer modules {loaded}"


def test_import_fusemix_needs_none_of_the_optional_dependencies():
    optional = ("tqdm", "safetensors", "transformers", "matplotlib", "sentence_transformers", "soundfile", "PIL")
    probe = f"""
import sys
for name in {optional!r}:
    sys.modules[name] = None  # importing it now fails
import torch
import fusemix
print(fusemix.FuseMix(generator=torch.Generator().manual_seed(0))(torch.randn(4, 3)).shape)
"""
    subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)


LAZY = (
    "fusemix.checkpoint.load_model",
    "fusemix.checkpoint.save_model",
    "fusemix.data.LatentBatcher",
    "fusemix.data.PairedLatents",
    "fusemix.extract.extract_latents",
    "fusemix.store.LatentStore",
    "fusemix.store.write_store",
    "fusemix.evaluation.evaluate_retrieval",
    "fusemix.train.FitResult",
    "fusemix.train.fit",
    "fusemix.train_config.TrainConfig",
)
"""The I/O names reachable from ``fusemix``, by where they are defined."""


@pytest.mark.parametrize("path", LAZY)
def test_lazy_names_are_the_module_objects(path):
    module, _, name = path.rpartition(".")
    assert getattr(fusemix, name) is getattr(importlib.import_module(module), name)
    assert name in fusemix.__all__ and name in dir(fusemix)


def test_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        fusemix.not_a_name  # noqa: B018
