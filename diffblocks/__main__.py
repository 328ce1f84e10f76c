"""`python -m diffblocks ...` runs the `diffblocks` command (also under `torchrun -m diffblocks`)."""

import sys

from .cli import main

sys.exit(main())
