"""PSIS against arviz.psislw (float64: k̂ to 1e-6, weights to 1e-9), degenerate input, resampling."""
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import amortflow as af
from amortflow.diagnostics import psis, psis_khat_threshold, psis_tail_length, resample

warnings.filterwarnings("ignore", category=UserWarning)


def _cases(rng, k=20, s=2000):
    return {
        "light": rng.normal(size=(k, s)) * 0.3,  # k̂ < 0
        "moderate": np.log(rng.pareto(1 / 0.5, size=(k, s)) + 1),  # true k = 0.5
        "heavy": np.log(rng.pareto(1 / np.linspace(0.3, 1.5, k)[:, None], size=(k, s)) + 1),
        "student": np.abs(rng.standard_t(3, size=(k, s))),
    }


@pytest.mark.parametrize("case", ["light", "moderate", "heavy", "student"])
def test_psis_matches_arviz_float64(case):
    lw = _cases(np.random.default_rng(0))[case]
    ref_lw, ref_k = az.psislw(lw.copy())
    with jax.enable_x64(True):
        res = jax.jit(psis)(jnp.asarray(lw))
        assert res.log_weights.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(res.khat), ref_k, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(res.log_weights), ref_lw, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.asarray(jax.nn.logsumexp(res.log_weights, -1)), 0.0, atol=1e-12)
        ess = 1.0 / np.sum(np.exp(2 * ref_lw), axis=-1)
        np.testing.assert_allclose(np.asarray(res.ess), ess, rtol=1e-9)
    if case == "light":
        assert ref_k.max() < 0.3
    if case == "heavy":
        assert ref_k.max() > 1.0  # the heavy case really is heavy


def test_psis_float32_cost():
    """float32 keeps dtype; k̂ stays within 1e-3 of arviz on moderate tails (measured ~5e-6)."""
    lw = _cases(np.random.default_rng(1))["heavy"]
    _, ref_k = az.psislw(lw.copy())
    res = psis(jnp.asarray(lw, jnp.float32))
    assert res.khat.dtype == jnp.float32 and res.log_weights.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(res.khat), ref_k, atol=1e-3)


def test_psis_neg_inf_and_nan_rows():
    rng = np.random.default_rng(2)
    lw = rng.normal(size=(4, 1000))
    lw[0, :300] = -np.inf  # points outside the support
    lw[1, :] = -np.inf  # nothing in the support
    lw[2, :997] = -np.inf  # only three finite points
    lw[3, 5] = np.nan
    with jax.enable_x64(True):
        res = psis(jnp.asarray(lw))
        ref_lw, ref_k = az.psislw(lw[:1].copy())
        np.testing.assert_allclose(np.asarray(res.khat[0]), ref_k[0], atol=1e-6)
        np.testing.assert_allclose(np.asarray(res.log_weights[0]), ref_lw[0], atol=1e-9)
    for arr in res:
        assert not np.isnan(np.asarray(arr)).any()
    out = np.asarray(res.log_weights)
    assert np.all(out[0, :300] == -np.inf)
    np.testing.assert_allclose(out[1], -np.log(1000))
    assert np.isinf(res.khat[1]) and res.ess[1] == 0
    assert np.isinf(res.khat[2]) and 1.0 <= res.ess[2] <= 3.0
    assert out[3, 5] == -np.inf and np.isfinite(res.khat[3])


def test_psis_shapes_and_vmap():
    lw = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 500))
    res = psis(lw)
    assert res.log_weights.shape == (2, 3, 500) and res.khat.shape == (2, 3) and res.ess.shape == (2, 3)
    single = psis(lw[1, 2])
    assert single.khat.shape == ()
    np.testing.assert_allclose(single.khat, res.khat[1, 2], rtol=1e-6)
    vm = jax.vmap(psis)(lw.reshape(6, 500))
    np.testing.assert_allclose(vm.khat, res.khat.reshape(6), rtol=1e-6)


def test_khat_threshold_and_tail_length():
    assert psis_khat_threshold(10000) == pytest.approx(0.7)
    assert psis_khat_threshold(2000) == pytest.approx(1 - 1 / np.log10(2000))
    assert psis_khat_threshold(100) == pytest.approx(0.5)
    assert psis_khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert psis_tail_length(2000) == 135 and psis_tail_length(100) == 20


@settings(max_examples=15, deadline=None)
@given(shift=st.floats(-50, 50), scale=st.floats(0.1, 3.0), seed=st.integers(0, 2**16))
def test_psis_invariant_to_constant_shift(shift, scale, seed):
    """Smoothed normalized weights and k̂ do not depend on an additive constant in log w."""
    lw = scale * jax.random.normal(jax.random.PRNGKey(seed), (400,))
    a, b = psis(lw), psis(lw + shift)
    np.testing.assert_allclose(a.khat, b.khat, atol=2e-3)
    np.testing.assert_allclose(np.exp(a.log_weights), np.exp(b.log_weights), atol=1e-4)
    assert 1.0 <= float(a.ess) <= 400.0 + 1e-3


