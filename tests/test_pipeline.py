"""The seams of the workflow: the observation pytree (beta through every stage), Stage values
(insert / replace a stage), the estimator protocol (every registered kind, and an estimator
without a density), on the conjugate Gaussian model whose (tempered) posterior is analytic."""
import dataclasses

import jax
import numpy as np
import pytest

import amortflow as af
from amortflow import mcmc
from amortflow.estimators import Estimator
from amortflow.estimators.checkpoint import registered_kinds
from amortflow.workflow import Stage, StageResult, amortized_stage, default_stages, mcmc_stage
from amortflow.workflow.pipeline import OPEN

S = 400
MAX_ERR = 0.15  # the Monte Carlo error gate 400 draws can meet (the default 0.1 needs 484)
LADDER = mcmc.Ladder((mcmc.Rung("chees", mcmc.chees.cpu_profile(
    num_superchains=4, chains_per_superchain=8, num_warmup=150, num_samples=64)),),
    bucket_size=4, num_prior_draws=256)


@pytest.fixture(scope="module")
def data(gaussian_model):
    _, ys = gaussian_model.sample_prior_predictive(jax.random.PRNGKey(11), 6)
    return np.asarray(ys)


def _check_tempered(model, ys, draws, beta, rows, tol=0.35):
    mean, sd = af.models.gaussian_mean_posterior(model, ys[rows], beta=beta[rows, None])
    d = draws[rows]
    z = (d.mean(1) - np.asarray(mean)) / np.asarray(sd)
    ratio = d.std(1) / np.asarray(sd)
    assert np.abs(z).max() < tol, z
    assert np.abs(ratio - 1).max() < 0.2, ratio


@pytest.mark.parametrize("route, cfg", [
    ("psis", dict(psis_on_all=True, khat_threshold=0.7, psis_max_error=None)),  # the mechanics, not the gate
    ("mcmc", dict(psis_on_all=True, khat_threshold=-np.inf)),
])
def test_tempered_workflow_matches_power_posterior(gaussian_model, gaussian_estimator, data, route, cfg):
    """beta in the observation: PSIS reweights to the tempered target and MCMC samples it (the
    estimator is q(theta | y) at beta = 1, wider than the beta = 0.5 posterior's tails need)."""
    beta = np.array([0.5, 0.5, 0.5, 1.0, 0.7, 0.5])
    config = af.WorkflowConfig(**{"num_draws": S, "psis_max_error": MAX_ERR, "num_ood_simulations": 1000, "mcmc": LADDER, **cfg})
    res = af.run_workflow(jax.random.PRNGKey(3), gaussian_model, gaussian_estimator, data, config,
                          beta=beta, progress=False)
    rows = np.nonzero(res.route == route)[0]
    assert rows.size >= 4, (res.route, res.reason)
    _check_tempered(gaussian_model, data, res.draws, beta, rows)
    np.testing.assert_allclose(res.table().beta, beta, rtol=1e-6)  # beta is float32 in the pytree
    # the tempered answer is not the beta = 1 answer: sds are wider by about 1/sqrt(beta)
    half = rows[beta[rows] == 0.5]
    _, sd1 = af.models.gaussian_mean_posterior(gaussian_model, data[half])
    assert (res.draws[half].std(1) / np.asarray(sd1)).mean() > 1.2  # sqrt(11 / 6) = 1.35


def test_observation_carries_beta_and_bad_beta_fails_alone(gaussian_model, gaussian_estimator, data):
    obs = af.observe(data, beta=np.array([1.0, 0.0, 1.0, np.nan, 1.0, 2.0]))
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, num_ood_simulations=1000, psis_on_all=True, mcmc=LADDER)
    res = af.run_workflow(jax.random.PRNGKey(3), gaussian_model, gaussian_estimator, obs, config, progress=False)
    assert list(res.route[[1, 3]]) == ["failed", "failed"]
    assert all("beta" in r for r in res.reason[[1, 3]])
    assert (res.route[[0, 2, 4, 5]] != "failed").all()


