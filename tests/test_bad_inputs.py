"""Nothing silent: every bad input, bad setting and damaged file gets a clear error (its type
exported in ``af.errors``, its message naming the argument, file or site) or a failed route with
its reason -- and the other datasets are unchanged.

Estimator files (edited architecture, flipped bytes, truncated or NaN arrays, wrongly typed JSON
fields, unknown kinds) and dropped NaN simulations are covered in ``tests/test_estimators.py``.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import amortflow as af
from amortflow import cli, mcmc
from amortflow.errors import (CheckpointError, ConfigError, ObservationError, ProgressError,
                              ResultFileError)
from amortflow.nets import FlowSpec, MLPSummarySpec

S = 200
MAX_ERR = 0.2  # the Monte Carlo error gate 200 draws can meet (the default 0.1 needs 484)
LADDER = mcmc.Ladder((mcmc.Rung("chees", mcmc.chees.cpu_profile(
    num_superchains=4, chains_per_superchain=8, num_warmup=100, num_samples=32)),),
    bucket_size=4, num_prior_draws=256)
CFG = dict(num_draws=S, num_ood_simulations=400, mcmc=LADDER, psis_max_error=MAX_ERR)


@pytest.fixture(scope="module")
def data(gaussian_model):
    _, ys = gaussian_model.sample_prior_predictive(jax.random.PRNGKey(11), 8)
    return np.asarray(ys)


def _run(model, est, ys, **kw):
    cfg = af.WorkflowConfig(**{**CFG, "psis_on_all": True, **kw})
    return af.run_workflow(jax.random.PRNGKey(2), model, est, ys, cfg, progress=False)


# ----------------------------------------------------------------------------- observations
@pytest.mark.parametrize("bad, words", [
    (lambda ys: ys > 0, "boolean"),
    (lambda ys: ys * (1 + 1j), "complex"),
    (lambda ys: np.full(ys.shape, "x"), "could not be read as numbers"),
    (lambda ys: 3.0, "scalar"),
    (lambda ys: ys[:0], "no datasets"),
])
def test_unusable_observations_raise_naming_the_problem(gaussian_estimator, data, bad, words):
    with pytest.raises(ObservationError, match=words):
        gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(0), bad(data), 10)


def test_workflow_refuses_boolean_and_complex_data(gaussian_model, gaussian_estimator, data):
    for bad, words in ((data > 0, "boolean"), (data * 1j, "complex")):
        with pytest.raises(ObservationError, match=words):
            _run(gaussian_model, gaussian_estimator, bad)


def test_float32_overflow_is_named(gaussian_model, gaussian_estimator, data):
    big = data.astype(np.float64)
    big[2, 0, 0] = 1e39
    with pytest.raises(ObservationError, match="overflow float32"):
        gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(0), big, 10)
    res = _run(gaussian_model, gaussian_estimator, big)
    assert res.route[2] == "failed" and "overflow float32" in res.reason[2]
    assert (res.route[[0, 1, 3]] != "failed").all()


def test_no_datasets_gives_an_empty_result(gaussian_model, gaussian_estimator, data):
    res = _run(gaussian_model, gaussian_estimator, data[:0])
    assert res.num_datasets == 0 and res.draws.shape == (0, S, 2)
    assert sum(res.route_counts().values()) == 0 and res.table().shape[0] == 0


def test_a_nan_dataset_fails_alone_and_changes_no_other_dataset(gaussian_model, gaussian_estimator, data):
    """Per-dataset keys fold in the dataset's index, not its position among the valid ones."""
    bad = data.copy()
    bad[3, 0, 0] = np.nan
    clean = _run(gaussian_model, gaussian_estimator, data, khat_threshold=-np.inf)  # all to MCMC
    dirty = _run(gaussian_model, gaussian_estimator, bad, khat_threshold=-np.inf)
    assert dirty.route[3] == "failed" and "NaN" in dirty.reason[3]
    others = np.array([0, 1, 2, 4, 5, 6, 7])
    np.testing.assert_array_equal(dirty.draws[others], clean.draws[others])
    np.testing.assert_array_equal(dirty.diagnostics["khat"][others], clean.diagnostics["khat"][others])


