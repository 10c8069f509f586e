"""Choosing beta from the data: information matching and generalized posterior calibration, on the
misspecified normal-mean example (contaminated data, calibrated beta = 1 / Var(y))."""
import dataclasses

import jax
import numpy as np
import pytest

import amortflow as af
from amortflow.errors import BetaRangeError, ConfigError
from amortflow.gbi import calibrate_beta, crossing, default_beta_grid, information_beta

GRID = np.geomspace(0.05, 2.0, 9)
CAL = dict(betas=GRID, num_bootstrap=40, num_draws=100)


def _coverage(model, theta, ys, beta, level=0.9):
    """Share of datasets whose analytic central ``level`` interval of the power posterior covers ``theta``."""
    from scipy.stats import norm

    b = np.asarray(beta, np.float64)
    mean, sd = af.models.gaussian_mean_posterior(model, np.asarray(ys, np.float64), b.reshape(-1, 1) if b.ndim else b)
    z = norm.ppf(0.5 + level / 2)
    return float(np.mean(np.abs(np.asarray(theta) - np.asarray(mean)) < z * np.asarray(sd)))


# --------------------------------------------------------------------------- the example
def test_misspecified_normal_example():
    ex = af.models.misspecified_normal()
    assert ex.model.obs_shape == (50, 1) and ex.model.obs_kind == "set"
    assert ex.variance == pytest.approx(3.4) and ex.calibrated_beta == pytest.approx(1 / 3.4)
    theta, ys = ex.sample(jax.random.PRNGKey(0), 400)
    assert theta.shape == (400, 1) and ys.shape == (400, 50, 1)
    resid = np.asarray(ys - theta[:, None, :]).ravel()  # 20 000 draws of the noise
    assert np.var(resid) == pytest.approx(3.4, rel=0.08)
    assert abs(np.mean(resid)) < 0.05
    assert np.mean(np.abs(resid) > 4) == pytest.approx(0.1 * 2 * 0.2119, abs=0.006)  # only outliers reach 4 sd
    # at beta = 1 the 90% interval undercovers (~63%); at the calibrated beta it is about right
    assert _coverage(ex.model, theta, ys, 1.0) < 0.72
    assert 0.85 <= _coverage(ex.model, theta, ys, ex.calibrated_beta) <= 0.95
    for bad in (dict(num_obs=1), dict(contamination=1.0), dict(contamination=-0.1), dict(outlier_sd=0.0)):
        with pytest.raises(ConfigError):
            af.models.misspecified_normal(**bad)
    with pytest.raises(ConfigError, match=r"\[K, 1\]"):
        ex.simulate_data(jax.random.PRNGKey(0), np.zeros(3))


# --------------------------------------------------------------------------- information matching
def test_information_beta_is_one_when_well_specified():
    model = af.models.gaussian_mean(dim=1, num_obs=2000)
    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(1), 50)
    res = information_beta(model, ys)
    assert res.ok.all()
    # sd of I is sqrt(2 / n) = 0.032 per dataset
    assert abs(np.median(res.beta) - 1) < 0.03
    assert np.all(np.abs(res.beta - 1) < 0.15)
    assert np.allclose(res.J[:, 0, 0], 1.0, atol=1e-4)


def test_information_beta_two_dims_well_specified():
    model = af.models.gaussian_mean(dim=2, num_obs=1000)
    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(2), 20)
    res = information_beta(model, ys, theta_init=np.zeros(2))
    assert res.ok.all() and res.J.shape == (20, 2, 2)
    assert abs(np.median(res.beta) - 1) < 0.04
    # MLE of the normal mean: the sample mean
    assert np.allclose(res.theta_mle, np.asarray(ys).mean(1), atol=1e-4)


def test_information_beta_matches_closed_form_on_contaminated_data():
    ex = af.models.misspecified_normal(num_obs=50)
    theta, ys = ex.sample(jax.random.PRNGKey(3), 100)
    res = information_beta(ex.model, ys, theta_init=theta + 1.0)
    y = np.asarray(ys, np.float64)[..., 0]
    i_closed = ((y - y.mean(1, keepdims=True)) ** 2).mean(1)  # J = 1 / noise_sd^2 = 1
    assert res.ok.all()
    np.testing.assert_allclose(res.J[:, 0, 0], 1.0, atol=1e-4)
    np.testing.assert_allclose(res.I[:, 0, 0], i_closed, rtol=1e-3)
    np.testing.assert_allclose(res.beta, 1.0 / i_closed, rtol=1e-3)
    np.testing.assert_allclose(res.theta_mle[:, 0], y.mean(1), atol=1e-4)
    # pooled over datasets: E[I] = Var(y) (n-1)/n; se of the mean of 100 I's is ~6%
    assert 1.0 / np.mean(1.0 / res.beta) == pytest.approx(ex.calibrated_beta * 50 / 49, rel=0.2)


def test_information_beta_bad_inputs(tempered_model):
    vector = dataclasses.replace(tempered_model, obs_kind="vector")
    ys = np.zeros((3, 20, 1))
    with pytest.raises(ConfigError, match="obs_kind"):
        information_beta(vector, ys)
    with pytest.raises(ConfigError, match="theta_init"):
        information_beta(tempered_model, ys, theta_init=np.zeros((2, 1)))


