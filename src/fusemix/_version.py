"""The installed fusemix version, for the files fusemix writes.

``fusemix.__version__`` is set in one place, the package's ``__init__.py``
(the build reads it there). A submodule that records the version in a file
reads it from the package already being imported, instead of importing
``fusemix`` from below.
"""

from __future__ import annotations

import sys


def fusemix_version() -> str:
    """``fusemix.__version__``.

    Example:
        >>> import fusemix
        >>> fusemix_version() == fusemix.__version__
        True

    """
    return str(sys.modules[__package__].__version__)
