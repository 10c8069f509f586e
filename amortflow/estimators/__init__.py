"""Estimators behind one protocol (:class:`Estimator`): neural posterior estimation, the shared
training loop and training data, and checkpoints dispatched on the estimator's kind."""
from amortflow.estimators.base import Estimator
from amortflow.estimators.checkpoint import CheckpointError, load_estimator, register_estimator_kind
from amortflow.estimators.data import (Standardization, WidenedPrior, fit_standardization, simulate_bank,
                                      split_bank, widen_prior)
from amortflow.estimators.npe import NPESpec, PosteriorEstimator, fit_posterior
from amortflow.estimators.tempered import (ReweightedSimulations, SelfNormalizedKL, Tempering,
                                           reweighting_ess)
from amortflow.estimators.training import TrainConfig, TrainingDivergedError, train
from amortflow.estimators.point import (AbsoluteError, Bootstrap, JointLoss, Pinball, PointEstimator, SquaredError,
                                        bootstrap, fit_point_estimator)
from amortflow.estimators.likelihood import LikelihoodEstimator, fit_likelihood, load_likelihood_estimator
from amortflow.estimators.ratio import BalancedNRE, BinaryNRE, ContrastiveNRE, RatioEstimator, fit_ratio

__all__ = [
    "Estimator", "CheckpointError", "load_estimator", "register_estimator_kind", "NPESpec",
    "PosteriorEstimator", "Standardization", "fit_standardization", "fit_posterior",
    "simulate_bank", "split_bank", "WidenedPrior", "widen_prior", "TrainConfig", "TrainingDivergedError", "train",
    "Tempering", "SelfNormalizedKL", "ReweightedSimulations", "reweighting_ess",
    "SquaredError", "AbsoluteError", "Pinball", "JointLoss", "PointEstimator", "fit_point_estimator", "bootstrap",
    "Bootstrap", "LikelihoodEstimator", "fit_likelihood", "load_likelihood_estimator", "BinaryNRE", "ContrastiveNRE",
    "BalancedNRE", "RatioEstimator", "fit_ratio",
]
