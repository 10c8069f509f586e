"""R-hat / ESS against arviz (float64) and nested R-hat on synthetic superchains."""
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amortflow.diagnostics import ess_bulk, ess_tail, nested_rhat, nested_rhat_reference, rhat

warnings.filterwarnings("ignore", category=UserWarning)


def _ar1(rng, c, n, d, phi, heavy=False):
    e = rng.standard_t(2, size=(c, n, d)) if heavy else rng.normal(size=(c, n, d))
    x = np.zeros((c, n, d))
    x[:, 0] = e[:, 0]
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


CASES = [  # chains, draws, phi, heavy tails, shift of chain 0, rounding (ties)
    (4, 200, 0.5, False, 0.0, None),
    (4, 101, 0.9, True, 0.0, None),  # odd N, heavy tails, strong autocorrelation
    (8, 50, 0.0, False, 2.0, None),  # one chain off: R-hat well above 1
    (2, 7, 0.3, False, 0.0, None),  # tiny
    (4, 100, 0.5, False, 0.0, 1),  # many ties
    (4, 500, -0.5, True, 0.3, None),  # antithetic
]


@pytest.mark.parametrize("c,n,phi,heavy,shift,rnd", CASES)
def test_rhat_ess_match_arviz(c, n, phi, heavy, shift, rnd):
    rng = np.random.default_rng(c * n)
    x = _ar1(rng, c, n, 3, phi, heavy)
    x[0] += shift
    if rnd is not None:
        x = np.round(x, rnd)
    ref_r = np.array([az.rhat(x[:, :, p]) for p in range(3)])
    ref_b = np.array([az.ess(x[:, :, p], method="bulk") for p in range(3)])
    ref_t = np.array([az.ess(x[:, :, p], method="tail") for p in range(3)])
    with jax.enable_x64(True):
        xj = jnp.asarray(x)
        np.testing.assert_allclose(np.asarray(rhat(xj)), ref_r, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(ess_bulk(xj)), ref_b, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(ess_tail(xj)), ref_t, rtol=1e-9)
    if shift >= 2.0:
        assert ref_r.min() > 1.05


def test_float32_and_vmap_over_datasets():
    rng = np.random.default_rng(5)
    x = np.stack([_ar1(rng, 4, 300, 2, 0.7) for _ in range(3)])  # [K=3, C, N, d]
    out = jax.vmap(rhat)(jnp.asarray(x, jnp.float32))
    eb = jax.vmap(ess_bulk)(jnp.asarray(x, jnp.float32))
    et = jax.vmap(ess_tail)(jnp.asarray(x, jnp.float32))
    assert out.shape == (3, 2) and out.dtype == jnp.float32
    for k in range(3):
        for p in range(2):
            assert out[k, p] == pytest.approx(az.rhat(x[k, :, :, p]), rel=1e-4)
            assert eb[k, p] == pytest.approx(az.ess(x[k, :, :, p], method="bulk"), rel=1e-3)
            assert et[k, p] == pytest.approx(az.ess(x[k, :, :, p], method="tail"), rel=1e-3)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 10.0), loc=st.floats(-5, 5))
def test_ess_bulk_rank_invariance(seed, scale, loc):
    """Rank normalization: bulk ESS and R-hat's bulk part are invariant to increasing transforms."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (4, 64, 1))
    y = jnp.exp(0.5 * (loc + scale * x))  # strictly increasing transform
    # float32: exp(0.05 x) maps draws a few ulp apart onto the same value, and the ties move the
    # average ranks slightly (seed 1622, scale 0.1: 3e-4); a rank-normalization bug is O(1)
    np.testing.assert_allclose(ess_bulk(x), ess_bulk(y), rtol=2e-3)
    # permuting chains changes nothing either
    np.testing.assert_allclose(rhat(x), rhat(x[::-1]), rtol=1e-5)


# ---------------------------------------------------------------------------- nested R-hat
@pytest.mark.parametrize("n", [1, 10])
def test_nested_rhat_converged(n):
    """iid draws: nested R-hat ~ sqrt(1 + 1/(M N)) (DESIGN fact) and matches the NumPy formula."""
    k, m, d = 64, 32, 4
    x = jax.random.normal(jax.random.PRNGKey(n), (k * m, n, d))
    out = np.asarray(nested_rhat(x, k))
    expected = np.sqrt(1 + 1 / (m * n))
    assert np.all(np.abs(out - expected) < 0.01), (out, expected)
    if n == 10:
        assert out.max() < 1.01
    with jax.enable_x64(True):
        x64 = np.asarray(x, np.float64)
        np.testing.assert_allclose(np.asarray(nested_rhat(jnp.asarray(x64), k)), nested_rhat_reference(x64, k), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 10])
def test_nested_rhat_unconverged(n):
    """Superchains stuck near their (dispersed) starting points: nested R-hat far above 1."""
    k, m, d = 16, 8, 2
    key1, key2 = jax.random.split(jax.random.PRNGKey(7))
    start = 3.0 * jax.random.normal(key1, (k, 1, 1, d))
    x = start + 0.5 * jax.random.normal(key2, (k, m, n, d))  # chains of a superchain agree
    out = nested_rhat(x.reshape(k * m, n, d), k)
    assert np.all(np.asarray(out) > 1.5)
    # and it does not matter for the verdict how the chains are grouped into superchains
    # as long as they are grouped by starting point; random grouping hides it (sanity check)
    perm = jax.random.permutation(jax.random.PRNGKey(0), k * m)
    assert np.all(np.asarray(nested_rhat(x.reshape(k * m, n, d)[perm], k)) < out)


def test_nested_rhat_vmap_edge_cases():
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 12, 3, 2))  # [datasets, C, N, d]
    out = jax.vmap(lambda a: nested_rhat(a, 4))(x)
    assert out.shape == (5, 2)
    for i in range(5):
        np.testing.assert_allclose(out[i], nested_rhat_reference(np.asarray(x[i]), 4), rtol=1e-5)
    # M = 1 (each chain its own superchain) and 2-D input
    assert nested_rhat(x[0, :, :, 0], 12).shape == ()
    # constant draws: 1, never NaN; constant within superchains but different between: inf
    assert float(nested_rhat(jnp.ones((8, 3, 1)), 4)[0]) == 1.0
    y = jnp.repeat(jnp.arange(4.0), 2)[:, None, None] * jnp.ones((8, 3, 1))
    assert float(nested_rhat(y, 4)[0]) > 1e3  # inf up to rounding of the chain means
    with pytest.raises(ValueError):
        nested_rhat(jnp.ones((10, 2, 1)), 4)
