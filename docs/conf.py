"""Sphinx configuration of the fusemix documentation.

Build (warnings are errors; every code block is also run by ``tests/test_docs.py``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The build is offline by default: nothing is fetched. Set ``FUSEMIX_DOCS_INTERSPHINX=1``
to link PyTorch, NumPy and Python names to their documentation through intersphinx;
that downloads three inventories, and a failed download is a warning (so an error
under ``-W``), which is what you want when you asked for the links. Offline, names
from those projects render as plain text, and ``nitpick_ignore_regex`` below keeps
them from being reported as broken references; references to fusemix's own names
must always resolve (``nitpicky = True``).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "src"))  # document the checkout, installed or not
sys.path.insert(0, str(DOCS / "_ext"))

import fusemix  # noqa: E402

# -- Project -------------------------------------------------------------------------------
project = "fusemix"
author = "fusemix developers"
copyright = "fusemix developers"
release = fusemix.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "markdown_include",  # docs/_ext: CHANGELOG.md without a Markdown parser
]
exclude_patterns = ["_build", "_scripts", "_ext", "README.md"]
root_doc = "index"
nitpicky = True
# `::` blocks are plain text; Python examples use `.. code-block:: python` and are run as tests.
highlight_language = "text"

# -- Intersphinx (opt-in, needs network) ---------------------------------------------------
if os.environ.get("FUSEMIX_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
    }
    intersphinx_timeout = 30
# Names of other projects: linked when intersphinx is on and finds them, never reported as broken.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|collections|typing|types|builtins|dataclasses|pathlib|os|abc)(\..*)?"),
    (r"py:class", r"fusemix(\.\w+)*\._\w+(\.\w+)*"),  # private classes (e.g. in "Bases:"), shown as text
]

# -- Autodoc and napoleon ------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"  # "description" shows unevaluated alias names for class parameters
autodoc_inherit_docstrings = False  # no torch.nn.Module boilerplate on undocumented overrides
autodoc_typehints_format = "short"
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so a documented property of the same name is no duplicate
napoleon_custom_sections = [("Shape", "notes_style")]

# -- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"fusemix {release}"
html_show_sourcelink = False


_RETURNS_HEADER = re.compile(r"^(\s*)(Returns?|Yields?):\s*$")


def _descriptions_only(app: Sphinx, what: str, name: str, obj: object, options: dict, lines: list[str]) -> None:
    """Keep napoleon from reading a type out of a description; runs before napoleon (priority 400 < 500).

    Napoleon reads the text before the first colon of a ``Returns:`` section
    (``Returns: type: description``) and of an attribute's or property's
    first line (``int: description``) as a *type*, which garbles the
    project's ``Foo. Shape: (N, D).`` style. fusemix takes every type from the
    type hints, so these are always pure descriptions: a ``Returns:`` or
    ``Yields:`` section becomes a ``:returns:`` / ``:Yields:`` field, and an
    attribute's first line gets an explicit empty inline type (``: ...``).
    """
    if what in ("attribute", "property", "data"):
        first = next((k for k, line in enumerate(lines) if line.strip()), None)
        if first is not None and ":" in lines[first]:
            lines[first] = ": " + lines[first]  # an empty inline type; the whole line is the description
        return
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = _RETURNS_HEADER.match(lines[i])
        if not header:
            out.append(lines[i])
            i += 1
            continue
        indent = header.group(1)
        body: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i])
            i += 1
        text_end = max((k + 1 for k, line in enumerate(body) if line.strip()), default=0)
        text = textwrap.dedent("\n".join(body[:text_end])).strip("\n").splitlines()
        field = "returns" if header.group(2).startswith("Return") else "Yields"
        out.append(f"{indent}:{field}: {text[0] if text else ''}")
        out.extend(f"{indent}    {line}" if line.strip() else "" for line in text[1:])
        out.extend([""] * (len(body) - text_end))
    lines[:] = out


def _public_alias(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.reference | None:
    """Resolve a fusemix name to the public ``fusemix.<Name>`` it is documented under.

    The API reference documents public names where users import them
    (``fusemix.FuseMix``), while type hints and module docstrings name them
    from the defining module (``fusemix.mixing.MixParams``, or ``MixParams``
    and ``FuseMix.forward`` inside ``fusemix.mixing``); this maps those onto
    the public name.
    """
    if node.get("refdomain") != "py":
        return None
    parts = node.get("reftarget", "").split(".")
    public = next((k for k, part in enumerate(parts) if part in fusemix.__all__), None)
    if public is None or (public > 0 and parts[0] != "fusemix"):
        return None
    if public == 0 and not (node.get("py:module") or "").startswith("fusemix"):
        return None  # a bare name outside fusemix's own docstrings is not ours to resolve
    target = ".".join(["fusemix", *parts[public:]])
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)


def setup(app: Sphinx) -> None:
    """Register the docstring pre-processor (before napoleon's, priority 500) and the alias resolver."""
    app.connect("autodoc-process-docstring", _descriptions_only, priority=400)
    app.connect("missing-reference", _public_alias)
