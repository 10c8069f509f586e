"""Conditional normalizing flow: coupling layers with affine (distrax ``ScalarAffine``) or
rational-quadratic-spline transforms (distrax's parameterisation, our faster kernel in
:mod:`amortflow.nets.splines`), fixed permutations and activation normalization.

Direction convention: ``forward`` maps base noise ``z ~ N(0, I)`` to parameters ``x`` (sampling);
``inverse`` maps ``x`` to ``z`` (density evaluation). Both return the log |det| of the map they
apply, so

    log q(x | c) = log N(inverse(x)) + logdet_inverse(x) = log N(z) - logdet_forward(z).

Shapes: ``x``/``z`` are ``[..., d]``; the context ``c`` is ``[..., c_dim]`` and only needs to
*broadcast* against ``x``'s batch axes. Passing ``c`` as ``[K, 1, c_dim]`` with ``x`` of shape
``[K, S, d]`` evaluates every context-dependent projection once per dataset, not once per draw.
"""
from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from amortflow.nets.layers import MLP, activation
from amortflow.nets.specs import FlowSpec
from amortflow.nets.splines import rq_spline_forward, rq_spline_inverse

_LOG_2PI = float(np.log(2.0 * np.pi))


def std_normal_logpdf(z):
    """``log N(z; 0, I)`` summed over the last axis: ``[..., d] -> [...]``."""
    return -0.5 * jnp.sum(z * z, axis=-1) - 0.5 * z.shape[-1] * _LOG_2PI


def _permutations(dim: int, num_layers: int, seed: int):
    rng = np.random.default_rng(seed)
    perms = []
    for i in range(num_layers):
        # reversal alternating with random shuffles: every coordinate is soon conditioned on all
        perms.append(np.arange(dim)[::-1] if i % 2 == 0 else rng.permutation(dim))
    return [tuple(int(v) for v in p) for p in perms]


class Coupling(nn.Module):
    """One coupling layer: the last ``dim - dim // 2`` coordinates are transformed, conditioned
    on the first ``dim // 2`` and on the context (for ``dim == 1``: on the context alone)."""

    dim: int
    spec: FlowSpec

    def setup(self):
        s = self.spec
        self.n_id = self.dim // 2
        self.n_tr = self.dim - self.n_id
        self.per = 3 * s.num_bins + 1 if s.transform == "spline" else 2
        if s.transform not in ("spline", "affine"):
            raise ValueError(f"unknown coupling transform {s.transform!r}; use spline or affine")
        width0 = s.hidden[0]
        self.ctx_proj = nn.Dense(width0, use_bias=self.n_id == 0)
        if self.n_id > 0:
            self.x_proj = nn.Dense(width0)
        self.head = MLP(s.hidden[1:], self.n_tr * self.per, s.activation, zero_last=True)

    def _raw(self, x_id, ctx, batch_shape):
        h = self.ctx_proj(ctx)
        if self.n_id > 0:
            h = h + self.x_proj(x_id)
        raw = self.head(activation(self.spec.activation)(h))
        raw = raw.reshape(raw.shape[:-1] + (self.n_tr, self.per))
        return jnp.broadcast_to(raw, batch_shape + (self.n_tr, self.per))

    def _transform(self, x_tr, raw, inverse):
        s = self.spec
        if s.transform == "spline":
            fn = rq_spline_inverse if inverse else rq_spline_forward
            return fn(x_tr, raw, s.bound)
        log_scale = s.max_log_scale * jnp.tanh(raw[..., 1] / s.max_log_scale)
        bij = distrax.ScalarAffine(shift=raw[..., 0], log_scale=log_scale)
        return bij.inverse_and_log_det(x_tr) if inverse else bij.forward_and_log_det(x_tr)

    def __call__(self, x, ctx, inverse: bool = False):
        x_id, x_tr = x[..., : self.n_id], x[..., self.n_id :]
        y_tr, ld = self._transform(x_tr, self._raw(x_id, ctx, x.shape[:-1]), inverse)
        return jnp.concatenate([x_id, y_tr], axis=-1), ld.sum(-1)


class ActNorm(nn.Module):
    """Learned per-coordinate affine map ``x = z * exp(log_scale) + loc`` (identity at init)."""

    dim: int

    def setup(self):
        self.loc = self.param("loc", nn.initializers.zeros, (self.dim,))
        self.log_scale = self.param("log_scale", nn.initializers.zeros, (self.dim,))

    def __call__(self, x, inverse: bool = False):
        ld = jnp.sum(self.log_scale)
        if inverse:
            return (x - self.loc) * jnp.exp(-self.log_scale), jnp.broadcast_to(-ld, x.shape[:-1])
        return x * jnp.exp(self.log_scale) + self.loc, jnp.broadcast_to(ld, x.shape[:-1])


class ConditionalFlow(nn.Module):
    """Conditional coupling flow over ``R^dim`` (see module docstring)."""

    dim: int
    spec: FlowSpec

    def setup(self):
        s = self.spec
        self.couplings = [Coupling(self.dim, s) for _ in range(s.num_layers)]
        if s.actnorm:
            self.norms = [ActNorm(self.dim) for _ in range(s.num_layers)]
        self.perms = _permutations(self.dim, s.num_layers, s.permutation_seed)

    def forward(self, z, ctx):
        """``z [..., d] -> (x [..., d], log|det dx/dz| [...])``."""
        total = jnp.zeros(z.shape[:-1], z.dtype)
        for i in range(self.spec.num_layers):
            if self.spec.actnorm:
                z, ld = self.norms[i](z)
                total = total + ld
            z, ld = self.couplings[i](z, ctx)
            total = total + ld
            z = z[..., np.asarray(self.perms[i])]
        return z, total

    def inverse(self, x, ctx):
        """``x [..., d] -> (z [..., d], log|det dz/dx| [...])``."""
        total = jnp.zeros(x.shape[:-1], x.dtype)
        for i in reversed(range(self.spec.num_layers)):
            x = x[..., np.argsort(self.perms[i])]
            x, ld = self.couplings[i](x, ctx, inverse=True)
            total = total + ld
            if self.spec.actnorm:
                x, ld = self.norms[i](x, inverse=True)
                total = total + ld
        return x, total

    def log_prob(self, x, ctx):
        """``log q(x | ctx)``: ``[..., d] -> [...]``."""
        z, ld = self.inverse(x, ctx)
        return std_normal_logpdf(z) + ld

    def sample_and_log_prob(self, z, ctx):
        """Push base noise ``z [..., d]`` through the flow: ``(x [..., d], log q(x) [...])``."""
        x, ld = self.forward(z, ctx)
        return x, std_normal_logpdf(z) - ld

    def __call__(self, x, ctx):
        return self.log_prob(x, ctx)
