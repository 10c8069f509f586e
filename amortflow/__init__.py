"""amortflow: amortized Bayesian inference at scale, in JAX."""
from amortflow._version import __version__
from amortflow import diagnostics, models
from amortflow.models import Model, ObservationError, from_numpyro, make_model
from amortflow import estimators, nets
from amortflow.estimators import (
    PosteriorEstimator,
    ReweightedSimulations,
    SelfNormalizedKL,
    Tempering,
    TrainConfig,
    TrainingDivergedError,
    fit_likelihood,
    fit_point_estimator,
    fit_posterior,
    fit_ratio,
    load_estimator,
)
from amortflow import mcmc
from amortflow import workflow
from amortflow.workflow import WorkflowConfig, WorkflowResult, run_workflow
from amortflow import errors, presets
from amortflow import gbi
from amortflow.gbi import beta_sweep
from amortflow.models import Observation, observe
