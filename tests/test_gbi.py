"""Amortized generalized Bayes: the beta-conditioned estimator against the analytic power
posterior of the conjugate normal model, the workflow at any beta, sweeps, the training-range
guard and checkpoints."""
import warnings

import jax
import numpy as np
import pytest

import amortflow as af
from amortflow.errors import BetaRangeError, ConfigError
from amortflow.models.gaussian import gaussian_mean_posterior

BETAS = (0.1, 0.3, 0.5, 1.0, 1.5)


@pytest.fixture(scope="module")
def data(tempered_model):
    theta, ys = tempered_model.sample_prior_predictive(jax.random.PRNGKey(11), 40)
    return np.asarray(theta), np.asarray(ys)


def _errors(model, draws, ys, beta):
    """RMS error of the posterior mean (in posterior sds) and median sd ratio vs the analytic
    power posterior; ``draws [K, S, 1]``."""
    m, s = (np.asarray(a) for a in gaussian_mean_posterior(model, ys, beta))
    d = np.asarray(draws)
    return float(np.sqrt(np.mean(((d.mean(1) - m) / s) ** 2))), float(np.median(d.std(1) / s))


@pytest.mark.parametrize("beta", BETAS)
def test_tempered_estimator_matches_the_analytic_power_posterior(tempered_model, tempered_estimator, data, beta):
    draws = tempered_estimator.sample(jax.random.PRNGKey(1), af.observe(data[1], beta), 1000)
    err, ratio = _errors(tempered_model, draws, data[1], beta)
    assert err < 0.15, err
    assert 0.92 < ratio < 1.08, ratio


def test_beta1_estimator_is_wrong_away_from_beta1(tempered_model, untempered_estimator, data):
    """The control that makes the accuracy test meaningful: a q trained at beta = 1 only is
    far too narrow at beta = 0.1 (the true sd is ~2.9x the beta = 1 sd)."""
    draws = untempered_estimator.sample(jax.random.PRNGKey(1), af.observe(data[1], 0.1), 500)
    assert _errors(tempered_model, draws, data[1], 0.1)[1] < 0.5


@pytest.mark.parametrize("which", ["tempered_estimator", "untempered_estimator"])
def test_workflow_at_every_beta_reaches_the_power_posterior(request, tempered_model, data, which):
    """Each dataset at its own beta: the final draws match the analytic power posterior; the
    beta = 1-only estimator must be corrected (not accepted) where it is wrong."""
    est = request.getfixturevalue(which)
    ys = data[1][:20]
    beta = np.tile(np.asarray(BETAS, np.float32), 4)
    res = af.run_workflow(jax.random.PRNGKey(5), tempered_model, est, ys, beta=beta, progress=False)
    assert set(res.route) <= {"amortized", "psis", "refined", "mcmc", "nuts"}, res.route_counts()
    mean, sd = res.posterior_mean(constrained=False), res.posterior_sd(constrained=False)
    m, s = (np.asarray(a)[:, 0] for a in gaussian_mean_posterior(tempered_model, ys, beta[:, None]))
    z = (np.asarray(mean["theta_0"]) - m) / s
    assert np.max(np.abs(z)) < 0.3, z
    np.testing.assert_allclose(np.asarray(sd["theta_0"]) / s, 1.0, atol=0.15)
    np.testing.assert_allclose(res.table()["beta"].to_numpy(), beta, rtol=1e-6)
    assert res.inference_data(3).posterior.attrs["beta"] == pytest.approx(beta[3])
    assert "power posterior at beta = 0.1, 0.3, 0.5, 1, 1.5" in res.summary()
    if which == "untempered_estimator":
        small = beta < 0.4
        assert not np.any(res.route[small] == "amortized"), res.route[small]


