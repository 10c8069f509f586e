"""A workflow stage that puts a neural Bayes estimator's answers into the result table.

``run_workflow(..., stages=(point_estimate_stage(nbe),) + default_stages(model, est, cfg))``
gives one row per dataset with the point estimates (and quantiles) next to the posterior's
mean and sd. The stage decides no route: every dataset is handed on, no draws are produced.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.workflow.pipeline import Stage, StageInput, StageResult, hand_on


def _main_slot(estimator):
    try:
        return estimator._point_slot()
    except ValueError:  # quantiles without 0.5: every column keeps its label
        return None


def point_columns(estimator, name: str = "nbe", names=None) -> dict[str, tuple[int, int]]:
    """Column name -> ``(output slot, parameter index)`` for a point estimator's outputs.

    ``<name>_<param>`` for the first mean / median output (the 0.5 quantile if there is none),
    ``<name>_<param>_<label>`` for every other output (``_q05``, ``_q95``, ``_median``, ...).
    ``names``: the parameter names to use (default the estimator's unconstrained ones)."""
    labels, main = tuple(estimator.output_labels), _main_slot(estimator)
    cols = {}
    for slot, lab in enumerate(labels):
        for j, p in enumerate(estimator.param_names if names is None else names):
            cols[f"{name}_{p}" if slot == main else f"{name}_{p}_{lab}"] = (slot, j)
    return cols


def point_estimate_stage(point_estimator, *, name: str = "nbe", model=None, batch_size: int | None = None) -> Stage:
    """A :class:`~amortflow.workflow.pipeline.Stage` writing the outputs of ``point_estimator``
    (a :class:`~amortflow.estimators.point.PointEstimator`) as diagnostics columns (see
    :func:`point_columns`).

    ``model=None``: values in the estimator's unconstrained space, columns named by its
    ``param_names``. With the ``model``, values go through ``model.constrain`` and columns are
    named by its constrained (scalar) sites, as the table's ``<param>_mean`` columns are: exact
    for medians and quantiles (they commute with the monotone per-parameter transforms), while
    a posterior mean becomes ``constrain(mean)``, the constrained mean only for affine transforms.

    Routes nothing: every dataset is handed on (reason ``""``) and no draws are returned, so
    the stages after it see the datasets exactly as without it, wherever it is inserted (a
    dataset handed on without a reason keeps the one an earlier stage gave).
    Datasets whose temperature ``beta`` is not 1 get NaN: the estimator answers for the
    ``beta = 1`` posterior only. Invalid datasets never reach a stage and keep NaN too.
    """
    if getattr(point_estimator, "kind", None) != "nbe":
        raise TypeError(f"point_estimate_stage: expected a PointEstimator (kind 'nbe'), got "
                        f"{type(point_estimator).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"point_estimate_stage: name must be a non-empty string, got {name!r}")
    m, d = len(point_estimator.output_labels), len(point_estimator.param_names)
    if model is None:
        cols = point_columns(point_estimator, name)
        constrain = None
    else:
        if tuple(model.param_names) != tuple(point_estimator.param_names) or model.name != point_estimator.model_name:
            raise ValueError(f"point_estimate_stage: the estimator was trained for {point_estimator.model_name!r} "
                             f"{tuple(point_estimator.param_names)}, not model {model.name!r} {model.param_names}")
        shapes = jax.eval_shape(model.constrain, jnp.zeros((1, m, d), jnp.float32))
        sites = tuple(k for k, v in shapes.items() if v.shape == (1, m))  # scalar sites only
        cols = point_columns(point_estimator, name, sites)
        constrain = jax.jit(model.constrain)

    def run(key, inp: StageInput) -> StageResult:
        n = inp.index.size
        out = point_estimator.predict(inp.obs, batch_size=batch_size)  # [n, m, d]
        if constrain is None:
            out = np.asarray(out, np.float64)
        else:
            named = constrain(out)
            out = np.stack([np.asarray(named[s], np.float64) for s in sites], axis=-1)
        tempered = np.asarray(inp.obs.beta, np.float64) != 1.0
        out[tempered] = np.nan
        route, reason = hand_on(n)
        diags = {c: out[:, slot, j] for c, (slot, j) in cols.items()}
        note = (f"{int(tempered.sum())} datasets with beta != 1 left NaN (trained at beta = 1)"
                if tempered.any() else "")
        return StageResult(route, reason, draws=None, diagnostics=diags, info={"note": note} if note else {})

    return Stage(name, run, columns={c: np.float64 for c in cols})


__all__ = ["point_estimate_stage", "point_columns"]
