import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amortflow.nets import ConditionalFlow, DeepSetSpec, FlowSpec, build_summary, std_normal_logpdf


def _random_flow(dim, transform, key=0, scale=0.05, layers=4, dtype=jnp.float32):
    f = ConditionalFlow(dim=dim, spec=FlowSpec(transform=transform, num_layers=layers, hidden=(32, 32)))
    p = f.init(jax.random.PRNGKey(key), jnp.zeros((1, dim), dtype), jnp.zeros((1, 3), dtype), method="log_prob")
    leaves, tree = jax.tree_util.tree_flatten(p)
    ks = jax.random.split(jax.random.PRNGKey(key + 1), len(leaves))
    # perturb every parameter (including the zero-initialised last layers): a non-trivial flow
    p = jax.tree_util.tree_unflatten(
        tree, [(l + scale * jax.random.normal(k, l.shape)).astype(dtype) for l, k in zip(leaves, ks)]
    )
    return f, p


def _apply(f, method):
    """Jitted ``f.apply(params, *args, method=method)`` (eager Flax is slow)."""
    return jax.jit(lambda p, *a: f.apply(p, *a, method=method))


@pytest.mark.parametrize("transform", ["spline", "affine"])
@pytest.mark.parametrize("dim", [1, 3])
def test_log_density_is_change_of_variables_of_samples(transform, dim):
    with jax.enable_x64(True):
        f, p = _random_flow(dim, transform, dtype=jnp.float64, scale=0.08)
        z = jax.random.normal(jax.random.PRNGKey(7), (64, dim), jnp.float64)
        ctx = jax.random.normal(jax.random.PRNGKey(8), (64, 3), jnp.float64)
        x, log_q = _apply(f, "sample_and_log_prob")(p, z, ctx)
        # independent check: log N(z) - log|det d forward / dz| from the autodiff Jacobian
        def fwd(zi, ci):
            return _apply(f, "forward")(p, zi[None], ci[None])[0][0]
        jac = jax.vmap(jax.jacfwd(fwd))(z, ctx)
        ref = std_normal_logpdf(z) - jnp.linalg.slogdet(jac)[1]
        np.testing.assert_allclose(np.asarray(log_q), np.asarray(ref), rtol=1e-9, atol=1e-9)
        # and the density evaluated through the inverse agrees
        np.testing.assert_allclose(np.asarray(_apply(f, "log_prob")(p, x, ctx)), np.asarray(log_q),
                                   rtol=1e-8, atol=1e-8)
        assert float(jnp.abs(x - z).max()) > 0.1  # the flow is not the identity


@pytest.mark.parametrize("transform", ["spline", "affine"])
def test_flow_integrates_to_one_1d(transform):
    with jax.enable_x64(True):
        f, p = _random_flow(1, transform, dtype=jnp.float64, scale=0.1)
        grid = jnp.linspace(-30, 30, 60001, dtype=jnp.float64)[:, None]
        for c in (jnp.zeros(3), jnp.array([1.0, -2.0, 0.5])):
            dens = jnp.exp(f.apply(p, grid, jnp.broadcast_to(c, (grid.shape[0], 3)), method="log_prob"))
            mass = float(jnp.trapezoid(dens, grid[:, 0]))
            assert abs(mass - 1.0) < 1e-5, mass


@pytest.mark.parametrize("transform", ["spline", "affine"])
def test_flow_integrates_to_one_2d(transform):
    with jax.enable_x64(True):
        f, p = _random_flow(2, transform, dtype=jnp.float64, scale=0.05)
        g = jnp.linspace(-12, 12, 481, dtype=jnp.float64)
        xx, yy = jnp.meshgrid(g, g, indexing="ij")
        pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
        dens = jnp.exp(f.apply(p, pts, jnp.ones((pts.shape[0], 3)) * 0.3, method="log_prob")).reshape(481, 481)
        mass = float(jnp.trapezoid(jnp.trapezoid(dens, g, axis=1), g))
        assert abs(mass - 1.0) < 2e-3, mass


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 5), st.sampled_from(["spline", "affine"]), st.integers(0, 1000))
def test_inverse_undoes_forward(dim, transform, seed):
    with jax.enable_x64(True):
        f, p = _random_flow(dim, transform, key=seed % 7, dtype=jnp.float64, layers=3)
        z = 2.0 * jax.random.normal(jax.random.PRNGKey(seed), (16, dim), jnp.float64)
        ctx = jax.random.normal(jax.random.PRNGKey(seed + 1), (16, 3), jnp.float64)
        x, ld_f = _apply(f, "forward")(p, z, ctx)
        z2, ld_i = _apply(f, "inverse")(p, x, ctx)
        np.testing.assert_allclose(np.asarray(z2), np.asarray(z), atol=1e-8)
        np.testing.assert_allclose(np.asarray(ld_f), -np.asarray(ld_i), atol=1e-8)


