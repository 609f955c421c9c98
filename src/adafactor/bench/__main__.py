"""``python -m adafactor.bench``: see ``adafactor.bench.cli``."""

import sys

from .cli import main

sys.exit(main())