def test_inserted_stage_decides_its_datasets_and_leaves_the_rest(gaussian_model, gaussian_estimator, data):
    """A user stage between stage 1 and PSIS: it claims datasets 0 and 1 with a route of its own
    and exact draws; the others continue exactly as without it."""
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, num_ood_simulations=1000, psis_on_all=True,
                               khat_threshold=0.7, mcmc=LADDER)

    def exact(key, inp):
        mean, sd = af.models.gaussian_mean_posterior(gaussian_model, inp.obs.y)
        z = np.asarray(jax.random.normal(key, (inp.index.size, S, 2)))
        draws = np.asarray(mean)[:, None] + np.asarray(sd)[:, None] * z
        route = np.where(inp.index < 2, "analytic", OPEN).astype(object)
        return StageResult(route, np.full(inp.index.size, "", object), draws=draws.astype(np.float32),
                           diagnostics={"analytic": inp.index < 2})

    base = default_stages(gaussian_model, gaussian_estimator, config, progress=False)
    stages = (base[0], Stage("analytic", exact, salt=99, columns={"analytic": np.bool_}), *base[1:])
    key = jax.random.PRNGKey(3)
    plain = af.run_workflow(key, gaussian_model, gaussian_estimator, data, config, progress=False)
    res = af.run_workflow(key, gaussian_model, gaussian_estimator, data, config, stages=stages,
                          progress=False)
    assert list(res.route[:2]) == ["analytic", "analytic"]
    assert res.route_counts()["analytic"] == 2 and "analytic" in res.summary()
    assert res.table().analytic.tolist() == [True, True, False, False, False, False]
    # PSIS resampling keys are per stage call: compare the datasets' diagnostics, not their draws
    np.testing.assert_array_equal(res.diagnostics["khat"], plain.diagnostics["khat"])
    assert list(res.route[2:]) == list(plain.route[2:])
    _check_tempered(gaussian_model, data, res.draws, np.ones(6), np.arange(2))


@dataclasses.dataclass(frozen=True)
class _SamplingOnly:
    """An estimator with draws but no density (as a point or likelihood-based estimator would
    be): the workflow skips PSIS and sends every dataset to MCMC."""

    inner: object
    kind = "sampling_only"
    has_log_prob = False

    def __getattr__(self, name):
        if name in ("sample_and_log_prob", "log_prob"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def sample_and_log_prob(self, *a, **k):
        raise NotImplementedError("no density")

    def log_prob(self, *a, **k):
        raise NotImplementedError("no density")


def test_estimator_without_density_goes_to_mcmc(gaussian_model, gaussian_estimator, data):
    est = _SamplingOnly(gaussian_estimator)
    assert isinstance(est, Estimator) and not est.has_log_prob
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, num_ood_simulations=1000, psis_on_all=True, mcmc=LADDER)
    stages = default_stages(gaussian_model, est, config, progress=False)
    assert [s.name for s in stages] == ["amortized", "mcmc"]
    res = af.run_workflow(jax.random.PRNGKey(3), gaussian_model, est, data, config, progress=False)
    assert (res.route == "mcmc").sum() >= 5 and np.isnan(res.diagnostics["khat"]).all()
    _check_tempered(gaussian_model, data, res.draws, np.ones(6), np.nonzero(res.route == "mcmc")[0])


@pytest.mark.parametrize("kind", registered_kinds())
def test_every_estimator_kind_runs_through_the_workflow(kind, tmp_path, gaussian_model, gaussian_estimator, data):
    """Contract: an estimator of each registered kind, saved and loaded, drives run_workflow
    through the stages that fit it (draws -> MCMC; point estimates as columns -> MCMC; a
    surrogate likelihood's own MCMC stage)."""
    from amortflow.workflow import point_estimate_stage

    short = af.TrainConfig(num_steps=300, batch_size=128)
    key = jax.random.PRNGKey(11)
    builders = {
        "npe": lambda: gaussian_estimator,
        "nbe": lambda: af.fit_point_estimator(key, gaussian_model, train_config=short, progress=False),
        "nle": lambda: af.fit_likelihood(key, gaussian_model, train_config=short, progress=False),
        "nre": lambda: af.fit_ratio(key, gaussian_model, train_config=short, progress=False),
    }
    assert kind in builders, f"add a small {kind!r} estimator to this contract test"
    builders[kind]().save(tmp_path / "est")
    est = af.load_estimator(tmp_path / "est")
    assert est.kind == kind and isinstance(est, Estimator)
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, num_ood_simulations=1000, psis_on_all=True, mcmc=LADDER)
    mcmc = mcmc_stage(gaussian_model, config.ladder(), num_output_draws=S, progress=False)
    if kind == "npe":
        stages = (amortized_stage(gaussian_model, est, num_draws=S, num_ood_simulations=1000,
                                  accept_in_distribution=False), mcmc)
    elif kind == "nbe":
        stages = (point_estimate_stage(est, model=gaussian_model), mcmc)
    else:
        stages = default_stages(gaussian_model, est, config, progress=False)
        assert [s.name for s in stages] == ["surrogate_ood", "mcmc", "mcmc_exact"]
    res = af.run_workflow(jax.random.PRNGKey(4), gaussian_model, est, data[:4], config, stages=stages,
                          progress=False)
    assert set(res.route) <= {"mcmc", "failed"} and (res.route == "mcmc").sum() >= 3


