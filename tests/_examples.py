"""Import the example scripts and their ``replication`` package the way they import each other.

``examples/`` is put on ``sys.path`` once, so ``import_example("replication.image_text_data")`` is the same
module object that ``examples/replicate_paper.py`` and the other example modules use (relative imports inside
``replication`` work, and a dataclass is one class however it is reached).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def import_example(name: str) -> ModuleType:
    """The module ``name`` of ``examples/``, e.g. ``"replicate_paper"`` or ``"replication.pipeline"``."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)
