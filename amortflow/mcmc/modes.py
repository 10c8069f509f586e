"""Multimodal posteriors: spread starting points over the candidates' modes, and catch chains
that all settled in one of several modes.

Nested R-hat compares superchains; when every superchain starts in (or falls into) the same
mode it cannot see the others, and a converged-looking answer misses part of the posterior.
Two defences, both using the amortized (or refined) candidates the MCMC stage starts from:

- :func:`spread_starts`: some superchains start at *farthest-point* picks among the candidates
  in the posterior's typical set (log density within a chi-square bound of the best), so
  separated modes the candidates cover each get a superchain; nested R-hat then fails when the
  chains cannot move between them.
- :func:`missed_mode_check`: after sampling, a candidate with high posterior density (above the
  chains' own 1% log-density quantile) lying far from every MCMC draw -- beyond twice the
  largest nearest-neighbour distance between two halves of the draws, in the draws' own scale
  -- is a region of posterior mass the chains never visited. Such a dataset is not accepted.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._compile import DEFAULT_CACHE, CompileCache
from amortflow.mcmc import batching
from amortflow.models import Model
from amortflow.models.observation import take

__all__ = ["typical_bound", "spread_starts", "missed_mode_check", "MISSED_MODE_MIN_POINTS"]

MISSED_MODE_MIN_POINTS = 3  # fewer far high-density candidates are treated as noise
_REF_DRAWS = 512


def typical_bound(d: int) -> float:
    """Log-density drop below the best point that still counts as the typical set: above the
    99.9% chi-square(d) / 2 quantile for d <= 100 (``d/2 + 5 sqrt(d/2) + 3``)."""
    return d / 2 + 5.0 * (d / 2) ** 0.5 + 3.0


def spread_starts(chosen, cand, lp, usable, num_spread: int):
    """Replace the last ``num_spread`` of ``chosen [C0, d]`` by greedy farthest-point picks.

    Args:
      chosen: ``[C0, d]`` starting points (picked by weight).
      cand: ``[S, d]`` candidates; ``lp [S]`` their log densities; ``usable [S]`` bool.
      num_spread: static number of slots to spread (0: unchanged).
    Returns:
      ``(points [C0, d], replaced [C0] bool, source [C0] int32)``: candidate index of each
      replaced slot (slots are replaced only when a typical candidate exists); distances are in
      units of the typical candidates' sds.
    """
    c0, d = chosen.shape
    if num_spread <= 0:
        return chosen, jnp.zeros(c0, bool), jnp.zeros(c0, jnp.int32)
    best = jnp.max(jnp.where(usable, lp, -jnp.inf))
    typical = usable & (lp >= best - typical_bound(d))
    n_t = jnp.maximum(jnp.sum(typical), 1)
    mu = jnp.sum(jnp.where(typical[:, None], cand, 0.0), 0) / n_t
    sd = jnp.sqrt(jnp.sum(jnp.where(typical[:, None], (cand - mu) ** 2, 0.0), 0) / n_t) + 1e-12
    z = jnp.where(typical[:, None], (cand - mu) / sd, 0.0)
    zc = (chosen - mu) / sd
    keep = c0 - num_spread
    # distance of every candidate to the kept (weight-picked) starts
    dmin = jnp.min(jnp.sum((z[:, None, :] - zc[None, :keep, :]) ** 2, -1), axis=1) if keep else \
        jnp.full(cand.shape[0], jnp.inf)
    picks = []
    for _ in range(num_spread):
        score = jnp.where(typical, dmin, -jnp.inf)
        j = jnp.argmax(score)
        picks.append(j)
        dmin = jnp.minimum(dmin, jnp.sum((z - z[j]) ** 2, -1))
    idx = jnp.stack(picks)
    replaced = jnp.concatenate([jnp.zeros(keep, bool), jnp.full(num_spread, jnp.sum(typical) > 0)])
    src = jnp.concatenate([jnp.zeros(keep, jnp.int32), idx.astype(jnp.int32)])
    points = jnp.where(replaced[:, None], cand[src], chosen)
    return points, replaced, src


def _check_one(key, obs, cand, draws, model: Model):
    s = draws.shape[0]
    m = min(_REF_DRAWS, s // 2)
    perm = jax.random.permutation(key, s)
    a, b = draws[perm[:m]], draws[perm[m:2 * m]]
    mu, sd = jnp.mean(draws, 0), jnp.std(draws, 0) + 1e-12
    za, zb = (a - mu) / sd, (b - mu) / sd
    dens = jax.vmap(lambda t: model.log_density_obs(t, obs))
    lp_draws = dens(a)
    lp_floor = jnp.quantile(jnp.where(jnp.isfinite(lp_draws), lp_draws, jnp.inf), 0.01)
    nn_ref = jnp.min(jnp.sum((zb[:, None] - za[None]) ** 2, -1), axis=1)
    r_ref = jnp.sqrt(jnp.max(nn_ref))
    ok_c = jnp.all(jnp.isfinite(cand), -1)
    zc = (jnp.where(ok_c[:, None], cand, 0.0) - mu) / sd
    lp_c = dens(jnp.where(ok_c[:, None], cand, 0.0))
    nn_c = jnp.sqrt(jnp.min(jnp.sum((zc[:, None] - za[None]) ** 2, -1), axis=1))
    far = ok_c & jnp.isfinite(lp_c) & (lp_c >= lp_floor) & (nn_c > 2.0 * r_ref)
    ratio = jnp.max(jnp.where(far, nn_c, 0.0)) / r_ref
    return jnp.sum(far), ratio


def missed_mode_check(key, model: Model, obs, candidates, draws, *, block_size: int = 32,
                      cache: CompileCache | None = None):
    """Candidates of high posterior density that no MCMC draw comes near.

    Args:
      key: PRNG key (subsets of the draws); ``obs``: batched observation ``[K]``.
      candidates: ``[K, S_c, d]`` amortized / refined draws (non-finite rows ignored).
      draws: ``[K, S, d]`` MCMC draws (finite).
      block_size: datasets per compiled call (the last block is padded).
      cache: :class:`~amortflow._compile.CompileCache` (default ``DEFAULT_CACHE``).
    Returns:
      ``(num_far [K] int, distance_ratio [K])``: how many candidates lie in an unvisited
      high-density region, and the farthest one's nearest-draw distance over the draws' own
      largest nearest-neighbour spacing.
    """
    obs = batching.as_batch(obs)
    k = obs.num_datasets
    cache = DEFAULT_CACHE if cache is None else cache
    fn, _ = cache.get(("missed_mode", model), lambda: jax.jit(jax.vmap(functools.partial(_check_one, model=model))))
    keys = jax.random.split(key, max(k, 1))
    outs = []
    for s0 in range(0, k, block_size):
        rows = np.minimum(np.arange(s0, s0 + block_size), k - 1)
        n_far, ratio = fn(keys[rows], take(obs, rows), jnp.asarray(candidates)[rows], jnp.asarray(draws)[rows])
        outs.append((np.asarray(n_far)[: min(block_size, k - s0)], np.asarray(ratio)[: min(block_size, k - s0)]))
    if not outs:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