def test_context_broadcast_equals_repeated_context():
    f, p = _random_flow(3, "spline")
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 50, 3))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    a = _apply(f, "sample_and_log_prob")(p, z, ctx[:, None, :])
    b = f.apply(p, z, jnp.broadcast_to(ctx[:, None, :], (4, 50, 3)), method="sample_and_log_prob")
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=1e-5, atol=1e-4)


def test_deepset_is_permutation_invariant():
    net = build_summary(DeepSetSpec(), obs_ndim=1)
    y = jax.random.normal(jax.random.PRNGKey(0), (3, 65))
    p = net.init(jax.random.PRNGKey(1), y)
    perm = jax.random.permutation(jax.random.PRNGKey(2), 65)
    np.testing.assert_allclose(np.asarray(net.apply(p, y)), np.asarray(net.apply(p, y[:, perm])), atol=1e-5)
    assert net.apply(p, y).shape == (3, 16)


def test_spline_kernel_matches_distrax():
    import distrax

    from amortflow.nets.splines import rq_spline_forward, rq_spline_inverse

    with jax.enable_x64(True):
        raw = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (500, 3, 25), jnp.float64)
        x = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (500, 3), jnp.float64)  # some outside [-5, 5]
        ref = distrax.RationalQuadraticSpline(raw, -5.0, 5.0, boundary_slopes="identity")
        y, ld = jax.jit(rq_spline_forward, static_argnums=2)(x, raw, 5.0)
        y_ref, ld_ref = ref.forward_and_log_det(x)
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-12)
        np.testing.assert_allclose(np.asarray(ld), np.asarray(ld_ref), atol=1e-10)
        xi, ldi = jax.jit(rq_spline_inverse, static_argnums=2)(y, raw, 5.0)
        xi_ref, ldi_ref = ref.inverse_and_log_det(y)
        np.testing.assert_allclose(np.asarray(xi), np.asarray(xi_ref), atol=1e-8)
        np.testing.assert_allclose(np.asarray(ldi), np.asarray(ldi_ref), atol=1e-8)
        np.testing.assert_allclose(np.asarray(xi), np.asarray(x), atol=1e-8)


def test_sorted_set_summary_is_permutation_invariant():
    from amortflow.nets import SortedSetSpec

    for shape in ((65,), (20, 3)):
        net = build_summary(SortedSetSpec(hidden=(16,), out_dim=4), obs_ndim=len(shape))
        y = jax.random.normal(jax.random.PRNGKey(0), (3,) + shape)
        p = net.init(jax.random.PRNGKey(1), y)
        perm = jax.random.permutation(jax.random.PRNGKey(2), shape[0])
        np.testing.assert_allclose(np.asarray(net.apply(p, y)), np.asarray(net.apply(p, y[:, perm])), atol=1e-6)
        assert net.apply(p, y).shape == (3, 4)


def test_spline_gradients_match_distrax():
    """The inverse (the training direction) has its own vectorized kernel: its gradients with
    respect to the spline parameters and the input must equal distrax's."""
    import distrax

    from amortflow.nets.splines import rq_spline_forward, rq_spline_inverse

    with jax.enable_x64(True):
        raw = 1.5 * jax.random.normal(jax.random.PRNGKey(3), (200, 2, 25), jnp.float64)
        y = 3.0 * jax.random.normal(jax.random.PRNGKey(4), (200, 2), jnp.float64)

        def ours(r, v, fn):
            out, ld = fn(v, r, 5.0)
            return jnp.sum(jnp.sin(out)) + jnp.sum(ld)

        def ref(r, v, direction):
            bij = distrax.RationalQuadraticSpline(r, -5.0, 5.0, boundary_slopes="identity")
            out, ld = getattr(bij, direction)(v)
            return jnp.sum(jnp.sin(out)) + jnp.sum(ld)

        for fn, direction in ((rq_spline_inverse, "inverse_and_log_det"), (rq_spline_forward, "forward_and_log_det")):
            g = jax.grad(ours, argnums=(0, 1))(raw, y, fn)
            g_ref = jax.grad(ref, argnums=(0, 1))(raw, y, direction)
            for a, b in zip(g, g_ref):
                assert np.all(np.isfinite(np.asarray(a)))
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=1e-6)
