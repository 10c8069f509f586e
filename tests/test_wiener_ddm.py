"""The Wiener first-passage-time density and sampler (af.models.wiener) and the six-parameter
drift-diffusion model built on them (af.models.ddm).

Truth is computed independently here: the standardized density by its two series (Navarro &
Fuss 2009) summed in NumPy float64 with 101 images (small time) or 400 terms (large time) and
switched at u = 0.5 instead of the module's 0.25 (the two agree to 4e-15 in the log for u in
[0.1, 0.5] and 1e-12 over [0.05, 2], which is checked too); choice probabilities by the closed form in 50-digit decimal arithmetic;
the decision-time distribution by adaptive quadrature of the density; mean decision times by
Wald's identity E[X_T] = x0 + v E[T]."""
import dataclasses
import decimal
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from amortflow.models.base import infer_obs_kind
from amortflow.models.ddm import PRIORS, drift_diffusion
from amortflow.models.wiener import (_time_grid, log_standard_density, wiener_log_choice_prob,
                                     wiener_log_density, wiener_sample)


# ------------------------------------------------------------------ independent reference
def ref_small(u, w, n_images=50):
    """log f(u | 0, 1, w), small-time series with images k = -n_images..n_images; the k = 0
    factor exp(-w^2 / 2u) is taken out, so every scaled term is at most |w + 2k| in size."""
    u, w = np.broadcast_arrays(np.asarray(u, np.float64), np.asarray(w, np.float64))
    k = np.arange(-n_images, n_images + 1, dtype=np.float64).reshape((-1,) + (1,) * u.ndim)
    s = np.sum((w + 2 * k) * np.exp(-2.0 * k * (k + w) / u), axis=0)
    return -0.5 * np.log(2 * np.pi * u ** 3) - w * w / (2 * u) + np.log(s)


def ref_large(u, w, n_terms=400):
    """log f(u | 0, 1, w), large-time series with k = 1..n_terms (exp(-pi^2 u / 2) taken out)."""
    u, w = np.broadcast_arrays(np.asarray(u, np.float64), np.asarray(w, np.float64))
    k = np.arange(1, n_terms + 1, dtype=np.float64).reshape((-1,) + (1,) * u.ndim)
    s = np.sum(k * np.exp(-(k * k - 1) * np.pi ** 2 * u / 2) * np.sin(k * np.pi * w), axis=0)
    return np.log(np.pi) - np.pi ** 2 * u / 2 + np.log(s)


def ref_log_density(t, v, a, w, upper):
    """Reference log f(t | v, a, w) at the lower (upper: mirrored (-v, 1 - w)) boundary."""
    t, v, a, w, upper = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (t, v, a, w)),
                                            np.asarray(upper, bool))
    vv = np.where(upper, -v, v)
    ww = np.where(upper, 1.0 - w, w)
    u = t / a ** 2
    small = u < 0.5
    lf = np.where(small, ref_small(np.where(small, u, 0.1), ww), ref_large(np.where(small, 1.0, u), ww))
    return lf - 2 * np.log(a) - vv * a * ww - 0.5 * vv * vv * t


def closed_form_p_lower(v, a, w):
    """P(lower) = (e^{-2vaw} - e^{-2va}) / (1 - e^{-2va}) in 50-digit decimal arithmetic."""
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        v, a, w = decimal.Decimal(float(v)), decimal.Decimal(float(a)), decimal.Decimal(float(w))
        if v == 0:
            return float(1 - w)
        z = 2 * v * a
        return float(((-z * w).exp() - (-z).exp()) / (1 - (-z).exp()))


def test_reference_series_agree_with_each_other():
    """The reference itself: the two series agree where both converge (u in [0.05, 2])."""
    u, w = np.meshgrid(np.geomspace(0.05, 2.0, 15), np.linspace(0.02, 0.98, 13))
    assert np.max(np.abs(ref_small(u, w) - ref_large(u, w))) < 1e-11  # measured 1.1e-12
    near_switch = (u >= 0.1) & (u <= 0.5)
    assert np.max(np.abs(ref_small(u, w) - ref_large(u, w))[near_switch]) < 1e-13  # measured 4e-15


