"""The Wiener first-passage-time (diffusion decision) density and an inverse-CDF sampler, in JAX.

A Wiener diffusion with drift ``v``, unit diffusion coefficient, absorbing boundaries at 0 and
``a`` (boundary separation) and start ``w * a`` (relative start ``w`` in (0, 1)). Following
Navarro & Fuss (2009), the density of the first passage through the LOWER boundary at decision
time ``t`` is

    f(t | v, a, w) = a^-2 exp(-v a w - v^2 t / 2) f(t / a^2 | 0, 1, w),

with the standardized density (``u = t / a^2``) given by two series,

    large time:  f(u | 0, 1, w) = pi sum_{k >= 1} k exp(-k^2 pi^2 u / 2) sin(k pi w)
    small time:  f(u | 0, 1, w) = (2 pi u^3)^-1/2 sum_{k in Z} (w + 2k) exp(-(w + 2k)^2 / (2u)).

The upper boundary is the lower one of the mirrored process: ``(v, w) -> (-v, 1 - w)``.

Accuracy (see :func:`wiener_log_density`): the series are truncated at fixed term counts that are
proven to leave a relative truncation error below 1e-20 wherever each series is used, so what is
left is floating-point rounding: about 1e-6 relative in float32 (``|log f| * 1e-7`` in the log
for very small or very large ``t``), about 1e-13 in float64.

Sampler (:func:`wiener_sample`): the choice is drawn with its exact probability; the decision
time by inverting the conditional CDF, computed by trapezoid integration of this density on a
grid adapted to the parameters (error in the CDF below about 1e-5; see the function).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

#: standardized time u = t / a^2 below which the small-time series is used
U_SWITCH = 0.25
#: pairs of small-time terms (k = -4..3 or -4..4) and large-time terms (k = 1..6); see
#: :func:`wiener_log_density` for why these counts meet the error bound on the whole range
N_SMALL_PAIRS = 4
N_LARGE_TERMS = 6
#: relative truncation error the fixed counts guarantee (rounding dominates in both precisions)
TRUNCATION_EPS = 1e-20

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_PI = math.log(math.pi)
_PI2_2 = math.pi ** 2 / 2.0


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _log_fstd_small(u, w, wc):
    """log f(u | 0, 1, w) by the small-time series, for 0 < u <= ``U_SWITCH``.

    The k = 0 factor exp(-w^2 / 2u) is taken out (it underflows for tiny u) and images are
    summed in pairs whose difference is formed with ``expm1``, so nothing cancels
    catastrophically: ``w > 1/2`` pairs k = j with k = -(j + 1) (each pair -> 0 as w -> 1),
    ``w <= 1/2`` keeps k = 0 alone and pairs k = j with k = -j (each pair -> 0 as w -> 0).
    ``wc = 1 - w`` is passed separately so that it stays exact for the mirrored boundary.
    Terms are unrolled (elementwise arrays fuse and vectorize far better than a short
    trailing term axis).
    """
    inv_u = 1.0 / u
    s_a = jnp.zeros_like(u)
    s_b = w
    for j in range(N_SMALL_PAIRS):
        # (A) e^{-2j(j+w)/u} [(w+2j) - (2j+1+wc) e^{-x}],  x = 2 wc (2j+1) / u
        em = jnp.expm1(-2.0 * (2 * j + 1) * wc * inv_u)
        bracket = -(w + 2.0 * j) * em - 2.0 * wc * (em + 1.0)
        s_a = s_a + (bracket if j == 0 else jnp.exp(-2.0 * j * (j + w) * inv_u) * bracket)
        # (B) e^{-2m(m-w)/u} [(2m+w) e^{-y} - (2m-w)],  y = 4 m w / u,  m = j + 1
        m = j + 1
        em = jnp.expm1(-4.0 * m * w * inv_u)
        s_b = s_b + jnp.exp(-2.0 * m * (m - w) * inv_u) * ((2.0 * m + w) * em + 2.0 * w)
    s = jnp.where(w > 0.5, s_a, s_b)
    return -0.5 * _LOG_2PI - 1.5 * jnp.log(u) - 0.5 * w * w * inv_u + jnp.log(s)


def _log_fstd_large(u, w, wc):
    """log f(u | 0, 1, w) by the large-time series, for u >= ``U_SWITCH``.

    The k = 1 factor exp(-pi^2 u / 2) is taken out (it underflows for large u); the others are
    powers q^(k^2 - 1) of q = exp(-pi^2 u / 2). sin(k pi w) = (-1)^(k+1) sin(k pi wc), so with
    x = pi min(w, wc), sin(k pi w) / sin(x) = +-U_{k-1}(cos x) (Chebyshev recurrence, well
    conditioned), which keeps the sines accurate near w = 0 and w = 1 at one sin and one cos.
    """
    q = jnp.exp(-_PI2_2 * u)
    x = math.pi * jnp.minimum(w, wc)
    two_c = 2.0 * jnp.cos(x)
    flip = w > 0.5
    r_prev, r = jnp.zeros_like(u), jnp.ones_like(u)  # U_{k-2}, U_{k-1}
    s = jnp.ones_like(u)  # k = 1 term / sin(x)
    q_pow = jnp.ones_like(u)  # q^(k^2 - 1), advanced by q^(2k - 1)
    for k in range(2, N_LARGE_TERMS + 1):
        r_prev, r = r, two_c * r - r_prev
        q_pow = q_pow * q ** (2 * k - 1)
        sign = jnp.where(flip, -1.0, 1.0) if k % 2 == 0 else 1.0
        s = s + k * q_pow * sign * r
    return _LOG_PI - _PI2_2 * u + jnp.log(jnp.sin(x)) + jnp.log(s)


@jax.jit
def log_standard_density(u, w, wc=None):
    """log f(u | 0, 1, w): standardized lower-boundary density (v = 0, a = 1) at ``u > 0``.

    Args:
      u: standardized decision time ``t / a^2``, any shape, > 0.
      w: relative start in (0, 1), broadcast against ``u``.
      wc: ``1 - w`` (pass it when it is known more exactly than ``1 - w`` rounds).
    Returns:
      array of the broadcast shape. No validity checks: see :func:`wiener_log_density`.
    """
    u, w = _float(u), _float(w)
    wc = 1.0 - w if wc is None else _float(wc)
    u, w, wc = jnp.broadcast_arrays(u, w, wc)
    small = u < U_SWITCH
    # double where: each series only ever sees arguments in its own range, so the branch not
    # taken is finite and contributes a zero (not NaN) gradient
    u_small = jnp.where(small, u, U_SWITCH)
    u_large = jnp.where(small, U_SWITCH, u)
    return jnp.where(small, _log_fstd_small(u_small, w, wc), _log_fstd_large(u_large, w, wc))


@jax.jit
def wiener_log_density(t, v, a, w, upper=False):
    """Log density of the Wiener first passage at decision time ``t`` through one boundary.

    Args (all broadcast together; any shapes):
      t: decision time (response time minus non-decision time), seconds.
      v: drift rate.
      a: boundary separation, > 0.
      w: relative start point in (0, 1) (0.5: unbiased), measured from the lower boundary.
      upper: bool (array): ``True`` for the upper boundary, ``False`` (default) for the lower
        one (the Navarro & Fuss 2009 convention); the upper density is the lower one at
        ``(-v, 1 - w)``.
    Returns:
      log f, the broadcast shape, float32 by default (float64 if x64 is on and the inputs are).
      ``-inf`` (never NaN) where ``t <= 0`` or ``t`` is not finite, ``a <= 0``, ``w`` is
      outside (0, 1) or an input is NaN; there the gradient is 0. Elsewhere finite, with
      finite gradients in all four arguments; jit- and vmap-safe.

    Series and terms: with u = t / a^2, the small-time series is used for u < ``U_SWITCH``
    = 0.25 and the large-time one above (close to where Navarro & Fuss's term-count rule
    switches at small error). Both are summed with a FIXED number of terms, which meets the
    bound ``TRUNCATION_EPS`` = 1e-20 (relative to f itself) over the whole range where each
    series is used, so no masking is needed:

    - large time, k = 1..6, u >= 1/4: |sin k pi w| <= k sin pi w bounds the remainder by
      sin(pi w) e^{-pi^2 u/2} sum_{k>=7} k^2 e^{-(k^2-1) pi^2 u/2} <= 1e-24 of the leading
      term, and the sum is >= 0.9 of it (sum_{k>=2} k^2 e^{-(k^2-1) pi^2/8} < 0.1).
    - small time, u <= 1/4, images k = -4..3 (w > 1/2) or -4..4 (w <= 1/2): every left-out
      pair has one sign and is at most 2 min(w, 1-w) |g'(x)| with g(x) = x e^{-x^2/2u}, x >= 7,
      i.e. < e^{-90} min(w, 1-w) after taking out e^{-w^2/2u}, while the kept sum is at least
      0.7 min(w, 1-w) there.
    The counts also satisfy Navarro & Fuss's own (absolute) bounds at eps = 1e-15: their rule
    asks for at most 5.3 large-time terms at u >= 1/4 and 6.1 small-time terms at u <= 1/4.
    The relative error of the result is therefore rounding: ~1e-6 in float32 (plus
    ~1e-7 |log f| in the log value, which matters only far in the tails) and ~1e-13 in float64.
    """
    t, v, a, w = (_float(x) for x in (t, v, a, w))
    upper = jnp.asarray(upper, dtype=bool)
    t, v, a, w, upper = jnp.broadcast_arrays(t, v, a, w, upper)
    valid = (t > 0) & jnp.isfinite(t) & (a > 0) & jnp.isfinite(a) & (w > 0) & (w < 1) & jnp.isfinite(v)
    t_s = jnp.where(valid, t, 1.0)
    a_s = jnp.where(valid, a, 1.0)
    v_s = jnp.where(valid, v, 0.0)
    w_s = jnp.where(valid, w, 0.5)
    # the upper boundary is the lower boundary of the mirrored process: (v, w) -> (-v, 1 - w)
    vv = jnp.where(upper, -v_s, v_s)
    ww = jnp.where(upper, 1.0 - w_s, w_s)
    wc = jnp.where(upper, w_s, 1.0 - w_s)
    out = (log_standard_density(t_s / (a_s * a_s), ww, wc)
           - 2.0 * jnp.log(a_s) - vv * a_s * ww - 0.5 * vv * vv * t_s)
    return jnp.where(valid, out, -jnp.inf)


def _log_ratio_expm1(x, c):
    """log(expm1(-x c) / expm1(-x)) for x >= 0, c in (0, 1]; the x -> 0 limit is log c."""
    tiny = x < 1e-5
    x_s = jnp.where(tiny, 1.0, x)
    exact = jnp.log(jnp.expm1(-x_s * c) / jnp.expm1(-x_s))
    return jnp.where(tiny, jnp.log(c) + 0.5 * x * (1.0 - c), exact)  # first-order Taylor


@jax.jit
def wiener_log_choice_prob(v, a, w, upper=False):
    """log P(absorption at the lower (or, with ``upper``, the upper) boundary); any shapes.

    P(lower) = (e^{-2vaw} - e^{-2va}) / (1 - e^{-2va}) (= 1 - w at v = 0), evaluated as
    -max(z, 0) w + log(expm1(-|z| (1-w)) / expm1(-|z|)) with z = 2va, which neither overflows
    for large |z| nor loses accuracy for z near 0.
    """
    v, a, w = (_float(x) for x in (v, a, w))
    upper = jnp.asarray(upper, dtype=bool)
    v, a, w, upper = jnp.broadcast_arrays(v, a, w, upper)
    z = jnp.where(upper, -2.0 * v * a, 2.0 * v * a)
    ww = jnp.where(upper, 1.0 - w, w)
    wc = jnp.where(upper, w, 1.0 - w)
    return -jnp.maximum(z, 0.0) * ww + _log_ratio_expm1(jnp.abs(z), wc)


def _time_grid(v, a, w, wc, num_grid):
    """Standardized-time grid and CDF of the decision time given the LOWER boundary.

    Scalars in. Returns ``(u [num_grid], cdf [num_grid])``, cdf normalized to end at 1.
    The grid is 0 followed by ``num_grid - 1`` points geometric in u on [w^2 / 50, U] (fine
    where the density rises steeply near 0, coarse in the exponential tail). U is where the conditional tail mass is below e^-16 (~1e-7), from the bound
    f(u | 0,1,w) <= 1.1 pi sin(pi w) e^{-pi^2 u/2} (u >= 1/4): the conditional density of u is
    e^{-(va)^2 u/2} f(u | 0,1,w) / Z with Z = P(lower) e^{vaw}, so the tail beyond U is at most
    3.5 e^{-beta U} / (beta Z), beta = pi^2/2 + (va)^2/2.
    """
    va = v * a
    beta = _PI2_2 + 0.5 * va * va
    log_z = wiener_log_choice_prob(v, a, w) + va * w
    u_max = jnp.maximum(U_SWITCH, (jnp.log(3.5 / beta) - log_z + 16.0) / beta)
    # below w^2 / 50 lies a mass < erfc(5) ~ 2e-12 (the free first passage over distance w)
    u_min = w * w / 50.0
    frac = jnp.linspace(0.0, 1.0, num_grid - 1, dtype=u_max.dtype)
    u = jnp.concatenate([jnp.zeros((1,), u_max.dtype), u_min * (u_max / u_min) ** frac])
    u_pos = jnp.where(u > 0, u, 1.0)
    logg = jnp.where(u > 0, -0.5 * va * va * u_pos + log_standard_density(u_pos, w, wc), -jnp.inf)
    g = jnp.exp(logg - jnp.max(logg))
    cell = 0.5 * (g[1:] + g[:-1]) * jnp.diff(u)
    cdf = jnp.concatenate([jnp.zeros((1,), g.dtype), jnp.cumsum(cell)])
    return u, cdf / cdf[-1]


def wiener_sample(key, v, a, w, shape=(), *, num_grid: int = 1024):
    """Draws of (decision time, boundary) of a Wiener diffusion, for ONE parameter set.

    Args:
      key: PRNG key.
      v, a, w: scalar drift, boundary separation (> 0) and relative start in (0, 1)
        (``jax.vmap`` over parameter sets). With ``w`` a Python number equal to 0.5 the two
        boundaries share one grid (their conditional time distributions are then identical).
      shape: shape of the draws (int or tuple).
      num_grid: grid points of each conditional CDF.
    Returns:
      ``(t [shape], upper [shape] bool)``: decision times (> 0, same units as ``a^2``) and
      whether the upper boundary was hit.

    Method: the boundary is drawn with its exact probability (:func:`wiener_log_choice_prob`);
    the time by inverse-CDF sampling of its conditional distribution: the CDF is the trapezoid
    integral of the density (:func:`log_standard_density`) on a grid geometric in t from
    where the mass below is < 1e-11 to where the mass above is < 1e-7 (:func:`_time_grid`),
    linearly interpolated between grid points. Measured against a 400 000-point float64
    integration of the series, the sup error of this CDF is about 1e-5 (at most 5e-5) over
    |v a| <= 20 and w in [0.1, 0.9] (the drift-diffusion prior has |v a| mostly < 10): far
    below what 10^6 draws can detect (KS resolution ~1e-3). Cost: one grid (w = 0.5) or two
    of ``num_grid`` density evaluations per call plus a binary search per draw; 256 datasets
    x 120 trials of :func:`~amortflow.models.ddm.drift_diffusion` take ~20 ms on 2 CPU cores.
    """
    shared = isinstance(w, (int, float)) and float(w) == 0.5
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    return _wiener_sample(key, v, a, w, shape, int(num_grid), shared)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _wiener_sample(key, v, a, w, shape, num_grid, shared):
    v, a, w = (_float(x) for x in (v, a, w))
    dt = jnp.result_type(v, a, w)
    v, a, w = v.astype(dt), a.astype(dt), w.astype(dt)
    wc = 1.0 - w
    k_choice, k_time = jax.random.split(key)
    p_upper = jnp.exp(wiener_log_choice_prob(v, a, w, upper=True))
    upper = jax.random.uniform(k_choice, shape, dtype=dt) < p_upper
    r = jax.random.uniform(k_time, shape, dtype=dt)
    u_lo, cdf_lo = _time_grid(v, a, w, wc, num_grid)
    if shared:
        u = jnp.interp(r, cdf_lo, u_lo)
    else:
        # the upper boundary: the lower one of the mirrored process (-v, 1 - w)
        u_up, cdf_up = _time_grid(-v, a, wc, w, num_grid)
        u = jnp.where(upper, jnp.interp(r, cdf_up, u_up), jnp.interp(r, cdf_lo, u_lo))
    # u = 0 has probability 0 (the density vanishes there); keep t strictly positive anyway
    u = jnp.maximum(u, jnp.finfo(dt).tiny)
    return a * a * u, upper
