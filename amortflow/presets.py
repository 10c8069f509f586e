"""Named configurations for built-in models: the settings the demo and benchmarks use."""
from __future__ import annotations

import dataclasses

from amortflow.estimators.training import TrainConfig
from amortflow.nets.specs import FlowSpec, SortedSetSpec
from amortflow.workflow.config import WorkflowConfig


@dataclasses.dataclass(frozen=True)
class NPEPreset:
    """Architecture, training budget and workflow settings of one model; :meth:`fit_kwargs` is
    the one mapping onto :func:`amortflow.fit_posterior` (the CLI and benchmarks use it)."""

    summary: object
    flow: FlowSpec
    train: TrainConfig
    num_simulations: int | None
    workflow: WorkflowConfig = WorkflowConfig()

    def fit_kwargs(self) -> dict:
        """Keyword arguments of :func:`amortflow.fit_posterior`."""
        return {"summary": self.summary, "flow": self.flow, "train_config": self.train,
                "num_simulations": self.num_simulations}


def gev_preset(quick: bool = False) -> NPEPreset:
    """GEV (65 iid observations, 3 parameters), the paper's training budget of 10k simulations."""
    return NPEPreset(
        # order statistics + MLP: better validation loss than a DeepSet at ~2/3 of the step time
        summary=SortedSetSpec(hidden=(128, 128), out_dim=16),
        flow=FlowSpec(num_layers=6, hidden=(128, 128), num_bins=8, bound=5.0),
        train=TrainConfig(num_steps=300 if quick else 2000, batch_size=256, learning_rate=1e-3,
                          steps_per_call=100 if quick else 250),
        num_simulations=2000 if quick else 10_000,
        # the workflow's defaults: every dataset passes the importance-sampling gate (k-hat and
        # a Monte Carlo error of at most 0.1 posterior sd) or goes on to refinement and MCMC
        workflow=WorkflowConfig(),
    )


def bernoulli_glm_preset(model=None, quick: bool = False) -> NPEPreset:
    """Bernoulli GLM (100 bins, 10 parameters): the network sees the 10 sufficient statistics
    ``X^T y`` (a fixed linear summary), trained on online simulation (simulating 100 bins is
    cheaper than a bank's memory traffic); the workflow's defaults. ``model``: the
    :func:`~amortflow.models.bernoulli_glm` the summary is built for (default: the built-in one)."""
    from amortflow.models.glm import bernoulli_glm, glm_summary_spec

    model = model if model is not None else bernoulli_glm()
    return _online_preset(glm_summary_spec(model), 3000, quick)


def _online_preset(summary, num_steps: int, quick: bool) -> NPEPreset:
    """Online simulation (fresh simulations every step), a 6-layer spline flow, ``num_steps``
    steps (400 when ``quick``) and the workflow's defaults: the paper models' common setting."""
    return NPEPreset(
        summary=summary,
        flow=FlowSpec(num_layers=6, hidden=(128, 128), num_bins=8, bound=5.0),
        train=TrainConfig(num_steps=400 if quick else num_steps, batch_size=256, learning_rate=1e-3,
                          steps_per_call=100 if quick else 250),
        num_simulations=None,
        workflow=WorkflowConfig(),
    )


def psychometric_preset(quick: bool = False) -> NPEPreset:
    """Psychometric curves (5 parameters, 9 intensities, trials per intensity as per-dataset
    design data): the responses and the standardized trial counts both enter the flow's context
    (the default summary of a 9-vector is the vector itself); online training over the model's
    design distribution (simulating 9 counts is cheap); the workflow's defaults."""
    return _online_preset(None, 4000, quick)


def drift_diffusion_preset(quick: bool = False) -> NPEPreset:
    """Drift-diffusion model (6 parameters, 120 signed response times with their condition): a
    DeepSet over trials (mean and max pooling; each row carries its condition, so per-condition
    statistics are learnable), online training (the Wiener sampler draws 256 participants in a few
    ms); the workflow's defaults."""
    from amortflow.nets.specs import DeepSetSpec

    return _online_preset(DeepSetSpec(out_dim=24), 4000, quick)