# ------------------------------------------------------------------ density against the reference
U_GRID = np.array([1e-4, 1e-3, 0.01, 0.1, 0.2, 0.249, 0.25, 0.251, 0.3, 0.5, 1.0, 3.0, 10.0, 100.0])
GRID = np.array(list(itertools.product(U_GRID, [0.5, 1.0, 2.5], [-3.0, -0.5, 0.0, 1.2, 4.0],
                                       [0.02, 0.3, 0.5, 0.7, 0.98], [0.0, 1.0])))


@pytest.mark.parametrize("x64,tol", [(False, 3e-6), (True, 1e-11)])
def test_density_matches_independent_series(x64, tol):
    """|log f - log f_ref| <= tol (1 + |log f_ref|) over 2100 points: u = t / a^2 from 1e-4 (log f
    ~ -5000) through the switch at 0.25 to 100, both boundaries, w close to 0 and 1. Measured:
    4e-7 (float32), 1.3e-15 (float64). The reference is evaluated at the inputs rounded to the
    working precision, so input rounding (x 125 at u = 1e-3) is not charged to the module."""
    dt = np.float64 if x64 else np.float32
    u, a, v, w, up = GRID.T
    t = (u * a * a).astype(dt)
    v, a, w = v.astype(dt), a.astype(dt), w.astype(dt)
    ref = ref_log_density(t, v, a, w, up.astype(bool))
    with jax.enable_x64(x64):
        got = wiener_log_density(jnp.asarray(t), jnp.asarray(v), jnp.asarray(a), jnp.asarray(w), up.astype(bool))
        assert got.dtype == dt
        got = np.asarray(got, np.float64)
    assert np.all(np.isfinite(got))
    err = np.abs(got - ref) / (1.0 + np.abs(ref))
    assert err.max() < tol, (err.max(), GRID[np.argmax(err)])
    # the standardized density on its own, at a few switching-region points
    uu = np.array([0.2499, 0.25, 0.2501], dt)
    with jax.enable_x64(x64):
        lf = np.asarray(log_standard_density(jnp.asarray(uu), jnp.asarray(dt(0.37))), np.float64)
    np.testing.assert_allclose(lf, ref_small(uu, dt(0.37)), rtol=0, atol=tol * 2)


def test_gradients_match_finite_differences_of_the_reference():
    """jax.grad in float64 in each of t, v, a, w at both boundaries and on both sides of the
    series switch, against central differences of the reference (relative error < 1e-6)."""
    points = [(1e-3, 0.8, 1.0, 0.5), (0.2, -1.5, 1.3, 0.3), (0.2499, 0.4, 1.0, 0.6),
              (0.2501, 0.4, 1.0, 0.6), (0.9, 2.0, 1.7, 0.8), (5.0, -0.3, 1.2, 0.05), (150.0, 0.2, 0.8, 0.4)]
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(wiener_log_density, argnums=(0, 1, 2, 3)))
        for (u, v, a, w), upper in itertools.product(points, [False, True]):
            x = np.array([u * a * a, v, a, w])
            g = np.array([float(d) for d in grad(*(jnp.asarray(xi) for xi in x), upper)])
            fd = np.empty(4)
            for i in range(4):
                h = 1e-6 * max(abs(x[i]), 1e-2)
                xp, xm = x.copy(), x.copy()
                xp[i] += h
                xm[i] -= h
                fd[i] = (ref_log_density(*xp, upper) - ref_log_density(*xm, upper)) / (2 * h)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(fd)),
                                       err_msg=f"point {(u, v, a, w, upper)}")


