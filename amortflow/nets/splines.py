"""Rational-quadratic spline (Durkan et al., 2019) with linear identity tails, vectorised for
batches of per-element splines.

Same parameterisation as ``distrax.RationalQuadraticSpline(params, -bound, bound,
boundary_slopes="identity")`` (tests check values and gradients), with two layouts chosen for
what each direction is used for:

- forward (sampling, large batches, no gradient): the bin axis is unrolled (``K`` is small), so
  every operation runs over the whole batch of elements instead of over a minor axis of length
  ``K``; the bin is located by counting knot comparisons and its parameters picked with selects.
  This made the sampling pass several times faster than distrax's kernel and than the layout
  below (benchmarks/README.md).
- inverse (density evaluation, i.e. training under ``grad``): the bin axis stays a minor axis
  and the bin is picked by a one-hot contraction, whose reverse-mode derivative is a few ops
  instead of hundreds of tiny slice/select transposes (much faster gradients).

Shapes: ``x [...]`` and ``params [..., 3K + 1]`` (``K`` bins; the first and last slope
parameters are unused because the boundary slopes are fixed at one).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MIN_BIN = 1e-4
MIN_SLOPE = 1e-4
#: floor of the inverse's discriminant (exactly >= MIN_SLOPE**2 = 1e-8 in exact arithmetic)
_MIN_DISCRIMINANT = 1e-12
_SLOPE_OFFSET = float(np.log(np.expm1(1.0 - MIN_SLOPE)))  # softplus(0 + offset) + MIN_SLOPE = 1


def _knots(params, bound):
    """Per-bin lists (length K) of left knots, widths, heights and slopes, each ``[...]``
    (unrolled over bins: the fast layout for the forward pass, see the module docstring)."""
    k = (params.shape[-1] - 1) // 3
    u = [params[..., i] for i in range(params.shape[-1])]
    total = 2.0 * bound

    def sizes(us):
        m = us[0]
        for v in us[1:]:
            m = jnp.maximum(m, v)
        e = [jnp.exp(v - m) for v in us]
        tot = e[0]
        for v in e[1:]:
            tot = tot + v
        scale = (total - k * MIN_BIN) / tot
        return [v * scale + MIN_BIN for v in e]

    w, h = sizes(u[:k]), sizes(u[k : 2 * k])
    one = jnp.ones_like(u[0])
    slopes = [one] + [jax.nn.softplus(v + _SLOPE_OFFSET) + MIN_SLOPE for v in u[2 * k + 1 : 3 * k]] + [one]
    xk, yk = [jnp.full_like(u[0], -bound)], [jnp.full_like(u[0], -bound)]
    for i in range(k - 1):
        xk.append(xk[-1] + w[i])
        yk.append(yk[-1] + h[i])
    return w, h, xk, yk, slopes


def _pick(values, masks):
    """``values[idx]`` elementwise, with ``masks[i] = (v >= knot_{i+1})`` (monotone in i)."""
    out = values[0]
    for i, m in enumerate(masks):
        out = jnp.where(m, values[i + 1], out)
    return out


def _bin(knots, v, w, h, xk, yk, slopes):
    masks = [v >= kn for kn in knots[1:]]
    return (_pick(xk, masks), _pick(w, masks), _pick(yk, masks), _pick(h, masks),
            _pick(slopes[:-1], masks), _pick(slopes[1:], masks))


def _bin_vectorized(v, params, bound):
    """The bin of ``v [...]`` and its ``(x0, w, y0, h, d0, d1)``, with the bin axis kept as a
    minor axis and the bin picked by a one-hot contraction (located on the output knots).

    Its reverse-mode derivative is a handful of ops (softmax, cumsum and one-hot transposes),
    where the unrolled layout's is hundreds of tiny slice/select transposes (benchmarks/README.md
    has the timings). Used by the inverse (density evaluation, i.e. training).
    """
    k = (params.shape[-1] - 1) // 3
    scale = 2.0 * bound - k * MIN_BIN
    w = jax.nn.softmax(params[..., :k], axis=-1) * scale + MIN_BIN
    h = jax.nn.softmax(params[..., k : 2 * k], axis=-1) * scale + MIN_BIN
    inner = jax.nn.softplus(params[..., 2 * k + 1 : 3 * k] + _SLOPE_OFFSET) + MIN_SLOPE
    one = jnp.ones_like(params[..., :1])
    d = jnp.concatenate([one, inner, one], axis=-1)  # [..., K + 1]
    xk = jnp.cumsum(w, axis=-1) - w - bound  # left knots [..., K]
    yk = jnp.cumsum(h, axis=-1) - h - bound
    idx = jnp.sum((v[..., None] >= yk[..., 1:]).astype(jnp.int32), axis=-1)
    onehot = (idx[..., None] == jnp.arange(k)).astype(params.dtype)

    def pick(a):
        return jnp.sum(onehot * a, axis=-1)

    return pick(xk), pick(w), pick(yk), pick(h), pick(d[..., :-1]), pick(d[..., 1:])


def rq_spline_forward(x, params, bound):
    """``y = f(x)`` and ``log f'(x)``, elementwise; ``params [..., 3K+1]`` matches ``x [...]``."""
    w, h, xk, yk, slopes = _knots(params, bound)
    x0, wb, y0, hb, d0, d1 = _bin(xk, x, w, h, xk, yk, slopes)
    s = hb / wb
    z = jnp.clip((x - x0) / wb, 0.0, 1.0)
    z1mz = z * (1.0 - z)
    denom = s + (d0 + d1 - 2.0 * s) * z1mz
    y = y0 + hb * (s * z * z + d0 * z1mz) / denom
    logdet = 2.0 * jnp.log(s) + jnp.log(d1 * z * z + 2.0 * s * z1mz + d0 * (1.0 - z) ** 2) - 2.0 * jnp.log(denom)
    inside = jnp.abs(x) < bound
    return jnp.where(inside, y, x), jnp.where(inside, logdet, 0.0)


