import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats as jstats

import amortflow as af
from amortflow.estimators import CheckpointError
from amortflow.nets import DeepSetSpec, FlowSpec


def test_npe_recovers_conjugate_gaussian_posterior(gaussian_model, gaussian_estimator):
    theta, ys = gaussian_model.sample_prior_predictive(jax.random.PRNGKey(123), 200)  # held out
    draws, log_q = gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(1), ys, 4000)
    assert draws.shape == (200, 4000, 2) and log_q.shape == (200, 4000)
    mean, sd = af.models.gaussian_mean_posterior(gaussian_model, ys)
    z = (draws.mean(1) - mean) / sd
    ratio = draws.std(1) / sd
    # posterior means within 0.1 posterior sd, sds within 10% (RMS over held-out datasets)
    assert float(jnp.sqrt(jnp.mean(z**2))) < 0.1
    assert float(jnp.sqrt(jnp.mean((ratio - 1) ** 2))) < 0.1
    assert float(jnp.abs(z).max()) < 0.4 and float(jnp.abs(ratio - 1).max()) < 0.2
    # log q is the density of the draws: agrees with log_prob and with the analytic posterior
    np.testing.assert_allclose(np.asarray(gaussian_estimator.log_prob(draws[:20], ys[:20])),
                               np.asarray(log_q[:20]), atol=2e-3)
    exact = jax.scipy.stats.norm.logpdf(draws, mean[:, None], sd[:, None]).sum(-1)
    assert float(jnp.median(jnp.abs(exact - log_q))) < 0.1


def test_sampling_is_deterministic_and_chunking_invariant(gaussian_model, gaussian_estimator):
    _, ys = gaussian_model.sample_prior_predictive(jax.random.PRNGKey(5), 10)
    a = gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(2), ys, 100)
    b = gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(2), ys, 100, batch_size=3)
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=1e-5, atol=1e-4)
    s = gaussian_estimator.summaries(ys)
    assert s.shape == (10, 8) and np.isfinite(np.asarray(s)).all()


def test_datasets_per_step_budget():
    from amortflow._backend import datasets_per_step

    assert datasets_per_step(1000, 2000, budget=4096) == 2
    assert datasets_per_step(1000, 100, budget=4096) == 40
    assert datasets_per_step(3, 100, budget=4096) == 3  # never more than there are
    assert datasets_per_step(1000, 10_000, budget=4096) == 1  # at least one
    default = datasets_per_step(10**6, 1)
    assert default == (1 << 12 if jax.default_backend() == "cpu" else 1 << 19)


def test_save_load_round_trip_exact(tmp_path, gaussian_model, gaussian_estimator):
    path = tmp_path / "est"
    gaussian_estimator.save(path)
    cfg = json.loads((path / "estimator.json").read_text())
    assert cfg["amortflow_version"] == af.__version__ and cfg["spec"]["flow"]["num_layers"] == 4
    loaded = af.load_estimator(path)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(gaussian_estimator.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, ys = gaussian_model.sample_prior_predictive(jax.random.PRNGKey(6), 4)
    a = gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(3), ys, 50)
    b = loaded.sample_and_log_prob(jax.random.PRNGKey(3), ys, 50)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert loaded.param_names == gaussian_model.param_names


def test_load_rejects_tampered_files(tmp_path, gaussian_estimator):
    path = tmp_path / "est"
    gaussian_estimator.save(path)
    cfg = json.loads((path / "estimator.json").read_text())
    assert cfg["format_version"] == 2 and len(cfg["arrays_sha256"]) == len(cfg["architecture_sha256"]) == 64
    cfg["spec"]["flow"]["hidden"] = [16, 16]  # architecture no longer matches the arrays
    (path / "estimator.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="estimator.json.*modified or damaged"):
        af.load_estimator(path)
    # a format-1 file (no checksums) still has its arrays checked against the architecture
    v1 = {k: v for k, v in cfg.items() if not k.endswith("_sha256")}
    (path / "estimator.json").write_text(json.dumps({**v1, "format_version": 1}))
    with pytest.raises(CheckpointError, match="shape"):
        af.load_estimator(path)
    cfg["spec"]["flow"]["hidden"] = [64, 64]
    cfg["format_version"] = 99
    (path / "estimator.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="newer"):
        af.load_estimator(path)
    with pytest.raises(CheckpointError, match="no estimator.json"):
        af.load_estimator(tmp_path / "missing")


def test_bad_observations_raise_clear_errors(gaussian_estimator):
    with pytest.raises(af.ObservationError, match=r"observations of shape \[K, 10, 2\]"):
        gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(0), np.zeros((3, 10, 3)), 10)
    ys = np.zeros((3, 10, 2))
    ys[1, 0, 0] = np.inf
    with pytest.raises(af.ObservationError, match=r"NaN or infinite.*\[1\]"):
        gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(0), ys, 10)


