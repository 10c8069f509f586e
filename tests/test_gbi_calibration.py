"""Calibration of q(theta | y, beta) at several temperatures: weighted SBC (tempered_sbc,
tempered_sbc_fresh_prior) on an exact oracle, the beta-conditioned estimator and the beta = 1-only
control, plus bad inputs and the figures."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import amortflow as af
from amortflow.diagnostics import (
    TemperedSBC, coverage_curve, sbc_ecdf_diff, tempered_sbc, tempered_sbc_fresh_prior, weighted_coverage,
    weighted_ecdf_diff,
)
from amortflow.errors import BetaRangeError, ConfigError
from amortflow.plots import plot_coverage_vs_beta, plot_tempered_sbc_ecdf

BETAS = (0.1, 0.3, 0.5, 1.0, 1.5)


class Oracle:
    """Exact power-posterior draws of the conjugate normal model (``ignore_beta``: the beta = 1
    posterior at every temperature, an exactly 'wrongly tempered' q)."""

    def __init__(self, model, ignore_beta=False):
        self.model, self.ignore_beta = model, ignore_beta

    def sample(self, key, obs, num_draws):
        beta = jnp.ones_like(jnp.asarray(obs.beta)) if self.ignore_beta else jnp.asarray(obs.beta)
        mean, sd = af.models.gaussian_mean_posterior(self.model, obs.y, beta[:, None])
        return mean[:, None, :] + sd[:, None, :] * jax.random.normal(key, (mean.shape[0], num_draws, mean.shape[1]))


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _cov(res, level=0.9):
    return res.coverage[:, list(np.round(res.levels, 6)).index(level), 0]


# ----------------------------------------------------------------------------- (a) exact oracle
def test_oracle_passes_at_every_beta(tempered_model):
    # a fixed seed (each temperature passes with probability 0.95; the rate is checked below)
    res = tempered_sbc_fresh_prior(jax.random.PRNGKey(4), tempered_model, Oracle(tempered_model), BETAS, 2000, 100)
    assert isinstance(res, TemperedSBC)
    assert res.ranks.shape == (5, 2000, 1) and res.weights.shape == (5, 2000) and res.coverage.shape == (5, 4, 1)
    assert res.pvalue.shape == (5, 1) and res.passed.shape == (5,) and res.passed.dtype == bool
    np.testing.assert_allclose(res.weights.sum(1), 1.0, atol=1e-9)
    assert res.conclusive.all() and res.passed.all(), res.table()
    assert (res.pvalue > 0.05).all()
    # every weighted coverage within 3 se of what a calibrated q gives with 100 draws
    np.testing.assert_allclose(res.calibrated_coverage, [51 / 101, 81 / 101, 91 / 101, 95 / 101])
    assert (np.abs(res.coverage - res.calibrated_coverage[None, :, None]) < 3 * res.coverage_se).all(), res.table()


def test_oracle_rejection_rate_near_alpha(tempered_model):
    """The test is calibrated: a correct q is rejected about alpha of the time -- not never, not
    always (measured at 1000 simulations x 50 draws over 100 seeds: 3-6% per temperature)."""
    oracle = Oracle(tempered_model)
    kw = dict(levels=(0.9,), num_reference_draws=8, num_bootstrap=200)
    pvals = []
    for seed in range(30):
        key = jax.random.PRNGKey(100 + seed)
        pvals.append(_quiet(tempered_sbc_fresh_prior, key, tempered_model, oracle, (0.1, 0.3, 1.5), 600, 40,
                            **kw).pvalue[:, 0])
        pvals.append(_quiet(tempered_sbc, key, tempered_model, oracle, (0.7, 1.0, 1.5), 600, 40, **kw).pvalue[:, 0])
    pvals = np.concatenate(pvals)  # 180 tests
    rate = np.mean(pvals < 0.05)
    print("rejection rate", rate, "mean p", pvals.mean())
    assert 0.015 <= rate <= 0.10, rate
    assert 0.42 <= pvals.mean() <= 0.58  # uniform p-values have mean 1/2


def test_oracle_prior_pairs_inconclusive_far_below_one(tempered_model):
    """Prior-predictive pairs cannot check beta = 0.1 (infinite-variance weights): inconclusive,
    warned, never a pass; beta >= 0.5 is checked and passes."""
    with pytest.warns(UserWarning, match="inconclusive"):
        res = tempered_sbc(jax.random.PRNGKey(3), tempered_model, Oracle(tempered_model), BETAS, 2000, 100)
    assert not res.conclusive[0] and not res.passed[0] and not res.rejected[0]
    assert res.verdict[0] == "inconclusive"
    assert res.khat[0] > 0.5
    assert res.passed[2:].all(), res.table()


# ----------------------------------------------------------------------------- (d) effective sample sizes
def test_ess_reported_and_shrinks_away_from_one(tempered_model):
    oracle = Oracle(tempered_model)
    betas = (0.1, 0.5, 1.0, 1.5, 2.0)  # same shapes as the other oracle runs: nothing recompiles
    res = _quiet(tempered_sbc, jax.random.PRNGKey(2), tempered_model, oracle, betas, 2000, 100)
    frac = res.ess / 2000
    print("ESS fraction, prior-predictive pairs", dict(zip(betas, frac.round(3))), "khat", res.khat.round(2))
    assert frac[2] == pytest.approx(1.0, abs=1e-9)  # beta = 1: plain SBC, equal weights
    assert res.khat[2] == 0.0
    assert frac[0] < 0.25 < frac[1] < 0.9 and frac[4] < frac[3] < 0.99  # shrinks on both sides
    fresh = tempered_sbc_fresh_prior(jax.random.PRNGKey(2), tempered_model, oracle, betas, 2000, 100)
    f = fresh.ess / 2000
    print("ESS fraction, fresh prior", dict(zip(betas, f.round(3))))
    assert (np.diff(f) < 0).all()  # narrower tempered posterior, fewer prior draws near it
    assert 0.45 < f[0] < 0.75 and 0.15 < f[2] < 0.3  # theory ~0.59 and ~0.22


# ----------------------------------------------------------------------------- (b), (c) trained estimators
# every call on one estimator has the same shapes (5 temperatures x 2000 simulations, 116 draws):
# its sampler compiles once
_COLS = ["beta", "ess", "khat", "pvalue", "verdict", "coverage_0.9", "se_0.9"]


def test_tempered_estimator_passes(tempered_model, tempered_estimator):
    res = tempered_sbc_fresh_prior(jax.random.PRNGKey(3), tempered_model, tempered_estimator, BETAS, 2000, 100)
    print(res.table()[_COLS])
    assert res.conclusive.all() and res.passed.all(), res.table()
    assert (np.abs(_cov(res) - 0.9) < 0.05).all()
    plain = _quiet(tempered_sbc, jax.random.PRNGKey(3), tempered_model, tempered_estimator, BETAS, 2000, 100)
    print(plain.table()[_COLS])
    assert plain.passed[2:].all(), plain.table()  # beta = 0.5, 1, 1.5
    assert not plain.passed[0]  # beta = 0.1: inconclusive with prior-predictive pairs, never a pass


def test_untempered_estimator_fails_below_one(tempered_model, untempered_estimator):
    """The check that catches a wrongly tempered q: the beta = 1 posterior passes at beta = 1 but
    its intervals are far too narrow for the power posterior at beta = 0.1 and 0.3."""
    with pytest.warns(UserWarning, match="not conditioned on beta"):
        res = tempered_sbc_fresh_prior(jax.random.PRNGKey(3), tempered_model, untempered_estimator, BETAS, 2000, 100)
    print(res.table()[_COLS])
    assert res.rejected[0] and res.rejected[1] and res.passed[3], res.table()
    assert (res.pvalue[:2] < 0.01).all()
    cov = _cov(res)
    assert cov[0] < 0.6 and cov[1] < 0.75  # exact: 0.47 and 0.65
    assert (0.9 - cov[:2] > 5 * res.coverage_se[:2, 2, 0]).all()
    plain = _quiet(tempered_sbc, jax.random.PRNGKey(3), tempered_model, untempered_estimator, BETAS, 2000, 100)
    print(plain.table()[_COLS])
    assert plain.passed[3] and plain.ess[3] == pytest.approx(2000)  # beta = 1: plain SBC passes
    assert not plain.passed[0] and not plain.passed[1]  # rejected or inconclusive -- never a pass


def test_exact_wrong_tempering_is_rejected(tempered_model):
    res = tempered_sbc_fresh_prior(jax.random.PRNGKey(4), tempered_model, Oracle(tempered_model, ignore_beta=True),
                                   BETAS, 2000, 100)
    assert list(res.rejected[[0, 1, 3]]) == [True, True, False] and res.passed[3]
    cov = _cov(res)
    assert abs(cov[0] - 0.47) < 0.06 and abs(cov[1] - 0.65) < 0.06


# ----------------------------------------------------------------------------- helpers agree with plain SBC
def test_uniform_weights_reduce_to_plain_sbc():
    ranks = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (300, 2), 0, 21))
    w = np.full(300, 1 / 300)
    z, diff = weighted_ecdf_diff(ranks, w, 20)
    z0, diff0 = sbc_ecdf_diff(ranks, 20)
    np.testing.assert_allclose(z, z0, rtol=1e-6)
    np.testing.assert_allclose(diff, diff0, atol=1e-6)
    cov, se = weighted_coverage(ranks, w, 20, (0.5, 0.9))
    np.testing.assert_allclose(cov, coverage_curve(ranks, 20, jnp.array([0.5, 0.9])).coverage, atol=1e-6)
    np.testing.assert_allclose(se, np.sqrt(cov * (1 - cov) / 300), rtol=1e-6)


# ----------------------------------------------------------------------------- (e) bad inputs
@pytest.mark.parametrize("kw", [
    dict(betas=(0.0, 1.0)), dict(betas=(-0.5,)), dict(betas=()), dict(betas=(np.nan,)), dict(betas=[[1.0]]),
    dict(num_sims=1), dict(num_sims=2.5), dict(num_sims=True), dict(num_draws=0),
    dict(levels=(0.5, 1.0)), dict(levels=()), dict(alpha=0.0), dict(alpha=1.5), dict(min_ess=-1.0),
    dict(num_reference_draws=-1), dict(num_bootstrap=50), dict(max_khat=np.nan),
])
def test_bad_inputs_raise_config_error(tempered_model, kw):
    args = dict(betas=(0.5, 1.0), num_sims=50, num_draws=10)
    args.update({k: v for k, v in kw.items() if k in args})
    opts = {k: v for k, v in kw.items() if k not in args}
    for fn in (tempered_sbc, tempered_sbc_fresh_prior):
        with pytest.raises(ConfigError):
            fn(jax.random.PRNGKey(0), tempered_model, Oracle(tempered_model), args["betas"], args["num_sims"],
               args["num_draws"], **opts)


def test_bad_estimators(tempered_model, tempered_estimator):
    with pytest.raises(ConfigError, match="sample"):
        tempered_sbc(jax.random.PRNGKey(0), tempered_model, object(), (1.0,), 50, 10)

    class Misshapen(Oracle):
        def sample(self, key, obs, num_draws):
            return super().sample(key, obs, num_draws)[:, :-1]

    with pytest.raises(ValueError, match="shape"):
        tempered_sbc(jax.random.PRNGKey(0), tempered_model, Misshapen(tempered_model), (1.0,), 50, 10)

    class NaNs(Oracle):
        def sample(self, key, obs, num_draws):
            return super().sample(key, obs, num_draws).at[0, 0, 0].set(jnp.nan)

    with pytest.raises(ValueError, match="non-finite"):
        tempered_sbc(jax.random.PRNGKey(0), tempered_model, NaNs(tempered_model), (1.0,), 50, 10)
    with pytest.raises(BetaRangeError):
        tempered_sbc(jax.random.PRNGKey(0), tempered_model, tempered_estimator, (1.0, 5.0), 50, 10)


# ----------------------------------------------------------------------------- figures
def _synthetic_result(d=2, g=3, n=200, s=20):
    """A TemperedSBC with d = 2 parameters built from random ranks (no sampling: fast)."""
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, s + 1, size=(g, n, d))
    w = rng.random((g, n))
    w /= w.sum(1, keepdims=True)
    levels = np.array([0.5, 0.9])
    cov, se = weighted_coverage(ranks, w, s, levels)
    ess = 1 / (w ** 2).sum(1)
    conclusive = np.array([True, True, False])
    return TemperedSBC(np.array([0.2, 1.0, 2.0]), ess, np.zeros(g), ranks, w, rng.normal(size=(n, d)), levels, cov,
                       levels, se, np.full((g, d), 0.1), np.full((g, d), 0.12), np.full((g, d), 0.5), conclusive,
                       conclusive.copy(), s, 0.05, 100.0, 0.5, "synthetic", ("theta_0", "theta_1"))


def test_figures():
    res = _synthetic_result()
    fig = plot_coverage_vs_beta(res)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[0].get_xscale() == "log" and axes[1].get_title() == "theta_1"
    # per level a coverage line and a nominal line, plus one grey line per inconclusive beta
    assert len(axes[0].lines) == 2 * len(res.levels) + 1
    fig = plot_tempered_sbc_ecdf(res, param_names=["a", "b"])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert isinstance(fig, Figure) and len(axes) == 2 and axes[0].get_title() == "a"
    assert len(axes[0].lines) == 1 + 3 * 3  # zero line; per beta the ECDF and two band lines
    assert res.table().shape[0] == 3 * 2 and res.verdict == ("pass", "pass", "inconclusive")
