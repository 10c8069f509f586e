"""Superchain starting points from the amortized stage, with a principled fallback.

For each dataset, ``num_superchains`` starting points are drawn at random, without replacement,
from the *distinct* candidate rows with finite log density. Candidate weights (PSIS log
weights) and multiplicities (a PSIS-resampled set repeats rows) both enter as the probability
of a distinct point, via Gumbel-top-k sampling -- never "the first rows after sorting". A
quarter of the slots (``num_superchains // 4``) are then moved to farthest-point picks among
the candidates in the posterior's typical set (:func:`amortflow.mcmc.modes.spread_starts`), so
that a mode holding little weight still gets a superchain.

If fewer than ``num_superchains`` such points exist, the remaining slots are filled from
``num_prior_draws`` prior draws screened for finite log density (again at random). If even
that leaves slots empty, the finite points found so far are reused (drawn with replacement)
and the dataset is flagged; with no finite point at all the dataset is flagged ``ok=False`` --
never silently failed.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._compile import DEFAULT_CACHE, CompileCache
from amortflow.mcmc import batching
from amortflow.mcmc.modes import spread_starts
from amortflow.models import Model
from amortflow.models.observation import take


class InitInfo(NamedTuple):
    """Per-dataset initialisation report (all ``[K]``).

    num_valid: distinct candidates with finite log density (and finite weight).
    num_fallback: starting points taken from screened prior draws.
    num_reused: starting points that repeat another one (too few finite points).
    ok: every starting point has finite log density.
    log_density: ``[K, C0]`` log density at the chosen points.
    """

    num_valid: jax.Array
    num_fallback: jax.Array
    num_reused: jax.Array
    ok: jax.Array
    log_density: jax.Array


def _distinct_mask(x):
    """``[S, d]`` -> (first-occurrence mask [S], group id [S]) of identical rows."""
    s, d = x.shape
    order = jnp.lexsort(tuple(x[:, j] for j in range(d - 1, -1, -1)))
    xs = x[order]
    new = jnp.concatenate([jnp.array([True]), jnp.any(xs[1:] != xs[:-1], axis=-1)])
    group_sorted = jnp.cumsum(new) - 1
    group = jnp.zeros(s, group_sorted.dtype).at[order].set(group_sorted)
    first = jnp.zeros(s, bool).at[order].set(new)
    return first, group


def _gumbel_top_k(key, logits, k):
    """Indices of ``k`` draws without replacement with probabilities ~ exp(logits)."""
    g = logits + jax.random.gumbel(key, logits.shape)
    g = jnp.where(jnp.isfinite(logits), g, -jnp.inf)
    _, idx = jax.lax.top_k(g, k)
    return idx


# Log densities are evaluated this many points at a time, and datasets this many at a time: a
# model whose density holds a large intermediate (a 256 x 256 Cholesky factor for a GP field)
# would otherwise need [datasets x prior draws] copies of it at once (34 GB for 64 x 1024).
_POINTS_PER_STEP = 128
_DATASETS_PER_STEP = 8


def _log_density_points(model: Model, obs, thetas):
    """``log p(theta, y)`` at ``thetas [S, d]`` -> ``[S]``, ``_POINTS_PER_STEP`` at a time."""
    return jax.lax.map(lambda t: model.log_density_obs(t, obs), thetas, batch_size=_POINTS_PER_STEP)


def _pick_candidates(key, obs, cand, logw, c0, model: Model):
    """``c0`` random distinct finite-density candidates (weights x multiplicities)."""
    lp = _log_density_points(model, obs, cand)  # [S]
    finite = jnp.isfinite(lp) & jnp.all(jnp.isfinite(cand), axis=-1) & jnp.isfinite(logw)
    safe = jnp.where(finite[:, None], cand, 0.0)
    first, group = _distinct_mask(safe)
    # probability of a distinct point = sum of the weights of its copies
    w = jnp.where(finite, jnp.exp(logw - jnp.max(jnp.where(finite, logw, -jnp.inf))), 0.0)
    group_w = jax.ops.segment_sum(w, group, num_segments=cand.shape[0])
    logits = jnp.where(first & finite, jnp.log(group_w[group]), -jnp.inf)
    num_valid = jnp.sum(jnp.isfinite(logits))
    idx = _gumbel_top_k(key, logits, c0)
    # a quarter of the starts at farthest-point picks among typical candidates: separated modes
    # the candidates cover each get a superchain, so nested R-hat can see them (modes.py)
    pos, replaced, src = spread_starts(safe[idx], safe, lp, first & finite, c0 // 4)
    replaced &= jnp.arange(c0) < num_valid
    pos = jnp.where(replaced[:, None], pos, cand[idx])
    return pos, jnp.where(replaced, lp[src], lp[idx]), num_valid


def _init_one(key, obs, cand, logw, *, model: Model, num_superchains: int, num_prior_draws: int):
    c0 = num_superchains
    k_pick, k_prior, k_pick_prior, k_reuse = jax.random.split(key, 4)
    chosen, chosen_lp, num_valid = _pick_candidates(k_pick, obs, cand, logw, c0, model)
    slot = jnp.arange(c0)
    from_cand = slot < num_valid  # top-k puts the finite logits first

    prior = model.sample_prior(k_prior, num_prior_draws)
    prior_lp = _log_density_points(model, obs, prior)
    prior_ok = jnp.isfinite(prior_lp) & jnp.all(jnp.isfinite(prior), axis=-1)
    # sampling-importance-resampling from the prior: screened draws picked (distinct) with
    # probability ~ (tempered) likelihood, so fallback chains start where the posterior has mass
    prior_ll = prior_lp - jax.vmap(model.log_prior)(prior)
    pidx = _gumbel_top_k(k_pick_prior, jnp.where(prior_ok & jnp.isfinite(prior_ll), prior_ll, -jnp.inf), c0)
    num_prior_ok = jnp.sum(prior_ok & jnp.isfinite(prior_ll))
    # slot j (j >= num_valid) takes the (j - num_valid)-th random screened prior draw
    pj = jnp.clip(slot - num_valid, 0, c0 - 1)
    from_prior = (~from_cand) & (pj < num_prior_ok)
    pos = jnp.where(from_prior[:, None], prior[pidx[pj]], chosen)
    pos_lp = jnp.where(from_prior, prior_lp[pidx[pj]], chosen_lp)

    # still empty slots: reuse finite points found so far (uniformly at random)
    have = from_cand | from_prior
    n_have = jnp.sum(have)
    r = jax.random.randint(k_reuse, (c0,), 0, jnp.maximum(n_have, 1))
    src = jnp.argsort(~have, stable=True)[r]  # r-th filled slot
    reuse = (~have) & (n_have > 0)
    pos = jnp.where(reuse[:, None], pos[src], pos)
    pos_lp = jnp.where(reuse, pos_lp[src], pos_lp)
    ok = jnp.all(jnp.isfinite(pos_lp)) & jnp.all(jnp.isfinite(pos))
    return pos, InitInfo(num_valid, jnp.sum(from_prior), jnp.sum(reuse), ok, pos_lp)


def _pad_candidates(candidates, candidate_log_weights, c0):
    """Pad ``[K, S, d]`` candidates (and ``[K, S]`` log weights) to at least ``c0`` rows with
    non-finite entries, so top-k has enough of them; ``None`` weights become zeros."""
    k, s, d = candidates.shape
    if s < c0:
        candidates = jnp.concatenate(
            [candidates, jnp.full((k, c0 - s, d), jnp.nan, candidates.dtype)], 1)
    if candidate_log_weights is None:
        return candidates, jnp.zeros(candidates.shape[:2], candidates.dtype)
    logw = jnp.asarray(candidate_log_weights, candidates.dtype)
    if logw.shape != (k, s):
        raise ValueError(f"candidate_log_weights must be [{k}, {s}], got {logw.shape}")
    if s < c0:
        logw = jnp.concatenate([logw, jnp.full((k, c0 - s), -jnp.inf, logw.dtype)], 1)
    return candidates, logw


def initialize_positions_keys(keys, model: Model, obs, candidates, candidate_log_weights=None,
                              num_superchains: int = 16, *, num_prior_draws: int = 1024,
                              block_size: int = 64, cache: CompileCache | None = None):
    """:func:`initialize_positions` with one PRNG key per dataset (``keys [K]``): a dataset's
    starting points depend only on its key, observation and candidates."""
    obs = batching.as_batch(obs)
    candidates = jnp.asarray(candidates, dtype=jnp.result_type(float))
    k, _, d = candidates.shape
    if obs.num_datasets != k:
        raise ValueError(f"initialize_positions: {obs.num_datasets} datasets but {k} candidate sets")
    if d != model.dim:
        raise ValueError(f"initialize_positions: candidates have d={d}, model has {model.dim}")
    c0, npd = int(num_superchains), int(num_prior_draws)
    candidates, logw = _pad_candidates(candidates, candidate_log_weights, c0)
    one = functools.partial(_init_one, model=model, num_superchains=c0, num_prior_draws=npd)
    cache = DEFAULT_CACHE if cache is None else cache
    fn, _ = cache.get(("init", model, c0, npd), lambda: jax.jit(
        lambda *args: jax.lax.map(lambda a: one(*a), args, batch_size=_DATASETS_PER_STEP)))
    b = int(block_size)
    outs = []
    for s0 in range(0, k, b):
        rows = np.minimum(np.arange(s0, s0 + b), k - 1)  # the last block repeats its last row
        out = fn(keys[rows], take(obs, rows), candidates[rows], logw[rows])
        outs.append(jax.tree.map(lambda a: a[: min(b, k - s0)], out))
    if not outs:
        return fn(keys, obs, candidates, logw)
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


def initialize_positions(key, model: Model, obs, candidates, candidate_log_weights=None,
                         num_superchains: int = 16, *, num_prior_draws: int = 1024,
                         block_size: int = 64, cache: CompileCache | None = None):
    """Random, distinct, finite-density superchain starting points for every dataset.

    Args:
      key: PRNG key (split into one key per dataset, by position).
      model: the model (``log_density_obs`` is evaluated at every candidate).
      obs: ``ys [K, *obs_shape]`` or a batched :class:`~amortflow.models.Observation` (its
        ``beta`` tempers the density the candidates are screened and the prior draws weighted by).
      candidates: ``[K, S, d]`` unconstrained points (PSIS-resampled or raw amortized draws).
      candidate_log_weights: ``[K, S]`` log importance weights, or ``None`` (equal weights;
        duplicated rows then count by multiplicity).
      num_superchains: ``C0`` starting points per dataset.
      num_prior_draws: prior draws screened per dataset for the fallback.
      block_size: datasets per compiled call. Every call has this shape (the last block is
        padded), so one compilation serves any ``K``: the ladder calls this with a different
        ``K`` per rung and chunk, and each new ``K`` used to cost a recompilation. A dataset's
        result does not depend on its block.
      cache: :class:`~amortflow._compile.CompileCache` (default ``DEFAULT_CACHE``).
    Returns:
      ``(init [K, C0, d], InitInfo)``.
    """
    keys = jax.random.split(key, np.shape(candidates)[0])
    return initialize_positions_keys(keys, model, obs, candidates, candidate_log_weights,
                                     num_superchains, num_prior_draws=num_prior_draws,
                                     block_size=block_size, cache=cache)


def summarize_init(info: InitInfo) -> dict:
    """Plain-number summary of an :class:`InitInfo` (for logs and tables)."""
    return {
        "num_datasets": int(np.asarray(info.ok).size),
        "num_not_ok": int(np.sum(~np.asarray(info.ok))),
        "num_with_fallback": int(np.sum(np.asarray(info.num_fallback) > 0)),
        "num_with_reuse": int(np.sum(np.asarray(info.num_reused) > 0)),
    }