def rq_spline_inverse(y, params, bound):
    """``x = f^{-1}(y)`` and ``log |dx/dy|``, elementwise.

    Differentiable everywhere (training takes its gradient): elements outside ``[-bound,
    bound]`` (identity tails) are evaluated on the spline at 0 and discarded, and the root's
    discriminant is floored at a tiny positive value. Its exact value is ``>= MIN_SLOPE^2``,
    but for a bin of extreme slope ``s = h / w`` (up to ``2 bound / MIN_BIN``) float32
    cancellation can make it ``<= 0``; ``sqrt``'s infinite derivative there times the zero
    derivative of the floor made the gradient NaN (online GEV training diverged on one rare
    heavy-tailed dataset)."""
    inside = jnp.abs(y) < bound
    y_in = jnp.where(inside, y, 0.0)
    x0, wb, y0, hb, d0, d1 = _bin_vectorized(y_in, params, bound)
    s = hb / wb
    t = jnp.clip((y_in - y0) / hb, 0.0, 1.0)
    slopes_term = d0 + d1 - 2.0 * s
    c = -s * t
    b = d0 - slopes_term * t
    a = s - b
    sq = jnp.sqrt(jnp.maximum(b * b - 4.0 * a * c, _MIN_DISCRIMINANT))
    # the numerically stable form of the root in [0, 1], chosen by the sign of b
    num = jnp.where(b >= 0, 2.0 * c, -b + sq)
    den = jnp.where(b >= 0, -b - sq, 2.0 * a)
    z = jnp.clip(num / den, 0.0, 1.0)
    z1mz = z * (1.0 - z)
    denom = s + slopes_term * z1mz
    x = x0 + wb * z
    logdet = -2.0 * jnp.log(s) - jnp.log(d1 * z * z + 2.0 * s * z1mz + d0 * (1.0 - z) ** 2) + 2.0 * jnp.log(denom)
    return jnp.where(inside, x, y), jnp.where(inside, logdet, 0.0)
