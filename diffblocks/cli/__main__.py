"""`python -m diffblocks.cli` runs the `diffblocks` command."""

import sys

from . import main

sys.exit(main())