def test_resample_with_and_without_replacement():
    key = jax.random.PRNGKey(3)
    lw = jnp.log(jnp.array([0.1, 0.6, 0.3, 0.0]))
    idx = resample(key, lw, 20000, method="multinomial")
    freq = np.bincount(np.asarray(idx), minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3, 0.0], atol=0.015)
    # without replacement: distinct indices, zero-weight entry drawn last
    keys = jax.random.split(key, 2000)
    idx2 = jax.vmap(resample, (0, None, None, None))(keys, lw, 3, False)
    assert np.all(np.sort(np.asarray(idx2), axis=1) == np.array([0, 1, 2]))
    first = np.bincount(np.asarray(idx2[:, 0]), minlength=4) / 2000
    np.testing.assert_allclose(first, [0.1, 0.6, 0.3, 0.0], atol=0.04)
    # vmapped over datasets with per-dataset weights; all -inf gives uniform, no crash
    lws = jnp.stack([lw, jnp.full(4, -jnp.inf)])
    out = jax.vmap(resample, (0, 0, None))(jax.random.split(key, 2), lws, 1000)
    assert out.shape == (2, 1000) and set(np.unique(out[1])) == {0, 1, 2, 3}


def test_systematic_resampling_counts_and_noise():
    """Systematic resampling: every draw appears floor or ceil of num * w_i times (zero-weight
    draws never), the order is shuffled, and the resampled mean is far less noisy than with
    multinomial resampling (the resampling part of its error: about half the variance here) while
    both stay unbiased."""
    rng = np.random.default_rng(0)
    lw = jnp.asarray(rng.normal(size=300) * 1.5)
    lw = lw.at[:5].set(-jnp.inf)
    w = np.asarray(jax.nn.softmax(lw))
    keys = jax.random.split(jax.random.PRNGKey(7), 400)
    num = 300
    sys_idx = np.asarray(jax.vmap(resample, (0, None, None))(keys, lw, num))
    for row in sys_idx[:50]:
        counts = np.bincount(row, minlength=300)
        assert np.all(counts >= np.floor(num * w) - 1e-9) and np.all(counts <= np.ceil(num * w) + 1e-9)
        assert np.all(counts[:5] == 0)
    assert not np.all(np.diff(sys_idx[0]) >= 0)  # shuffled, not in CDF order
    values = np.asarray(rng.normal(size=300))
    target = float(np.sum(w * values))
    mult_idx = np.asarray(jax.vmap(lambda k: resample(k, lw, num, method="multinomial"))(keys))
    sys_means, mult_means = values[sys_idx].mean(1), values[mult_idx].mean(1)
    assert abs(sys_means.mean() - target) < 4 * sys_means.std() / np.sqrt(400) + 1e-6
    assert abs(mult_means.mean() - target) < 4 * mult_means.std() / np.sqrt(400)
    assert sys_means.var() < 0.75 * mult_means.var()
    with pytest.raises(ValueError, match="systematic"):
        resample(keys[0], lw, 10, method="stratified-ish")


def test_exported():
    assert af.diagnostics.psis is psis and af.diagnostics.PSISResult._fields == ("log_weights", "khat", "ess")


def test_is_mcse_matches_repeated_sampling():
    """The predicted Monte Carlo errors of weighted mean, sd and 5% quantile match their spread
    over 400 independent importance-sampling runs (proposal N(0, 1.5^2), target N(0, 1))."""
    from amortflow.diagnostics import is_mcse

    r, s = 400, 1000
    z = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (r, s, 1))
    lw = (-0.5 * z**2 + 0.5 * (z / 1.5) ** 2)[..., 0]
    err = is_mcse(z, lw)
    w = np.exp(np.asarray(lw) - np.asarray(lw).max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    x = np.asarray(z[..., 0], np.float64)
    mean = (w * x).sum(1)
    sd = np.sqrt((w * (x - mean[:, None]) ** 2).sum(1))
    order = np.argsort(x, 1)
    cw = np.cumsum(np.take_along_axis(w, order, 1), 1)
    q05 = np.take_along_axis(x, order, 1)[np.arange(r), (cw < 0.05).sum(1)]
    np.testing.assert_allclose(np.asarray(err.mean[:, 0]), mean, rtol=1e-4, atol=1e-5)
    for pred, est in ((err.mean_error[:, 0], mean), (err.sd_error[:, 0], sd), (err.quantile_error[:, 0, 0], q05)):
        # target sd = 1, so relative and absolute errors agree up to the estimated sd
        assert abs(float(np.mean(pred)) / np.std(est) - 1) < 0.2, (float(np.mean(pred)), np.std(est))
    # equal weights: the textbook 1 / sqrt(S) for the mean; max_error names the worst functional
    eq = is_mcse(z[:1], jnp.zeros((1, s)))
    assert abs(float(eq.mean_error[0, 0]) * np.sqrt(s) - 1) < 1e-3
    assert int(eq.worst[0, 1]) >= 2  # a tail quantile is the hardest summary


def test_is_mcse_degenerate_rows():
    from amortflow.diagnostics import is_mcse

    x = jax.random.normal(jax.random.PRNGKey(1), (3, 200, 2))
    lw = jnp.zeros((3, 200)).at[1].set(-jnp.inf).at[2, 1:].set(-jnp.inf)  # no weight; one draw
    err = is_mcse(x, lw)
    assert np.isfinite(err.max_error[0]) and np.isinf(err.max_error[1]) and np.isinf(err.max_error[2])
