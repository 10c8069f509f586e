"""The spatial GP model of the neural-estimation review: density, simulator and the exact
quadrature posterior, checked against scipy and against the simulator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from amortflow.models.spatial import grid_coordinates, spatial_gp, spatial_gp_grid_posterior


@pytest.fixture(scope="module")
def model():
    return spatial_gp(grid_size=8)


def test_log_density_matches_scipy(model):
    key = jax.random.PRNGKey(0)
    theta, ys = model.sample_prior_predictive(key, 3)
    coords = grid_coordinates(8)
    d = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    for th, y in zip(np.asarray(theta), np.asarray(ys)):
        ell = 0.6 / (1 + np.exp(-th[0]))
        cov = np.exp(-d / ell) + 1e-5 * np.eye(64)
        ref = stats.multivariate_normal(np.zeros(64), cov).logpdf(y.ravel())
        got = float(model.log_likelihood(jnp.asarray(th), jnp.asarray(y)))
        assert got == pytest.approx(ref, abs=2e-3 * max(1.0, abs(ref)))
        # uniform prior on ell: density 1/0.6 times the sigmoid's Jacobian
        p = 1 / (1 + np.exp(-th[0]))
        assert float(model.log_prior(jnp.asarray(th))) == pytest.approx(np.log(p * (1 - p)), abs=1e-5)
    assert np.allclose(np.asarray(model.constrain(theta)["ell"]), 0.6 / (1 + np.exp(-np.asarray(theta[:, 0]))),
                       rtol=1e-5)


def test_simulator_has_the_model_covariance(model):
    theta = jnp.full((4000, 1), 0.0)  # ell = 0.3
    ys = model.simulate(jax.random.PRNGKey(1), theta)
    flat = np.asarray(ys).reshape(4000, -1)
    coords = grid_coordinates(8)
    d = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    emp = flat.T @ flat / 4000
    # Monte Carlo sd of a covariance entry is about sqrt(2 / 4000) = 0.022
    assert np.abs(emp - np.exp(-d / 0.3)).max() < 0.11
    assert abs(np.diag(emp).mean() - 1) < 0.06  # unit variance (entries correlate: loose)


def test_grid_posterior_is_calibrated(model):
    """Prior-predictive fields: the exact posterior's 90% intervals cover the truth 90% of the
    time, and its mean is the Bayes estimator (beats the prior mean by far)."""
    theta, ys = jax.jit(model.sample_prior_predictive, static_argnums=1)(jax.random.PRNGKey(2), 600)
    ell = 0.6 / (1 + np.exp(-np.asarray(theta[:, 0], np.float64)))
    post = spatial_gp_grid_posterior(model, ys, num_grid=600)
    assert np.allclose(post.weights.sum(1), 1.0)
    q = post.quantile([0.05, 0.95])
    cover = np.mean((ell > q[:, 0]) & (ell < q[:, 1]))
    assert abs(cover - 0.9) < 3.5 * np.sqrt(0.09 / 600)
    assert np.sqrt(np.mean((post.mean - ell) ** 2)) < 0.4 * ell.std()
    draws = post.sample(jax.random.PRNGKey(3), 4000)
    assert np.allclose(draws.mean(1), post.mean, atol=4 * post.sd.max() / np.sqrt(4000) + 1e-3)


def test_grid_posterior_refuses_other_models_and_shapes(model):
    from amortflow.models import gaussian_mean
    with pytest.raises(ValueError, match="spatial_gp model"):
        spatial_gp_grid_posterior(gaussian_mean(), np.zeros((2, 10, 2)))
    with pytest.raises(ValueError, match=r"\[K, 8, 8\]"):
        spatial_gp_grid_posterior(model, np.zeros((2, 16, 16)))
