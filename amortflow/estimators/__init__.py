"""Estimators: neural posterior estimation (and the shared training loop and checkpoints)."""
from amortflow.estimators.checkpoint import CheckpointError, load_estimator
from amortflow.estimators.npe import (
    NPESpec,
    PosteriorEstimator,
    Standardization,
    fit_posterior,
    simulate_bank,
)
from amortflow.estimators.training import TrainConfig, TrainingDivergedError, train

__all__ = [
    "CheckpointError", "load_estimator", "NPESpec", "PosteriorEstimator", "Standardization",
    "fit_posterior", "simulate_bank", "TrainConfig", "TrainingDivergedError", "train",
]