def test_divergent_training_raises():
    m = af.models.gaussian_mean(dim=1, num_obs=5)
    with pytest.raises(af.TrainingDivergedError, match="loss became"):
        af.fit_posterior(
            jax.random.PRNGKey(0), m, num_simulations=600,
            flow=FlowSpec(num_layers=1, hidden=(8,)),
            summary=DeepSetSpec(phi_hidden=(8,), rho_hidden=(8,), out_dim=2),
            train_config=af.TrainConfig(num_steps=40, batch_size=32, learning_rate=1e30, clip_norm=1e30,
                                        steps_per_call=20),
            progress=False,
        )


def test_interrupted_training_resumes_to_the_same_result(tmp_path, monkeypatch):
    from amortflow.estimators import training

    m = af.models.gaussian_mean(dim=1, num_obs=5)
    kw = dict(
        num_simulations=1000,
        flow=FlowSpec(num_layers=2, hidden=(16, 16), transform="affine"),
        summary=DeepSetSpec(phi_hidden=(16,), rho_hidden=(16,), out_dim=4, pooling=("mean",)),
        train_config=af.TrainConfig(num_steps=200, steps_per_call=50),
        progress=False,
    )
    full = af.fit_posterior(jax.random.PRNGKey(1), m, **kw)

    real_make_chunk = training._make_chunk

    def interrupting_make_chunk(*a, **k):
        chunk, calls = real_make_chunk(*a, **k), []

        def wrapped(*args):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # the user pressed Ctrl-C during the third chunk
            return chunk(*args)

        return wrapped

    monkeypatch.setattr(training, "_make_chunk", interrupting_make_chunk)
    with pytest.raises(KeyboardInterrupt):
        af.fit_posterior(jax.random.PRNGKey(1), m, checkpoint_dir=str(tmp_path), **kw)
    saved = json.loads((tmp_path / "train_history.json").read_text())
    assert saved["history"]["step"] == [50, 100]
    monkeypatch.setattr(training, "_make_chunk", real_make_chunk)
    resumed = af.fit_posterior(jax.random.PRNGKey(1), m, checkpoint_dir=str(tmp_path), **kw)
    assert resumed.history["step"] == [50, 100, 150, 200]
    np.testing.assert_allclose(resumed.history["val_loss"], full.history["val_loss"], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    m = af.models.gaussian_mean(dim=1, num_obs=5)
    kw = dict(num_simulations=600, flow=FlowSpec(num_layers=1, hidden=(8, 8), transform="affine"),
              summary=DeepSetSpec(phi_hidden=(8,), rho_hidden=(8,), out_dim=2), progress=False,
              checkpoint_dir=str(tmp_path))
    af.fit_posterior(jax.random.PRNGKey(0), m, train_config=af.TrainConfig(num_steps=20, steps_per_call=10), **kw)
    with pytest.raises(ValueError, match="another run"):
        af.fit_posterior(jax.random.PRNGKey(0), m, train_config=af.TrainConfig(num_steps=40, steps_per_call=10), **kw)


# ------------------------------------------------------------------ defaults and training priors
def test_default_training_is_online_and_recovers_the_conjugate_posterior():
    """``fit_posterior`` defaults (only the step budget shortened, to keep the test fast):
    online simulation (no bank to overfit), the default architecture for a set of 2-vectors,
    posterior means within 0.1 posterior sd (RMS over 50 held-out datasets) of the analytic
    posterior."""
    m = af.models.gaussian_mean(dim=2, num_obs=10)
    est = af.fit_posterior(jax.random.PRNGKey(3), m, train_config=af.TrainConfig(num_steps=1500), progress=False)
    assert est.extra["num_simulations"] is None and est.extra["training_prior"] is None
    assert est.spec.summary == af.nets.default_summary_spec("set", (10, 2), 2)
    _, ys = m.sample_prior_predictive(jax.random.PRNGKey(77), 50)
    draws = est.sample(jax.random.PRNGKey(1), ys, 2000)
    mean, sd = af.models.gaussian_mean_posterior(m, ys)
    z = (draws.mean(1) - mean) / sd
    assert float(jnp.sqrt(jnp.mean(z**2))) < 0.1
    assert float(jnp.sqrt(jnp.mean((draws.std(1) / sd - 1) ** 2))) < 0.1


def test_online_training_skips_non_finite_simulations():
    """A simulator with NaN output for 3% of parameters: a bank drops them, online training
    draws extra simulations and keeps finite ones, instead of diverging on the first NaN."""
    base = af.models.gaussian_mean(dim=1, num_obs=5)

    def simulate(key, theta):
        y = base.simulator(key, theta)
        return jnp.where(jax.random.uniform(jax.random.fold_in(key, 1)) < 0.03, jnp.nan, y)

    m = dataclasses.replace(base, simulator=simulate)
    with pytest.warns(UserWarning, match="dropped"):
        est = af.fit_posterior(jax.random.PRNGKey(0), m, summary=DeepSetSpec(phi_hidden=(16,), rho_hidden=(16,),
                               out_dim=4, pooling=("mean",)), flow=FlowSpec(num_layers=2, hidden=(16, 16)),
                               train_config=af.TrainConfig(num_steps=200, steps_per_call=100), progress=False)
    assert np.isfinite(est.history["train_loss"]).all()


def test_widened_prior_is_a_normalized_mixture_of_the_prior_and_its_widening():
    from amortflow.estimators import WidenedPrior, widen_prior
    from amortflow.estimators.data import prior_centre

    m = af.models.gaussian_mean(dim=2, num_obs=5, prior_mean=1.0, prior_sd=0.5)
    c = np.asarray(prior_centre(m))
    np.testing.assert_allclose(c, 1.0, atol=0.03)  # median of 8192 prior draws
    w = widen_prior(m, WidenedPrior(scale=3.0, model_weight=0.25))
    th = np.asarray(w.sample_prior(jax.random.PRNGKey(0), 200_000))
    # N(1, 0.5^2) and N(1, 1.5^2) mixed 1:3 (the centre is the prior median, 1)
    np.testing.assert_allclose(th.mean(0), 1.0, atol=0.01)
    np.testing.assert_allclose(th.var(0), 0.25 * 0.25 + 0.75 * 2.25, rtol=0.02)
    grid = jnp.linspace(-6, 8, 561)
    pts = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)
    lp = jax.vmap(w.log_prior)(pts)
    exact = jnp.logaddexp(np.log(0.25) + jax.vmap(m.log_prior)(pts),
                          np.log(0.75) + jstats.norm.logpdf(pts, c + (1.0 - c) * 3.0, 1.5).sum(-1))
    np.testing.assert_allclose(np.asarray(lp), np.asarray(exact), atol=1e-4)
    np.testing.assert_allclose(float(jnp.exp(lp).sum() * (grid[1] - grid[0]) ** 2), 1.0, atol=1e-3)
    assert w.simulator is m.simulator and w.log_likelihood_fn is m.log_likelihood_fn