def test_invalid_inputs_give_minus_inf_and_zero_gradient():
    nan, inf = float("nan"), float("inf")
    bad = [(0.0, 1.0, 1.0, 0.5), (-0.3, 1.0, 1.0, 0.5), (inf, 1.0, 1.0, 0.5), (nan, 1.0, 1.0, 0.5),
           (0.5, 1.0, 0.0, 0.5), (0.5, 1.0, -1.0, 0.5), (0.5, 1.0, nan, 0.5), (0.5, 1.0, inf, 0.5),
           (0.5, 1.0, 1.0, 0.0), (0.5, 1.0, 1.0, 1.0), (0.5, 1.0, 1.0, -0.2), (0.5, 1.0, 1.0, 1.5),
           (0.5, 1.0, 1.0, nan), (0.5, nan, 1.0, 0.5), (0.5, inf, 1.0, 0.5)]
    grad = jax.jit(jax.grad(wiener_log_density, argnums=(0, 1, 2, 3)))
    t, v, a, w = (jnp.asarray(c, jnp.float32) for c in zip(*bad))
    for upper in (False, True):
        out = np.asarray(wiener_log_density(t, v, a, w, upper))
        assert np.all(out == -np.inf), out
        for point in bad:
            g = grad(*(jnp.float32(x) for x in point), upper)
            np.testing.assert_array_equal(np.asarray(g), 0.0, err_msg=f"{point}, upper={upper}")
    # valid points right next to the invalid region stay finite, with finite gradients
    near = [(1e-6, 1.0, 1.0, 0.5), (0.5, 1.0, 1e-3, 0.5), (0.5, 1.0, 1.0, 1e-4), (0.5, 1.0, 1.0, 0.9999),
            (40.0, 3.0, 2.0, 0.5), (1e3, 0.5, 1.0, 0.3), (3e-4, -2.0, 1.0, 0.7)]
    t, v, a, w = (jnp.asarray(c, jnp.float32) for c in zip(*near))
    for upper in (False, True):
        assert np.all(np.isfinite(np.asarray(wiener_log_density(t, v, a, w, upper))))
        for point in near:
            g = grad(*(jnp.float32(x) for x in point), upper)
            assert np.all(np.isfinite(np.asarray(g))), (point, upper)


