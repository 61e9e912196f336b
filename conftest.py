"""Doctest namespace: ``torch`` is available in every docstring example of the package."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    torch.manual_seed(0)


# The deprecated alias module warns on import; tests/test_projectors.py checks it, doctest collection skips it.
collect_ignore = ["src/fusemix/projectors.py"]
