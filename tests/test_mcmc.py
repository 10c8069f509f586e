"""Many-chain MCMC across datasets on the conjugate Gaussian model (analytic posterior).

All tests share K = 8 datasets and a handful of samplers so each sampler compiles once.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amortflow as af
from amortflow import mcmc
from amortflow._compile import CompileCache
from amortflow.mcmc import ConvergenceGate, Ladder, Layout, Rung
from amortflow.models import Observation, make_model

K = 8
CHEES = mcmc.chees.cpu_profile(num_superchains=4, chains_per_superchain=16, num_warmup=150,
                               num_samples=50)
# far too little warmup to travel from far-off starting points (tiny step, 1 leapfrog step)
CHEES_BAD = CHEES.with_config(num_warmup=2, num_samples=10, initial_step_size=1e-4,
                              max_leapfrog_steps=1)
MEADS = mcmc.meads.cpu_profile(num_superchains=4, chains_per_superchain=16, num_warmup=300,
                               num_samples=50, thin=4)
NUTS = mcmc.nuts.cpu_profile(num_warmup=300, num_samples=300)
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


LADDER = Ladder((Rung("chees_short", CHEES_BAD),
                 Rung("chees_long", CHEES, init_from="previous"),
                 Rung("nuts", NUTS, init_from="previous")), bucket_size=8)


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
    sampler = {"chees": CHEES, "meads": MEADS, "nuts": NUTS}[name]
    cfg = sampler.config
    init, info = mcmc.initialize_positions(jax.random.PRNGKey(2), model, ys, cand, None,
                                           sampler.num_superchains)
    assert np.all(np.asarray(info.ok)) and np.all(np.asarray(info.num_fallback) == 0)
    res = mcmc.run_sampler(jax.random.PRNGKey(3), model, ys, init, sampler)
    assert res.sampler == name and sampler.route == ("nuts" if name == "nuts" else "mcmc")
    check_posterior(res, mean, sd)
    assert res.draws.shape[1] == cfg.num_chains * cfg.num_samples == sampler.num_draws
    assert res.stats.draws is res.draws  # one record, fields readable on the result
    if name == "nuts":
        assert np.all(res.max_tree_depth >= 1) and np.all(res.mean_num_steps >= 1)
    if name == "meads":  # one gradient per GHMC transition: exact count
        c = cfg.num_chains
        assert np.all(res.num_grad_evals == c + cfg.num_warmup * (c - c // cfg.num_folds)
                      + cfg.num_samples * cfg.thin * c)


def test_same_key_same_result_and_compiled_once(setup):
    model, ys, mean, sd, cand = setup
    init, _ = mcmc.initialize_positions(jax.random.PRNGKey(2), model, ys, cand, None, 4)
    a = mcmc.run_sampler(jax.random.PRNGKey(5), model, ys, init, CHEES)
    b = mcmc.run_sampler(jax.random.PRNGKey(5), model, ys, init, CHEES)
    # new data (and an Observation instead of an array): no recompile
    c = mcmc.run_sampler(jax.random.PRNGKey(6), model, Observation(ys + 0.01, np.ones(K, np.float32)),
                         init, CHEES)
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
    res = mcmc.run_sampler(jax.random.PRNGKey(3), model, ys, init, CHEES)
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
    bad = mcmc.run_sampler(jax.random.PRNGKey(0), model, ys,
                           mcmc.initialize_positions(jax.random.PRNGKey(0), model, ys, far, None,
                                                     4)[0], CHEES_BAD)
    assert np.all(bad.nested_rhat.max(1)[1:] > 1.05) and not bad.converged[1:].any()
    r1 = mcmc.run_ladder(jax.random.PRNGKey(7), model, ys2, far, None, LADDER,
                         num_output_draws=400, progress=False)
    ok = np.arange(K) != 1
    assert r1.draws.shape == (K, 400, 2)
    assert list(r1.route[ok]) == ["mcmc"] * (K - 1), (r1.route, r1.reason)
    assert np.all(r1.rung[2:] == "chees_long") and np.all(r1.num_rungs_run[2:] == 2)
    assert r1.num_init_fallback[0] == 4
    assert r1.route[1] == "failed" and "no finite-density starting point" in r1.reason[1]
    assert r1.rung_index[1] == -1 and r1.rung[1] == "" and np.all(np.isnan(r1.draws[1]))
    assert np.all(r1.reason[ok] == "") and np.all(r1.converged == ok)
    # 400 draws subsampled from the chains: error variance sd^2 (1/400 + 1/ESS)
    se = sd[ok] * np.sqrt(1 / 400 + 1 / r1.ess_bulk[ok])
    z = np.abs(r1.draws[ok].mean(1) - mean[ok]) / se
    assert z.max() < 5.0
    # cost of both rungs is accounted
    first = r1.reports[0].result
    assert np.all(r1.num_grad_evals[2:] > first.num_grad_evals[np.isin(r1.reports[0].indices[
        np.asarray(r1.reports[0].init_info.ok)], np.arange(2, K))])
    s = r1.summary()
    assert s["routes"] == {"failed": 1, "mcmc": K - 1}
    # accepted counts per rung exclude the failed dataset (it was never accepted anywhere)
    assert sum(r1.rung_accepted.values()) == K - 1
    assert r1.rung_accepted["chees_long"] == int(np.sum(r1.rung == "chees_long"))
    assert set(r1.rung_time_s) == {r.name for r in r1.reports}


def test_failure_reported_with_diagnostics(setup):
    model, ys, mean, sd, cand = setup
    far = (np.where(np.arange(256)[None, :, None] % 2 == 0, 5.0, -5.0) + 0.01 * cand).astype(np.float32)
    # the legacy wrapper (WorkflowConfig.mcmc, the CLI): EscalationPolicy + run_escalation
    policy = mcmc.EscalationPolicy(stages=(mcmc.Stage("chees_short", CHEES_BAD.config),),
                                   num_output_draws=400, bucket_size=8)
    r = mcmc.run_escalation(jax.random.PRNGKey(1), model, ys, far, None, policy, progress=False)
    assert np.all(r.route == "failed") and not r.converged.any()
    assert all("nested R-hat" in x and "divergences" in x and "step size" in x for x in r.reason)
    assert all(x.startswith("not converged after ChEES short: max nested R-hat ") for x in r.reason), r.reason[0]
    assert np.all(r.rung == "chees_short") and np.all(np.isfinite(r.nested_rhat))
    assert r.rung_accepted == {"chees_short": 0}


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


def test_cpu_default_ladder():
    """CPU ladder: MEADS -> NUTS from the candidates -> the same NUTS from its own draws. The
    retry must use an identical sampler and layout: then it reuses NUTS's compiled function and
    costs nothing where NUTS converged."""
    from amortflow.mcmc.escalation import default_policy

    lad = mcmc.default_ladder()
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU ladder")
    names = [r.name for r in lad.rungs]
    assert names == ["meads", "nuts", "nuts_retry"]
    assert [r.display_name for r in lad.rungs] == ["MEADS", "NUTS", "NUTS retry"]
    assert lad.rungs[2].sampler == lad.rungs[1].sampler and lad.rungs[2].init_from == "previous"
    assert lad.rungs[2].layout == lad.rungs[1].layout and lad.rungs[1].init_from == "candidates"
    assert all(r.sampler.num_draws >= 2000 for r in lad.rungs)
    lad.check_num_draws(2000)
    # the legacy policy wraps the same ladder and keeps num_output_draws
    pol = default_policy(2000)
    assert pol.ladder == lad and pol.num_output_draws == 2000 and mcmc.as_ladder(pol) == lad
    assert dataclasses.replace(pol, num_output_draws=300).ladder == lad
    with pytest.raises(ValueError, match="num_output_draws"):
        lad.check_num_draws(10**4)
    # asking for more draws than a rung yields lengthens its sampling (same chains), never
    # shortens it: the ladder delivers what was asked for
    big = lad.yielding(10**4)
    assert all(r.sampler.num_draws >= 10**4 for r in big.rungs)
    assert [r.sampler.num_chains for r in big.rungs] == [r.sampler.num_chains for r in lad.rungs]
    assert lad.yielding(10) == lad and default_policy(10**4).ladder == big
    big.check_num_draws(10**4)
    with pytest.raises(ValueError, match="unique"):
        Ladder((Rung("a", NUTS), Rung("a", NUTS)))
    with pytest.raises(TypeError):
        Rung("a", NUTS.config)  # a Rung takes a Sampler value; mcmc.Stage converts configs
    assert mcmc.Stage("a", NUTS.config) == Rung("a", NUTS)


def test_tempered_target_gives_power_posterior():
    """beta reaches the initialisation and the sampler: with Observation(beta=0.5) the posterior
    of the conjugate model is Gaussian with precision 1/prior_sd^2 + beta * n / noise_sd^2."""
    model = af.models.gaussian_mean(dim=2, num_obs=10)
    info = model.info
    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(10), K)
    ys = np.asarray(ys)
    beta = 0.5
    prec = 1.0 / info["prior_sd"] ** 2 + beta * 10 / info["noise_sd"] ** 2
    mean = (info["prior_mean"] / info["prior_sd"] ** 2 + beta * ys.sum(1) / info["noise_sd"] ** 2) / prec
    sd = np.broadcast_to(1.0 / np.sqrt(prec), mean.shape)
    np.testing.assert_allclose(mean, af.models.gaussian_mean_posterior(model, ys, beta)[0], rtol=1e-5)
    sd_beta1 = np.asarray(af.models.gaussian_mean_posterior(model, ys)[1])
    assert np.all(sd > 1.3 * sd_beta1)  # the check below tells the two posteriors apart
    obs = Observation(ys, np.full(K, beta, np.float32))
    z = jax.random.normal(jax.random.PRNGKey(11), (K, 256, 2))
    cand = mean[:, None] + 0.3 * sd[:, None] + 1.5 * sd[:, None] * np.asarray(z)
    init, ii = mcmc.initialize_positions(jax.random.PRNGKey(2), model, obs, cand, None, 4)
    assert np.all(np.asarray(ii.ok))
    # the initialisation evaluates the tempered density
    lp = jax.vmap(lambda t, y: model.log_density(t, y, beta))(np.asarray(init)[:, 0], ys)
    np.testing.assert_allclose(np.asarray(ii.log_density)[:, 0], lp, rtol=1e-5)
    res = mcmc.run_sampler(jax.random.PRNGKey(3), model, obs, init, CHEES)
    check_posterior(res, mean, sd)


def test_dataset_ids_make_results_independent_of_the_call(setup):
    """With stable dataset ids a dataset's starting points and draws depend on its id only, not
    on its position or the other datasets in the call."""
    model, ys, mean, sd, cand = setup
    ids = np.arange(100, 100 + K)
    lad = Ladder((Rung("chees_long", CHEES),), bucket_size=8)
    full = mcmc.run_ladder(jax.random.PRNGKey(4), model, ys, cand, None, lad,
                           num_output_draws=400, dataset_ids=ids, progress=False)
    sub = np.array([7, 2, 5])
    part = mcmc.run_ladder(jax.random.PRNGKey(4), model, ys[sub], cand[sub], None, lad,
                           num_output_draws=400, dataset_ids=ids[sub], progress=False)
    np.testing.assert_array_equal(part.draws, full.draws[sub])
    np.testing.assert_array_equal(part.nested_rhat, full.nested_rhat[sub])
    assert np.all(full.route == "mcmc")
    # by position (dataset_ids=None) the same subset gets other keys
    pos = mcmc.run_ladder(jax.random.PRNGKey(4), model, ys[sub], cand[sub], None, lad,
                          num_output_draws=400, progress=False)
    assert not np.array_equal(pos.draws, full.draws[sub])
    with pytest.raises(ValueError, match="distinct"):
        mcmc.run_ladder(jax.random.PRNGKey(4), model, ys[:2], cand[:2], None, lad,
                        num_output_draws=400, dataset_ids=[3, 3], progress=False)


def test_compile_cache_is_bounded_and_reused(setup):
    model, ys, mean, sd, cand = setup
    cache = CompileCache(maxsize=2)
    init, _ = mcmc.initialize_positions(jax.random.PRNGKey(2), model, ys[:2], cand[:2], None, 4,
                                        cache=cache)
    assert len(cache) == 1 and cache.misses == 1
    a = mcmc.run_sampler(jax.random.PRNGKey(5), model, ys[:2], init, CHEES_BAD, cache=cache)
    # runner + compiled executable; the initialiser was evicted (least recently used)
    assert len(cache) == 2 and cache.misses == 3 and a.compile_time_s.sum() > 0
    b = mcmc.run_sampler(jax.random.PRNGKey(5), model, ys[:2], init, CHEES_BAD, cache=cache)
    assert cache.misses == 3 and b.compile_time_s.sum() == 0.0 and len(cache) == 2
    np.testing.assert_array_equal(a.draws, b.draws)


def test_convergence_gate_on_hand_made_result():
    st = mcmc.empty_stats(5, 10, 2)
    st.draws[:] = 0.0
    st.all_finite[:] = True
    st.nested_rhat[:] = 1.001
    st.ess_bulk[:] = 500.0
    st.nested_rhat[1, 1] = 1.02  # R-hat too high
    st.all_finite[2] = False  # a non-finite draw somewhere
    st.ess_bulk[3, 0] = 50.0  # too few effective draws (only with min_ess)
    st.nested_rhat[4, 0] = np.nan  # undefined
    np.testing.assert_array_equal(ConvergenceGate()(st), [True, False, False, True, False])
    np.testing.assert_array_equal(ConvergenceGate(min_ess=100)(st), [True, False, False, False, False])
    np.testing.assert_array_equal(ConvergenceGate(rhat_threshold=1.05)(st), [True, True, False, True, False])
    names = ("mu", "sigma")
    gate = ConvergenceGate(min_ess=100)
    assert gate.explain(st, 1, names) == "max nested R-hat 1.020 >= 1.01 (sigma)"
    assert gate.explain(st, 2, names) == "non-finite draws; max nested R-hat 1.001"
    assert gate.explain(st, 3, names) == "min bulk ESS 50 < 100 (mu); max nested R-hat 1.001"
    assert gate.explain(st, 4, names) == "nested R-hat not finite (mu)"
    # gather / scatter rows of the record
    sub = mcmc.take_rows(st, np.array([3, 1]))
    assert sub.nested_rhat.shape == (2, 2) and sub.ess_bulk[0, 0] == 50.0
    dst = mcmc.empty_stats(5, 10, 2)
    mcmc.put_rows(dst, np.array([0, 4]), sub)
    assert dst.ess_bulk[0, 0] == 50.0 and dst.nested_rhat[4, 1] == np.float32(1.02)
    assert np.isnan(dst.nested_rhat[1]).all()


def test_shard_over_datasets_replicates_leading_args():
    w = jnp.arange(6.0).reshape(3, 2)
    x = jnp.arange(12.0).reshape(4, 3)
    f = mcmc.shard_over_datasets(lambda w, x: x @ w, num_replicated=1,
                                 devices=jax.devices()[:1] if 4 % len(jax.devices()) else None)
    np.testing.assert_allclose(np.asarray(f(w, x)), np.asarray(x @ w))
    assert Layout().map_batch_size == (None if jax.default_backend() != "cpu" else 1)
    assert Layout(batch_size=4).map_batch_size == 4


def test_widen_batches_raises_only_rungs_that_batch_datasets():
    """widen_batches lifts rungs with an explicit lax.map batch to at least 16 datasets per step
    and leaves backend-default rungs (vmap on accelerators, NUTS on CPU) alone."""
    from amortflow import mcmc as m
    lad = m.Ladder((m.Rung("a", m.meads.cpu_profile(), layout=m.Layout(batch_size=4)),
                    m.Rung("b", m.nuts.cpu_profile(), layout=m.Layout(batch_size=32)),
                    m.Rung("c", m.nuts.cpu_profile())))
    wide = m.widen_batches(lad)
    assert [r.layout.batch_size for r in wide.rungs] == [16, 32, None]
    assert [r.name for r in wide.rungs] == ["a", "b", "c"]
    assert m.widen_batches(lad, 8).rungs[0].layout.batch_size == 8