# --------------------------------------------------------------------------- posterior calibration
def test_crossing_interpolates_on_log_beta_and_flags_ends():
    betas = np.array([0.1, 0.2, 0.4, 0.8])
    cov = np.array([[1.0, 0.95, 0.85, 0.5],    # crosses 0.9 halfway between 0.2 and 0.4
                    [0.8, 0.7, 0.6, 0.5],      # never reaches 0.9: below the range
                    [1.0, 1.0, 0.95, 0.92],    # always above
                    [1.0, 0.85, 0.95, 0.5]])   # noisy: the rearranged curve is [1, .95, .85, .5]
    b, below, above = crossing(betas, cov, 0.9)
    np.testing.assert_allclose(b, [np.sqrt(0.2 * 0.4), 0.1, 0.8, np.sqrt(0.2 * 0.4)], rtol=1e-12)
    assert below.tolist() == [False, True, False, False]
    assert above.tolist() == [False, False, True, False]


@pytest.fixture(scope="module")
def misspecified_data():
    ex = af.models.misspecified_normal(num_obs=20)
    theta, ys = ex.sample(jax.random.PRNGKey(11), 200)
    return ex, np.asarray(theta), np.asarray(ys)


@pytest.fixture(scope="module")
def misspecified_calibration(tempered_estimator, tempered_model, misspecified_data):
    _, _, ys = misspecified_data
    return calibrate_beta(jax.random.PRNGKey(0), tempered_estimator, tempered_model, ys, **CAL)


def test_calibrate_beta_recovers_calibrated_beta(misspecified_data, misspecified_calibration, tempered_model):
    ex, theta, ys = misspecified_data
    cal = misspecified_calibration
    k = ys.shape[0]
    assert cal.beta_hat.shape == (k,) and cal.coverage.shape == (k, GRID.size)
    assert cal.khat.shape == (k, 40, GRID.size) and cal.theta_hat.shape == (k, GRID.size, 1)
    assert np.all((cal.beta_hat >= GRID[0]) & (cal.beta_hat <= GRID[-1]))
    # coverage falls with beta (averaged over datasets)
    assert np.all(np.diff(cal.coverage.mean(0)) < 0.02) and cal.coverage.mean(0)[0] > 0.97
    # pooled over datasets (1 / mean(1 / beta_hat), the analogue of 1 / E[Var]): near 1 / Var(y)
    pooled = 1.0 / np.mean(1.0 / cal.beta_hat)
    assert ex.calibrated_beta / 1.6 < pooled < ex.calibrated_beta * 1.6
    # per dataset it tracks information matching (both ~ 1 / sample variance)
    ib = information_beta(tempered_model, ys)
    assert np.corrcoef(np.log(cal.beta_hat), np.log(ib.beta))[0, 1] > 0.8
    assert 0.0 <= cal.high_khat_fraction <= 1.0 and cal.high_khat.shape == (k, GRID.size)
    table = af.gbi.compare_beta_selection(cal, ib, ex.calibrated_beta)
    assert len(table) == k and {"beta_calibrated", "beta_information", "ratio"} <= set(table.columns)


def test_calibrated_beta_restores_coverage(misspecified_data, misspecified_calibration, tempered_model):
    _, theta, ys = misspecified_data
    at_one = _coverage(tempered_model, theta, ys, 1.0)
    at_hat = _coverage(tempered_model, theta, ys, misspecified_calibration.beta_hat)
    assert at_one < 0.75
    assert 0.82 <= at_hat <= 0.97, (at_one, at_hat)


def test_calibrate_beta_is_near_one_when_well_specified(tempered_estimator, tempered_model):
    _, ys = tempered_model.sample_prior_predictive(jax.random.PRNGKey(12), 200)
    cal = calibrate_beta(jax.random.PRNGKey(1), tempered_estimator, tempered_model, ys, **CAL)
    pooled = 1.0 / np.mean(1.0 / cal.beta_hat)
    assert 1 / 1.6 < pooled < 1.6 and 1 / 1.6 < np.median(cal.beta_hat) < 1.6
    assert cal.below_range.sum() == 0


def test_calibrate_beta_bad_inputs(tempered_estimator, untempered_estimator, tempered_model):
    ys = np.zeros((2, 20, 1), np.float32)
    vector = dataclasses.replace(tempered_model, obs_kind="vector")
    with pytest.raises(ConfigError, match="obs_kind"):
        calibrate_beta(jax.random.PRNGKey(0), tempered_estimator, vector, ys)
    with pytest.raises(ConfigError, match="not conditioned on beta"):
        calibrate_beta(jax.random.PRNGKey(0), untempered_estimator, tempered_model, ys)
    with pytest.raises(BetaRangeError, match="outside the range"):
        calibrate_beta(jax.random.PRNGKey(0), tempered_estimator, tempered_model, ys, betas=[0.01, 0.1, 1.0])
    with pytest.raises(ConfigError, match="increasing"):
        calibrate_beta(jax.random.PRNGKey(0), tempered_estimator, tempered_model, ys, betas=[1.0, 0.5])
    with pytest.raises(ConfigError, match="level"):
        calibrate_beta(jax.random.PRNGKey(0), tempered_estimator, tempered_model, ys, level=1.0)
    # the default grid is geomspace(0.05, 2, 25) restricted to the estimator's range
    np.testing.assert_allclose(default_beta_grid((0.05, 2.0)), np.geomspace(0.05, 2.0, 25))
    g = default_beta_grid((0.1, 1.5))
    assert g[0] == pytest.approx(0.1) and g[-1] == pytest.approx(1.5) and np.all(np.diff(g) > 0)
