"""Amortized generalized Bayes: training one posterior network ``q(theta | y, beta)`` for every
temperature ``beta`` of the power posterior ``p_beta(theta | y) ∝ p(theta) p(y | theta)^beta``.

``beta`` enters the flow's context as ``log beta`` (the posterior's scale moves linearly in it:
sd ∝ beta^-1/2 for a regular likelihood) and is drawn log-uniformly over the training range.
Only the *conditional* ``p_beta(theta | y)`` has to be learned, so the data ``y`` may come from
any distribution that covers the data of interest: the model's prior predictive (``beta = 1``)
serves every ``beta``. Two objectives, both values (composed into :class:`Tempering`):

- :class:`ReweightedSimulations` (route (B) of Sun, Nicholls & Lee, 2026): prior-predictive
  pairs ``(theta_i, y_i)`` weighted by ``p(y_i | theta_i)^(beta - 1)``, self-normalized over the
  batch, form a weighted sample of the tempered joint. Cheap (no draws from ``q``), but the
  weights' effective sample size collapses away from ``beta = 1`` (see :func:`reweighting_ess`).
- :class:`SelfNormalizedKL` (the default): at ``beta = 1`` the exact forward KL on the
  simulated pairs; at a random ``beta`` an importance-weighted forward KL per dataset, with a
  defensive mixture of the current ``q(. | y, beta)`` (gradient stopped) and the prior as the
  proposal and the model's exact tempered density ``log p(theta) + beta log p(y | theta)`` as
  the target. It needs the likelihood (every amortflow model has one) and holds across the range:
  the prior component covers small ``beta``, the flow component large ``beta``.

Shapes: ``B`` simulations per step, ``d`` parameters, ``c`` context dimension.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.errors import BetaRangeError, ConfigError


def _positive(owner, name, v, *, integer=False, lo=0.0, hi=math.inf, closed=False):
    ok_type = (isinstance(v, numbers.Integral) if integer else isinstance(v, numbers.Real)) and not isinstance(v, bool)
    if not ok_type or not math.isfinite(v) or not (lo <= v if closed else lo < v) or not v <= hi:
        kind = "a whole number" if integer else "a finite number"
        rng = f"{'>=' if closed else '>'} {lo:g}" + ("" if hi == math.inf else f" and <= {hi:g}")
        raise ConfigError(f"{owner}.{name} must be {kind} {rng}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class ReweightedSimulations:
    """Route (B) of Sun et al.: self-normalized weights ``p(y|theta)^(beta-1)`` on the batch.

    Attributes:
      num_betas: temperatures per training step (stratified over the log range); every one
        reuses the batch, so the cost is ``num_betas`` flow evaluations per simulation.
    """

    num_betas: int = 4

    def __post_init__(self):
        _positive("ReweightedSimulations", "num_betas", self.num_betas, integer=True, lo=1, closed=True)

    def to_dict(self) -> dict:
        return {"kind": "reweighted", "num_betas": int(self.num_betas)}


@dataclasses.dataclass(frozen=True)
class SelfNormalizedKL:
    """Exact forward KL at ``beta = 1`` plus importance-weighted forward KL at random ``beta``.

    Attributes:
      num_tempered: datasets of each batch that also get a random ``beta`` (the first ones).
      num_proposals: proposal draws per tempered dataset.
      prior_fraction: share of the proposals drawn from the prior (the defensive component;
        the mixture density, not the component that drew a point, enters the weight).
    """

    num_tempered: int = 64
    num_proposals: int = 16
    prior_fraction: float = 0.25

    def __post_init__(self):
        _positive("SelfNormalizedKL", "num_tempered", self.num_tempered, integer=True, lo=1, closed=True)
        _positive("SelfNormalizedKL", "num_proposals", self.num_proposals, integer=True, lo=2, closed=True)
        _positive("SelfNormalizedKL", "prior_fraction", self.prior_fraction, lo=0.0, hi=1.0, closed=True)
        n_prior = self.num_prior
        if n_prior == self.num_proposals:
            raise ConfigError("SelfNormalizedKL: prior_fraction leaves no draws from q; use a value < 1")

    @property
    def num_prior(self) -> int:
        return int(round(self.prior_fraction * self.num_proposals))

    def to_dict(self) -> dict:
        return {"kind": "self_normalized_kl", "num_tempered": int(self.num_tempered),
                "num_proposals": int(self.num_proposals), "prior_fraction": float(self.prior_fraction)}


@dataclasses.dataclass(frozen=True)
class Tempering:
    """Train ``q(theta | y, beta)`` for ``beta`` in ``[low, high]`` (log-uniform).

    A narrow range is the known failure mode of tempered training (the network never sees the
    broad posteriors of small ``beta``); the default spans the values generalized-Bayes
    calibration usually selects. A ``beta`` outside the range is refused at inference
    (:class:`BetaRangeError`) unless the estimator opts in to extrapolation.

    Attributes:
      low, high: the training range of ``beta`` (``0 < low < high``; it must contain 1).
      objective: :class:`SelfNormalizedKL` (default) or :class:`ReweightedSimulations`.
    """

    low: float = 0.05
    high: float = 2.0
    objective: SelfNormalizedKL | ReweightedSimulations = SelfNormalizedKL()

    def __post_init__(self):
        _positive("Tempering", "low", self.low)
        _positive("Tempering", "high", self.high)
        if not self.low <= 1.0 <= self.high or self.low >= self.high:
            raise ConfigError(f"Tempering: the range [{self.low:g}, {self.high:g}] must satisfy low < high "
                              "and contain beta = 1 (the simulated pairs are exact there)")
        if not isinstance(self.objective, (SelfNormalizedKL, ReweightedSimulations)):
            raise ConfigError("Tempering.objective must be SelfNormalizedKL() or ReweightedSimulations(), "
                              f"got {type(self.objective).__name__}")

    @property
    def log_range(self) -> tuple[float, float]:
        return math.log(self.low), math.log(self.high)

    def to_dict(self) -> dict:
        return {"low": float(self.low), "high": float(self.high), "objective": self.objective.to_dict()}


def stratified_log_betas(key, n: int, low: float, high: float):
    """``n`` values of ``log beta``, one uniform draw in each of ``n`` equal strata of
    ``[log low, log high]`` (lower-variance coverage of the range than iid draws); ``[n]``."""
    a, b = math.log(low), math.log(high)
    u = (jnp.arange(n) + jax.random.uniform(key, (n,))) / n
    return a + (b - a) * jax.random.permutation(jax.random.fold_in(key, 1), u)


def safe_softmax(lw):
    """Softmax over the last axis of ``[..., m]`` log weights; rows that are all ``-inf`` give
    zero weights instead of NaN."""
    top = jnp.max(lw, axis=-1, keepdims=True)
    e = jnp.where(jnp.isfinite(lw), jnp.exp(lw - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(e.dtype).tiny)


def make_tempered_loss(tempering: Tempering, model, spec, std):
    """``loss(params, batch, key) -> scalar`` for a beta-conditioned NPE (``spec.num_conditions
    == 1``) trained with ``tempering.objective`` on batches ``(theta [B, d], y [B, ...])``."""
    from amortflow.estimators import npe

    obj = tempering.objective
    low, high = tempering.low, tempering.high

    def summaries(params, ys):
        return npe.context(dataclasses.replace(spec, num_conditions=0), params, std, ys)

    def with_beta(s, log_beta):
        return jnp.concatenate([s, jnp.broadcast_to(log_beta, s.shape[:-1] + (1,))], -1)

    def log_q(params, theta, ctx):
        return npe.log_prob_from_context(spec, params, std, theta, ctx)

    loglik = jax.vmap(model.log_likelihood)

    if isinstance(obj, ReweightedSimulations):
        def loss(params, batch, key):
            theta, ys = batch[0], batch[1]
            s = summaries(params, ys)
            ll = loglik(theta, ys)
            ll = jnp.where(jnp.isfinite(ll), ll, -jnp.inf)
            log_betas = stratified_log_betas(key, obj.num_betas, low, high)

            def one(lb):
                w = safe_softmax((jnp.exp(lb) - 1.0) * ll)
                return -jnp.sum(w * log_q(params, theta, with_beta(s, lb)))

            return jnp.mean(jax.vmap(one)(log_betas))

        return loss

    n_t, m, m_prior = obj.num_tempered, obj.num_proposals, obj.num_prior
    m_q = m - m_prior
    log_mix = (math.log(m_q / m), math.log(m_prior / m) if m_prior else -math.inf)

    def loss(params, batch, key):
        theta, ys = batch[0], batch[1]
        s = summaries(params, ys)
        exact = -jnp.mean(log_q(params, theta, with_beta(s, 0.0)))
        nt = min(n_t, theta.shape[0])
        k_beta, k_q, k_p = jax.random.split(key, 3)
        log_betas = stratified_log_betas(k_beta, nt, low, high)
        ctx = with_beta(s[:nt], log_betas[:, None])  # [nt, c]
        frozen = jax.lax.stop_gradient(params)
        ctx_frozen = jax.lax.stop_gradient(ctx)

        def proposals(k, c):
            x, _ = npe.sample_from_context(spec, frozen, std, k, c, m_q)
            return x

        xq = jax.vmap(proposals)(jax.random.split(k_q, nt), ctx_frozen)  # [nt, m_q, d]
        if m_prior:
            xp = model.sample_prior(k_p, nt * m_prior).reshape(nt, m_prior, -1)
            x = jnp.concatenate([xq, xp], axis=1)
        else:
            x = xq
        x = jax.lax.stop_gradient(x)
        lq_frozen = log_q(frozen, x, ctx_frozen[:, None, :])  # [nt, m]
        lp = jax.vmap(jax.vmap(model.log_prior))(x)
        ll = jax.vmap(lambda th, y: jax.vmap(lambda t: model.log_likelihood(t, y))(th))(x, ys[:nt])
        log_prop = jnp.logaddexp(log_mix[0] + lq_frozen, log_mix[1] + lp) if m_prior else lq_frozen
        target = lp + jnp.exp(log_betas)[:, None] * ll
        lw = jnp.where(jnp.isfinite(target) & jnp.isfinite(log_prop), target - log_prop, -jnp.inf)
        w = jax.lax.stop_gradient(safe_softmax(lw))
        # a dataset none of whose proposals has finite density (data-dependent support, early in
        # training) contributes nothing rather than NaN
        tempered = -jnp.sum(w * log_q(params, x, ctx[:, None, :])) / jnp.maximum(
            jnp.sum(jnp.any(w > 0, axis=1)), 1)
        return exact + tempered

    return loss


def reweighting_ess(model, theta, ys, betas) -> np.ndarray:
    """Effective sample size (as a fraction of ``N``) of route (B)'s self-normalized weights
    ``p(y_i | theta_i)^(beta - 1)`` over prior-predictive pairs ``theta [N, d]``,
    ``ys [N, *obs_shape]``, at each of ``betas [G]`` -> ``[G]``."""
    ll = np.asarray(jax.jit(jax.vmap(model.log_likelihood))(jnp.asarray(theta), jnp.asarray(ys)), np.float64)
    ll = ll[np.isfinite(ll)]
    out = []
    for b in np.asarray(betas, np.float64).ravel():
        lw = (b - 1.0) * ll
        w = np.exp(lw - lw.max())
        out.append(w.sum() ** 2 / (w ** 2).sum() / len(ll))
    return np.asarray(out)


def check_beta_range(beta, beta_range, owner: str, extrapolate: bool = False):
    """Raise :class:`BetaRangeError` (or warn, with ``extrapolate``) for concrete temperatures
    ``beta [K]`` outside ``beta_range = (low, high)``."""
    if beta_range is None:
        return
    b = np.asarray(beta, np.float64)
    low, high = beta_range
    bad = (b < low * (1 - 1e-6)) | (b > high * (1 + 1e-6))
    if not bad.any():
        return
    vals = np.unique(b[bad])[:5]
    msg = (f"{owner}: temperature beta = {', '.join(f'{v:g}' for v in vals)} is outside the range "
           f"[{low:g}, {high:g}] the estimator was trained on ({int(bad.sum())} dataset(s))")
    if not extrapolate:
        raise BetaRangeError(msg + "; retrain with a wider Tempering(low=..., high=...), or opt in with "
                                   "est.allowing_extrapolation() (the workflow's PSIS/MCMC stages then "
                                   "correct the extrapolated draws)")
    import warnings

    warnings.warn(msg + "; extrapolating as requested (allow_beta_extrapolation=True)", stacklevel=3)
