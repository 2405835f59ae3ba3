"""``python -m chc``: the ``chc`` command."""

import sys

from . import console

sys.exit(console())
