"""Symmetries of a model's observations: random transformations ``g`` with
``p(g(y) | theta) = p(y | theta)`` for every ``theta``.

A model that declares one (``make_model(..., symmetry=...)``) lets estimators trained on a FIXED
simulation bank see a freshly transformed copy of every training observation at every step
(data augmentation): the joint distribution of ``(theta, g(y))`` is that of ``(theta, y)``, so the
Bayes risk being minimised is unchanged, while the effective bank is as many times larger as the
group has elements. With a few tens of thousands of grid fields a convolutional summary otherwise
memorises the bank (benchmarks/README.md, spatial study). Online simulation needs none of this.

Factories return a :class:`Symmetry`; :func:`chain` composes them (applied left to right, each
with its own key), like ``optax.chain``:

    symmetry=chain(dihedral(), sign_flip())   # isotropic, zero-mean Gaussian field on a square grid

Shapes: ``apply(key, y)`` maps ONE observation ``[*obs_shape]`` to the same shape.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Symmetry(NamedTuple):
    """``name``: stored with the model's fingerprint and estimators; ``apply(key, y) -> y'``:
    one random group element applied to one observation."""

    name: str
    apply: Callable


def dihedral(axes: tuple[int, int] = (0, 1)) -> Symmetry:
    """The 8 symmetries of a square grid (4 rotations x transpose) on ``axes`` of the observation,
    uniformly at random: exact for a stationary ISOTROPIC field observed on a square grid (the
    two axes must have the same length)."""
    a, b = axes

    def apply(key, y):
        if y.shape[a] != y.shape[b]:
            raise ValueError(f"dihedral symmetry: axes {axes} of the observation must have equal "
                             f"lengths (a square grid), got shape {y.shape}")
        k = jax.random.randint(key, (), 0, 8)
        outs = []
        for i in range(8):  # static set of 8 layouts; select one (vmappable, no shape change)
            z = jnp.swapaxes(y, a, b) if i >= 4 else y
            outs.append(jnp.rot90(z, i % 4, axes=(a, b)))
        return jnp.select([k == i for i in range(8)], outs)

    return Symmetry(f"dihedral{tuple(axes)}", apply)


def flips(axes: tuple[int, ...] = (0,)) -> Symmetry:
    """Independent reversal of each of ``axes`` with probability 1/2: exact for a stationary
    field with a covariance symmetric in each axis (a rectangular grid), or a time-reversible
    stationary sequence (``axes=(0,)``)."""

    def apply(key, y):
        bits = jax.random.bernoulli(key, 0.5, (len(axes),))
        for j, ax in enumerate(axes):
            y = jnp.where(bits[j], jnp.flip(y, axis=ax), y)
        return y

    return Symmetry(f"flips{tuple(axes)}", apply)


def sign_flip() -> Symmetry:
    """``y -> -y`` with probability 1/2: exact for a zero-mean Gaussian (or any symmetric)
    observation model."""

    def apply(key, y):
        return jnp.where(jax.random.bernoulli(key), -y, y)

    return Symmetry("sign_flip", apply)


def permute_rows() -> Symmetry:
    """A uniformly random permutation of the leading axis: exact for iid rows. (A summary that
    is permutation invariant by construction gains nothing from it.)"""

    def apply(key, y):
        return jax.random.permutation(key, y, axis=0)

    return Symmetry("permute_rows", apply)


def chain(*symmetries: Symmetry) -> Symmetry:
    """Compose symmetries (applied in order, independent keys): the product of their groups."""
    if not symmetries or not all(isinstance(s, Symmetry) for s in symmetries):
        raise TypeError("chain: give one or more Symmetry values (dihedral(), flips(), sign_flip(), ...)")

    def apply(key, y):
        for k, s in zip(jax.random.split(key, len(symmetries)), symmetries):
            y = s.apply(k, y)
        return y

    return Symmetry("chain(" + ", ".join(s.name for s in symmetries) + ")", apply)


def augment_batch(symmetry: Symmetry, key, ys):
    """``ys [B, *obs_shape]`` -> each row transformed by its own random group element."""
    return jax.vmap(symmetry.apply)(jax.random.split(key, ys.shape[0]), ys)


def check_symmetry(name: str, symmetry: Symmetry, sample_prior, simulate, log_likelihood,
                   num_probes: int = 4) -> None:
    """Refuse a declared symmetry under which the log likelihood changes: a wrong one would
    train an estimator on data the model cannot produce (silently wrong posteriors).

    Raises:
      ValueError: naming the symmetry and the largest log-likelihood change found.
    """
    if not isinstance(symmetry, Symmetry):
        raise TypeError(f"make_model({name!r}): symmetry must be an amortflow.models.symmetry.Symmetry "
                        f"(dihedral(), flips(), sign_flip(), permute_rows(), chain(...)), got {type(symmetry).__name__}")

    def probe(key):
        k1, k2, k3 = jax.random.split(key, 3)
        theta = sample_prior(k1, num_probes)
        y = jax.vmap(simulate)(jax.random.split(k2, num_probes), theta)
        y2 = augment_batch(symmetry, k3, y)
        ll = jax.vmap(log_likelihood)(theta, y)
        if y2.shape != y.shape:
            raise ValueError(f"make_model({name!r}): symmetry {symmetry.name} changed the observation's "
                             f"shape {y.shape[1:]} to {y2.shape[1:]}")
        return ll, jax.vmap(log_likelihood)(theta, y2)

    ll, ll2 = jax.jit(probe)(jax.random.PRNGKey(7))
    gap = float(jnp.max(jnp.abs(ll - ll2) / (1.0 + jnp.abs(ll))))
    if not gap <= 1e-4:
        raise ValueError(
            f"make_model({name!r}): symmetry {symmetry.name} changes the log likelihood of simulated data "
            f"(largest relative change {gap:.2g}); it is not a symmetry of this model -- drop it, or declare "
            "one that leaves p(y | theta) unchanged")