def test_widened_training_prior_changes_the_simulations_and_the_proposal_still_works(tmp_path):
    """Training simulations come from the widened prior (wider bank, wider standardization),
    the estimator is recorded as such, and run_workflow corrects it to the model's prior."""
    from amortflow.estimators import WidenedPrior

    m = af.models.gaussian_mean(dim=1, num_obs=10)
    kw = dict(summary=DeepSetSpec(phi_hidden=(32,), rho_hidden=(32,), out_dim=8, pooling=("mean",)),
              flow=FlowSpec(num_layers=3, hidden=(32, 32)), progress=False)
    short = af.TrainConfig(num_steps=10, steps_per_call=10)
    plain = af.fit_posterior(jax.random.PRNGKey(0), m, num_simulations=2000, train_config=short, **kw)
    wide = af.fit_posterior(jax.random.PRNGKey(0), m, num_simulations=2000, train_config=short,
                            training_prior=WidenedPrior(scale=3.0, model_weight=0.0), **kw)
    ratio = np.asarray(wide.standardization.theta_scale / plain.standardization.theta_scale)
    assert (ratio > 2.5).all() and (ratio < 3.5).all()  # theta sd ~3 vs ~1
    assert wide.extra["training_prior"] == {"kind": "widened", "scale": 3.0, "model_weight": 0.0}
    wide.save(tmp_path / "est")
    assert af.load_estimator(tmp_path / "est").extra["training_prior"]["scale"] == 3.0
    online = af.fit_posterior(jax.random.PRNGKey(1), m, training_prior=WidenedPrior(), **kw,
                              train_config=af.TrainConfig(num_steps=800, learning_rate=2e-3, steps_per_call=200))
    _, ys = m.sample_prior_predictive(jax.random.PRNGKey(9), 4)
    ys = ys.at[0].add(4.0)  # far outside the prior's bulk (theta ~ 4 sd out)
    res = af.run_workflow(jax.random.PRNGKey(2), m, online, ys,
                          af.WorkflowConfig(num_draws=500, psis_min_ess=100.0), progress=False)
    mean, sd = af.models.gaussian_mean_posterior(m, ys)
    assert len(res.route) == 4 and (np.asarray(res.route) != "failed").all()
    assert res.route[0] in ("psis", "refined")  # the widened proposal covers the outlying dataset
    z = (np.asarray(res.draws).mean(1) - np.asarray(mean)) / np.asarray(sd)
    assert np.abs(z).max() < 0.5


