"""``python -m adafactor.bench``: see ``adafactor.bench.cli``."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a documentation tool imports every module
    sys.exit(main())
