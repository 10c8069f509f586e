"""End-to-end workflow on the conjugate Gaussian model (analytic posterior) and GEV edge cases."""
import jax
import numpy as np
import pytest

import amortflow as af
from amortflow import mcmc
from amortflow.mcmc import ConvergenceGate, Ladder, Rung
from amortflow.nets import DeepSetSpec, FlowSpec

S = 400
MAX_ERR = 0.15  # the Monte Carlo error gate 400 draws can meet (the default 0.1 needs 484)
CHEES = mcmc.chees.cpu_profile(num_superchains=4, chains_per_superchain=8, num_warmup=150, num_samples=64)
NUTS = mcmc.nuts.cpu_profile(num_chains=4, num_warmup=300, num_samples=400)
NEVER = ConvergenceGate(rhat_threshold=1.0)  # nested R-hat is never below 1: always escalate


def _policy(*rungs):
    return Ladder(tuple(rungs), bucket_size=4, num_prior_draws=256)


def Stage(name, sampler, init_from="candidates", gate=ConvergenceGate()):  # noqa: N802
    return Rung(name, sampler, init_from, gate=gate)


def _check_posterior(model, ys, draws, rows):
    mean, sd = af.models.gaussian_mean_posterior(model, ys[rows])
    d = draws[rows]
    z = (d.mean(1) - np.asarray(mean)) / np.asarray(sd)
    ratio = d.std(1) / np.asarray(sd)
    assert np.abs(z).max() < 0.35, z  # MC error of the mean ~ 1/sqrt(ESS) << 0.35
    assert np.abs(ratio - 1).max() < 0.2, ratio


@pytest.fixture(scope="module")
def data(gaussian_model):
    _, ys = gaussian_model.sample_prior_predictive(jax.random.PRNGKey(11), 6)
    return np.asarray(ys)


@pytest.mark.parametrize(
    "expected, cfg",
    [
        # in-distribution datasets are accepted straight from the amortized draws
        ("amortized", dict(ood_alpha=1e-3, psis_on_all=False, mcmc=_policy(Stage("chees", CHEES)))),
        # every dataset must pass PSIS; a good estimator passes it (systematic resampling, the
        # default, and multinomial)
        ("psis", dict(psis_on_all=True, khat_threshold=0.7, psis_max_error=None, mcmc=_policy(Stage("chees", CHEES)))),
        ("psis", dict(psis_on_all=True, khat_threshold=0.7, psis_max_error=None, psis_resample="multinomial",
                      mcmc=_policy(Stage("chees", CHEES)))),
        # an impossible k-hat gate sends every dataset to many-chain MCMC
        ("mcmc", dict(psis_on_all=True, khat_threshold=-np.inf, mcmc=_policy(Stage("chees", CHEES)))),
        # ChEES with an impossible R-hat gate escalates to NUTS
        ("nuts", dict(psis_on_all=True, khat_threshold=-np.inf,
                      mcmc=_policy(Stage("chees", CHEES, gate=NEVER),
                                   Stage("nuts", NUTS, init_from="previous", gate=ConvergenceGate(1.05))))),
    ],
)
def test_forced_routes_match_analytic_posterior(gaussian_model, gaussian_estimator, data, expected, cfg):
    config = af.WorkflowConfig(**{"num_draws": S, "psis_max_error": MAX_ERR, "num_ood_simulations": 1000, **cfg})
    res = af.run_workflow(jax.random.PRNGKey(3), gaussian_model, gaussian_estimator, data, config, progress=False)
    rows = np.nonzero(res.route == expected)[0]
    assert rows.size >= 5, res.route  # (the OOD check may flag a dataset at random)
    _check_posterior(gaussian_model, data, res.draws, rows)
    t = res.table()
    assert list(t.route) == list(res.route) and np.isfinite(t.khat).all()  # PSIS diagnostics for all
    if expected in ("mcmc", "nuts"):
        assert (t.nested_rhat_max[rows] < 1.05).all() and (t.num_grad_evals[rows] > 0).all()
        assert res.stage_counts["mcmc"] == 6


def test_unconverged_datasets_fail_with_diagnostics(gaussian_model, gaussian_estimator, data):
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, psis_on_all=True, khat_threshold=-np.inf, num_ood_simulations=1000,
                               mcmc=_policy(Stage("chees", CHEES, gate=NEVER)))
    res = af.run_workflow(jax.random.PRNGKey(3), gaussian_model, gaussian_estimator, data, config, progress=False)
    assert (res.route == "failed").all()
    assert all("nested R-hat" in r and "divergences" in r for r in res.reason)