# ----------------------------------------------------------------------------- impossible data
def _counts(x, y=None):
    rate = numpyro.sample("rate", dist.LogNormal(1.0, 0.5))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Poisson(rate * x), obs=y)


@pytest.fixture(scope="module")
def poisson():
    model = af.from_numpyro(_counts, jnp.linspace(0.5, 2.0, 12))
    est = af.fit_posterior(jax.random.PRNGKey(0), model, num_simulations=2000,
                           summary=MLPSummarySpec(hidden=(32,), out_dim=4),
                           flow=FlowSpec(num_layers=2, hidden=(32,)),
                           train_config=af.TrainConfig(num_steps=300, batch_size=128), progress=False)
    return model, est


def test_data_the_model_cannot_produce_never_end_amortized_or_psis(poisson):
    """Non-integer and negative counts have zero likelihood under every draw: the default
    workflow (OOD acceptance on) must not accept them, and says why they failed."""
    model, est = poisson
    ys = np.array(model.simulate(jax.random.PRNGKey(1), model.sample_prior(jax.random.PRNGKey(2), 4)), np.float64)
    ys[1, 3] = 2.5
    ys[2, 0] = -1.0
    res = af.run_workflow(jax.random.PRNGKey(3), model, est, ys, af.WorkflowConfig(**CFG), progress=False)
    for i in (1, 2):
        assert res.route[i] == "failed" and res.reason[i], (res.route, res.reason)
        assert not np.isfinite(res.diagnostics["khat"][i])
    assert (res.route[[0, 3]] != "failed").all()


# ----------------------------------------------------------------------------- models
def test_make_model_checks_the_prior_and_theta_length():
    base = af.models.gaussian_mean(dim=1)
    with pytest.raises(ValueError, match=r"return \[n, 1\]"):
        af.make_model(name="m", param_names=("a",), obs_shape=(10, 1),
                      sample_prior=lambda k, n: jnp.zeros((n, 2)), simulate=base.simulator,
                      log_prior=base.log_prior_fn, log_likelihood=base.log_likelihood_fn)
    y = jnp.zeros((10, 1))
    for fn in (lambda: base.log_density(jnp.zeros(2), y), lambda: base.simulate(jax.random.PRNGKey(0), jnp.zeros(3)),
               lambda: jax.jit(base.log_density)(jnp.zeros(2), y)):
        with pytest.raises(ValueError, match="last axis 1"):
            fn()


def _sim_only_keyword(x, data=None):
    numpyro.sample("a", dist.Normal(0, 1))
    numpyro.sample("data", dist.Normal(0, 1).expand([3]).to_event(1), obs=data)


@pytest.mark.parametrize("build, words", [
    (lambda: af.from_numpyro(_sim_only_keyword, 1.0), r"takes no keyword 'y'"),
    (lambda: af.from_numpyro(_sim_only_keyword, 1.0, obs="data", obs_site="nope"), "no sample site named 'nope'"),
    (lambda: af.from_numpyro(lambda y=None: (numpyro.sample("k", dist.Poisson(3.0)),
                                             numpyro.sample("y", dist.Normal(0, 1), obs=y))), "'k' is discrete"),
    (lambda: af.from_numpyro(lambda y=None: (numpyro.sample("a", dist.Normal(0, 1)),
                                             numpyro.sample("y", dist.Normal(0, 1)))), "never passes it obs="),
    (lambda: af.from_numpyro(lambda y=None: numpyro.sample(
        "y", dist.Normal(0, numpyro.sample("sigma", dist.Normal(0.0, 1.0))).expand([5]).to_event(1), obs=y)),
     "invalid scale"),
])
def test_from_numpyro_names_what_it_cannot_take(build, words):
    with pytest.raises(af.models.NumpyroModelError, match=words):
        build()


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("kw, field", [
    (dict(khat_threshold=5), "khat_threshold"), (dict(psis_min_ess=-10), "psis_min_ess"),
    (dict(psis_min_ess=1e9), "psis_min_ess"), (dict(num_ood_simulations=3), "num_ood_simulations"),
    (dict(psis_max_error=0.0), "psis_max_error"), (dict(psis_max_error=2.0), "psis_max_error"),
    (dict(num_draws=300), "psis_max_error"),  # the default 0.1-sd error gate needs 484 draws
    (dict(num_ood_simulations=0), "num_ood_simulations"), (dict(num_draws=0), "num_draws"),
    (dict(num_draws=-5), "num_draws"), (dict(num_draws=10.5), "num_draws"),
    (dict(psis_on_all="no"), "psis_on_all"), (dict(mcmc_chunk=0), "mcmc_chunk"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-4), "batch_size"),
    (dict(ood_alpha=1.5), "ood_alpha"), (dict(mcmc="nuts"), "mcmc"),
])
def test_workflow_config_names_the_bad_field(kw, field):
    with pytest.raises(ConfigError, match=f"WorkflowConfig.{field}"):
        af.WorkflowConfig(**kw)


