import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro.infer.util import potential_energy

import amortflow as af


def test_gev_log_likelihood_matches_scipy():
    m = af.models.gev()
    theta = m.sample_prior(jax.random.PRNGKey(0), 50)
    ys = m.simulate(jax.random.PRNGKey(1), theta)
    # evaluate each dataset under a *different* parameter (some points leave the support)
    other = jnp.roll(theta, 1, axis=0)
    ll = jax.vmap(m.log_likelihood)(other, ys)
    c = m.constrain(other)
    ref = np.array([
        ss.genextreme.logpdf(np.asarray(ys[i], np.float64), c=-float(c["xi"][i]),
                             loc=float(c["mu"][i]), scale=float(c["sigma"][i])).sum()
        for i in range(50)
    ])
    finite = np.isfinite(ref)
    assert (~finite).any() and finite.any()  # both branches exercised
    assert np.array_equal(np.isfinite(np.asarray(ll)), finite)
    np.testing.assert_allclose(np.asarray(ll)[finite], ref[finite], rtol=2e-5, atol=2e-3)


def test_gev_near_zero_shape_matches_gumbel():
    m = af.models.gev()
    y = jnp.linspace(3.0, 5.0, 65)
    for xi in (0.0, 1e-6, -1e-6):
        v = float(np.log((xi + 0.6) / 1.2) - np.log1p(-(xi + 0.6) / 1.2))
        theta = jnp.array([3.8, np.log(0.3), v])
        ref = ss.gumbel_r.logpdf(np.asarray(y), loc=3.8, scale=0.3).sum()
        np.testing.assert_allclose(float(m.log_likelihood(theta, y)), ref, rtol=1e-4)


def test_gev_prior_and_density_are_nan_free():
    m = af.models.gev()
    theta = m.sample_prior(jax.random.PRNGKey(2), 400)
    ys = m.simulate(jax.random.PRNGKey(3), theta)
    # pair every parameter with every 20th dataset: many off-support combinations
    grid_t = jnp.repeat(theta, 20, axis=0)
    grid_y = jnp.tile(ys[::20], (400, 1))
    lp, g = jax.vmap(jax.value_and_grad(m.log_density))(grid_t, grid_y)
    assert not jnp.isnan(lp).any()
    assert jnp.isneginf(lp).any()
    assert jnp.isfinite(g).all()


def test_gev_prior_density_matches_scipy_on_constrained_scale():
    m = af.models.gev()
    theta = m.sample_prior(jax.random.PRNGKey(4), 20)
    c = m.constrain(theta)
    sig, xi_u = np.asarray(theta[:, 1]), np.asarray(theta[:, 2])
    p = 1 / (1 + np.exp(-xi_u))
    log_jac = sig + np.log(1.2) + np.log(p) + np.log1p(-p)
    ref = (ss.norm.logpdf(c["mu"], 3.8, 0.2) + ss.halfnorm.logpdf(c["sigma"], scale=0.3)
           + ss.truncnorm.logpdf(c["xi"], -3, 3, scale=0.2) + log_jac)
    np.testing.assert_allclose(np.asarray(jax.vmap(m.log_prior)(theta)), ref, rtol=1e-4)


def test_gev_test_prior_doubles_scales():
    m, mt = af.models.gev(), af.models.gev(test_prior=True)
    c = mt.constrain(mt.sample_prior(jax.random.PRNGKey(5), 20000))
    c0 = m.constrain(m.sample_prior(jax.random.PRNGKey(5), 20000))
    assert float(jnp.abs(c["xi"]).max()) > 0.6 and float(jnp.abs(c["xi"]).max()) <= 1.2
    assert float(jnp.abs(c0["xi"]).max()) <= 0.6
    np.testing.assert_allclose(float(c["mu"].std()), 0.4, rtol=0.03)
    np.testing.assert_allclose(float(c["sigma"].mean()), 0.6 * np.sqrt(2 / np.pi), rtol=0.03)


