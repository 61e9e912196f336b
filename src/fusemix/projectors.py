"""Deprecated: the adapters moved to :mod:`fusemix.adapters` (and are importable from ``fusemix``).

Importing this module warns (``DeprecationWarning``) and gives the same classes.
"""

import warnings

from fusemix.adapters import FusionAdapter, IdentityAdapter, LinearAdapter, ResidualMLPBlock

warnings.warn(
    "fusemix.projectors is deprecated; import the adapters from fusemix.adapters (or from fusemix)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["FusionAdapter", "IdentityAdapter", "LinearAdapter", "ResidualMLPBlock"]
