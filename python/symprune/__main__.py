"""``python -m symprune``: the command line, also as torchrun's module entry
(``torchrun --nproc-per-node G -m symprune apply ...``)."""

import sys

from symprune.cli import main

sys.exit(main())
