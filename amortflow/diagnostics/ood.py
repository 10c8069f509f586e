"""Out-of-distribution scores in learned-summary space (stage 1 of the amortized workflow).

Two scores, each a (fit, score) pair of pure functions with a NamedTuple state:

- Mahalanobis distance of a dataset's summary to the training summaries, with a shrinkage
  (regularized) covariance; threshold = empirical ``1 - alpha`` quantile of the scores of
  HELD-OUT training summaries (not those used to fit mean/covariance, whose in-sample scores are
  optimistically small).
- MMD between the point mass at a dataset's summary and the training summary distribution
  (Gaussian kernel on standardized summaries, median-heuristic bandwidth); same thresholding.

A dataset is flagged out of distribution when ``score > state.threshold``.
"""
from __future__ import annotations

from typing import NamedTuple

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg  # noqa: F401  (solve_triangular)

from amortflow.diagnostics.accuracy import pairwise_sqdist

Array = jax.Array

__all__ = [
    "MahalanobisOOD", "fit_mahalanobis", "mahalanobis_score", "MMDOOD", "fit_mmd_ood", "mmd_score",
    "ledoit_wolf_shrinkage", "empirical_threshold",
]


class MahalanobisOOD(NamedTuple):
    """Fitted Mahalanobis OOD detector.

    Attributes:
      mean: ``[p]`` training summary mean.
      precision: ``[p, p]`` inverse of the regularized covariance.
      threshold: scalar; flag ``mahalanobis_score(...) > threshold``.
      alpha: scalar, nominal false-positive rate of the threshold.
      shrinkage: scalar in ``[0, 1]`` actually used (weight of the scaled-identity target).
      heldout_scores: ``[M]`` scores of the held-out summaries (for plots / recalibration).
    """

    mean: Array
    precision: Array
    threshold: Array
    alpha: Array
    shrinkage: Array
    heldout_scores: Array


def ledoit_wolf_shrinkage(x):
    """Ledoit–Wolf (2004) optimal shrinkage weight towards ``mu I`` for ``x [N, p]``; scalar in [0, 1]."""
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = jnp.trace(s) / p
    d2 = jnp.sum((s - mu * jnp.eye(p, dtype=x.dtype)) ** 2) / p
    # b2 = 1/n^2 sum_i ||x_i x_i^T - S||_F^2 / p
    sq = jnp.sum(xc**2, axis=1)
    b2 = (jnp.sum(sq**2) / n - jnp.sum(s**2)) / (n * p)
    b2 = jnp.minimum(b2, d2)
    return jnp.where(d2 > 0, b2 / d2, 1.0)


def empirical_threshold(scores, alpha):
    """Empirical ``1 - alpha`` quantile of held-out ``scores [M]`` (type 'higher': conservative)."""
    return jnp.quantile(scores, 1.0 - alpha, method="higher")


def _mahalanobis(mean, precision, s):
    diff = s - mean
    d2 = jnp.einsum("...i,ij,...j->...", diff, precision, diff)
    return jnp.sqrt(jnp.maximum(d2, 0.0))


@functools.partial(jax.jit, static_argnames=("shrinkage", "eps"))
def fit_mahalanobis(train_summaries, heldout_summaries, alpha: float = 0.05,
                    shrinkage: float | str = "ledoit_wolf", eps: float = 1e-6) -> MahalanobisOOD:
    """Fit the Mahalanobis OOD detector.

    Args:
      train_summaries: ``[N, p]`` learned summaries of training simulations (mean/covariance).
      heldout_summaries: ``[M, p]`` summaries of simulations NOT in ``train_summaries`` (threshold).
      alpha: nominal false-positive rate; threshold is the ``1 - alpha`` quantile of held-out scores.
      shrinkage: ``"ledoit_wolf"`` (data-driven) or a float ``lam`` in ``[0, 1]``: covariance
        ``(1 - lam) S + lam (tr S / p) I``.
      eps: added to the diagonal (relative to ``tr S / p``) for numerical safety.
    Returns:
      :class:`MahalanobisOOD`.
    """
    x = jnp.asarray(train_summaries)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    n, p = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    s = xc.T @ xc / max(n - 1, 1)
    lam = ledoit_wolf_shrinkage(x) if isinstance(shrinkage, str) else jnp.asarray(shrinkage, x.dtype)
    if isinstance(shrinkage, str) and shrinkage != "ledoit_wolf":
        raise ValueError(f"shrinkage must be 'ledoit_wolf' or a float, got {shrinkage!r}")
    mu = jnp.trace(s) / p
    eye = jnp.eye(p, dtype=x.dtype)
    cov = (1.0 - lam) * s + lam * mu * eye + eps * jnp.maximum(mu, jnp.finfo(x.dtype).tiny) * eye
    chol = jnp.linalg.cholesky(cov)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    precision = inv_chol.T @ inv_chol
    held = _mahalanobis(mean, precision, jnp.asarray(heldout_summaries, x.dtype))
    thr = empirical_threshold(held, alpha)
    return MahalanobisOOD(mean, precision, thr, jnp.asarray(alpha, x.dtype), jnp.asarray(lam, x.dtype), held)


