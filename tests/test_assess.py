"""Assessment toolbox: CRPS, interval score, coverage, bias/RMSE tables and figures."""
import numpy as np
import pytest
from scipy import stats

from amortflow.diagnostics.assess import (
    ASSESSMENT_COLUMNS, assess, combine, crps_from_draws, interval_coverage_curve, interval_score, review_table,
)


def _normal_crps(mu, sd, x):
    """Closed form CRPS(N(mu, sd^2), x) = sd [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]."""
    z = (x - mu) / sd
    return sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


def test_crps_from_draws_matches_the_normal_closed_form_and_the_pairwise_definition():
    rng = np.random.default_rng(0)
    k, s, d = 40, 4000, 2
    mu, sd = rng.normal(size=(k, d)), np.exp(0.3 * rng.normal(size=(k, d)))
    x = rng.normal(size=(k, d)) * 1.5
    draws = mu[:, None] + sd[:, None] * rng.standard_normal((k, s, d))
    got = np.asarray(crps_from_draws(draws.astype(np.float32), x.astype(np.float32)))
    exact = _normal_crps(mu, sd, x)
    # Monte-Carlo error per entry ~ 0.6 sd / sqrt(S) ~ 0.01 sd; dropping the 0.5 E|X - X'|
    # term (0.56 sd) or doubling it would miss by far more than the 0.05 sd allowed here
    assert np.max(np.abs(got - exact) / sd) < 0.05
    assert abs(np.mean(got - exact)) < 0.01
    # the sorted O(S log S) form equals the O(S^2) double sum exactly (V-statistic, / S^2)
    small = draws[:3, :200]
    pair = (np.abs(small[:, :, None] - small[:, None, :]).mean(axis=(1, 2)))
    direct = np.abs(small - x[:3, None]).mean(axis=1) - 0.5 * pair
    np.testing.assert_allclose(np.asarray(crps_from_draws(small, x[:3])), direct, rtol=2e-5, atol=2e-6)


def test_crps_from_quantiles_approximates_the_closed_form():
    rng = np.random.default_rng(1)
    k = 50
    mu, sd, x = rng.normal(size=(k, 1)), np.exp(0.3 * rng.normal(size=(k, 1))), rng.normal(size=(k, 1))
    lv = (np.arange(1, 100) - 0.5) / 99  # midpoint levels: the mean pinball loss -> the integral
    q = mu[:, None] + sd[:, None] * stats.norm.ppf(lv)[None, :, None]
    a = assess(x, quantiles=q, quantile_levels=lv)
    exact = _normal_crps(mu, sd, x)
    np.testing.assert_allclose(a.crps_per_dataset, exact, rtol=0.03, atol=0.01 * sd.max())
    np.testing.assert_allclose(a.estimate, mu, atol=0.02 * sd.max())  # the interpolated median
    np.testing.assert_allclose(a.lower, mu + sd * stats.norm.ppf(0.05), atol=0.02 * sd.max())


def test_interval_score_by_hand():
    lower, upper = np.zeros(4), np.ones(4)
    x = np.array([0.5, -0.5, 2.0, 1.0])
    # width 1; below by 0.5 -> + 2/0.1 * 0.5 = 10; above by 1 -> + 20; on the bound -> no penalty
    np.testing.assert_allclose(np.asarray(interval_score(lower, upper, x, 0.05)), [1.0, 11.0, 21.0, 1.0])
    # non-central: 1/alpha_lower and 1/alpha_upper penalties
    np.testing.assert_allclose(np.asarray(interval_score(lower, upper, x, 0.1, 0.02)), [1.0, 6.0, 51.0, 1.0])
    a = assess(x[:, None], interval=(lower[:, None], upper[:, None]), level=0.9)  # = levels=(0.05, 0.95)
    np.testing.assert_allclose(a.interval_score, [8.5])  # mean of 1, 11, 21, 1
    np.testing.assert_allclose(a.coverage, [0.5])  # 0.5 and the bound 1.0 are inside
    np.testing.assert_allclose(a.interval_width, [1.0])
    assert a.nominal_coverage == pytest.approx(0.9) and np.isnan(a.rmse).all()  # no point estimate
    per = a.per_dataset
    np.testing.assert_allclose(per["interval_score"][:, 0], [1.0, 11.0, 21.0, 1.0])
    assert per["covered"][:, 0].tolist() == [True, False, False, True] and per["squared_error"] is None
    b = assess(x[:, None], interval=(lower[:, None], upper[:, None]), levels=(0.1, 0.98))
    np.testing.assert_allclose(b.interval_score, [np.mean([1.0, 6.0, 51.0, 1.0])])
    assert b.nominal_coverage == pytest.approx(0.88)


def _conjugate_normal(rng, k, s, n=5):
    """theta ~ N(0, 1), y_i ~ N(theta, 1), i = 1..n: posterior N(sum(y) / (n + 1), 1 / (n + 1))."""
    theta = rng.standard_normal((k, 1))
    y = theta + rng.standard_normal((k, n))
    m, v = y.sum(1, keepdims=True) / (n + 1), 1.0 / (n + 1)
    draws = m[:, None] + np.sqrt(v) * rng.standard_normal((k, s, 1))
    return theta, draws, m


