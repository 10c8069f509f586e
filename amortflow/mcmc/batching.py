"""Run a per-dataset function over a dataset axis, sharded over all devices.

Strategy: on CPU ``lax.map`` with a small batch size beats ``vmap`` for data-dependent loops
(NUTS, ChEES: ``vmap`` runs every lane to the longest), and two host devices
(``--xla_force_host_platform_device_count=2``) doubled throughput; on GPU/TPU ``vmap``
(measurements: the "Many-chain MCMC" section of ``benchmarks/README.md``). The dataset axis is
split over ``jax.devices()`` by :func:`shard_over_datasets`; each device maps over its own block.
How datasets are grouped into calls and map steps is a :class:`Layout` value.

Padding rows (to a multiple of the device count, or to a bucket size) carry ``active=False``;
under ``lax.map`` with batch size 1 the per-dataset function is skipped for them via
``lax.cond``, so padding costs (almost) nothing on CPU.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._backend import on_accelerator, shard_over_datasets, keys_for
from amortflow._compile import DEFAULT_CACHE, CompileCache
from amortflow.models.observation import Observation, observe, to_device


@dataclasses.dataclass(frozen=True)
class Layout:
    """How datasets are grouped for compiled calls.

    batch_size: datasets per ``lax.map`` step on each device; ``None`` = backend default (1 on
      CPU, full ``vmap`` on accelerators).
    bucket_size: datasets per compiled call (padded; rounded up to the device count); ``None`` =
      all datasets of the run in one call (a ladder uses its own ``bucket_size`` then).
    """

    batch_size: int | None = None
    bucket_size: int | None = None

    @property
    def map_batch_size(self) -> int | None:
        """The ``lax.map`` batch size to use on this backend (``None``: ``vmap``)."""
        return default_batch_size(self.batch_size)


def default_batch_size(batch_size: int | None) -> int | None:
    """``batch_size`` for ``lax.map``; ``None`` on accelerators means full ``vmap``."""
    if batch_size is not None:
        return int(batch_size)
    return None if on_accelerator() else 1


def num_devices() -> int:
    return len(jax.devices())


def _masked(fn: Callable) -> Callable:
    """``fn(*args)`` -> ``g(active, *args)`` returning zeros where ``active`` is False."""

    fn = jax.jit(fn)  # eval_shape below then reuses the trace instead of tracing fn twice

    def g(active, *args):
        def skip(*a):
            shapes = jax.eval_shape(fn, *a)
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        return jax.lax.cond(active, fn, skip, *args)

    return g


def _local_map(fn: Callable, batch_size: int | None) -> Callable:
    """Map ``fn`` over the leading axis of its arguments on one device.

    Padding rows must cost nothing, but ``lax.cond`` under ``vmap`` (which ``lax.map`` with a
    ``batch_size`` applies inside each batch) turns into a select that runs both branches. So
    the skip decision is taken per batch, outside the vmap: a batch with no active row is
    skipped by an un-batched ``cond``; ``batch_size=1`` skips every padding row.
    """
    if batch_size is None:
        return jax.vmap(_masked(fn))
    # jitted so that skip's eval_shape and run share one trace of the sampler (tracing BlackJAX
    # NUTS takes seconds; it used to happen twice per compilation)
    vfn = jax.jit(jax.vmap(fn))

    def run_batch(active, *args):
        def skip(*a):
            shapes = jax.eval_shape(vfn, *a)
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def run(*a):
            out = vfn(*a)
            return jax.tree.map(
                lambda o: jnp.where(active.reshape(active.shape + (1,) * (o.ndim - 1)), o, jnp.zeros_like(o)), out)

        return jax.lax.cond(jnp.any(active), run, skip, *args)

    def mapped(active, *args):
        k = active.shape[0]
        bs = max(1, min(batch_size, k))
        if k % bs:
            masked = _masked(fn)
            return jax.lax.map(lambda a: masked(*a), (active, *args), batch_size=batch_size)
        split = jax.tree.map(lambda a: a.reshape((k // bs, bs) + a.shape[1:]), (active, *args))
        out = jax.lax.map(lambda a: run_batch(*a), split)
        return jax.tree.map(lambda o: o.reshape((k,) + o.shape[2:]), out)

    return mapped


def build_dataset_map(fn: Callable, *, batch_size: int | None = None, devices=None) -> Callable:
    """Jitted ``g(active [K], *args [K, ...]) -> outputs [K, ...]`` of a per-dataset ``fn``.

    ``K`` must be a multiple of ``len(devices)``; the dataset axis is sharded over ``devices``
    (``jax.devices()`` by default) and each device runs ``lax.map(batch_size)`` (or ``vmap`` if
    ``batch_size is None``) over its block. Compiled once per argument shape.
    """
    return shard_over_datasets(_local_map(fn, batch_size), 0, devices)


def dataset_map_key(cache_key: Hashable, batch_size: int | None) -> tuple:
    """The :class:`CompileCache` key of :func:`cached_dataset_map` (device set included)."""
    return ("dataset_map", cache_key, batch_size, tuple(jax.devices()))


def cached_dataset_map(cache_key: Hashable, make_fn: Callable[[], Callable], *,
                       batch_size: int | None = None, cache: CompileCache | None = None) -> Callable:
    """:func:`build_dataset_map` of ``make_fn()``, held in ``cache`` (default
    :data:`amortflow._compile.DEFAULT_CACHE`) under ``cache_key`` (e.g. ``(sampler, model)``)."""
    cache = DEFAULT_CACHE if cache is None else cache
    runner, _ = cache.get(dataset_map_key(cache_key, batch_size),
                          lambda: build_dataset_map(make_fn(), batch_size=batch_size))
    return runner


def compile_for(key: Hashable, fn: Callable, args: tuple, cache: CompileCache | None = None,
                announce: Callable[[], None] | None = None):
    """Ahead-of-time compile jitted ``fn`` for the shapes of ``args`` once, held in ``cache``
    under ``key`` + shapes; ``announce()`` runs before a compilation (a progress message).
    Returns ``(compiled, compile_seconds)`` (0 when cached)."""
    cache = DEFAULT_CACHE if cache is None else cache
    leaves, treedef = jax.tree.flatten(args)
    shapes = (treedef, tuple((a.shape, str(a.dtype)) for a in leaves))

    def build():
        if announce is not None:
            announce()
        t0 = time.perf_counter()
        return fn.lower(*args).compile(), time.perf_counter() - t0

    (compiled, seconds), cached = cache.get(("compiled", key, shapes), build)
    return compiled, 0.0 if cached else seconds


def pad_and_interleave(num: int, size: int, n_dev: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order for ``num`` real datasets padded to ``size`` rows sharded over ``n_dev``.

    Returns ``(rows [size], active [size])``: ``rows[j]`` is the real dataset index placed at
    row ``j`` (padding repeats dataset 0), arranged so each device's contiguous block receives
    every ``n_dev``-th dataset, i.e. real work is spread evenly over devices.
    """
    if size % n_dev or size < num:
        raise ValueError(f"bucket size {size} must be >= {num} and a multiple of {n_dev}")
    order = np.arange(size).reshape(size // n_dev, n_dev).T.reshape(-1)  # row j -> slot order[j]
    active = order < num
    rows = np.where(active, order, 0)
    return rows, active


def bucket_size_for(n: int, max_bucket: int, n_dev: int | None = None) -> int:
    """Padded bucket size for ``n`` pending datasets.

    CPU: always ``max_bucket`` (rounded to the device count) -- padded rows are skipped by
    ``lax.cond`` inside ``lax.map``, so padding is free and every call of a rung reuses ONE
    compiled function. Accelerators (``vmap``: padded lanes cost compute): the next power of two
    (times the device count) up to ``max_bucket``, so few distinct shapes occur."""
    n_dev = n_dev or num_devices()
    cap = -(-max_bucket // n_dev) * n_dev
    if not on_accelerator():
        return cap
    size = n_dev
    while size < n and size < cap:
        size *= 2
    return min(size, cap)


def map_over_datasets(fn: Callable, *args: Any, batch_size: int | None = None,
                      size: int | None = None, runner: Callable | None = None):
    """Apply per-dataset ``fn`` to ``args`` (pytrees with leading axis ``K``), sharded.

    Pads ``K`` to ``size`` (default: the next multiple of the device count), spreads the real
    datasets over devices, runs, and returns outputs for the ``K`` real datasets in order.
    ``runner`` (from :func:`build_dataset_map` / :func:`cached_dataset_map`) avoids re-jitting.
    """
    k = jax.tree.leaves(args)[0].shape[0]
    n_dev = num_devices()
    size = size or -(-k // n_dev) * n_dev
    rows, active = pad_and_interleave(k, size, n_dev)
    if runner is None:
        runner = build_dataset_map(fn, batch_size=default_batch_size(batch_size))
    padded = jax.tree.map(lambda a: jnp.asarray(a)[rows], args)
    out = runner(jnp.asarray(active), *padded)
    inverse = np.argsort(np.where(active, rows, size + np.arange(size)), kind="stable")[:k]
    return jax.tree.map(lambda o: o[inverse], out)


def as_batch(obs) -> Observation:
    """A batched :class:`~amortflow.models.observation.Observation` on device from ``ys [K, ...]``
    or an Observation (every leaf must have the same leading ``K``)."""
    obs = to_device(observe(obs))
    k = obs.num_datasets
    bad = [a.shape for a in jax.tree.leaves(obs) if a.ndim == 0 or a.shape[0] != k]
    if bad:
        raise ValueError(f"observation leaves must share the leading dataset axis K={k}, got {bad}")
    return obs


def dataset_ids_or_none(dataset_ids, k: int) -> np.ndarray | None:
    """``dataset_ids`` as an integer array ``[K]`` (checked: distinct, ``0 <= id < 2**31``)."""
    if dataset_ids is None:
        return None
    ids = np.asarray(dataset_ids)
    if ids.shape != (k,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"dataset_ids must be {k} integers, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31 or np.unique(ids).size != k):
        raise ValueError("dataset_ids must be distinct and in [0, 2**31)")
    return ids


def fold_in_each(key, ids) -> jax.Array:
    """``[n]`` keys ``fold_in(key, ids[i])`` (ids: dataset positions or stable dataset ids)."""
    return keys_for(key, ids)
