"""A posterior with two separated modes of known, equal weight: the MCMC stage must either
recover both (weights within tolerance) or fail the dataset with a reason -- never accept
draws from one mode. Model: theta = (a, b), a, b ~ N(0, 2^2), y_i ~ N((|a|, b), I), 10
observations; the posterior of ``a`` is two mirror-image truncated normals of weight 1/2 each."""
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

import amortflow as af
from amortflow import mcmc
from amortflow.mcmc.modes import missed_mode_check, spread_starts

N_OBS, PRIOR_SD = 10, 2.0


def _model():
    def sample_prior(key, n):
        return PRIOR_SD * jax.random.normal(key, (n, 2))

    def log_prior(t):
        return jnp.sum(jstats.norm.logpdf(t, 0.0, PRIOR_SD))

    def log_likelihood(t, y):
        return jnp.sum(jstats.norm.logpdf(y, jnp.stack([jnp.abs(t[0]), t[1]]), 1.0))

    def simulate(key, t):
        return jnp.stack([jnp.abs(t[0]), t[1]]) + jax.random.normal(key, (N_OBS, 2))

    return af.make_model(name="folded_mean", param_names=("a", "b"), obs_shape=(N_OBS, 2), obs_kind="set",
                         sample_prior=sample_prior, simulate=simulate, log_prior=log_prior,
                         log_likelihood=log_likelihood)


def _exact(key, y, n, frac_pos=0.5):
    """Exact posterior draws; ``frac_pos`` of them from the a > 0 mode (0.5 = the posterior)."""
    v = 1.0 / (1.0 / PRIOR_SD**2 + N_OBS)
    m = v * N_OBS * y.mean(0)
    k1, k2, k3 = jax.random.split(key, 3)
    # |a| mode: truncation of N(m0, v) at 0 is negligible (m0 / sqrt(v) > 6 below)
    a = m[0] + np.sqrt(v) * np.asarray(jax.random.normal(k1, (n,)))
    sign = np.where(np.asarray(jax.random.uniform(k2, (n,))) < frac_pos, 1.0, -1.0)
    b = m[1] + np.sqrt(v) * np.asarray(jax.random.normal(k3, (n,)))
    return np.stack([sign * np.abs(a), b], -1).astype(np.float32), m, v


LADDER = mcmc.Ladder((mcmc.Rung("chees", mcmc.chees.cpu_profile(
    num_superchains=4, chains_per_superchain=8, num_warmup=200, num_samples=64)),),
    bucket_size=4, num_prior_draws=256)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    y = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, N_OBS, 2)) + np.array([3.0, 0.5]), np.float32)
    return model, y


@pytest.mark.parametrize("frac_pos", [0.5, 0.995])
def test_mcmc_never_accepts_one_mode(setup, frac_pos):
    """Candidates covering both modes equally, or the second one barely (0.5% of them)."""
    model, y = setup
    cands = []
    for i in range(y.shape[0]):
        c, m, v = _exact(jax.random.PRNGKey(10 + i), y[i], 2000, frac_pos)
        assert m[0] / np.sqrt(v) > 6  # well separated modes
        cands.append(c)
    cands = np.stack(cands)
    res = mcmc.run_ladder(jax.random.PRNGKey(1), model, y, cands, None, LADDER, num_output_draws=512,
                          progress=False)
    for i in range(y.shape[0]):
        if res.route[i] == "failed":
            assert res.reason[i]
            continue
        pos = float(np.mean(res.draws[i, :, 0] > 0))
        assert 0.4 < pos < 0.6, (i, pos, res.route[i])


def test_spread_starts_reach_a_minor_mode():
    """Farthest-point picks put a start in a mode that holds 0.5% of the candidates."""
    c, _, _ = _exact(jax.random.PRNGKey(3), np.full((N_OBS, 2), [3.0, 0.5], np.float32), 2000, 0.995)
    model, _ = _model(), None
    y = jnp.full((N_OBS, 2), jnp.array([3.0, 0.5]))
    lp = jax.vmap(lambda t: model.log_density(t, y))(jnp.asarray(c))
    chosen = jnp.asarray(c[:4])  # four starts from the major mode
    assert (chosen[:, 0] > 0).all()
    pts, replaced, _ = spread_starts(chosen, jnp.asarray(c), lp, jnp.ones(2000, bool), 1)
    assert bool(replaced[-1]) and float(pts[-1, 0]) < 0 and (np.asarray(pts[:3]) == c[:3]).all()


def test_missed_mode_check_flags_one_mode_draws(setup):
    model, y = setup
    both = np.stack([_exact(jax.random.PRNGKey(20 + i), y[i], 2000, 0.5)[0] for i in range(3)])
    one = np.stack([_exact(jax.random.PRNGKey(30 + i), y[i], 2000, 1.0)[0] for i in range(3)])
    n_far, ratio = missed_mode_check(jax.random.PRNGKey(0), model, y, both, one)
    assert (n_far >= 100).all() and (ratio > 2).all()  # ~1000 candidates sit in the missed mode
    n_far, _ = missed_mode_check(jax.random.PRNGKey(0), model, y, both, both[:, ::-1])
    assert (n_far == 0).all()  # draws from the whole posterior: nothing missed
