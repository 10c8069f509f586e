"""Neural Bayes estimators on the conjugate Gaussian model (analytic posterior): mean, median and
quantile estimators, monotone quantiles, checkpoints, parametric bootstrap, the workflow stage."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amortflow as af
from amortflow.errors import CheckpointError, ConfigError
from amortflow.estimators import checkpoint as ckpt
from amortflow.estimators.data import fit_standardization
from amortflow.estimators.point import (AbsoluteError, JointLoss, Pinball, PointEstimator, PointSpec,
                                        SquaredError, bootstrap, fit_point_estimator, init_params,
                                        loss_from_dict)
from amortflow.mcmc import Ladder, Rung
from amortflow.models.gaussian import gaussian_mean, gaussian_mean_posterior
from amortflow.nets import DeepSetSpec, FlowSpec
from amortflow.nets.heads import monotone_blocks
from amortflow.workflow.point import point_columns, point_estimate_stage
from amortflow.workflow.stages import default_stages

Z90 = 1.6448536  # standard normal 95% quantile
STEPS = af.TrainConfig(num_steps=1500, batch_size=128)  # measured errors as at 256
# small networks keep the module fast; fit_point_estimator's defaults are default_summary_spec + (128, 128)
NETS = dict(summary=DeepSetSpec(phi_hidden=(32, 32), rho_hidden=(32,), out_dim=8, pooling=("mean",)),
            hidden=(64, 64))


@pytest.fixture(scope="module")
def model():
    return gaussian_mean(dim=2, num_obs=10)


@pytest.fixture(scope="module")
def test_sets(model):
    """1000 prior-predictive test sets: ``(theta [1000, 2], ys [1000, 10, 2])``."""
    theta, ys = model.sample_prior_predictive(jax.random.PRNGKey(123), 1000)
    return np.asarray(theta), np.asarray(ys)


@pytest.fixture(scope="module")
def mean_est(model):
    return fit_point_estimator(jax.random.PRNGKey(0), model, SquaredError(), train_config=STEPS, progress=False,
                               **NETS)


@pytest.fixture(scope="module")
def joint_est(model):
    """Median and 5% / 50% / 95% quantiles from one network."""
    return fit_point_estimator(jax.random.PRNGKey(1), model, (AbsoluteError(), Pinball((0.05, 0.5, 0.95))),
                               train_config=STEPS, progress=False, **NETS)


def _sd_error(est_values, model, ys):
    mean, sd = gaussian_mean_posterior(model, ys)
    return float(np.mean(np.abs(np.asarray(est_values) - np.asarray(mean)) / np.asarray(sd)))


# ------------------------------------------------------------------ accuracy
def test_mean_estimator_matches_analytic_posterior_mean(model, mean_est, test_sets):
    _, ys = test_sets
    est = mean_est.estimate(ys)
    assert est.shape == (1000, 2) and mean_est.output_labels == ("mean",)
    err = _sd_error(est, model, ys)
    # measured ~0.03 sd; the prior mean (an estimator ignoring the data) is ~3 sd off
    assert err < 0.15, err
    assert _sd_error(np.zeros_like(est), model, ys) > 1.0


def test_median_estimator_matches_analytic_posterior_median(model, joint_est, test_sets):
    _, ys = test_sets
    out = joint_est.outputs(ys)
    assert set(out) == {"median", "q05", "q50", "q95"}
    assert _sd_error(out["median"], model, ys) < 0.15  # Gaussian posterior: median = mean
    assert _sd_error(joint_est.point(ys), model, ys) < 0.15


def test_quantile_interval_covers_true_parameters_at_nominal_rate(model, joint_est, test_sets):
    theta, ys = test_sets
    lo, hi = joint_est.interval(ys, level=0.9)
    assert lo.shape == hi.shape == (1000, 2)
    cover = np.asarray((theta >= lo) & (theta <= hi))
    n = cover.size  # 2000 coordinates, independent here (the posterior factorizes)
    assert abs(cover.mean() - 0.9) < 4 * np.sqrt(0.9 * 0.1 / n) + 0.01, cover.mean()
    mean, sd = (np.asarray(a) for a in gaussian_mean_posterior(model, ys))
    q = np.asarray(joint_est.quantiles(ys))
    assert q.shape == (1000, 3, 2) and joint_est.quantile_levels == (0.05, 0.5, 0.95)
    for i, z in enumerate((-Z90, 0.0, Z90)):
        err = np.mean(np.abs(q[:, i] - (mean + z * sd)) / sd)
        assert err < 0.15, (i, err)  # measured ~0.04 sd
    # the outputs plug into the assessment toolbox as they are
    from amortflow.diagnostics.assess import assess

    a = assess(theta, estimate=joint_est.point(ys), quantiles=q, quantile_levels=joint_est.quantile_levels,
               param_names=joint_est.param_names, estimator_name="nbe")
    np.testing.assert_allclose(a.coverage, cover.mean(axis=0), atol=1e-12)
    assert np.all(a.rmse < 0.4) and np.isfinite(a.crps).all()  # posterior sd is 0.30


# ------------------------------------------------------------------ layout and monotonicity
@pytest.fixture(scope="module")
def untrained(model):
    """An untrained estimator of the mean and five quantiles taking 3 design values per dataset,
    its parameters scaled up so raw outputs are far from 0 (one compilation for two tests)."""
    loss = JointLoss((SquaredError(), Pinball((0.1, 0.25, 0.5, 0.75, 0.9))))
    spec = PointSpec(dim=2, obs_shape=(10, 2), obs_kind="set", summary=DeepSetSpec(phi_hidden=(32,), out_dim=8),
                     loss=loss, hidden=(32,), design_dim=3)
    theta, ys = model.sample_prior_predictive(jax.random.PRNGKey(1), 256)
    params = jax.tree.map(lambda a: 3.0 * a, init_params(spec, jax.random.PRNGKey(0)))
    return PointEstimator(spec, params, fit_standardization(theta, ys, "set"), model.param_names, model.name)


def test_quantiles_are_monotone_by_construction_even_untrained(untrained):
    raw = 10.0 * jax.random.normal(jax.random.PRNGKey(0), (500, 7, 3))
    out = monotone_blocks(raw, ((1, 5),))
    assert (np.diff(np.asarray(out[:, 1:5]), axis=1) >= 0).all()
    np.testing.assert_array_equal(out[:, 0], raw[:, 0])  # slots outside the block untouched
    np.testing.assert_array_equal(out[:, 5:], raw[:, 5:])

    for seed in range(3):  # random inputs far outside the training distribution
        k1, k2 = jax.random.split(jax.random.PRNGKey(10 + seed))
        obs = af.observe(5.0 * jax.random.normal(k1, (300, 10, 2)),
                         design={"x": 5.0 * jax.random.normal(k2, (300, 3))})
        q = np.asarray(untrained.quantiles(obs))
        assert q.shape == (300, 5, 2) and (np.diff(q, axis=1) >= 0).all()
        assert untrained.predict(obs).shape == (300, 6, 2) and untrained.output_labels[0] == "mean"


def test_loss_values_validate_and_round_trip():
    with pytest.raises(ConfigError, match="strictly increasing"):
        Pinball((0.5, 0.05))
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        Pinball((0.0, 0.5))
    with pytest.raises(ConfigError, match="repeat"):
        JointLoss((SquaredError(), SquaredError()))
    with pytest.raises(ConfigError, match="one Pinball"):
        JointLoss((Pinball((0.1,)), Pinball((0.9,))))
    with pytest.raises(ConfigError, match="loss must be"):
        fit_point_estimator(jax.random.PRNGKey(0), gaussian_mean(), "mse")
    for loss in (SquaredError(), AbsoluteError(), Pinball(), JointLoss(), JointLoss((AbsoluteError(), Pinball((0.1, 0.9))), (1.0, 2.0))):
        assert loss_from_dict(json.loads(json.dumps(loss.to_dict()))) == loss
    assert JointLoss().labels == ("mean", "q05", "q95") and JointLoss().monotone == ((1, 3),)


def test_estimates_are_vectorized_and_one_dataset_is_k1(mean_est, test_sets):
    _, ys = test_sets
    full = np.asarray(mean_est.estimate(ys[:7]))
    np.testing.assert_allclose(np.asarray(mean_est.estimate(ys[3])), full[3:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mean_est.estimate(ys[:7], batch_size=2)), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mean_est.estimate(af.observe(ys[:7]))), full, rtol=1e-5, atol=1e-6)
    assert mean_est.summaries(ys[:7]).shape[0] == 7
    with pytest.raises(af.errors.ObservationError):
        mean_est.estimate(np.zeros((3, 9, 2)))


def test_missing_quantiles_and_density_are_clear_errors(mean_est, joint_est, test_sets):
    _, ys = test_sets
    with pytest.raises(ConfigError, match="no quantile outputs"):
        mean_est.quantiles(ys[:3])
    with pytest.raises(ConfigError, match=r"0\.1 and 0\.9.*\(0\.05, 0\.5, 0\.95\)"):
        joint_est.interval(ys[:3], level=0.8)
    assert mean_est.has_log_prob is False and mean_est.kind == "nbe"
    assert isinstance(mean_est, af.estimators.Estimator)
    for call in (lambda: mean_est.sample(jax.random.PRNGKey(0), ys[:3], 10),
                 lambda: mean_est.sample_and_log_prob(jax.random.PRNGKey(0), ys[:3], 10),
                 lambda: mean_est.log_prob(np.zeros((3, 2)), ys[:3])):
        with pytest.raises(NotImplementedError, match="fit_posterior.*bootstrap"):
            call()


def test_design_data_is_appended_to_the_head_input(untrained, test_sets):
    _, ys = test_sets
    d1, d2 = np.zeros((5, 3), np.float32), np.ones((5, 3), np.float32)
    a = untrained.point(af.observe(ys[:5], design={"x": d1}))
    b = untrained.point(af.observe(ys[:5], design={"x": d2}))
    assert a.shape == (5, 2) and not np.allclose(a, b)
    with pytest.raises(ValueError, match="design"):
        untrained.estimate(ys[:5])
    with pytest.raises(ValueError, match="design_dim=3"):
        untrained.estimate(af.observe(ys[:5], design={"x": np.ones((5, 4))}))


# ------------------------------------------------------------------ checkpoints
def test_save_load_round_trip_and_damaged_files_are_refused(tmp_path, joint_est, test_sets):
    _, ys = test_sets
    path = str(tmp_path / "nbe")
    joint_est.save(path)
    loaded = af.load_estimator(path)
    assert isinstance(loaded, PointEstimator) and loaded.fingerprint() == joint_est.fingerprint()
    assert loaded.spec == joint_est.spec
    np.testing.assert_array_equal(np.asarray(loaded.predict(ys[:50])), np.asarray(joint_est.predict(ys[:50])))

    cfg_file, arr_file = ckpt.checkpoint_files(path)
    with open(cfg_file) as f:
        cfg = json.load(f)

    def write(spec_change, where):
        bad = str(tmp_path / where)
        os.makedirs(bad)
        c = json.loads(json.dumps(cfg))
        spec_change(c["spec"])
        # a consistent checksum: the loader's own validation must refuse it
        c["architecture_sha256"] = ckpt._architecture_sha256(c["kind"], c["spec"], c["param_names"])
        with open(os.path.join(bad, ckpt.CONFIG_FILE), "w") as f:
            json.dump(c, f)
        with open(arr_file, "rb") as src, open(os.path.join(bad, ckpt.ARRAYS_FILE), "wb") as dst:
            dst.write(src.read())
        return bad

    with pytest.raises(CheckpointError, match="arrays|shape"):
        af.load_estimator(write(lambda s: s.update(hidden=[32, 32]), "narrower"))
    with pytest.raises(CheckpointError, match="arrays|shape"):  # 4 outputs in the file, 3 described
        af.load_estimator(write(lambda s: s["loss"]["parts"][1].update(levels=[0.05, 0.95]), "fewer_levels"))
    with pytest.raises(CheckpointError, match="spec.loss.*increasing"):
        af.load_estimator(write(lambda s: s["loss"]["parts"][1].update(levels=[0.5, 0.05, 0.95]), "unsorted"))
    with pytest.raises(CheckpointError, match="spec.hidden"):
        af.load_estimator(write(lambda s: s.update(hidden=[64, True]), "bool_width"))
    with pytest.raises(CheckpointError, match="spec.design_dim"):
        af.load_estimator(write(lambda s: s.pop("design_dim"), "no_design_dim"))

    blob = bytearray(open(arr_file, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    with open(arr_file, "wb") as f:
        f.write(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        af.load_estimator(path)


# ------------------------------------------------------------------ bootstrap
def test_parametric_bootstrap_shapes_and_rough_coverage(model, mean_est, test_sets):
    theta, ys = test_sets
    k, b = 200, 100
    ids = np.arange(k)
    res = bootstrap(jax.random.PRNGKey(5), mean_est, model, ys[:k], num_bootstrap=b, level=0.9, dataset_ids=ids)
    assert res.samples.shape == (k, b, 2) and res.lower.shape == res.upper.shape == res.estimate.shape == (k, 2)
    assert np.isfinite(np.asarray(res.samples)).all() and (res.lower < res.upper).all()
    np.testing.assert_allclose(np.asarray(res.estimate), np.asarray(mean_est.estimate(ys[:k])), rtol=1e-5, atol=1e-6)
    # sampling sd of the estimator at theta_hat: w / sqrt(n), w = n / (n + 1) (posterior-mean shrinkage)
    sd = np.asarray(res.samples).std(axis=1)
    assert abs(np.median(sd) - (10 / 11) / np.sqrt(10)) < 0.03, np.median(sd)
    cover = np.asarray((theta[:k] >= res.lower) & (theta[:k] <= res.upper)).mean()
    # a percentile interval around a shrunken estimate under-covers somewhat (measured ~0.85)
    assert 0.75 < cover < 0.97, cover
    # per-dataset keys: a dataset's bootstrap does not depend on the others in the call
    s = bootstrap(jax.random.PRNGKey(5), mean_est, model, ys[3:5], b, dataset_ids=ids[3:5])
    np.testing.assert_allclose(np.asarray(s.samples), np.asarray(res.samples[3:5]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="trained for"):
        bootstrap(jax.random.PRNGKey(5), mean_est, gaussian_mean(dim=3), ys[:k])


# ------------------------------------------------------------------ workflow
def test_point_stage_puts_estimates_into_the_workflow_table(model, joint_est, test_sets):
    _, ys = test_sets
    data = ys[:6]
    npe = af.fit_posterior(jax.random.PRNGKey(0), model,
                           summary=DeepSetSpec(phi_hidden=(32,), rho_hidden=(32,), out_dim=8, pooling=("mean",)),
                           flow=FlowSpec(num_layers=2, transform="affine", hidden=(32,)),
                           train_config=af.TrainConfig(num_steps=300, batch_size=128), progress=False)
    cheap = af.mcmc.chees.cpu_profile(num_superchains=2, chains_per_superchain=4, num_warmup=50, num_samples=25)
    # the cheapest workflow that still runs every default stage's code path (no OOD fit: all go to PSIS)
    cfg = af.WorkflowConfig(num_draws=64, psis_max_error=None, ood_method=None, khat_threshold=1.0,
                            refine_rounds=0, mcmc=Ladder((Rung("chees", cheap),), bucket_size=4, num_prior_draws=64))
    stage = point_estimate_stage(joint_est)
    res = af.run_workflow(jax.random.PRNGKey(3), model, npe, data, cfg, progress=False,
                          beta=np.array([1, 1, 1, 1, 1, 2.0]),
                          stages=(stage,) + default_stages(model, npe, cfg, progress=False))
    t = res.table()
    cols = point_columns(joint_est)
    assert set(cols) == {f"nbe_theta_{j}{s}" for j in (0, 1) for s in ("", "_q05", "_q50", "_q95")}
    assert set(cols) <= set(t.columns) and {"theta_0_mean", "theta_0_sd"} <= set(t.columns)
    assert "nbe" not in set(res.route)  # the stage routes nothing
    q = np.asarray(joint_est.predict(data), np.float64)
    np.testing.assert_allclose(t["nbe_theta_1"][:5], q[:5, 0, 1], rtol=1e-5)
    np.testing.assert_allclose(t["nbe_theta_0_q95"][:5], q[:5, 3, 0], rtol=1e-5)
    assert np.isnan(t["nbe_theta_0"][5])  # beta = 2: the estimator knows only beta = 1
    assert (t.nbe_theta_0_q05[:5] <= t.nbe_theta_0_q95[:5]).all()


def test_point_stage_constrains_with_the_model(model, joint_est, test_sets):
    """With ``model=`` the columns are named by the constrained sites and hold constrained values
    (quantiles commute with the monotone transforms)."""
    import dataclasses

    from amortflow.workflow.pipeline import StageInput

    _, ys = test_sets
    shifted = dataclasses.replace(model, constrain_fn=lambda th: {"loc": th[0], "scale": jnp.exp(th[1])})
    stage = point_estimate_stage(joint_est, name="pt", model=shifted)
    assert set(stage.columns) == {f"pt_{p}{s}" for p in ("loc", "scale") for s in ("", "_q05", "_q50", "_q95")}
    res = stage.run(jax.random.PRNGKey(0), StageInput(np.arange(4), af.observe(ys[:4]), {}))
    q = np.asarray(joint_est.predict(ys[:4]), np.float64)
    np.testing.assert_allclose(res.diagnostics["pt_scale_q95"], np.exp(q[:, 3, 1]), rtol=1e-5)
    np.testing.assert_allclose(res.diagnostics["pt_loc"], q[:, 0, 0], rtol=1e-5)
    assert (res.route == "").all() and res.draws is None
    with pytest.raises(ValueError, match="trained for"):
        point_estimate_stage(joint_est, model=gaussian_mean(dim=3))
    with pytest.raises(TypeError, match="PointEstimator"):
        point_estimate_stage(object())


def test_an_observing_stage_keeps_earlier_reasons(joint_est, test_sets):
    """Inserted after a stage that handed datasets on with a reason, the point stage keeps that
    reason (pipeline.Records.apply: handed on with reason "" keeps the earlier one)."""
    from amortflow.workflow.pipeline import Records, StageInput, StageResult

    _, ys = test_sets
    rec = Records.start(np.full(3, "", object), 10, 2, point_estimate_stage(joint_est).columns)
    gate = StageResult(np.array(["", "a", ""], object), np.array(["OOD score 9 > 3", "", "k-hat 0.9"], object))
    rec = rec.apply(np.arange(3), gate)
    stage = point_estimate_stage(joint_est)
    rec = rec.apply(np.array([0, 2]), stage.run(None, StageInput(np.array([0, 2]), af.observe(ys[[0, 2]]), {})))
    assert list(rec.reason) == ["OOD score 9 > 3", "", "k-hat 0.9"] and list(rec.route) == ["", "a", ""]
    assert np.isfinite(rec.diagnostics["nbe_theta_0"][[0, 2]]).all() and np.isnan(rec.diagnostics["nbe_theta_0"][1])
