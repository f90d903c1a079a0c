"""``python -m peftlab.sweep``: the sweep command (and, with ``--run-cell DIR``, one cell's process)."""

import sys

from peftlab.sweep import main

sys.exit(main())
