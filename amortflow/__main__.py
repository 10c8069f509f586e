"""``python -m amortflow``: the command line (see :mod:`amortflow.cli`)."""
from amortflow.cli import console

console()