@pytest.mark.parametrize("kw, field", [
    (dict(num_steps=0), "num_steps"), (dict(batch_size=0), "batch_size"),
    (dict(learning_rate=-1.0), "learning_rate"), (dict(clip_norm=0.0), "clip_norm"),
    (dict(steps_per_call=0), "steps_per_call"), (dict(patience=0), "patience"),
])
def test_train_config_names_the_bad_field(kw, field):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
        af.TrainConfig(**kw)


def test_bad_budgets_and_draw_counts_are_named(gaussian_model, gaussian_estimator, data):
    for n in (0, 100):
        with pytest.raises(ConfigError, match="num_simulations"):
            af.fit_posterior(jax.random.PRNGKey(0), gaussian_model, num_simulations=n, progress=False)
    for n in (0, -5, 2.5):
        with pytest.raises(ConfigError, match="num_draws"):
            gaussian_estimator.sample_and_log_prob(jax.random.PRNGKey(0), data, n)


def test_the_ladder_delivers_the_draws_asked_for():
    for cfg in (af.WorkflowConfig(num_draws=10_000), af.WorkflowConfig.high_stakes(num_draws=10_000)):
        lad = cfg.ladder()
        lad.check_num_draws(10_000)
        assert all(r.sampler.num_draws >= 10_000 for r in lad.rungs)


def test_estimator_of_another_model_is_refused(gaussian_estimator, data):
    other = af.models.gaussian_mean(dim=3, num_obs=10)
    with pytest.raises(ValueError, match="do not match"):
        _run(other, gaussian_estimator, np.zeros((2, 10, 3)))
    renamed = af.make_model(name="renamed", param_names=("theta_0", "theta_1"), obs_shape=(10, 2),
                            sample_prior=lambda k, n: jnp.zeros((n, 2)), simulate=lambda k, t: jnp.zeros((10, 2)),
                            log_prior=lambda t: 0.0, log_likelihood=lambda t, y: 0.0)
    with pytest.raises(ValueError, match="trained for model 'gaussian_mean'"):
        _run(renamed, gaussian_estimator, data)


def test_presets_is_an_attribute():
    assert af.presets.gev_preset().fit_kwargs()["num_simulations"] == 10_000


# ----------------------------------------------------------------------------- training checkpoints
def _tiny_fit(model, key, ckpt, steps=20):
    return af.fit_posterior(jax.random.PRNGKey(key), model, num_simulations=600,
                            summary=MLPSummarySpec(hidden=(8,), out_dim=2), flow=FlowSpec(num_layers=1, hidden=(8,)),
                            train_config=af.TrainConfig(num_steps=steps, steps_per_call=10), progress=False,
                            checkpoint_dir=str(ckpt))


def test_checkpoint_of_another_run_is_refused(tmp_path):
    model = af.models.gaussian_mean(dim=1, num_obs=5)
    _tiny_fit(model, 0, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="another run.*key"):
        _tiny_fit(model, 1, tmp_path / "ck")  # another seed
    changed = af.models.gaussian_mean(dim=1, num_obs=5, noise_sd=2.0)  # same name, other likelihood
    with pytest.raises(CheckpointError, match="another run.*model"):
        _tiny_fit(changed, 0, tmp_path / "ck")


