"""Many-chain MCMC across datasets on the conjugate Gaussian model (analytic posterior).

All tests share K = 8 datasets and a handful of configs so each sampler compiles once.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amortflow as af
from amortflow import mcmc
from amortflow.models import make_model

K = 8
CHEES = mcmc.CheesConfig.cpu_profile(num_superchains=4, chains_per_superchain=16, num_warmup=150,
                                     num_samples=50)
# far too little warmup to travel from far-off starting points (tiny step, 1 leapfrog step)
CHEES_BAD = dataclasses.replace(CHEES, num_warmup=2, num_samples=10, initial_step_size=1e-4,
                                max_leapfrog_steps=1)
MEADS = mcmc.MeadsConfig.cpu_profile(num_superchains=4, chains_per_superchain=16, num_warmup=300,
                                     num_samples=50, thin=4)
NUTS = mcmc.NutsConfig.cpu_profile(num_warmup=300, num_samples=300)
IMPOSSIBLE = 1e6  # any observation above this has zero likelihood


def boxed_gaussian():
    """gaussian_mean(dim=2) with -inf log density outside |theta| < 6 and for impossible data.

    The box holds all but ~1e-9 of the posterior mass, so the analytic posterior still applies.
    """
    base = af.models.gaussian_mean(dim=2, num_obs=10)

    def log_prior(theta):
        return jnp.where(jnp.all(jnp.abs(theta) < 6.0), base.log_prior_fn(theta), -jnp.inf)

    def log_likelihood(theta, y):
        return jnp.where(jnp.any(y > IMPOSSIBLE), -jnp.inf, base.log_likelihood_fn(theta, y))

    return make_model(name="boxed_gaussian", param_names=base.param_names,
                      obs_shape=base.obs_shape, obs_kind="set", sample_prior=base.prior_sampler,
                      simulate=base.simulator, log_prior=log_prior, log_likelihood=log_likelihood,
                      info=base.info)


@pytest.fixture(scope="module")
def setup():
    model = boxed_gaussian()
    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(0), K)
    mean, sd = af.models.gaussian_mean_posterior(model, ys)
    mean, sd = np.asarray(mean), np.asarray(sd)
    # stand-in for amortized draws: slightly too wide and shifted, as a flow's would be
    z = jax.random.normal(jax.random.PRNGKey(1), (K, 256, 2))
    cand = mean[:, None] + 0.3 * sd[:, None] + 1.5 * sd[:, None] * np.asarray(z)
    return model, np.asarray(ys), mean, sd, cand


def check_posterior(res, mean, sd, min_ess=200):
    """Means within 5 Monte-Carlo standard errors, sds within 10%, for every dataset."""
    assert res.draws.shape[0] == K and np.all(np.isfinite(res.draws))
    ess = res.ess_bulk
    assert ess.min() > min_ess, ess.min()
    z = np.abs(res.draws.mean(1) - mean) / (sd / np.sqrt(ess))
    assert z.max() < 5.0, z.max()
    np.testing.assert_allclose(res.draws.std(1), sd, rtol=0.1)
    assert res.converged.all(), res.nested_rhat
    assert np.all(res.nested_rhat < 1.01)
    assert np.all(res.num_grad_evals > 0)
    assert res.wall_time_s.shape[0] >= 1


@pytest.mark.parametrize("name", ["chees", "meads", "nuts"])
def test_sampler_matches_analytic_posterior(setup, name):
    model, ys, mean, sd, cand = setup
    cfg = {"chees": CHEES, "meads": MEADS, "nuts": NUTS}[name]
    run = {"chees": mcmc.run_chees, "meads": mcmc.run_meads, "nuts": mcmc.run_nuts}[name]
    init, info = mcmc.initialize_positions(jax.random.PRNGKey(2), model, ys, cand, None,
                                           cfg.num_superchains)
    assert np.all(np.asarray(info.ok)) and np.all(np.asarray(info.num_fallback) == 0)
    res = run(jax.random.PRNGKey(3), model, ys, init, cfg)
    assert res.sampler == name
    check_posterior(res, mean, sd)
    assert res.draws.shape[1] == cfg.num_chains * cfg.num_samples
    if name == "nuts":
        assert np.all(res.max_tree_depth >= 1) and np.all(res.mean_num_steps >= 1)
    if name == "meads":  # one gradient per GHMC transition: exact count
        c = cfg.num_chains
        assert np.all(res.num_grad_evals == c + cfg.num_warmup * (c - c // cfg.num_folds)
                      + cfg.num_samples * cfg.thin * c)


def test_same_key_same_result_and_compiled_once(setup):
    model, ys, mean, sd, cand = setup
    init, _ = mcmc.initialize_positions(jax.random.PRNGKey(2), model, ys, cand, None, 4)
    a = mcmc.run_chees(jax.random.PRNGKey(5), model, ys, init, CHEES)
    b = mcmc.run_chees(jax.random.PRNGKey(5), model, ys, init, CHEES)
    c = mcmc.run_chees(jax.random.PRNGKey(6), model, ys + 0.01, init, CHEES)  # new data, no recompile
    np.testing.assert_array_equal(a.draws, b.draws)
    np.testing.assert_array_equal(a.nested_rhat, b.nested_rhat)
    assert not np.array_equal(a.draws, c.draws)
    assert b.compile_time_s.sum() == 0.0 and c.compile_time_s.sum() == 0.0


def test_initialize_positions_does_not_depend_on_block(setup):
    """Blocks are a compilation device only: a dataset gets the same starting points whatever
    the block size (its key is split from the call key by dataset index)."""
    model, ys, _, _, cand = setup
    a, ia = mcmc.initialize_positions(jax.random.PRNGKey(5), model, ys, cand, None, 4, block_size=64)
    b, ib = mcmc.initialize_positions(jax.random.PRNGKey(5), model, ys, cand, None, 4, block_size=3)
    assert a.shape == (ys.shape[0], 4, model.dim)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ia.num_valid), np.asarray(ib.num_valid))


def test_initialize_positions_random_unique_weighted(setup):
    model, ys, mean, sd, cand = setup
    # duplicated rows (as after PSIS resampling) must not yield duplicated starting points
    dup = np.repeat(cand[:, :16], 8, axis=1)  # 16 distinct rows, each 8 times
    init, info = mcmc.initialize_positions(jax.random.PRNGKey(0), model, ys, dup, None, 12)
    init = np.asarray(init)
    for i in range(K):
        assert len(np.unique(init[i], axis=0)) == 12
    assert np.all(np.asarray(info.num_valid) == 16)
    # weights: all mass on 5 rows -> exactly those (plus nothing else with zero weight)
    logw = np.full((K, 256), -np.inf, np.float32)
    logw[:, 100:105] = 0.0
    init, info = mcmc.initialize_positions(jax.random.PRNGKey(0), model, ys, cand, logw, 5)
    np.testing.assert_array_equal(np.sort(np.asarray(init)[:, :, 0], 1),
                                  np.sort(cand[:, 100:105, 0], 1))
    # random, not "first rows": different keys pick different subsets
    a, _ = mcmc.initialize_positions(jax.random.PRNGKey(1), model, ys, cand, None, 4)
    b, _ = mcmc.initialize_positions(jax.random.PRNGKey(2), model, ys, cand, None, 4)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    picked = np.asarray(a)[0]
    rows = [np.nonzero(np.all(cand[0] == p, axis=1))[0][0] for p in picked]
    assert max(rows) > 8  # not the first rows


def test_fallback_initialisation_rescues_all_minus_inf(setup):
    model, ys, mean, sd, cand = setup
    bad = cand.copy()
    bad[0] = 10.0  # outside the support box: log density -inf for every candidate
    init, info = mcmc.initialize_positions(jax.random.PRNGKey(0), model, ys, bad, None, 4)
    nf = np.asarray(info.num_fallback)
    assert nf[0] == 4 and np.all(nf[1:] == 0)
    assert np.all(np.asarray(info.ok)) and np.all(np.isfinite(np.asarray(info.log_density)))
    assert len(np.unique(np.asarray(init)[0], axis=0)) == 4
    res = mcmc.run_chees(jax.random.PRNGKey(3), model, ys, init, CHEES)
    check_posterior(res, mean, sd)
    # impossible data: no finite point anywhere -> flagged, not silent
    ys2 = ys.copy()
    ys2[1, 0, 0] = 10 * IMPOSSIBLE
    _, info2 = mcmc.initialize_positions(jax.random.PRNGKey(0), model, ys2, bad, None, 4)
    assert not bool(info2.ok[1]) and bool(info2.ok[2])


def test_bad_initialisation_detected_and_escalated(setup):
    model, ys, mean, sd, cand = setup
    # superchains started far apart: +-5 in theta units (posterior sd ~0.3)
    far = np.where(np.arange(256)[None, :, None] % 2 == 0, 5.0, -5.0) + 0.01 * cand
    far = far.astype(np.float32)
    ys2 = ys.copy()
    ys2[1, 0, 0] = 10 * IMPOSSIBLE  # dataset 1 cannot be started anywhere
    far[0] = 10.0  # dataset 0: all candidates at -inf -> prior fallback
    bad = mcmc.run_chees(jax.random.PRNGKey(0), model, ys,
                         mcmc.initialize_positions(jax.random.PRNGKey(0), model, ys, far, None,
                                                   4)[0], CHEES_BAD)
    assert np.all(bad.nested_rhat.max(1)[1:] > 1.05) and not bad.converged[1:].any()
    policy = mcmc.EscalationPolicy(
        stages=(mcmc.Stage("chees_short", CHEES_BAD),
                mcmc.Stage("chees_long", CHEES, init_from="previous"),
                mcmc.Stage("nuts", NUTS, init_from="previous")),
        num_output_draws=400, bucket_size=8)
    r1 = mcmc.run_escalation(jax.random.PRNGKey(7), model, ys2, far, None, policy, progress=False)
    ok = np.arange(K) != 1
    assert r1.draws.shape == (K, 400, 2)
    assert list(r1.route[ok]) == ["mcmc"] * (K - 1), (r1.route, r1.reason)
    assert np.all(r1.stage_name[2:] == "chees_long") and np.all(r1.num_stages_run[2:] == 2)
    assert r1.num_init_fallback[0] == 4
    assert r1.route[1] == "failed" and "no finite-density starting point" in r1.reason[1]
    assert r1.stage_index[1] == -1 and np.all(np.isnan(r1.draws[1]))
    assert np.all(r1.reason[ok] == "")
    # 400 draws subsampled from the chains: error variance sd^2 (1/400 + 1/ESS)
    se = sd[ok] * np.sqrt(1 / 400 + 1 / r1.ess_bulk[ok])
    z = np.abs(r1.draws[ok].mean(1) - mean[ok]) / se
    assert z.max() < 5.0
    # cost of both stages is accounted
    first = r1.stages[0].result
    assert np.all(r1.num_grad_evals[2:] > first.num_grad_evals[np.isin(r1.stages[0].indices[
        np.asarray(r1.stages[0].init_info.ok)], np.arange(2, K))])
    s = r1.summary()
    assert s["routes"] == {"failed": 1, "mcmc": K - 1}


def test_failure_reported_with_diagnostics(setup):
    model, ys, mean, sd, cand = setup
    far = (np.where(np.arange(256)[None, :, None] % 2 == 0, 5.0, -5.0) + 0.01 * cand).astype(np.float32)
    policy = mcmc.EscalationPolicy(stages=(mcmc.Stage("chees_short", CHEES_BAD),),
                                   num_output_draws=400, bucket_size=8)
    r = mcmc.run_escalation(jax.random.PRNGKey(1), model, ys, far, None, policy, progress=False)
    assert np.all(r.route == "failed") and not r.converged.any()
    assert all("nested R-hat" in x and "divergences" in x and "step size" in x for x in r.reason)
    assert np.all(r.stage_name == "chees_short") and np.all(np.isfinite(r.nested_rhat))


def test_meads_chain_order_restored():
    """Chains that start in separated modes stay there; after MEADS' fold reshuffles the
    restored order must map every chain back to its own start."""
    import blackjax
    from amortflow.mcmc.samplers import _meads_chain_origin

    def ld(x):
        return jnp.logaddexp(-0.5 * jnp.sum(((x - 5) / 0.1) ** 2),
                             -0.5 * jnp.sum(((x + 5) / 0.1) ** 2))

    c, key = 32, jax.random.PRNGKey(3)
    start = (jnp.where(jax.random.bernoulli(key, 0.5, (c, 1)), 5.0, -5.0)
             + 0.1 * jax.random.normal(key, (c, 2)))
    (st, _), _ = blackjax.meads_adaptation(ld, c, num_folds=4).run(key, start, 40)
    origin = _meads_chain_origin(key, c, 4, 40)
    assert np.all(np.sign(st.position[:, 0]) == np.sign(start[origin, 0]))


def test_map_over_datasets_pads_and_orders():
    x = jnp.arange(10.0)[:, None] * jnp.ones((10, 3))
    out = mcmc.map_over_datasets(lambda a: (a * 2).sum(), x, batch_size=3, size=12)
    np.testing.assert_allclose(out, np.arange(10.0) * 6)
    # CPU: one bucket shape per stage (padding rows are skipped, so they cost nothing)
    assert mcmc.bucket_size_for(3, 64, 2) == 64 and mcmc.bucket_size_for(100, 64, 2) == 64
    assert mcmc.bucket_size_for(5, 6, 4) == 8


def test_padding_rows_are_skipped():
    calls = []

    def f(x):
        jax.debug.callback(lambda: calls.append(1))
        return x.sum()

    x = jnp.ones((8, 3))
    for bs in (1, 2):
        calls.clear()
        runner = mcmc.build_dataset_map(f, batch_size=bs, devices=jax.devices()[:1])
        active = jnp.asarray([True, False, False, False, False, False, False, True])
        out = runner(active, x)
        jax.block_until_ready(out)
        np.testing.assert_allclose(np.asarray(out), [3, 0, 0, 0, 0, 0, 0, 3])
        # bs=1: the 2 active rows run; bs=2: the 2 partly active batches run (a vmapped callback
        # fires once per batch), the 2 all-padding batches are skipped
        assert len(calls) == 2


def test_cpu_default_policy_ladder():
    """CPU ladder: MEADS -> NUTS from the candidates -> the same NUTS from its own draws. The
    retry must use an identical config: then it reuses NUTS's compiled function and costs
    nothing where NUTS converged."""
    from amortflow.mcmc.escalation import default_policy

    pol = default_policy(2000)
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU ladder")
    names = [st.name for st in pol.stages]
    assert names == ["meads", "nuts", "nuts_retry"]
    assert pol.stages[2].config == pol.stages[1].config and pol.stages[2].init_from == "previous"
    assert pol.stages[1].init_from == "candidates"
    assert all(st.config.num_chains * st.config.num_samples >= 2000 for st in pol.stages)
