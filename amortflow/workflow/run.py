"""``run_workflow``: the one-call entry point of the amortized workflow.

It validates the datasets into a batched :class:`~amortflow.models.Observation` (``y``, the
temperature ``beta``, design data), fingerprints the run for resumable progress, runs the stages
(:func:`~amortflow.workflow.stages.default_stages` unless given) with
:func:`~amortflow.workflow.pipeline.run_stages`, and builds the :class:`WorkflowResult`.

The path of one dataset, file by file: ``run.py`` (validation) -> ``pipeline.py`` (the record and
the stage loop) -> ``stages.py`` (each stage and its gate) -> ``mcmc/ladder.py`` (the MCMC rungs).
"""
from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.estimators.tempered import check_beta_range
from amortflow.models.base import Model, screen_observations
from amortflow.models.observation import Observation, fingerprint_into, observe
from amortflow.workflow.config import WorkflowConfig
from amortflow.workflow.pipeline import ProgressStore, Records, run_stages
from amortflow.workflow.result import WorkflowResult
from amortflow.workflow.stages import default_stages


def validate_datasets(model: Model, ys, beta=1.0, design=None) -> tuple[Observation, np.ndarray, np.ndarray]:
    """Check every dataset on its own: ``(obs [K], ok [K], reason [K])``.

    ``ys`` may be an array ``[K, *obs_shape]``, a list of per-dataset arrays (a ragged list may
    hold wrongly shaped datasets) or an :class:`Observation`. Bad datasets (wrong shape, NaN/inf,
    float32 overflow, a non-positive or non-finite ``beta``) get a reason and a zero placeholder,
    so they never stop the others.
    """
    if isinstance(ys, Observation):
        ys, beta, design = ys.y, ys.beta, ys.design
    arr, problem = screen_observations(ys, model.obs_shape, model.name)
    obs = observe(arr, beta, design)
    b = np.asarray(obs.beta, np.float64)
    bad_beta = ~(np.isfinite(b) & (b > 0))
    for i in np.nonzero(bad_beta & (problem == ""))[0]:
        problem[i] = f"temperature beta = {b[i]} must be finite and > 0"
    ok = problem == ""
    return obs, ok, np.where(ok, "", problem).astype(object)


def run_fingerprint(key, obs: Observation, ok, estimator, config: WorkflowConfig, model: Model,
                    stages) -> str:
    """What a resumed run must share with the one that wrote the progress folder."""
    h = hashlib.sha256()
    kd = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    h.update(np.asarray(kd).tobytes())
    fingerprint_into(h, obs)
    h.update(np.asarray(ok).tobytes())
    h.update(estimator.fingerprint().encode())
    h.update(repr(config.to_dict()).encode())
    h.update(model.fingerprint().encode())
    h.update(repr([(s.name, s.chunk_size, s.salt) for s in stages]).encode())
    return h.hexdigest()


def check_estimator(model: Model, estimator) -> None:
    if tuple(estimator.param_names) != tuple(model.param_names):
        raise ValueError(f"estimator parameters {tuple(estimator.param_names)} do not match the "
                         f"model's {model.param_names}")
    if getattr(estimator, "model_name", model.name) != model.name:
        raise ValueError(f"the estimator was trained for model {estimator.model_name!r}, not "
                         f"{model.name!r}; train one for this model (af.fit_posterior)")


def run_workflow(key, model: Model, estimator, ys, config: WorkflowConfig | None = None, *,
                 out_dir: str | None = None, progress: bool = True, beta=1.0, design=None,
                 stages=None) -> WorkflowResult:
    """Analyse ``K`` datasets: amortized draws, OOD check, PSIS, many-chain MCMC, fallback.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model` the estimator was trained for.
      estimator: an estimator (:class:`~amortflow.estimators.Estimator`): draws (and ``log q``)
        for many datasets, summaries for the OOD check, a content fingerprint.
      ys: ``[K, *obs_shape]`` datasets, a list of per-dataset arrays, or an
        :class:`~amortflow.models.Observation` (then ``beta`` and ``design`` come from it).
      config: :class:`WorkflowConfig`.
      out_dir: if given, progress is written there per stage (and per MCMC chunk) and a re-run
        with the same directory resumes; the final result is saved to ``out_dir/result``.
      progress: progress bars and stage messages.
      beta: temperature(s) of the likelihood, scalar or ``[K]``: every stage targets
        ``p(theta) p(y | theta)^beta``.
      design: per-dataset design data (pytree, leading axis ``K``) for models that take it.
      stages: the stages to run (default :func:`~amortflow.workflow.stages.default_stages`);
        insert, remove or replace :class:`~amortflow.workflow.pipeline.Stage` values here.
    Returns:
      :class:`WorkflowResult`.
    """
    cfg = config or WorkflowConfig()
    log = print if progress else (lambda *a, **k: None)
    check_estimator(model, estimator)
    obs, ok, reason = validate_datasets(model, ys, beta, design)
    check_beta_range(np.asarray(obs.beta)[ok], getattr(getattr(estimator, "spec", None), "beta_range", None),
                     "run_workflow", getattr(estimator, "allow_beta_extrapolation", False))
    stages = tuple(stages) if stages is not None else default_stages(model, estimator, cfg, progress=progress)
    columns = {"beta": np.asarray(obs.beta, np.float64), "num_log_density_evals": np.int64,
               "num_grad_evals": np.int64}
    for st in stages:
        columns.update(st.columns)
    records = Records.start(reason, cfg.num_draws, model.dim, columns)
    if ok.any():
        fp = run_fingerprint(key, obs, ok, estimator, cfg, model, stages) if out_dir else ""
        store = ProgressStore(out_dir, fp)
        records, reports = run_stages(key, stages, records, obs, store, log)
    else:
        log("[amortflow] no valid datasets")
        reports = {}
    result = WorkflowResult.from_records(records, reports, model, cfg.to_dict())
    if out_dir is not None:
        result.save(os.path.join(out_dir, "result"))
    log("[amortflow] " + result.summary().replace("\n", "\n[amortflow] "))
    return result


__all__ = ["run_workflow", "validate_datasets", "run_fingerprint", "check_estimator"]