def _numpyro_model(n=12, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    rho = numpyro.sample("rho", dist.Beta(2.0, 3.0))
    loc = numpyro.sample("loc", dist.Normal(mu, tau).expand([3]).to_event(1))
    numpyro.sample("y", dist.StudentT(3.0 + 10 * rho, loc.mean(), tau).expand([n]).to_event(1), obs=y)


def test_from_numpyro_matches_numpyro_potential():
    m = af.from_numpyro(_numpyro_model, obs="y")
    assert m.param_names == ("loc[0]", "loc[1]", "loc[2]", "mu", "rho", "tau")  # ravel order
    assert m.obs_shape == (12,)
    key = jax.random.PRNGKey(0)
    theta = m.sample_prior(key, 10) + 0.3 * jax.random.normal(key, (10, 6))  # random points
    ys = m.simulate(jax.random.PRNGKey(1), m.sample_prior(jax.random.PRNGKey(2), 10))
    ours = jax.jit(jax.vmap(m.log_density))(theta, ys)
    for i in range(10):
        params = {"loc": theta[i, :3], "mu": theta[i, 3], "rho": theta[i, 4], "tau": theta[i, 5]}
        ref = -potential_energy(_numpyro_model, (), {"y": ys[i]}, params)
        np.testing.assert_allclose(float(ours[i]), float(ref), rtol=1e-5, atol=1e-4)
    c = m.constrain(theta)
    assert (np.asarray(c["tau"]) > 0).all() and ((np.asarray(c["rho"]) > 0) & (np.asarray(c["rho"]) < 1)).all()


def test_from_numpyro_beta_scales_only_likelihood():
    m = af.from_numpyro(_numpyro_model, obs="y")
    theta = m.sample_prior(jax.random.PRNGKey(3), 1)[0]
    y = m.simulate(jax.random.PRNGKey(4), theta)
    lp, ll = m.log_prior(theta), m.log_likelihood(theta, y)
    np.testing.assert_allclose(float(m.log_density(theta, y, 0.3)), float(lp + 0.3 * ll), rtol=1e-5)
    np.testing.assert_allclose(float(m.log_density(theta, y, 0.0)), float(lp), rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.floats(-4, 4), st.floats(-3, 1), st.floats(-6, 6), st.floats(0.0, 2.0))
def test_log_density_never_nan(mu, log_sigma, xi_u, beta):
    m = af.models.gev()
    y = m.simulate(jax.random.PRNGKey(0), m.sample_prior(jax.random.PRNGKey(1), 1)[0])
    theta = jnp.array([mu, log_sigma, xi_u], jnp.float32)
    v, g = jax.value_and_grad(m.log_density)(theta, y, beta)
    assert not np.isnan(float(v))
    assert np.isfinite(np.asarray(g)).all()


def test_observation_validation_errors():
    m = af.models.gev()
    with pytest.raises(af.ObservationError, match=r"shape \[K, 65\]"):
        m.check_observations(np.zeros((3, 64)))
    ys = np.zeros((4, 65))
    ys[2, 5] = np.nan
    with pytest.raises(af.ObservationError, match=r"NaN or infinite.*indices \[2\]"):
        m.check_observations(ys)
    assert m.check_observations(np.zeros(65)).shape == (1, 65)
    with pytest.raises(ValueError, match="last axis 3"):
        m.check_theta(np.zeros((2, 4)))


def test_make_model_from_plain_functions_grid_observations():
    # a 4x5 grid observation: y = theta_0 + theta_1 * x + noise on a grid
    xs = jnp.linspace(-1, 1, 20).reshape(4, 5)

    def log_lik(theta, y):
        return jnp.sum(jax.scipy.stats.norm.logpdf(y, theta[0] + theta[1] * xs, 0.5))

    m = af.make_model(
        name="grid_regression", param_names=("a", "b"), obs_shape=(4, 5), obs_kind="grid",
        sample_prior=lambda k, n: jax.random.normal(k, (n, 2)),
        simulate=lambda k, th: th[0] + th[1] * xs + 0.5 * jax.random.normal(k, (4, 5)),
        log_prior=lambda th: jnp.sum(jax.scipy.stats.norm.logpdf(th)),
        log_likelihood=log_lik,
    )
    th, ys = m.sample_prior_predictive(jax.random.PRNGKey(0), 7)
    assert ys.shape == (7, 4, 5)
    assert m.constrain(th)["a"].shape == (7,)
    assert np.isfinite(np.asarray(jax.vmap(m.log_density)(th, ys))).all()


def test_make_model_infers_whether_rows_are_exchangeable():
    """obs_kind 'set' only when the likelihood ignores the order of the rows: iid data yes; a
    regression's responses (tied to covariate rows) and an autoregressive series no."""
    import jax.scipy.stats as jstats

    def build(loglik, simulate, shape):
        return af.make_model(name="m", param_names=("a",), obs_shape=shape,
                             sample_prior=lambda k, n: jax.random.normal(k, (n, 1)),
                             simulate=simulate, log_prior=lambda t: jstats.norm.logpdf(t[0]),
                             log_likelihood=loglik)

    x = jnp.linspace(-1.0, 1.0, 12)
    iid = build(lambda t, y: jnp.sum(jstats.norm.logpdf(y, t[0])),
                lambda k, t: t[0] + jax.random.normal(k, (12,)), (12,))
    regression = build(lambda t, y: jnp.sum(jstats.norm.logpdf(y, t[0] * x)),
                       lambda k, t: t[0] * x + jax.random.normal(k, (12,)), (12,))
    series = build(lambda t, y: jnp.sum(jstats.norm.logpdf(y[1:], jnp.tanh(t[0]) * y[:-1])),
                   lambda k, t: jnp.cumsum(jax.random.normal(k, (12,))), (12,))
    iid_vectors = build(lambda t, y: jnp.sum(jstats.norm.logpdf(y, t[0])),
                        lambda k, t: t[0] + jax.random.normal(k, (6, 2)), (6, 2))
    groups = build(lambda t, y: jnp.sum(jstats.norm.logpdf(y, t[0] * jnp.arange(6.0)[:, None])),
                   lambda k, t: t[0] * jnp.arange(6.0)[:, None] + jax.random.normal(k, (6, 2)), (6, 2))
    assert (iid.obs_kind, regression.obs_kind, series.obs_kind) == ("set", "vector", "vector")
    assert (iid_vectors.obs_kind, groups.obs_kind) == ("set", "vector")
    assert af.make_model(name="m", param_names=("a",), obs_shape=(12,), obs_kind="set",
                         sample_prior=iid.sample_prior, simulate=lambda k, t: t[0] * x,
                         log_prior=iid.log_prior, log_likelihood=regression.log_likelihood).obs_kind == "set"
