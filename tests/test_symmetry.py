"""Observation symmetries (amortflow.models.symmetry): each factory draws group elements only,
a declared symmetry is checked against the likelihood, and bank training augments with it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats as jstats

from amortflow.estimators.data import training_data
from amortflow.models import make_model, spatial_gp
from amortflow.models.symmetry import (Symmetry, augment_batch, chain, dihedral, flips, permute_rows,
                                       sign_flip)

GRID = jnp.arange(16.0).reshape(4, 4)


def _layouts(sym, y, n=400):
    out = np.asarray(augment_batch(sym, jax.random.PRNGKey(0), jnp.stack([y] * n)))
    return {tuple(o.ravel().tolist()) for o in out}


def test_dihedral_draws_all_eight_grid_symmetries_and_only_them():
    got = _layouts(dihedral(), GRID)
    y = np.asarray(GRID)
    expected = {tuple(np.rot90(z, r).ravel().tolist()) for z in (y, y.T) for r in range(4)}
    assert got == expected and len(got) == 8


def test_flips_sign_flip_permutation_and_chain():
    y = np.asarray(GRID)
    assert _layouts(flips((0, 1)), GRID) == {tuple(z.ravel().tolist()) for z in
                                             (y, y[::-1], y[:, ::-1], y[::-1, ::-1])}
    assert _layouts(sign_flip(), GRID) == {tuple(y.ravel().tolist()), tuple((-y).ravel().tolist())}
    rows = _layouts(permute_rows(), GRID)
    assert len(rows) == 24  # all 4! orders of the rows, each row kept whole
    assert all(sorted(np.reshape(r, (4, 4)).tolist()) == y.tolist() for r in rows)
    both = _layouts(chain(dihedral(), sign_flip()), GRID)
    assert len(both) == 16
    assert chain(dihedral(), sign_flip()).name == "chain(dihedral(0, 1), sign_flip)"
    with pytest.raises(TypeError, match="Symmetry"):
        chain(lambda k, y: y)


def test_dihedral_refuses_a_rectangular_grid():
    with pytest.raises(ValueError, match="square grid"):
        dihedral().apply(jax.random.PRNGKey(0), jnp.zeros((3, 4)))


def _iid_normal(mean, symmetry=None):
    """iid N(mu, 1) on a 4 x 4 grid, mu ~ N(mean, 1)."""
    return make_model(
        name="iid_grid", param_names=("mu",), obs_shape=(4, 4), obs_kind="grid",
        sample_prior=lambda k, n: mean + jax.random.normal(k, (n, 1)),
        simulate=lambda k, th: th[0] + jax.random.normal(k, (4, 4)),
        log_prior=lambda th: jstats.norm.logpdf(th[0], mean, 1.0),
        log_likelihood=lambda th, y: jnp.sum(jstats.norm.logpdf(y, th[0], 1.0)),
        symmetry=symmetry)


def test_a_declared_symmetry_is_checked_against_the_likelihood():
    ok = _iid_normal(3.0, chain(dihedral(), permute_rows()))  # iid cells: any layout is a symmetry
    assert ok.symmetry.name.startswith("chain(")
    assert ok.fingerprint() != _iid_normal(3.0).fingerprint()
    # y -> -y is not a symmetry of data with mean ~3
    with pytest.raises(ValueError, match="sign_flip changes the log likelihood"):
        _iid_normal(3.0, sign_flip())
    with pytest.raises(TypeError, match="Symmetry"):
        _iid_normal(0.0, symmetry=lambda k, y: -y)
    with pytest.raises(ValueError, match="design data"):
        make_model(name="d", param_names=("a",), obs_shape=(4,), sample_prior=lambda k, n: jnp.zeros((n, 1)),
                   simulate=lambda k, th, d: jnp.zeros(4), log_prior=lambda th: 0.0,
                   log_likelihood=lambda th, y, d: 0.0, design_shape={"n": (4,)}, symmetry=sign_flip())


def test_spatial_gp_declares_its_exact_symmetries():
    m = spatial_gp(grid_size=6)
    assert isinstance(m.symmetry, Symmetry)
    theta, ys = m.sample_prior_predictive(jax.random.PRNGKey(2), 3)
    ys2 = augment_batch(m.symmetry, jax.random.PRNGKey(3), ys)
    ll = jax.vmap(m.log_likelihood)
    np.testing.assert_allclose(ll(theta, ys2), ll(theta, ys), rtol=1e-5)


def _iid_scale(symmetry=None):
    """iid N(0, exp(s)^2) on a 4 x 4 grid, s ~ N(0, 1): zero mean, so y -> -y is a symmetry."""
    return make_model(
        name="iid_scale", param_names=("s",), obs_shape=(4, 4), obs_kind="grid",
        sample_prior=lambda k, n: jax.random.normal(k, (n, 1)),
        simulate=lambda k, th: jnp.exp(th[0]) * jax.random.normal(k, (4, 4)),
        log_prior=lambda th: jstats.norm.logpdf(th[0]),
        log_likelihood=lambda th, y: jnp.sum(jstats.norm.logpdf(y, 0.0, jnp.exp(th[0]))),
        symmetry=symmetry)


def test_bank_batches_are_augmented_with_the_symmetry():
    model = _iid_scale(sign_flip())
    theta, ys = model.sample_prior_predictive(jax.random.PRNGKey(0), 600)
    td = training_data(jax.random.PRNGKey(1), jax.random.PRNGKey(2), model, num_simulations=None,
                       bank=(np.asarray(theta), np.asarray(ys)), num_validation=100, batch_size=256, owner="t")
    th_b, y_b = td.batch_fn(td.data, jax.random.PRNGKey(5))
    idx = [int(np.argmin(np.abs(np.asarray(td.data[0])[:, 0] - t))) for t in np.asarray(th_b)[:, 0]]
    orig = np.asarray(td.data[1])[idx]
    same = np.all(np.isclose(np.asarray(y_b), orig), axis=(1, 2))
    flipped = np.all(np.isclose(np.asarray(y_b), -orig), axis=(1, 2))
    assert np.all(same | flipped)
    assert 0.3 < flipped.mean() < 0.7  # each row flipped with probability 1/2
    # the same rows without a symmetry are the bank's rows unchanged (same key, same indices)
    plain = _iid_scale()
    td0 = training_data(jax.random.PRNGKey(1), jax.random.PRNGKey(2), plain, num_simulations=None,
                        bank=(np.asarray(theta), np.asarray(ys)), num_validation=100, batch_size=256, owner="t")
    th0, y0 = td0.batch_fn(td0.data, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(th0, th_b)
    np.testing.assert_allclose(np.abs(np.asarray(y0)), np.abs(np.asarray(y_b)))
