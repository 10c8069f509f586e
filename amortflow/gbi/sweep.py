"""β sweeps: the amortized power posterior of ``K`` datasets at ``B`` temperatures in one compiled
call, and a per-dataset summary of how it moves with β.

Shapes: ``K`` datasets, ``B`` temperatures, ``S`` draws, ``d`` parameters.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.errors import ConfigError
from amortflow.models.observation import Observation


class BetaSweep(NamedTuple):
    """Output of :func:`beta_sweep`.

    Attributes:
      betas: ``[B]`` temperatures.
      draws: ``[K, B, S, d]`` unconstrained draws of ``q(theta | y_k, beta_b)``.
      log_q: ``[K, B, S]``.
      param_names: the ``d`` names.
    """

    betas: np.ndarray
    draws: np.ndarray
    log_q: np.ndarray
    param_names: tuple[str, ...]

    def summary(self, model=None, level: float = 0.9):
        """Long pandas DataFrame, one row per (dataset, beta, parameter): ``mean``, ``sd``, the
        central ``level`` interval (``lower``, ``upper``) and its ``width``; constrained
        parameters when ``model`` is given (its ``constrain``), else unconstrained."""
        import pandas as pd

        named = _named(self.draws, self.param_names, model)
        a = (1 - level) / 2
        k, b = self.draws.shape[:2]
        frames = []
        for name, x in named.items():  # x [K, B, S]
            lo, hi = np.quantile(x, [a, 1 - a], axis=2)
            frames.append(pd.DataFrame({
                "dataset": np.repeat(np.arange(k), b), "beta": np.tile(self.betas, k), "param": name,
                "mean": x.mean(2).ravel(), "sd": x.std(2).ravel(), "lower": lo.ravel(), "upper": hi.ravel(),
                "width": (hi - lo).ravel(),
            }))
        return pd.concat(frames, ignore_index=True)


def _named(draws, names, model):
    """``{name: [..., S]}``: constrained (scalar sites) when ``model`` is given."""
    if model is None:
        return {n: np.asarray(draws[..., j]) for j, n in enumerate(names)}
    flat = np.asarray(draws).reshape(-1, draws.shape[-1])
    cons = jax.jit(jax.vmap(model.constrain))(jnp.asarray(flat))
    out = {}
    for n, v in cons.items():
        v = np.asarray(v)
        if v.ndim == 1:
            out[n] = v.reshape(draws.shape[:-1])
        else:
            for j in range(v.shape[1]):
                out[f"{n}[{j}]"] = v[:, j].reshape(draws.shape[:-1])
    return out


def pair_keys(key, beta_ids, dataset_ids) -> jax.Array:
    """``[N]`` keys ``fold_in(fold_in(key, beta_ids[i]), dataset_ids[i])``: a (dataset,
    temperature) pair's draws depend on its two indices only, not on the batch it is in."""
    return jax.vmap(lambda b, i: jax.random.fold_in(jax.random.fold_in(key, b), i))(
        jnp.asarray(beta_ids, jnp.uint32), jnp.asarray(dataset_ids, jnp.uint32))


def sweep_keys(key, num_datasets: int, betas) -> jax.Array:
    """``[K * B]`` keys, dataset-major: pair ``(k, b)`` gets ``fold_in(fold_in(key, b), k)`` --
    the key dataset ``k`` has in ``est.sample(fold_in(key, b), obs_at_beta_b, dataset_ids=arange(K))``."""
    nb = len(betas)
    return pair_keys(key, np.tile(np.arange(nb), num_datasets), np.repeat(np.arange(num_datasets), nb))


def beta_sweep(key, estimator, obs, betas, num_draws: int, *, batch_size: int | None = None) -> BetaSweep:
    """Amortized draws of ``K`` datasets at every temperature of ``betas`` in one compiled call.

    Args:
      key: PRNG key. Pair ``(k, b)`` draws exactly what
        ``estimator.sample_and_log_prob(fold_in(key, b), observe(ys, betas[b]), S,
        dataset_ids=arange(K))`` gives dataset ``k`` (see :func:`sweep_keys`).
      estimator: a beta-conditioned :class:`~amortflow.PosteriorEstimator` (``fit_posterior(...,
        tempering=Tempering())``); every ``beta`` must lie in its training range.
      obs: datasets ``[K, *obs_shape]`` or an :class:`~amortflow.models.Observation` (its design
        is kept, its ``beta`` replaced by the grid).
      betas: ``[B]`` positive temperatures.
      num_draws: ``S``.
    Returns:
      :class:`BetaSweep` with ``draws [K, B, S, d]``.
    Raises:
      ConfigError: an estimator not conditioned on ``beta``, or an empty / non-positive grid.
      BetaRangeError: a ``beta`` outside the estimator's training range.
    """
    if getattr(getattr(estimator, "spec", None), "num_conditions", 0) != 1:
        raise ConfigError("beta_sweep: the estimator is not conditioned on beta (train it with "
                          "fit_posterior(..., tempering=af.Tempering())); for an ordinary estimator run "
                          "the workflow at each beta instead, whose PSIS/MCMC stages target the tempered density")
    betas = np.asarray(betas, np.float64).ravel()
    if betas.size == 0 or not (np.isfinite(betas) & (betas > 0)).all():
        raise ConfigError(f"beta_sweep: betas must be a non-empty list of finite values > 0, got {betas}")
    y, design = (obs.y, obs.design) if isinstance(obs, Observation) else (obs, None)
    y = jnp.asarray(y, jnp.float32)
    if tuple(y.shape) == tuple(estimator.spec.obs_shape):
        y = y[None]
        design = None if design is None else jax.tree.map(lambda a: jnp.asarray(a)[None], design)
    k, nb = y.shape[0], betas.size
    tiled = Observation(
        jnp.repeat(y, nb, axis=0),
        jnp.tile(jnp.asarray(betas, jnp.float32), k),
        None if design is None else jax.tree.map(lambda a: jnp.repeat(jnp.asarray(a), nb, axis=0), design),
    )
    ys, extra, _ = estimator._inputs(tiled, None)
    draws, log_q = estimator._draw(sweep_keys(key, k, betas), ys, extra, int(num_draws), batch_size)
    d = draws.shape[-1]
    return BetaSweep(betas.astype(np.float32), np.asarray(draws).reshape(k, nb, -1, d),
                     np.asarray(log_q).reshape(k, nb, -1), tuple(estimator.param_names))
