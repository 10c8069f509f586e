"""OOD scores (Mahalanobis, MMD) and accuracy metrics against reference draws."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as sps
from hypothesis import given, settings
from hypothesis import strategies as st

from amortflow.diagnostics import (
    ACCURACY_KEYS, accuracy_noise_floor, c2st_knn, fit_mahalanobis, fit_mmd_ood, ledoit_wolf_shrinkage,
    mahalanobis_score, mmd_score, posterior_accuracy,
)

P = 6


def _summaries(key, n, shift=0.0):
    a = jnp.eye(P) + 0.5 * jnp.tril(jnp.ones((P, P)), -1)  # correlated summaries
    return shift + jax.random.normal(key, (n, P)) @ a.T * jnp.linspace(0.5, 3.0, P)


@pytest.fixture(scope="module")
def summaries():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return _summaries(k[0], 4000), _summaries(k[1], 2000), _summaries(k[2], 4000), _summaries(k[3], 500, 2.5)


def test_mahalanobis_ood(summaries):
    train, held, fresh, shifted = summaries
    st_ = fit_mahalanobis(train, held, alpha=0.05)
    assert st_.precision.shape == (P, P) and 0.0 <= float(st_.shrinkage) <= 1.0
    fp = float(jnp.mean(mahalanobis_score(st_, fresh) > st_.threshold))
    assert 0.03 < fp < 0.07, fp  # held-out threshold gives the nominal false-positive rate
    assert float(jnp.mean(mahalanobis_score(st_, shifted) > st_.threshold)) > 0.9
    # chi distribution for Gaussian summaries: threshold ~ sqrt(chi2_{0.95}(P))
    assert float(st_.threshold) == pytest.approx(np.sqrt(sps.chi2.ppf(0.95, P)), rel=0.05)
    # full shrinkage = diagonal-free isotropic covariance; scores differ but still computed per dataset
    iso = fit_mahalanobis(train, held, shrinkage=1.0)
    np.testing.assert_allclose(iso.precision, np.eye(P) * iso.precision[0, 0], atol=1e-6)
    assert mahalanobis_score(st_, fresh[0]).shape == ()
    assert jax.jit(jax.vmap(mahalanobis_score, (None, 0)))(st_, fresh.reshape(4, 1000, P)).shape == (4, 1000)


def test_ledoit_wolf_matches_sklearn_formula():
    x = jax.random.normal(jax.random.PRNGKey(1), (50, 10)) * jnp.linspace(1, 2, 10)
    lam = float(ledoit_wolf_shrinkage(x))
    # reference: sklearn.covariance.ledoit_wolf_shrinkage (assume_centered=False), re-implemented in NumPy
    xn = np.asarray(x, np.float64)
    xn = xn - xn.mean(0)
    n, p = xn.shape
    s = xn.T @ xn / n
    mu = np.trace(s) / p
    delta = ((s - mu * np.eye(p)) ** 2).sum() / p
    beta = sum(((np.outer(r, r) - s) ** 2).sum() for r in xn) / (n**2 * p)
    assert lam == pytest.approx(min(beta, delta) / delta, rel=1e-4)


def test_mmd_ood(summaries):
    train, held, fresh, shifted = summaries
    st_ = fit_mmd_ood(jax.random.PRNGKey(0), train, held, alpha=0.05, num_reference=1500)
    assert st_.reference.shape == (1500, P)
    s_fresh = mmd_score(st_, fresh)
    fp = float(jnp.mean(s_fresh > st_.threshold))
    assert 0.02 < fp < 0.09, fp
    assert float(jnp.mean(mmd_score(st_, shifted) > st_.threshold)) > 0.9
    assert mmd_score(st_, fresh[0]).shape == ()


# ---------------------------------------------------------------------------- accuracy
K, S, R, D = 4, 800, 1200, 3


@pytest.fixture(scope="module")
def draws():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    scale = jnp.array([1.0, 5.0, 0.1])
    loc = jnp.array([2.0, -1.0, 0.0])
    ref = loc + scale * jax.random.normal(k1, (K, R, D))
    same = loc + scale * jax.random.normal(k2, (K, S, D))
    return ref, same, loc, scale, k3


def test_accuracy_identical_vs_shifted(draws):
    ref, same, loc, scale, _ = draws
    good = posterior_accuracy(same, ref)
    bad = posterior_accuracy(same + jnp.array([1.0, 0.0, 0.0]) * scale, ref)  # 1 sd shift in margin 0
    wide = posterior_accuracy(loc + 2.0 * (same - loc), ref)  # twice as wide
    assert set(ACCURACY_KEYS) <= set(good)
    assert good["mean_error_std"].shape == (K, D) and good["mmd2"].shape == (K,)
    assert good["wasserstein"].shape == (K, D) and good["marginal_tv"].shape == (K,)
    assert np.all(np.abs(good["mean_error_std"]) < 0.15) and np.all(np.abs(good["sd_ratio"] - 1) < 0.1)
    assert np.all(np.abs(good["mmd2"]) < 0.01) and np.all(np.abs(good["energy"]) < 0.02)
    assert np.all(good["wasserstein"] < 0.15) and np.all(good["marginal_tv"] < 0.1)
    np.testing.assert_allclose(bad["mean_error_std"][:, 0], 1.0, atol=0.15)
    assert np.all(bad["mmd2"] > 0.05) and np.all(bad["energy"] > 0.2)
    assert np.all(bad["tv"][:, 0] > 0.3) and np.all(bad["wasserstein"][:, 0] > 0.8)
    np.testing.assert_allclose(wide["sd_ratio"], 2.0, rtol=0.1)
    assert np.all(wide["mmd2"] > 0.05)


def test_wasserstein_matches_scipy(draws):
    ref, same, *_ = draws
    x = same + 0.3
    out = posterior_accuracy(x, ref)
    for k in range(2):
        for j in range(D):
            mu, sd = ref[k, :, j].mean(), ref[k, :, j].std(ddof=1)
            w = sps.wasserstein_distance((x[k, :, j] - mu) / sd, (ref[k, :, j] - mu) / sd)
            assert float(out["wasserstein"][k, j]) == pytest.approx(w, rel=1e-4, abs=1e-5)


def test_noise_floor_and_single_dataset(draws):
    ref, same, *_ = draws
    nf = accuracy_noise_floor(jax.random.PRNGKey(0), ref)
    assert nf["mmd2"].shape == (K,) and nf["wasserstein"].shape == (K, D)
    assert np.all(np.abs(nf["mmd2"]) < 0.01) and np.all(nf["marginal_tv"] < 0.12)
    one = posterior_accuracy(same[0], ref[0])
    assert one["mmd2"].shape == () and one["tv"].shape == (D,)
    np.testing.assert_allclose(one["energy"], posterior_accuracy(same, ref)["energy"][0], atol=2e-5)


@settings(max_examples=8, deadline=None)
@given(loc=st.floats(-100, 100), scale=st.floats(0.01, 100.0))
def test_accuracy_affine_invariance(loc, scale):
    """Reference standardization: applying the same affine map to draws and reference changes nothing."""
    key1, key2 = jax.random.split(jax.random.PRNGKey(11))
    ref = jax.random.normal(key1, (1, 300, 2))
    x = 0.3 + 1.2 * jax.random.normal(key2, (1, 200, 2))
    a = posterior_accuracy(x, ref)
    b = posterior_accuracy(loc + scale * x, loc + scale * ref)
    for k in ("mmd2", "energy", "mean_error_std", "sd_ratio", "wasserstein", "marginal_tv"):
        np.testing.assert_allclose(a[k], b[k], atol=2e-3, rtol=2e-3)


def test_c2st_knn(draws):
    ref, same, _, scale, _ = draws
    acc_same = float(c2st_knn(same[0, :400], ref[0, :400]))
    acc_shift = float(c2st_knn(same[0, :400] + 1.5 * scale, ref[0, :400]))
    assert abs(acc_same - 0.5) < 0.08 and acc_shift > 0.75