def test_exact_posterior_draws_cover_at_the_nominal_rate():
    rng = np.random.default_rng(2)
    k = 2000
    theta, draws, m = _conjugate_normal(rng, k, 400)
    a = assess(theta, draws=draws, param_names=["mu"], estimator_name="exact")
    tol = 4 * np.sqrt(0.9 * 0.1 / k)  # 4 binomial sd
    assert abs(a.coverage[0] - 0.9) < tol, a.coverage
    np.testing.assert_allclose(a.estimate, draws.mean(1), rtol=1e-5, atol=1e-6)  # float32
    # an overconfident posterior (sd halved) undercovers, and its interval score is worse
    shrunk = m[:, None] + 0.5 * (draws - m[:, None])
    b = assess(theta, draws=shrunk, estimator_name="overconfident")
    assert b.coverage[0] < 0.9 - 3 * tol and b.interval_score[0] > a.interval_score[0]
    curve = interval_coverage_curve(theta, draws, levels=[0.2, 0.5, 0.8, 0.95])
    cov = np.asarray(curve.coverage)[:, 0]
    band = 4 * np.sqrt(np.array([0.2, 0.5, 0.8, 0.95]) * (1 - np.array([0.2, 0.5, 0.8, 0.95])) / k)
    assert np.all(np.abs(cov - [0.2, 0.5, 0.8, 0.95]) < band), cov
    assert np.all(curve.lower < [0.2, 0.5, 0.8, 0.95]) and np.all(curve.upper > [0.2, 0.5, 0.8, 0.95])


def test_bias_rmse_mae_match_numpy_and_tables_stack():
    rng = np.random.default_rng(3)
    theta = rng.normal(size=(300, 3))
    est = theta + 0.3 + 0.5 * rng.normal(size=(300, 3))
    a = assess(theta, estimate=est, param_names=["a", "b", "c"], estimator_name="nbe")
    err = est - theta
    np.testing.assert_allclose(a.bias, err.mean(0))
    np.testing.assert_allclose(a.rmse, np.sqrt((err**2).mean(0)))
    np.testing.assert_allclose(a.mse, (err**2).mean(0))
    np.testing.assert_allclose(a.mae, np.abs(err).mean(0))
    np.testing.assert_allclose(a.error, err)
    np.testing.assert_allclose(a.per_dataset["squared_error"], err**2)
    assert a.per_dataset["crps"] is None and a.per_dataset["width"] is None  # a point estimator only
    draws = est[:, None] + rng.normal(size=(300, 50, 3))
    b = assess(theta, draws=draws, point="median", param_names=["a", "b", "c"], estimator_name="npe")
    np.testing.assert_allclose(b.estimate, np.median(draws, axis=1), atol=1e-5)
    df = combine([a, b])
    assert list(df.columns) == list(ASSESSMENT_COLUMNS) and len(df) == 6
    assert list(df["estimator"]) == ["nbe"] * 3 + ["npe"] * 3
    assert df.loc[:2, "crps"].isna().all() and df.loc[3:, "crps"].notna().all()
    wide = review_table([a, b])
    assert list(wide.columns) == ["RMSPE", "MIS90", "CRPS", "COV90"]
    assert wide.loc[("npe", "b"), "RMSPE"] == pytest.approx(b.rmse[1])


def test_bad_inputs_are_named():
    theta = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"draws must be \[K, S, d\].*\(5, 10\)"):
        assess(theta, draws=np.zeros((5, 10)))
    with pytest.raises(ValueError, match=r"estimate must be \[K, d\] with K = 5"):
        assess(theta, estimate=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"d = 2 parameters"):
        assess(theta, estimate=np.zeros((5, 3)))
    bad = np.zeros((5, 2))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"estimate has 1 non-finite.*\(3, 1\)"):
        assess(theta, estimate=bad)
    with pytest.raises(ValueError, match=r"theta_true has 1 non-finite"):
        assess(bad, estimate=theta)
    with pytest.raises(ValueError, match="nothing to assess"):
        assess(theta)
    with pytest.raises(ValueError, match="lower > upper"):
        assess(theta, interval=(np.ones((5, 2)), np.zeros((5, 2))))
    with pytest.raises(ValueError, match="disagree"):
        assess(theta, estimate=theta, level=0.8, levels=(0.05, 0.95 - 0.01))
    with pytest.raises(ValueError, match="quantile_levels"):
        assess(theta, quantiles=np.zeros((5, 3, 2)))
    with pytest.raises(ValueError, match="outside the quantile levels"):
        assess(theta, quantiles=np.zeros((5, 2, 2)), quantile_levels=[0.25, 0.75])
    # one parameter: [K] truth with [K, S] draws is accepted
    assert assess(np.zeros(5), draws=np.random.default_rng(0).normal(size=(5, 20))).crps.shape == (1,)


def test_assessment_figures():
    from matplotlib.figure import Figure

    from amortflow.plots import plot_coverage, plot_coverage_curves, plot_estimate_recovery, plot_interval_width

    rng = np.random.default_rng(4)
    theta, draws, _ = _conjugate_normal(rng, 200, 100)
    theta2 = np.concatenate([theta, 2 * theta], axis=1)
    draws2 = np.concatenate([draws, 2 * draws], axis=2)
    a = assess(theta2, draws=draws2, param_names=["mu", "two_mu"], estimator_name="exact")
    b = assess(theta2, estimate=a.estimate + 0.1, interval=(a.lower, a.upper + 0.2), param_names=["mu", "two_mu"],
               estimator_name="shifted")
    curve = interval_coverage_curve(theta2, draws2)
    figs = [plot_estimate_recovery(None, [a, b]), plot_estimate_recovery(theta2, a.estimate, (a.lower, a.upper)),
            plot_coverage_curves({"exact": curve, "again": curve}, param_names=["mu", "two_mu"]),
            plot_coverage(curve), plot_interval_width(None, [a, b]),
            plot_interval_width(theta2, {"exact": (a.lower, a.upper)})]
    for fig in figs:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert "RMSE" in figs[0].axes[0].get_title() and figs[0].axes[1].get_title().startswith("two_mu")
    with pytest.raises(ValueError, match=r"\[K, d\]"):
        plot_estimate_recovery(theta2, a.estimate[:10])