@jax.jit
def mahalanobis_score(state: MahalanobisOOD, summaries):
    """Mahalanobis distance of each summary ``[K, p]`` (or ``[p]``) -> ``[K]`` (or scalar)."""
    return _mahalanobis(state.mean, state.precision, jnp.asarray(summaries, state.mean.dtype))


class MMDOOD(NamedTuple):
    """Fitted MMD OOD detector.

    Attributes:
      loc, scale: ``[p]`` standardization of summaries (training mean / sd).
      reference: ``[R, p]`` standardized training summaries the score is computed against.
      bandwidth: scalar Gaussian-kernel bandwidth (median heuristic on ``reference``).
      ref_term: scalar ``mean_{i,j} k(r_i, r_j)`` over the reference (i != j).
      threshold: scalar; flag ``mmd_score(...) > threshold``.
      alpha: scalar.
      heldout_scores: ``[M]``.
    """

    loc: Array
    scale: Array
    reference: Array
    bandwidth: Array
    ref_term: Array
    threshold: Array
    alpha: Array
    heldout_scores: Array


def _mmd_point(ref, ref_term, h, z):
    """MMD^2 between the point mass at ``z [K, p]`` and the reference sample: ``[K]``."""
    kzr = jnp.exp(-pairwise_sqdist(z, ref) / (2.0 * h**2)).mean(axis=1)
    return 1.0 - 2.0 * kzr + ref_term


@functools.partial(jax.jit, static_argnames=("num_reference", "bandwidth"))
def fit_mmd_ood(key, train_summaries, heldout_summaries, alpha: float = 0.05,
                num_reference: int = 2000, bandwidth: float | None = None) -> MMDOOD:
    """Fit the MMD OOD detector.

    Args:
      key: PRNG key (picks the reference subset when ``N > num_reference``).
      train_summaries: ``[N, p]``.
      heldout_summaries: ``[M, p]`` not in ``train_summaries``; sets the threshold.
      alpha: nominal false-positive rate.
      num_reference: at most this many training summaries are kept as the reference (static).
      bandwidth: Gaussian kernel bandwidth on standardized summaries; default median heuristic.
    Returns:
      :class:`MMDOOD`.
    """
    x = jnp.asarray(train_summaries)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    n = x.shape[0]
    loc = x.mean(axis=0)
    scale = jnp.maximum(x.std(axis=0), jnp.finfo(x.dtype).eps)
    if n > num_reference:
        idx = jax.random.choice(key, n, (num_reference,), replace=False)
        x = x[idx]
    ref = (x - loc) / scale
    d2 = pairwise_sqdist(ref, ref)
    r = ref.shape[0]
    if bandwidth is None:
        off = d2[jnp.triu_indices(r, 1)]
        h = jnp.sqrt(0.5 * jnp.median(off))
        h = jnp.maximum(h, jnp.finfo(x.dtype).eps)
    else:
        h = jnp.asarray(bandwidth, x.dtype)
    kk = jnp.exp(-d2 / (2.0 * h**2))
    ref_term = (kk.sum() - r) / (r * (r - 1))
    held = (jnp.asarray(heldout_summaries, x.dtype) - loc) / scale
    held_scores = _mmd_point(ref, ref_term, h, held)
    thr = empirical_threshold(held_scores, alpha)
    return MMDOOD(loc, scale, ref, h, ref_term, thr, jnp.asarray(alpha, x.dtype), held_scores)


@jax.jit
def mmd_score(state: MMDOOD, summaries):
    """MMD² of each summary ``[K, p]`` (or ``[p]``) against the training reference -> ``[K]``."""
    z = jnp.asarray(summaries, state.loc.dtype)
    single = z.ndim == 1
    z = (jnp.atleast_2d(z) - state.loc) / state.scale
    out = _mmd_point(state.reference, state.ref_term, state.bandwidth, z)
    return out[0] if single else out