def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, gaussian_model, gaussian_estimator, data):
    wf = mcmc  # the MCMC stage calls mcmc.run_ladder

    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, psis_on_all=True, khat_threshold=-np.inf, num_ood_simulations=1000,
                               mcmc_chunk=2, mcmc=_policy(Stage("chees", CHEES)))
    key = jax.random.PRNGKey(5)
    full = af.run_workflow(key, gaussian_model, gaussian_estimator, data, config, progress=False)

    real = wf.run_ladder
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed during the second MCMC chunk
        return real(*a, **k)

    monkeypatch.setattr(wf, "run_ladder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        af.run_workflow(key, gaussian_model, gaussian_estimator, data, config, out_dir=str(tmp_path), progress=False)
    assert sorted(p.name for p in (tmp_path / "progress").glob("*.npz")) == ["amortized.npz", "mcmc_0000.npz", "psis.npz", "refine.npz"]
    monkeypatch.setattr(wf, "run_ladder", real)
    calls.clear()
    resumed = af.run_workflow(key, gaussian_model, gaussian_estimator, data, config, out_dir=str(tmp_path),
                              progress=False)
    assert list(resumed.route) == list(full.route)
    np.testing.assert_array_equal(resumed.draws, full.draws)
    np.testing.assert_array_equal(resumed.diagnostics["khat"], full.diagnostics["khat"])
    # the saved result reads back, with every diagnostic
    loaded = af.WorkflowResult.load(tmp_path / "result", model=gaussian_model)
    np.testing.assert_array_equal(loaded.draws, resumed.draws)
    assert loaded.table().shape == resumed.table().shape
    idata = loaded.inference_data(0)
    assert idata.posterior["theta_0"].shape == (1, S)
    # a different run may not reuse this directory's progress
    with pytest.raises(ValueError, match="different run"):
        af.run_workflow(jax.random.PRNGKey(6), gaussian_model, gaussian_estimator, data, config,
                        out_dir=str(tmp_path), progress=False)


def test_bad_datasets_fail_with_reasons_and_do_not_stop_others():
    model = af.models.gev()
    est = af.fit_posterior(
        jax.random.PRNGKey(0), model, num_simulations=2000,
        summary=DeepSetSpec(phi_hidden=(32, 32), rho_hidden=(32,), out_dim=8),
        flow=FlowSpec(num_layers=3, hidden=(32, 32)),
        train_config=af.TrainConfig(num_steps=300, batch_size=128), progress=False,
    )
    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(1), 4)
    ys = [np.asarray(y) for y in ys]
    ys.append(np.full(64, 4.0))  # wrong shape
    nan = ys[0].copy()
    nan[3] = np.nan
    ys.append(nan)
    impossible = ys[1].copy()
    impossible[0] = -1000.0  # outside the support of every prior draw (needs sigma/xi > 1000)
    ys.append(impossible)
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, psis_on_all=True, num_ood_simulations=1000,
                               mcmc=_policy(Stage("chees", CHEES)))
    res = af.run_workflow(jax.random.PRNGKey(2), model, est, ys, config, progress=False)
    assert res.route[4] == "failed" and "shape (64,)" in res.reason[4]
    assert res.route[5] == "failed" and "NaN" in res.reason[5]
    # the value is possible only where the log density is ~ -1e8 (xi < 0, or sigma / xi > 1000):
    # importance sampling can never accept it (every weight is 0 in float32); MCMC either finds
    # that region and passes its convergence gate, or the dataset fails saying why
    assert res.route[6] in ("failed", "mcmc", "nuts"), res.route
    if res.route[6] == "failed":
        assert "finite" in res.reason[6] or "not converged" in res.reason[6]
    assert not np.isfinite(res.draws[4:6]).any()
    assert (res.route[:4] != "failed").all()
    assert np.isfinite(res.draws[:4]).all()


def test_workflow_config_rejects_unknown_resampling():
    with pytest.raises(ValueError, match="psis_resample"):
        af.WorkflowConfig(psis_resample="residual")
    assert af.WorkflowConfig.high_stakes().psis_min_ess == pytest.approx(0.6 * af.WorkflowConfig.num_draws)


def test_importance_sampling_answers_keep_their_weights(gaussian_model, gaussian_estimator, data, tmp_path):
    """PSIS / refined datasets keep the weighted draws behind their resampled ones: summaries
    use the weighted estimate, and the weights survive save / load and reach ArviZ."""
    config = af.WorkflowConfig(num_draws=S, psis_max_error=None, psis_on_all=True, num_ood_simulations=1000,
                               mcmc=_policy(Stage("chees", CHEES)))
    res = af.run_workflow(jax.random.PRNGKey(3), gaussian_model, gaussian_estimator, data, config, progress=False)
    is_rows = np.nonzero(np.isin(res.route, ["psis", "refined"]))[0]
    assert is_rows.size >= 3 and res.weighted is not None
    wd, lw = res.weighted
    assert np.isfinite(lw[is_rows]).any(axis=1).all()
    other = np.setdiff1d(np.arange(res.num_datasets), is_rows)
    assert not np.isfinite(lw[other]).any()
    lr = lw[is_rows].astype(np.float64)
    w = np.where(np.isfinite(lr), np.exp(lr - lr.max(1, keepdims=True)), 0.0)
    w /= w.sum(1, keepdims=True)
    assert np.isfinite(wd[is_rows][w > 0]).all()  # zero-weight entries are padding
    expect = (w * np.nan_to_num(wd[is_rows, :, 0])).sum(1)
    np.testing.assert_allclose(res.posterior_mean()["theta_0"][is_rows], expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.table()["theta_0_mean"].to_numpy()[is_rows], expect, rtol=1e-5, atol=1e-6)
    # the resampled draws agree with the weighted estimate to within resampling noise
    sd = res.posterior_sd()["theta_0"][is_rows]
    assert np.all(np.abs(res.draws[is_rows, :, 0].mean(1) - expect) < 0.1 * sd)
    res.save(tmp_path / "r")
    back = af.WorkflowResult.load(tmp_path / "r", model=gaussian_model)
    np.testing.assert_array_equal(back.weighted[1], res.weighted[1])
    idata = res.inference_data(int(is_rows[0]))
    lwi = idata.importance_weighted["log_weight"].values[0]
    assert abs(np.logaddexp.reduce(lwi)) < 1e-5
