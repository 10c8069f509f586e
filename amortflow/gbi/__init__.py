"""Amortized generalized Bayes: β sweeps, calibration of q(θ | y, β) across temperatures, and
choosing β from the data (see :mod:`amortflow.estimators.tempered` for training)."""
from amortflow.gbi.select import (
    BetaCalibration,
    InformationBeta,
    bootstrap_indices,
    calibrate_beta,
    compare_beta_selection,
    crossing,
    default_beta_grid,
    information_beta,
)
from amortflow.gbi.sweep import BetaSweep, beta_sweep, sweep_keys

__all__ = ["BetaSweep", "beta_sweep", "sweep_keys", "BetaCalibration", "calibrate_beta", "InformationBeta",
           "information_beta", "compare_beta_selection", "crossing", "default_beta_grid", "bootstrap_indices"]