@pytest.mark.parametrize("kw, match", [
    (dict(training_prior="wide"), "training_prior must be None or a WidenedPrior"),
    (dict(training_prior=2.0), "training_prior must be None or a WidenedPrior"),
    (dict(num_validation=0), "num_validation must be a whole number >= 1"),
    (dict(train_config={"num_steps": 10}), "train_config must be a TrainConfig"),
    (dict(num_simulations=100), "num_simulations must be a whole number >= 512"),
])
def test_bad_fit_posterior_settings_raise_config_errors(kw, match):
    with pytest.raises(af.errors.ConfigError, match=match):
        af.fit_posterior(jax.random.PRNGKey(0), af.models.gaussian_mean(dim=1, num_obs=5), progress=False, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(scale=0.5), r"scale must be a finite number >= 1"),
    (dict(scale=float("inf")), r"scale must be a finite number >= 1"),
    (dict(scale=True), r"scale must be a finite number >= 1"),
    (dict(model_weight=1.5), r"model_weight must be a finite number in \[0, 1\]"),
    (dict(model_weight=-0.1), r"model_weight must be a finite number in \[0, 1\]"),
])
def test_bad_widened_prior_values_raise_config_errors(kw, match):
    from amortflow.estimators import WidenedPrior

    with pytest.raises(af.errors.ConfigError, match=match):
        WidenedPrior(**kw)


def test_widened_prior_with_a_supplied_bank_is_refused():
    from amortflow.estimators import WidenedPrior

    m = af.models.gaussian_mean(dim=1, num_obs=5)
    bank = m.sample_prior_predictive(jax.random.PRNGKey(0), 600)
    with pytest.raises(af.errors.ConfigError, match="cannot apply to a supplied bank"):
        af.fit_posterior(jax.random.PRNGKey(0), m, bank=bank, training_prior=WidenedPrior(), progress=False)


def test_checkpoint_of_another_training_prior_is_refused(tmp_path):
    from amortflow.estimators import WidenedPrior

    m = af.models.gaussian_mean(dim=1, num_obs=5)
    kw = dict(num_simulations=600, flow=FlowSpec(num_layers=1, hidden=(8, 8), transform="affine"),
              summary=DeepSetSpec(phi_hidden=(8,), rho_hidden=(8,), out_dim=2), progress=False,
              checkpoint_dir=str(tmp_path), train_config=af.TrainConfig(num_steps=20, steps_per_call=10))
    af.fit_posterior(jax.random.PRNGKey(0), m, **kw)
    with pytest.raises(CheckpointError, match=r"differs in: .*training_prior"):
        af.fit_posterior(jax.random.PRNGKey(0), m, training_prior=WidenedPrior(), **kw)


def test_summary_function_is_the_learned_summary(gaussian_estimator, gaussian_model):
    """est.summary_function() is a pure function of one dataset equal to est.summaries, and
    composes with jit/vmap (NLE on learned summaries relies on it)."""
    ys = np.asarray(gaussian_model.simulate(jax.random.PRNGKey(5), gaussian_model.sample_prior(jax.random.PRNGKey(4), 6)))
    f = gaussian_estimator.summary_function()
    got = np.asarray(jax.jit(jax.vmap(f))(ys))
    np.testing.assert_allclose(got, np.asarray(gaussian_estimator.summaries(ys)), rtol=1e-5, atol=1e-5)
    assert got.shape == (6, gaussian_estimator.summaries(ys).shape[1])
