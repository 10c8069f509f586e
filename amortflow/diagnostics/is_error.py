"""Monte Carlo error of self-normalized importance-sampling estimates, relative to the posterior sd.

A PSIS (or refined) answer is good enough when the summaries a researcher reads from it -- means,
sds and tail quantiles of every parameter -- carry a Monte Carlo error that is small against the
posterior's own spread. An ESS threshold as a fraction of ``S`` asks the wrong question: 300
effective draws may be plenty for a mean and too few for a 5% quantile, and 4800 of 10 000 draws
are plenty for both. :func:`is_mcse` computes the function-specific errors directly.

For normalized weights ``w`` the delta-method variance of the self-normalized estimate of
``E[f]`` is ``sum_i w_i^2 (f_i - E_w[f])^2`` (Owen, *Monte Carlo theory, methods and examples*,
ch. 9; with equal weights it is the usual ``Var f / S``). Applied to

- ``f = theta_j``: the mean;
- ``f = (theta_j - mean_j)^2``: the variance, whose error maps to the sd by ``/ (2 sd)``;
- ``f = 1{theta_j <= q_p}``: the CDF at the weighted ``p``-quantile ``q_p``; the error in
  probability ``m`` maps to the parameter scale through the weighted quantile function, as half
  the width of ``[Q(p - m), Q(p + m)]`` (no density estimate; the same construction ArviZ uses
  for the MCSE of quantiles of MCMC draws).

Every error is divided by the weighted posterior sd of that parameter.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ISError", "is_mcse", "MCSE_FUNCTIONALS"]

MCSE_FUNCTIONALS = ("mean", "sd", "quantile")


class ISError(NamedTuple):
    """Output of :func:`is_mcse` (``...`` = dataset axes, ``d`` parameters, ``P`` quantiles).

    Attributes:
      mean: ``[..., d]`` weighted posterior means.
      sd: ``[..., d]`` weighted posterior sds.
      mean_error: ``[..., d]`` Monte Carlo standard error of the mean / sd.
      sd_error: ``[..., d]`` MCSE of the sd / sd.
      quantile_error: ``[..., d, P]`` MCSE of each quantile / sd.
      max_error: ``[...]`` the largest of all of them (``inf`` when undefined: no finite weight,
        or a zero sd).
      worst: ``[..., 2]`` int32 ``(parameter, functional)`` of ``max_error``; functional ``0``
        mean, ``1`` sd, ``2 + p`` the ``p``-th quantile.
    """

    mean: jax.Array
    sd: jax.Array
    mean_error: jax.Array
    sd_error: jax.Array
    quantile_error: jax.Array
    max_error: jax.Array
    worst: jax.Array


def _weighted_quantile(x_sorted, cw, p):
    """``Q(p)`` from draws sorted ascending ``[S]`` with cumulative normalized weights ``[S]``."""
    i = jnp.searchsorted(cw, jnp.clip(p, 0.0, 1.0) * cw[-1], side="left")
    return x_sorted[jnp.clip(i, 0, x_sorted.shape[0] - 1)]


def _one(x, w, probs):
    # x [S, d] finite; w [S] normalized (zeros allowed)
    w2 = w * w
    mean = w @ x
    dev2 = (x - mean) ** 2
    var = w @ dev2
    sd = jnp.sqrt(var)
    mean_err = jnp.sqrt(w2 @ dev2)
    sd_err = jnp.sqrt(w2 @ (dev2 - var) ** 2) / (2.0 * var)

    def per_param(xj):
        order = jnp.argsort(xj)
        xs, ws = xj[order], w[order]
        cw = jnp.cumsum(ws)

        def per_prob(p):
            q = _weighted_quantile(xs, cw, p)
            ind = (xj <= q).astype(x.dtype)
            f = w @ ind
            m = jnp.sqrt(w2 @ (ind - f) ** 2)
            return 0.5 * (_weighted_quantile(xs, cw, p + m) - _weighted_quantile(xs, cw, p - m))

        return jax.vmap(per_prob)(probs)

    q_err = jax.vmap(per_param, in_axes=1)(x) / sd[:, None]
    mean_err = mean_err / sd
    return mean, sd, mean_err, sd_err, q_err


@functools.partial(jax.jit, static_argnames=("probs",))
def is_mcse(draws, log_weights, probs: tuple = (0.05, 0.95)) -> ISError:
    """Relative Monte Carlo errors of weighted posterior summaries.

    Args:
      draws: ``[..., S, d]`` draws (rows with a non-finite value get weight zero).
      log_weights: ``[..., S]`` log importance weights, any normalization (``-inf``/NaN: zero
        weight). Use the Pareto-smoothed weights of :func:`~amortflow.diagnostics.psis`, the
        ones the answer is computed from.
      probs: the quantile levels whose error counts (static).
    Returns:
      :class:`ISError`.
    """
    x = jnp.asarray(draws)
    lw = jnp.asarray(log_weights, x.dtype)
    lead, (s, d) = x.shape[:-2], x.shape[-2:]
    x = x.reshape((-1, s, d))
    lw = lw.reshape((-1, s))
    ok = jnp.all(jnp.isfinite(x), -1) & jnp.isfinite(lw)
    lw = jnp.where(ok, lw, -jnp.inf)
    top = jnp.max(lw, axis=-1, keepdims=True)
    w = jnp.where(ok, jnp.exp(lw - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    tot = jnp.sum(w, -1, keepdims=True)
    w = w / jnp.where(tot > 0, tot, 1.0)
    x = jnp.where(ok[..., None], x, 0.0)
    p = jnp.asarray(probs, x.dtype)
    mean, sd, me, se, qe = jax.vmap(lambda a, b: _one(a, b, p))(x, w)
    allq = jnp.concatenate([me[..., None], se[..., None], qe], axis=-1)  # [n, d, 2 + P]
    allq = jnp.where(jnp.isfinite(allq), allq, jnp.inf)
    usable = (tot[:, 0] > 0) & jnp.all(sd > 0, -1)
    allq = jnp.where(usable[:, None, None], allq, jnp.inf)
    flat = allq.reshape((allq.shape[0], -1))
    arg = jnp.argmax(flat, axis=-1)
    worst = jnp.stack([arg // allq.shape[-1], arg % allq.shape[-1]], -1).astype(jnp.int32)
    mx = jnp.max(flat, axis=-1)
    nq = len(probs)
    return ISError(mean.reshape(lead + (d,)), sd.reshape(lead + (d,)), me.reshape(lead + (d,)),
                   se.reshape(lead + (d,)), qe.reshape(lead + (d, nq)), mx.reshape(lead),
                   worst.reshape(lead + (2,)))