@pytest.mark.parametrize("damage", ["truncate_state", "drop_history", "truncate_history"])
def test_damaged_training_checkpoint_names_the_file(tmp_path, damage):
    model = af.models.gaussian_mean(dim=1, num_obs=5)
    ck = tmp_path / "ck"
    _tiny_fit(model, 0, ck)
    state, hist = ck / "train_state.msgpack", ck / "train_history.json"
    if damage == "truncate_state":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "drop_history":
        hist.unlink()
    else:
        hist.write_text(hist.read_text()[:20])
    name = "train_state.msgpack" if damage == "truncate_state" else "train_history.json"
    with pytest.raises(CheckpointError, match=name):
        _tiny_fit(model, 0, ck)


# ----------------------------------------------------------------------------- results and progress
@pytest.fixture(scope="module")
def saved(gaussian_model, gaussian_estimator, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = af.WorkflowConfig(**{**CFG, "psis_on_all": True})
    res = af.run_workflow(jax.random.PRNGKey(2), gaussian_model, gaussian_estimator, data[:4], cfg,
                          out_dir=str(out), progress=False)
    return out, res, cfg


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_result_of_another_model_is_refused(saved, tmp_path):
    out, _, _ = saved
    with pytest.raises(ResultFileError, match="not of 'gev'"):
        af.WorkflowResult.load(out / "result", model=af.models.gev())


@pytest.mark.parametrize("damage, file", [
    ("truncate_nc", "draws.nc"), ("truncate_json", "result.json"), ("partial_json", "result.json"),
])
def test_damaged_result_files_are_named(saved, tmp_path, damage, file):
    d = _copy(saved[0] / "result", tmp_path / "result")
    f = d / file
    if damage == "truncate_nc":
        f.write_bytes(f.read_bytes()[:200])
    elif damage == "truncate_json":
        f.write_text(f.read_text()[:50])
    else:
        meta = json.loads(f.read_text())
        del meta["route"]
        f.write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match=file):
        af.WorkflowResult.load(d)


