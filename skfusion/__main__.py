"""``python -m skfusion``: the ``skfusion`` command."""

import sys

from .cli import main

# Guarded, so that importing this module (e.g. by a tool that walks the package) runs
# nothing.
if __name__ == "__main__":
    sys.exit(main())
