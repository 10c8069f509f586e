"""Amortized generalized Bayes: β sweeps, calibration of q(θ | y, β) across temperatures, and
choosing β from the data (see :mod:`amortflow.estimators.tempered` for training)."""
from amortflow.gbi.sweep import BetaSweep, beta_sweep, sweep_keys

__all__ = ["BetaSweep", "beta_sweep", "sweep_keys"]
