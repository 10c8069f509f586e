"""SBC: ranks uniform for an exact posterior, visibly not for a biased / overconfident one."""
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from jax.scipy import stats as jstats

import amortflow as af
from amortflow.diagnostics import (
    coverage_curve, run_sbc, sbc_ecdf_bands, sbc_ecdf_diff, sbc_ecdf_test, sbc_ranks, sbc_uniformity_test,
)

matplotlib.use("Agg")


class ExactGaussianPosterior:
    """Duck-typed estimator: exact (optionally shifted / rescaled) posterior of gaussian_mean."""

    def __init__(self, model, bias=0.0, sd_scale=1.0):
        self.model, self.bias, self.sd_scale = model, bias, sd_scale

    def sample_and_log_prob(self, key, ys, num_draws):
        mean, sd = af.models.gaussian_mean_posterior(self.model, ys)
        mean = mean + self.bias * sd
        sd = sd * self.sd_scale
        z = jax.random.normal(key, (ys.shape[0], num_draws, mean.shape[-1]))
        draws = mean[:, None, :] + sd[:, None, :] * z
        log_q = jnp.sum(jstats.norm.logpdf(draws, mean[:, None, :], sd[:, None, :]), axis=-1)
        return draws, log_q


@pytest.fixture(scope="module")
def model():
    return af.models.gaussian_mean(dim=2, num_obs=10)


N, S = 600, 99


@pytest.fixture(scope="module")
def exact(model):
    return run_sbc(jax.random.PRNGKey(0), model, ExactGaussianPosterior(model), N, S)


def test_ranks_definition_and_ties():
    theta = jnp.array([[0.5, 0.0]])
    draws = jnp.array([[[0.1, 0.0], [0.7, 0.0], [0.3, 0.0], [0.9, 0.0]]])
    r = sbc_ranks(theta, draws)
    assert r.dtype == jnp.int32 and r.tolist() == [[2, 0]]
    # ties broken at random: a point-mass estimator at the truth gives ranks spread over 0..S
    rr = sbc_ranks(jnp.zeros((4000, 1)), jnp.zeros((4000, 9, 1)), key=jax.random.PRNGKey(0))
    counts = np.bincount(np.asarray(rr[:, 0]), minlength=10)
    assert counts.min() > 300 and rr.max() <= 9


def test_exact_posterior_is_calibrated(exact):
    assert exact.ranks.shape == (N, 2) and exact.ranks.max() <= S and exact.ranks.min() >= 0
    _, p = sbc_uniformity_test(exact.ranks, S)
    assert np.all(p > 1e-3), p
    inside, p_ecdf = sbc_ecdf_test(exact.ranks, S)
    assert inside.all() and np.all(p_ecdf > 0.01), p_ecdf
    cov = coverage_curve(exact.ranks, S)
    c = np.asarray(cov.coverage)
    assert np.all((c >= cov.lower[:, None] - 0.02) & (c <= cov.upper[:, None] + 0.02))


@pytest.mark.parametrize("bias,sd_scale", [(0.5, 1.0), (0.0, 0.6)])
def test_miscalibrated_posterior_detected(model, bias, sd_scale):
    res = run_sbc(jax.random.PRNGKey(0), model, ExactGaussianPosterior(model, bias, sd_scale), N, S, batch_size=256)
    chi2, p = sbc_uniformity_test(res.ranks, S)
    assert np.all(p < 1e-6), p
    inside, p_ecdf = sbc_ecdf_test(res.ranks, S)
    assert not inside.any() and np.all(p_ecdf < 0.01)
    if sd_scale < 1:  # overconfident: the 90% interval covers far less than 90%
        cov = coverage_curve(res.ranks, S, levels=jnp.array([0.5, 0.9]))
        assert np.all(np.asarray(cov.coverage[1]) < 0.8)


def test_ecdf_bands_simultaneous_level():
    """A fresh batch of uniform rank sets stays inside the bands ~(1 - alpha) of the time."""
    n, s, alpha = 200, 49, 0.1
    bands = sbc_ecdf_bands(s, n, alpha, key=jax.random.PRNGKey(1))
    assert bands.lower.shape == bands.z.shape and np.all(bands.lower <= bands.z) and np.all(bands.upper >= bands.z)
    assert 0 < bands.gamma < alpha  # pointwise level is stricter than the simultaneous one
    r = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (2000, n), 0, s + 1))
    counts = (r[:, :, None] < bands.thresholds[None, None, :]).mean(axis=1)
    inside = np.all((counts >= bands.lower) & (counts <= bands.upper), axis=1).mean()
    assert abs(inside - (1 - alpha)) < 0.035, inside


def test_ecdf_diff_shape():
    r = jnp.array([[0], [5], [9]])
    z, diff = sbc_ecdf_diff(r, 9)
    assert z.shape == (9,) and diff.shape == (9, 1)
    np.testing.assert_allclose(diff[0, 0], 1 / 3 - 0.1, atol=1e-6)


def test_plots_return_figures(exact):
    from matplotlib.figure import Figure

    from amortflow.plots import plot_coverage, plot_ood_scores, plot_psis_khat, plot_sbc_ecdf, plot_sbc_histogram

    figs = [
        plot_sbc_ecdf(exact.ranks, S, param_names=["a", "b"]),
        plot_sbc_histogram(exact.ranks, S),
        plot_coverage(coverage_curve(exact.ranks, S)),
        plot_psis_khat(jnp.array([0.1, 0.9, jnp.inf]), num_draws=2000),
        plot_ood_scores(np.arange(10.0), 5.0, heldout_scores=np.arange(20.0) / 2),
    ]
    assert all(isinstance(f, Figure) for f in figs)