def test_broadcasting_jit_and_vmap():
    t = jnp.linspace(0.05, 2.0, 7)[:, None]  # [7, 1]
    w = jnp.asarray([0.2, 0.5, 0.8])  # [3]
    upper = jnp.asarray([[True], [False]])[:, None]  # [2, 1, 1]
    out = wiener_log_density(t, 0.7, 1.3, w, upper)
    assert out.shape == (2, 7, 3)
    ref = ref_log_density(np.asarray(t), 0.7, 1.3, np.asarray(w), np.asarray(upper))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=3e-6, atol=3e-6)
    mapped = jax.jit(jax.vmap(lambda tt, ww: wiener_log_density(tt, 0.7, 1.3, ww, True), in_axes=(0, None)))
    np.testing.assert_allclose(np.asarray(mapped(t[:, 0], w)), np.asarray(out[0]), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ choice probabilities
@pytest.mark.parametrize("x64,tol", [(False, 2e-6), (True, 1e-12)])
def test_choice_probability_matches_closed_form(x64, tol):
    """|log P - log P_ref| < tol at v = 0 (P(lower) = 1 - w), |2va| ~ 1e-7 (the series branch),
    moderate values and |va| up to 40 (P(lower) ~ e^-48 at w = 0.6); the two boundaries'
    probabilities sum to 1."""
    cases = [(0.0, 1.0, 0.5), (0.0, 2.0, 0.3), (0.0, 1.0, 0.93), (1e-7, 0.5, 0.3), (-3e-8, 1.5, 0.7),
             (1.0, 1.5, 0.5), (-0.8, 2.0, 0.35), (2.5, 1.2, 0.6), (20.0, 2.0, 0.6), (-15.0, 3.0, 0.2),
             (0.3, 0.1, 0.99)]
    v, a, w = (np.asarray(c) for c in zip(*cases))
    dt = np.float64 if x64 else np.float32
    v, a, w = v.astype(dt), a.astype(dt), w.astype(dt)
    ref_lo = np.log([closed_form_p_lower(*c) for c in zip(v, a, w)])
    ref_up = np.log([closed_form_p_lower(-vv, aa, 1 - float(ww)) for vv, aa, ww in zip(v, a, w)])
    with jax.enable_x64(x64):
        lo = np.asarray(wiener_log_choice_prob(v, a, w), np.float64)
        up = np.asarray(wiener_log_choice_prob(v, a, w, upper=True), np.float64)
    np.testing.assert_allclose(lo, ref_lo, rtol=0, atol=tol * (1 + np.abs(ref_lo)).max())
    np.testing.assert_allclose(up, ref_up, rtol=0, atol=tol * (1 + np.abs(ref_up)).max())
    np.testing.assert_allclose(np.exp(lo) + np.exp(up), 1.0, rtol=0, atol=tol * 3)
    np.testing.assert_allclose(np.exp(lo[:3]), 1 - w[:3], rtol=tol * 3)  # v = 0: P(lower) = 1 - w


def _integral(fn, t_hi):
    """int_0^t_hi fn(t) dt by adaptive quadrature in s = log t (the density rises from 0 like
    exp(-w^2 a^2 / 2t), so log t resolves the start; below t = 1e-8 the mass is < e^-1000)."""
    val, _ = integrate.quad(lambda s: fn(math.exp(s)) * math.exp(s), math.log(1e-8), math.log(t_hi),
                              epsabs=0.0, epsrel=1e-12, limit=400)
    return val


PARAMS = [(1.0, 1.5, 0.5), (-0.8, 2.0, 0.35), (2.5, 1.2, 0.6), (0.0, 1.0, 0.2)]


@pytest.mark.parametrize("v,a,w", PARAMS)
def test_density_integrates_to_choice_probability_and_wald_mean(v, a, w):
    """Quadrature of the float64 density over t in (0, inf) per boundary equals the closed-form
    choice probability (relative 1e-9), and of t * density over both boundaries equals the mean
    decision time from Wald's identity, (a P(upper) - a w) / v (v = 0: a^2 w (1 - w)), which
    for w = 1/2 is (a / 2v) tanh(a v / 2)."""
    with jax.enable_x64(True):
        f = jax.jit(lambda t, up: jnp.exp(wiener_log_density(t, v, a, w, up)), static_argnums=1)
        t_hi = a * a * 60.0  # the standardized tail beyond u = 60 is below e^-290
        mass = {up: _integral(lambda t: float(f(t, up)), t_hi) for up in (False, True)}
        mean_t = sum(_integral(lambda t: t * float(f(t, up)), t_hi) for up in (False, True))
    p_lo = closed_form_p_lower(v, a, w)
    assert mass[False] == pytest.approx(p_lo, rel=1e-9)
    assert mass[True] == pytest.approx(1 - p_lo, rel=1e-9)
    want = a * a * w * (1 - w) if v == 0 else (a * (1 - p_lo) - a * w) / v
    if w == 0.5:
        assert want == pytest.approx(a / (2 * v) * math.tanh(a * v / 2), rel=1e-12)
    assert mean_t == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------------ sampler
def _ref_conditional_cdf(v, a, w, upper):
    """Reference CDF of the decision time given the boundary: cumulative quadrature of the
    reference density on a fine log grid (Simpson, 20 001 points), normalized by the
    closed-form choice probability (the grid's own total must match it)."""
    p = closed_form_p_lower(v, a, w)
    p = 1 - p if upper else p
    t = np.geomspace(1e-6, a * a * 40.0, 20_001)
    s = np.log(t)
    g = np.exp(ref_log_density(t, v, a, w, upper)) * t
    cdf = integrate.cumulative_simpson(g, x=s, initial=0.0)
    assert cdf[-1] == pytest.approx(p, rel=1e-7)
    return t, cdf / p


@pytest.mark.parametrize("v,a,w,seed", [(1.0, 1.5, 0.5, 0), (-0.8, 2.0, 0.35, 1), (2.5, 1.2, 0.6, 2)])
def test_sampler_choices_times_and_mean(v, a, w, seed):
    """20 000 draws: the fraction of upper hits is within 4.5 binomial sigma of the closed form;
    each boundary with >= 1000 hits passes a KS test (p > 1e-3; measured p >= 0.05) against the
    reference conditional CDF; the mean decision time is within 4.5 standard errors of Wald's
    E[T]. (w = 0.5 as a Python float takes the one-grid path, the others the two-grid path.)"""
    n = 20_000
    t, up = wiener_sample(jax.random.PRNGKey(seed), v, a, w, n)
    t, up = np.asarray(t, np.float64), np.asarray(up)
    assert t.shape == up.shape == (n,) and up.dtype == bool
    assert np.all(t > 0) and np.all(np.isfinite(t))
    p_up = 1 - closed_form_p_lower(v, a, w)
    assert abs(up.mean() - p_up) < 4.5 * math.sqrt(p_up * (1 - p_up) / n)
    tested = 0
    for boundary in (False, True):
        sel = t[up == boundary]
        if len(sel) < 1000:
            continue
        grid, cdf = _ref_conditional_cdf(v, a, w, boundary)
        res = stats.kstest(sel, lambda x: np.interp(x, grid, cdf))
        assert res.pvalue > 1e-3, (boundary, res)
        tested += 1
    assert tested >= 1
    want = (a * p_up - a * w) / v
    assert abs(t.mean() - want) < 4.5 * t.std() / math.sqrt(n)


@pytest.mark.parametrize("v,a,w", [(1.0, 1.5, 0.5), (-0.8, 2.0, 0.35), (8.0, 2.0, 0.2), (-6.0, 1.5, 0.9),
                                   (0.0, 1.0, 0.1)])
def test_sampler_cdf_grid_is_accurate(v, a, w):
    """The conditional CDF the sampler inverts (piecewise linear in u on its 1024-point grid),
    per boundary, is within 3e-5 (sup norm) of the reference CDF; measured <= 1.2e-5. A KS
    test on 20 000 draws resolves only ~1e-2, so this is where grid or tail errors show."""
    for upper in (False, True):
        vv, ww = (-v, 1 - w) if upper else (v, w)
        u, cdf = jax.jit(_time_grid, static_argnums=4)(*(jnp.float32(x) for x in (vv, a, ww, 1 - ww)), 1024)
        u, cdf = np.asarray(u, np.float64), np.asarray(cdf, np.float64)
        # float32 rounding of the cumulative sum leaves dips of an ulp (~1e-7) next to 1
        assert u[0] == 0 and np.all(np.diff(u) > 0) and np.all(np.diff(cdf) > -3e-7)
        assert cdf[0] == 0 and abs(cdf[-1] - 1) < 3e-7
        grid, ref = _ref_conditional_cdf(v, a, w, upper)
        err = np.abs(np.interp(grid / a ** 2, u, cdf) - ref)
        assert err.max() < 3e-5, (upper, err.max(), grid[np.argmax(err)])


def test_sampler_detects_a_wrong_time_distribution():
    """The KS check above has power: draws for a = 1.5 are rejected against a = 1.45's CDF."""
    t, up = wiener_sample(jax.random.PRNGKey(0), 1.0, 1.5, 0.5, 20_000)
    sel = np.asarray(t, np.float64)[np.asarray(up)]
    grid, cdf = _ref_conditional_cdf(1.0, 1.45, 0.5, True)
    assert stats.kstest(sel, lambda x: np.interp(x, grid, cdf)).pvalue < 1e-6


# ------------------------------------------------------------------ drift-diffusion model
N_TRIALS = 25


@pytest.fixture(scope="module")
def ddm():
    return drift_diffusion(num_trials_per_condition=N_TRIALS)


@pytest.fixture(scope="module")
def prior_draws(ddm):
    """40 000 unconstrained prior draws (jitted: op by op, Gamma sampling compiles slowly)."""
    return jax.jit(ddm.sample_prior, static_argnums=1)(jax.random.PRNGKey(3), 40_000)


@pytest.fixture(scope="module")
def simulate_one(ddm):
    """One dataset per call, jitted once for the module (op by op, simulation compiles slowly)."""
    return jax.jit(ddm.simulator)


def test_ddm_prior_matches_scipy_gamma(ddm):
    assert ddm.param_names == ("v1", "v2", "a1", "a2", "t_plus", "t_minus") and ddm.obs_shape == (2 * N_TRIALS, 2)
    shapes = np.array([k for k, _ in PRIORS])
    scales = np.array([s for _, s in PRIORS])
    np.testing.assert_allclose(shapes, [2, 2, 6, 6, 3, 3])
    np.testing.assert_allclose(scales, [1, 1, 0.15, 0.15, 0.15, 0.5])
    rng = np.random.default_rng(0)
    for theta in [rng.normal(-0.5, 1.0, 6) for _ in range(5)] + [np.array([5.0, -8.0, 2.0, -6.0, 0.0, 1.0])]:
        theta = np.asarray(theta, np.float32).astype(np.float64)  # the point the model sees
        ref = np.sum(stats.gamma(shapes, scale=scales).logpdf(np.exp(theta)) + theta)
        got = float(ddm.log_prior(jnp.asarray(theta, jnp.float32)))
        assert got == pytest.approx(ref, rel=1e-6, abs=2e-5)  # measured: 1.3e-5 at -217, <5e-6 else


def test_ddm_prior_draws_have_the_prior_moments(prior_draws):
    theta = np.asarray(prior_draws, np.float64)
    assert theta.shape == (40_000, 6)
    shapes = np.array([k for k, _ in PRIORS])
    scales = np.array([s for _, s in PRIORS])
    n = len(theta)
    x = np.exp(theta)
    assert np.all(np.abs(x.mean(0) - shapes * scales) < 5 * np.sqrt(shapes) * scales / math.sqrt(n))
    # log of a Gamma draw: mean digamma(k) + log s, variance trigamma(k)
    from scipy.special import digamma, polygamma
    mu, sd = digamma(shapes) + np.log(scales), np.sqrt(polygamma(1, shapes))
    assert np.all(np.abs(theta.mean(0) - mu) < 5 * sd / math.sqrt(n))
    assert np.all(np.abs(theta.std(0) / sd - 1) < 0.02)


THETA = np.log([1.3, 0.4, 1.1, 1.9, 0.25, 0.6])  # v1, v2, a1, a2, t_plus, t_minus


def test_ddm_simulation_layout_and_per_condition_parameters():
    """Layout (condition 0 then 1, signed RTs beyond the boundary's non-decision time) and, on
    2 x 3000 trials, each condition's upper-hit rate and mean decision time against the closed
    forms for its own (v_c, a_c): swapped parameters or non-decision times would fail."""
    n = 3000
    model = drift_diffusion(num_trials_per_condition=n)
    y = np.asarray(model.simulate(jax.random.PRNGKey(4), jnp.asarray(THETA, jnp.float32)), np.float64)
    assert y.shape == (2 * n, 2)
    np.testing.assert_array_equal(y[:n, 1], 0.0)
    np.testing.assert_array_equal(y[n:, 1], 1.0)
    v, a, t_plus, t_minus = np.exp(THETA[0:2]), np.exp(THETA[2:4]), np.exp(THETA[4]), np.exp(THETA[5])
    rt = y[:, 0]
    assert np.all(rt != 0)
    assert np.all(rt[rt > 0] > t_plus - 1e-6) and np.all(-rt[rt < 0] > t_minus - 1e-6)
    dt = np.where(rt > 0, rt - t_plus, -rt - t_minus)
    for c in (0, 1):
        rows = slice(c * n, (c + 1) * n)
        p_up = 1 / (1 + math.exp(-v[c] * a[c]))  # w = 1/2
        assert abs(np.mean(rt[rows] > 0) - p_up) < 4.5 * math.sqrt(p_up * (1 - p_up) / n)
        want = a[c] / (2 * v[c]) * math.tanh(a[c] * v[c] / 2)
        assert abs(dt[rows].mean() - want) < 4.5 * dt[rows].std() / math.sqrt(n)
        # the shortest decision times reach down near 0 (the right non-decision time per boundary)
        for sign in (1, -1):
            sel = dt[rows][np.sign(rt[rows]) == sign]
            assert sel.min() < 0.1 * a[c] ** 2


def test_ddm_log_likelihood_is_the_sum_of_trial_densities(ddm, prior_draws, simulate_one):
    theta = prior_draws[:6]
    ys = jnp.stack([simulate_one(k, th) for k, th in zip(jax.random.split(jax.random.PRNGKey(6), 6), theta)])
    theta = np.asarray(theta, np.float64)
    lik = jax.jit(jax.vmap(ddm.log_likelihood))
    got = np.asarray(lik(jnp.asarray(theta, jnp.float32), ys), np.float64)
    for th, y, g in zip(theta, np.asarray(ys, np.float64), got):
        th = np.asarray(np.exp(np.asarray(th, np.float32)), np.float64)
        v, a, t_plus, t_minus = th[0:2], th[2:4], th[4], th[5]
        c = y[:, 1].astype(int)
        upper = y[:, 0] > 0
        dt = np.where(upper, y[:, 0] - t_plus, -y[:, 0] - t_minus)
        ref = np.sum(ref_log_density(dt, v[c], a[c], 0.5, upper))
        assert np.isfinite(ref)
        assert g == pytest.approx(ref, rel=1e-6, abs=1e-4)  # measured: <= 9e-6
    # gradients in theta are finite on simulated data
    gr = jax.jit(jax.grad(ddm.log_likelihood))(jnp.asarray(theta[0], jnp.float32), ys[0])
    assert np.all(np.isfinite(np.asarray(gr)))


def test_ddm_log_likelihood_support(ddm, simulate_one):
    theta = jnp.asarray(THETA, jnp.float32)
    y = np.asarray(simulate_one(jax.random.PRNGKey(6), theta))
    ll = jax.jit(ddm.log_likelihood)
    assert np.isfinite(float(ll(theta, jnp.asarray(y))))
    t_plus, t_minus = math.exp(THETA[4]), math.exp(THETA[5])
    cases = {
        "upper faster than t_plus": (3, 0, 0.9 * t_plus),
        "lower faster than t_minus": (30, 0, -0.9 * t_minus),
        "lower slower than t_plus but faster than t_minus": (4, 0, -0.5 * (t_plus + t_minus)),
        "zero rt": (5, 0, 0.0),
        "nan rt": (6, 0, float("nan")),
        "condition 2": (7, 1, 2.0),
        "condition 0.5": (31, 1, 0.5),
        "condition -1": (8, 1, -1.0),
        "nan condition": (9, 1, float("nan")),
    }
    for name, (row, col, value) in cases.items():
        bad = y.copy()
        bad[row, col] = value
        assert float(ll(theta, jnp.asarray(bad))) == -np.inf, name
    # an upper response slower than t_plus but faster than t_minus is valid (per-boundary t0)
    ok = y.copy()
    ok[3, 0] = 0.5 * (t_plus + t_minus)
    assert np.isfinite(float(ll(theta, jnp.asarray(ok))))


def test_ddm_rows_are_exchangeable(ddm, prior_draws, simulate_one):
    """make_model's permutation probe (run on jitted copies of the functions and the module's
    prior draws: op by op it takes many seconds) finds the "set" kind the model declares;
    a condition label moved changes the likelihood."""
    assert ddm.obs_kind == "set"
    ll = jax.jit(ddm.log_likelihood_fn)
    probe = dataclasses.replace(ddm, obs_kind="vector", simulator=simulate_one, log_likelihood_fn=ll,
                                prior_sampler=lambda key, n: prior_draws[:n])
    assert infer_obs_kind(probe) == "set"
    theta = jnp.asarray(THETA, jnp.float32)
    y = simulate_one(jax.random.PRNGKey(7), theta)
    perm = np.random.default_rng(1).permutation(2 * N_TRIALS)
    a, b = float(ll(theta, y)), float(ll(theta, y[perm]))
    assert a == pytest.approx(b, rel=1e-6, abs=1e-4)
    # moving a response to the other condition (swapping only its condition label) changes it
    swapped = np.asarray(y).copy()
    swapped[0, 1], swapped[-1, 1] = 1.0, 0.0
    assert abs(float(ll(theta, jnp.asarray(swapped))) - a) > 1e-3