def test_beta_outside_the_training_range_is_refused(tempered_model, tempered_estimator, data):
    ys = data[1][:4]
    with pytest.raises(BetaRangeError, match=r"outside the range \[0.05, 2\]"):
        tempered_estimator.sample(jax.random.PRNGKey(0), af.observe(ys, 3.0), 10)
    with pytest.raises(BetaRangeError, match="run_workflow"):
        af.run_workflow(jax.random.PRNGKey(0), tempered_model, tempered_estimator, ys,
                        beta=[1.0, 0.01, 1.0, 1.0], progress=False)
    with pytest.warns(UserWarning, match="extrapolating"):
        d = tempered_estimator.allowing_extrapolation().sample(jax.random.PRNGKey(0), af.observe(ys, 3.0), 10)
    assert np.isfinite(np.asarray(d)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in range: silent
        tempered_estimator.sample(jax.random.PRNGKey(0), af.observe(ys, 2.0), 10)


def test_sweep_equals_per_beta_calls(tempered_model, tempered_estimator, data):
    ys, betas, key = data[1][:6], [0.1, 0.7, 1.0, 1.9], jax.random.PRNGKey(3)
    sw = af.beta_sweep(key, tempered_estimator, ys, betas, 50)
    assert sw.draws.shape == (6, 4, 50, 1) and sw.log_q.shape == (6, 4, 50)
    for b, beta in enumerate(betas):
        d, lq = tempered_estimator.sample_and_log_prob(jax.random.fold_in(key, b), af.observe(ys, beta), 50,
                                                       dataset_ids=np.arange(6))
        np.testing.assert_allclose(sw.draws[:, b], np.asarray(d), atol=2e-5)
        np.testing.assert_allclose(sw.log_q[:, b], np.asarray(lq), atol=2e-4)
    table = sw.summary(tempered_model)
    assert len(table) == 6 * 4
    # the power posterior widens as beta falls: interval width decreases in beta for every dataset
    w = table.pivot(index="dataset", columns="beta", values="width").to_numpy()
    assert np.all(np.diff(w, axis=1) < 0)


def test_sweep_and_training_settings_are_checked(tempered_model, untempered_estimator, tempered_estimator):
    ys = np.zeros((2, 20, 1), np.float32)
    with pytest.raises(ConfigError, match="not conditioned on beta"):
        af.beta_sweep(jax.random.PRNGKey(0), untempered_estimator, ys, [0.5], 5)
    with pytest.raises(ConfigError, match="betas"):
        af.beta_sweep(jax.random.PRNGKey(0), tempered_estimator, ys, [0.5, -1.0], 5)
    with pytest.raises(ConfigError, match="contain beta = 1"):
        af.Tempering(low=0.1, high=0.5)
    with pytest.raises(ConfigError, match="Tempering.low"):
        af.Tempering(low=0.0)
    with pytest.raises(ConfigError, match="objective"):
        af.Tempering(objective="reweighted")
    with pytest.raises(ConfigError, match="prior_fraction"):
        af.SelfNormalizedKL(prior_fraction=1.0)
    with pytest.raises(ConfigError, match="num_betas"):
        af.ReweightedSimulations(num_betas=0)
    with pytest.raises(ConfigError, match="tempering must be"):
        af.fit_posterior(jax.random.PRNGKey(0), tempered_model, tempering=(0.1, 2.0), progress=False)
    with pytest.raises(ConfigError, match="cannot be combined"):
        af.fit_posterior(jax.random.PRNGKey(0), tempered_model, tempering=af.Tempering(),
                         training_prior=af.estimators.WidenedPrior(), progress=False)


def test_reweighted_route_trains_and_its_weights_collapse_away_from_beta1(tempered_model):
    est = af.fit_posterior(jax.random.PRNGKey(0), tempered_model,
                           tempering=af.Tempering(objective=af.ReweightedSimulations(num_betas=3)),
                           train_config=af.TrainConfig(num_steps=40, steps_per_call=20), progress=False)
    assert est.beta_range == (0.05, 2.0) and est.extra["tempering"]["objective"]["kind"] == "reweighted"
    assert np.isfinite(est.history["val_loss"]).all()
    theta, ys = tempered_model.sample_prior_predictive(jax.random.PRNGKey(2), 4000)
    ess = af.estimators.reweighting_ess(tempered_model, theta, ys, [0.05, 0.3, 1.0, 2.0])
    assert ess[2] == pytest.approx(1.0)
    assert ess[0] < ess[1] < ess[2] and ess[3] < ess[2]
    assert ess[0] < 0.5


def test_checkpoint_keeps_the_beta_range(tempered_estimator, tmp_path):
    path = str(tmp_path / "est")
    tempered_estimator.save(path)
    loaded = af.load_estimator(path)
    assert loaded.beta_range == (0.05, 2.0)
    assert loaded.fingerprint() == tempered_estimator.fingerprint()


def test_sweep_figure(tempered_model, tempered_estimator, data):
    from amortflow.plots import plot_beta_sweep

    sw = af.beta_sweep(jax.random.PRNGKey(3), tempered_estimator, data[1][:3], [0.1, 0.5, 1.0, 2.0], 50)
    fig = plot_beta_sweep(sw, tempered_model)
    ax = fig.axes[0]
    assert len(ax.lines) == 3 + 1 and ax.get_xscale() == "log"