def test_refinement_stage_recovers_what_psis_refused(gaussian_model, gaussian_estimator, data):
    """Adaptive importance sampling between PSIS and MCMC: with a PSIS gate no weighted draw set
    passes (k-hat <= -inf), the Student-t refinement reaches the analytic posterior (also at
    beta = 0.5), records its own route, diagnostics and cost, and MCMC gets almost nothing."""
    from amortflow.workflow import psis_stage, refine_stage

    beta = np.array([1.0, 0.5, 1.0, 0.5, 1.0, 0.5])
    config = af.WorkflowConfig(num_draws=S, psis_max_error=MAX_ERR, num_ood_simulations=1000, psis_on_all=True, mcmc=LADDER)
    stages = (amortized_stage(gaussian_model, gaussian_estimator, num_draws=S, num_ood_simulations=1000,
                              accept_in_distribution=False),
              psis_stage(gaussian_model, num_draws=S, khat_threshold=-np.inf),
              refine_stage(gaussian_model, num_draws=S, rounds=3, min_ess=0.5 * S),
              mcmc_stage(gaussian_model, config.ladder(), num_output_draws=S, progress=False))
    res = af.run_workflow(jax.random.PRNGKey(5), gaussian_model, gaussian_estimator, data, config,
                          stages=stages, beta=beta, progress=False)
    rows = np.nonzero(res.route == "refined")[0]
    assert rows.size >= 5, (res.route, res.reason)
    _check_tempered(gaussian_model, data, res.draws, beta, rows, tol=0.25)
    t = res.table()
    assert (t.refine_ess[rows] >= 0.5 * S).all() and (t.refine_khat[rows] <= 0.7).all()
    assert (t.num_log_density_evals[rows] == 4 * S).all()  # stage 1 + three refinement rounds
    assert "PSIS k-hat" in res.reason[rows[0]]  # why it needed refinement
    assert "refine" in res.stage_time_s and res.route_counts()["refined"] == rows.size


def test_restrict_runs_a_stage_on_the_selected_rows_only():
    from amortflow.models.observation import Observation
    from amortflow.workflow.pipeline import StageInput, restrict

    seen = {}

    def run(key, inp):
        seen["index"] = inp.index.copy()
        seen["carry"] = inp.carry["flag"].copy()
        n = inp.index.size
        draws = np.tile(inp.index[:, None, None].astype(np.float32), (1, 3, 2))
        return StageResult(np.full(n, "done", object), np.full(n, "", object), draws=draws,
                           diagnostics={"score": inp.index * 1.5, "label": np.full(n, "x", object)},
                           cost={"evals": np.full(n, 7, np.int64)}, carry={"next": inp.index + 100},
                           weighted=(draws, np.zeros((n, 3), np.float32)))

    idx = np.array([3, 5, 8, 9, 12])
    flag = np.array([True, False, True, False, False])
    inp = StageInput(idx, Observation(np.arange(5.0)[:, None], np.ones(5), None), {"flag": flag})
    stage = restrict(Stage("inner", run, salt=9), lambda i: ~i.carry["flag"], name="outer")
    assert stage.name == "outer" and stage.salt == 9
    res = stage.run(jax.random.PRNGKey(0), inp)
    np.testing.assert_array_equal(seen["index"], [5, 9, 12])  # the inner stage saw its rows only
    assert not seen["carry"].any()
    np.testing.assert_array_equal(res.route, ["", "done", "", "done", "done"])
    assert (res.reason == "").all()
    np.testing.assert_array_equal(res.diagnostics["score"], [np.nan, 7.5, np.nan, 13.5, 18.0])
    np.testing.assert_array_equal(res.diagnostics["label"], ["", "x", "", "x", "x"])
    np.testing.assert_array_equal(res.cost["evals"], [0, 7, 0, 7, 7])
    np.testing.assert_array_equal(res.carry["next"], [0, 105, 0, 109, 112])
    assert np.isnan(res.draws[[0, 2]]).all() and (res.draws[[1, 3, 4], 0, 0] == [5, 9, 12]).all()
    assert np.isneginf(res.weighted[1][[0, 2]]).all() and (res.weighted[1][[1, 3, 4]] == 0).all()
    none = restrict(Stage("inner", run), lambda i: np.zeros(5, bool)).run(jax.random.PRNGKey(0), inp)
    assert (none.route == OPEN).all() and none.draws is None
    with pytest.raises(ValueError, match="select returned shape"):
        restrict(Stage("inner", run), lambda i: np.ones(3, bool)).run(jax.random.PRNGKey(0), inp)
