"""The workflow of a surrogate-likelihood estimator (NLE, NRE): many-chain MCMC on the surrogate
posterior ``log p(theta) + beta * l(theta, s(y))``, every dataset at once.

Such an estimator has no amortized draws and no proposal density, so there are no amortized,
PSIS or refinement stages: :func:`surrogate_stages` is one :func:`surrogate_mcmc_stage`.

Why the stage samples in summary space: the summary ``s(y)`` (NLE: the data ``x``; NRE: the
learned summary network, e.g. a CNN) does not depend on ``theta``, yet a model whose
log-likelihood is ``l(theta, s(y))`` recomputes it at every leapfrog step of every chain. The
stage computes the summaries once per dataset and runs the ladder on the estimator's
``summary_model`` -- a :class:`~amortflow.models.Model` whose observation IS the summary vector
(``obs_shape (c,)``) -- with ``beta`` unchanged.

Measured (2-core CPU, shared; NRE with the default CNN summary on ``spatial_gp`` 16x16, 32
datasets, the CPU ladder's MEADS rung: 4 x 16 chains, 650 steps): no measurable difference on
this backend. Sampling took 1.5-1.7 s per call either way, a 50-step gradient loop 79 vs 84 us
per dataset-step, and the first call (compilation) 14.8 s recomputing vs 16.9 s precomputed, in
separate processes. Reason: the chains of a dataset are vmapped with one unbatched observation,
so ``s(y)`` (~10 us) already ran once per dataset and step, not once per chain, next to ~80 us
of 64 chains' classifier gradients (and XLA may hoist it out of the loop). Precomputing makes
that bound explicit rather than left to the compiler, and keeps the ``[H, W]`` fields out of
the sampler's inputs.
"""
from __future__ import annotations

import numpy as np

from amortflow import mcmc
from amortflow.models.base import Model
from amortflow.models.observation import Observation
from amortflow.workflow.pipeline import Stage, StageInput, StageResult
from amortflow.workflow.stages import MCMC_COLUMNS, ladder_stage_result


def surrogate_mcmc_stage(estimator, model: Model, ladder, *, num_output_draws: int,
                         chunk_size: int = 256, progress: bool = True) -> Stage:
    """The MCMC ladder (:func:`amortflow.mcmc.run_ladder`) on the surrogate posterior of an
    NLE / NRE ``estimator``, in resumable chunks.

    Per chunk: ``summaries [n, c]`` of the open datasets in one batched call, then the ladder
    on ``estimator.summary_model(model)`` with ``Observation(summaries, beta)``. Starting points
    come from ``carry["draws"]`` / ``carry["log_weights"]`` if an inserted stage left them, else
    from screened prior draws. The result is :func:`~amortflow.workflow.stages.mcmc_stage`'s
    (routes ``"mcmc"`` | ``"nuts"`` | ``"failed"``, nested R-hat, ESS, ...) plus the column
    ``posterior``, naming the surrogate (e.g. ``"nle surrogate"``): these are draws of the
    network's posterior, not of the model's.
    """
    if not callable(getattr(estimator, "summary_model", None)):
        raise TypeError(f"surrogate_mcmc_stage: expected an NLE / NRE estimator (with summary_model), "
                        f"got {type(estimator).__name__}")
    target = estimator.summary_model(model)  # built once: the compiled samplers are keyed on it
    label = estimator.surrogate_label
    ladder = mcmc.as_ladder(ladder)

    def run(key, inp: StageInput) -> StageResult:
        n = inp.index.size
        if inp.obs.design is not None:
            raise ValueError("surrogate_mcmc_stage: design data are not supported by surrogate likelihoods")
        s = np.asarray(estimator.summaries(inp.obs.y))
        obs_s = Observation(s, np.asarray(inp.obs.beta), None)
        cand = inp.carry.get("draws")
        if cand is None:
            cand = np.full((n, 1, model.dim), np.nan, np.float32)
        res = mcmc.run_ladder(key, target, obs_s, cand, inp.carry.get("log_weights"), ladder,
                              num_output_draws=num_output_draws, dataset_ids=inp.index,
                              progress=progress)
        out = ladder_stage_result(res)
        return out._replace(
            diagnostics={**out.diagnostics, "posterior": np.full(n, label, object)},
            info={**out.info, "surrogate": estimator.kind,
                  "note": f"posterior of the {estimator.kind.upper()} surrogate likelihood "
                          "(not the model's own likelihood)"})

    return Stage("mcmc", run, chunk_size=chunk_size, salt=4, columns={**MCMC_COLUMNS, "posterior": object})


def surrogate_stages(model: Model, estimator, config, *, progress: bool = True) -> tuple[Stage, ...]:
    """The default workflow of a surrogate-likelihood estimator under ``config``
    (:class:`~amortflow.WorkflowConfig`: its ladder -- with :func:`amortflow.mcmc.widen_batches` --,
    ``num_draws`` and ``mcmc_chunk``)."""
    return (surrogate_mcmc_stage(estimator, model, mcmc.widen_batches(config.ladder()), num_output_draws=config.num_draws,
                                 chunk_size=config.mcmc_chunk, progress=progress),)


__all__ = ["surrogate_mcmc_stage", "surrogate_stages"]
