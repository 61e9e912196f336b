"""``python -m fusemix``: the same command line as the ``fusemix`` script (see :mod:`fusemix.cli`)."""

import sys

from fusemix.cli import main

if __name__ == "__main__":
    sys.exit(main())
