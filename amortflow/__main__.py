"""``python -m amortflow``: the command line (see :mod:`amortflow.cli`)."""
import sys

from amortflow.cli import main

sys.exit(main())
