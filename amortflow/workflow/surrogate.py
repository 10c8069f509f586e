"""The workflow of a surrogate-likelihood estimator (NLE, NRE): many-chain MCMC on the surrogate
posterior ``log p(theta) + beta * l(theta, s(y))``, every dataset at once.

Such an estimator has no amortized draws and no proposal density, so there are no amortized,
PSIS or refinement stages. A surrogate is only trustworthy where it was trained, so
:func:`surrogate_stages` first scores every dataset's summaries against those of fresh
prior-predictive simulations (:func:`surrogate_ood_stage`, the amortized stage's OOD check);
datasets in distribution go to :func:`surrogate_mcmc_stage`, the others to the MCMC ladder on
the model's own likelihood (:func:`~amortflow.workflow.stages.mcmc_stage`), so an atypical
dataset is never answered by a network extrapolating.

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

import dataclasses

import numpy as np

from amortflow import mcmc
from amortflow.models.base import Model
from amortflow.models.observation import Observation
from amortflow.workflow.pipeline import Stage, StageInput, StageResult, hand_on, restrict
from amortflow.workflow.stages import MCMC_COLUMNS, _ood_scores, ladder_stage_result, mcmc_stage

#: hand-on flag of :func:`surrogate_ood_stage`: the dataset lies outside the surrogate's training data
OOD_FLAG = "surrogate_ood"


def surrogate_ood_stage(model: Model, estimator, *, method: str = "mahalanobis", alpha: float = 0.05,
                        num_simulations: int = 4000) -> Stage:
    """Scores every open dataset's summaries ``estimator.summaries(y) [n, c]`` against those of
    ``num_simulations`` fresh prior-predictive simulations (``method``: ``"mahalanobis"`` or
    ``"mmd"``; threshold the ``1 - alpha`` quantile of held-out simulations) and decides nothing:
    every dataset is handed on, with ``carry["surrogate_ood"] [n]`` and the columns ``ood_score``
    / ``ood_flag``; a flagged one with the reason (its score and the threshold)."""
    kind = estimator.kind.upper()

    def run(key, inp: StageInput) -> StageResult:
        score, flag, threshold = _ood_scores(key, model, estimator, inp.obs, method, alpha, num_simulations)
        route, reason = hand_on(inp.index.size)
        for j in np.nonzero(flag)[0]:
            reason[j] = (f"outside the {kind} surrogate's training data (OOD score {score[j]:.2f} > "
                         f"{threshold:.2f}): sampled with the model's own likelihood")
        return StageResult(route, reason, diagnostics={"ood_score": score, "ood_flag": flag},
                           carry={OOD_FLAG: flag}, info={"thresholds": {"ood": threshold}})

    return Stage("surrogate_ood", run, salt=7, columns={"ood_score": np.float64, "ood_flag": bool})


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
    (:class:`~amortflow.WorkflowConfig`): :func:`surrogate_ood_stage` (``ood_method``,
    ``ood_alpha``, ``num_ood_simulations``; skipped when ``ood_method`` is None), then
    :func:`surrogate_mcmc_stage` on the datasets in distribution (the ladder with
    :func:`amortflow.mcmc.widen_batches`), then the ladder on the model's own likelihood for the
    datasets outside it (stage ``"mcmc_exact"``, routes ``"mcmc"`` / ``"nuts"`` with an empty
    ``posterior`` column)."""
    surrogate = surrogate_mcmc_stage(estimator, model, mcmc.widen_batches(config.ladder()),
                                     num_output_draws=config.num_draws, chunk_size=config.mcmc_chunk,
                                     progress=progress)
    if config.ood_method is None:
        return (surrogate,)
    screen = surrogate_ood_stage(model, estimator, method=config.ood_method, alpha=config.ood_alpha,
                                 num_simulations=config.num_ood_simulations)
    exact = mcmc_stage(model, config.ladder(), num_output_draws=config.num_draws, chunk_size=config.mcmc_chunk,
                       progress=progress)
    return (screen, restrict(surrogate, lambda inp: ~np.asarray(inp.carry[OOD_FLAG], bool)),
            dataclasses.replace(exact, name="mcmc_exact", salt=6))


__all__ = ["surrogate_ood_stage", "surrogate_mcmc_stage", "surrogate_stages", "OOD_FLAG"]