@pytest.mark.parametrize("damage, file", [
    ("manifest", "manifest.json"), ("npz", "amortized.npz"), ("json", "psis.json"),
])
def test_damaged_progress_files_are_named(saved, gaussian_model, gaussian_estimator, data, tmp_path,
                                           damage, file):
    out = _copy(saved[0], tmp_path / "run")
    f = out / "progress" / file
    f.write_bytes(f.read_bytes()[: max(len(f.read_bytes()) // 3, 1)])
    with pytest.raises(ProgressError, match=file):
        af.run_workflow(jax.random.PRNGKey(2), gaussian_model, gaussian_estimator, data[:4], saved[2],
                        out_dir=str(out), progress=False)


def test_resuming_after_the_likelihood_changed_is_refused(saved, gaussian_estimator, data, tmp_path):
    out = _copy(saved[0], tmp_path / "run")
    changed = af.models.gaussian_mean(dim=2, num_obs=10, noise_sd=1.5)  # same name and shapes
    with pytest.raises(ProgressError, match="different run"):
        af.run_workflow(jax.random.PRNGKey(2), changed, gaussian_estimator, data[:4], saved[2],
                        out_dir=str(out), progress=False)


def test_failed_datasets_are_not_counted_as_accepted(gaussian_model, gaussian_estimator, data):
    never = mcmc.Ladder((dataclasses_replace_gate(LADDER.rungs[0]),), bucket_size=4, num_prior_draws=256)
    res = _run(gaussian_model, gaussian_estimator, data[:4], khat_threshold=-np.inf, mcmc=never)
    assert (res.route == "failed").all()
    assert res.stage_counts.get("mcmc:chees", 0) == 0 and "(0 accepted)" in res.summary()
    assert all(r.startswith("not converged after ChEES:") for r in res.reason)


def dataclasses_replace_gate(rung):
    import dataclasses

    return dataclasses.replace(rung, gate=mcmc.ConvergenceGate(rhat_threshold=1.0))


# ----------------------------------------------------------------------------- the command line
def _cli(args, cwd, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("AMORTFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "amortflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def test_cli_refuses_empty_csv_and_existing_estimator(tmp_path, gaussian_estimator):
    gaussian_estimator.save(tmp_path / "est")
    (tmp_path / "empty.csv").write_text("")
    r = _cli(["run", "--model", "gaussian_mean", "--estimator", "est", "--data", "empty.csv", "--out", "o"], tmp_path)
    assert r.returncode == 1 and "empty.csv: the file is empty" in r.stderr, r.stderr
    r = _cli(["train", "--model", "gaussian_mean", "--out", "est", "--quick"], tmp_path)
    assert r.returncode == 1 and "already holds an estimator" in r.stderr and "--overwrite" in r.stderr
    assert (tmp_path / "est" / "estimator.json").is_file()


def test_cli_reads_a_header_even_when_it_looks_numeric(tmp_path):
    model = af.models.gaussian_mean(dim=2, num_obs=2)
    (tmp_path / "d.csv").write_text("e1,e2,e3,e4\n1,2,3,4\n5,6,7,8\n")
    np.testing.assert_array_equal(cli.load_datasets(str(tmp_path / "d.csv"), model).reshape(2, 4),
                                  [[1, 2, 3, 4], [5, 6, 7, 8]])
    (tmp_path / "h.csv").write_text("a,b,c,d\n")
    with pytest.raises(cli.CLIError, match="only a header"):
        cli.load_datasets(str(tmp_path / "h.csv"), model)


def _interruptible():
    """A child started from a shell's background job inherits SIGINT *ignored*, and Python then
    installs no KeyboardInterrupt handler (the CLI rightly leaves an ignored SIGINT alone): give
    the child the default disposition so that these tests do not depend on how pytest was run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_without_a_crash(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "amortflow", "demo", "--quick", "--out", "d", "--no-progress"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_interruptible)
    t0 = time.time()
    for line in p.stdout:  # wait until the command is under way (JAX imported, training started)
        if "[demo] training" in line or time.time() - t0 > 120:
            break
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert "interrupted" in err


def test_ctrl_c_while_the_main_thread_stays_busy_still_exits_130():
    """A main thread that does not get back to the command after Ctrl-C (here: it swallows the
    KeyboardInterrupt and keeps sleeping in C, as a long XLA call keeps running) is ended by the
    watcher with status 130 after the grace period."""
    code = ("import ctypes, amortflow.cli as c\nlibc = ctypes.CDLL(None)\nc._watch_for_interrupt(1.0)\n"
            "first = True\n"
            "while True:\n"
            "    try:\n"
            "        if first:\n            first = False\n            print('ready', flush=True)\n"
            "        libc.sleep(100)\n"
            "    except KeyboardInterrupt:\n        pass\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_interruptible)
    first = p.stdout.readline()
    assert first.strip() == "ready", (first, p.communicate(timeout=30))
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err, (p.returncode, err[-2000:])
    assert time.time() - t0 < 30


def test_nan_log_density_is_never_accepted_by_importance_sampling(gaussian_model, gaussian_estimator, data):
    """A likelihood that returns NaN on part of the parameter space (a bug in the model) must
    not end "amortized", "psis" or "refined": PSIS alone would treat those draws as weight 0."""
    base = gaussian_model

    def log_likelihood(theta, y):
        ll = base.log_likelihood(theta, y)
        return jnp.where(theta[0] > 0.3, jnp.nan, ll)

    broken = af.make_model(name=base.name, param_names=base.param_names, obs_shape=base.obs_shape,
                           obs_kind=base.obs_kind, sample_prior=base.sample_prior, simulate=base.simulate,
                           log_prior=base.log_prior, log_likelihood=log_likelihood)
    # datasets whose posterior straddles theta_0 = 0.3, so some draws land in the NaN region
    ys = data[:4] - data[:4, :, :1].mean(axis=1, keepdims=True) * np.array([1.0, 0.0]) + np.array([0.3, 0.0])
    res = _run(broken, gaussian_estimator, ys.astype(np.float32), psis_on_all=False)
    assert not np.isin(res.route, ["amortized", "psis", "refined"]).any(), res.route
    # MCMC may still settle the dataset (the sampler sees those draws as zero density), and
    # then the reason it was escalated for says why; otherwise it fails with MCMC's reason
    for route, why in zip(res.route, res.reason):
        assert why and (route == "failed" or "NaN" in why), (route, why)
