"""``python -m zsad_core``: the command line (see :mod:`zsad_core.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
