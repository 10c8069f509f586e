"""Many-chain samplers as values: ChEES-HMC, MEADS and NUTS (BlackJAX), batched over datasets.

A per-dataset kernel is a pure function ``(key, obs, init [C0, d]) -> SamplerStats`` (model,
configuration and output size bound first, :meth:`Sampler.per_dataset`) that runs warmup *and*
sampling in one traced function (BlackJAX adaptation parameters hold Python callables) on
``model.log_density_obs(theta, obs)``: the observation -- data, temperature ``beta``, design --
is an argument, never closed over. :func:`run_sampler_keys` maps it over datasets with
:mod:`amortflow.mcmc.batching` (dataset axis sharded over devices, ``lax.map`` on CPU / ``vmap`` on
accelerators) and compiles it once per ``(sampler, model, num_output_draws, layout, shapes)`` in a
bounded :class:`~amortflow._compile.CompileCache`.

A :class:`Sampler` is ``(name, route, config, kernel)``; build one with the factories
``chees(**config)``, ``meads(**config)``, ``nuts(**config)`` (and their ``.cpu_profile()``,
``.accelerator()``, ``.auto()``).

Chain layout: ``C = C0 * M`` chains, consecutive blocks of ``M`` chains form a superchain and
start at the same point ``init[i]`` (as :func:`amortflow.diagnostics.nested_rhat` expects).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from blackjax.adaptation.base import get_filter_adapt_info_fn

from amortflow import diagnostics
from amortflow._compile import CompileCache
from amortflow.mcmc import batching
from amortflow.mcmc.batching import Layout
from amortflow.mcmc.config import CheesConfig, MeadsConfig, NutsConfig
from amortflow.mcmc.record import ConvergenceGate, SamplerStats, concat_rows, forward_to_stats, take_rows
from amortflow.models import Model

_INFO_KEYS = {"is_divergent", "num_integration_steps", "acceptance_rate", "num_trajectory_expansions"}


# --------------------------------------------------------------------------- kernel helpers


def _pooled_output(key, chains, num_output_draws):
    """``chains [C, N, d]`` -> pooled ``[S, d]`` (random subset if ``num_output_draws``)."""
    c, n, d = chains.shape
    pooled = chains.reshape(c * n, d)
    if num_output_draws is None or num_output_draws >= c * n:
        return pooled
    idx = jax.random.choice(key, c * n, (num_output_draws,), replace=False)
    return pooled[idx]


def _finish(key, chains, num_superchains, num_output_draws, info, warm_info, *, step_size,
            mean_num_steps, num_grad_evals, max_tree_depth=None) -> SamplerStats:
    """Common tail: diagnostics and pooled draws from ``chains [C, N, d]``; divergences and
    acceptance from the sampling (``info``) and warmup (``warm_info``) transition infos."""
    return SamplerStats(
        divergences=jnp.sum(info.is_divergent),
        warmup_divergences=jnp.sum(warm_info.is_divergent),
        step_size=jnp.asarray(step_size, jnp.float32),
        mean_num_steps=jnp.asarray(mean_num_steps, jnp.float32),
        max_tree_depth=jnp.zeros((), jnp.int32) if max_tree_depth is None else max_tree_depth.astype(jnp.int32),
        accept_rate=jnp.mean(info.acceptance_rate),
        num_grad_evals=jnp.asarray(num_grad_evals).astype(jnp.int32),
        draws=_pooled_output(key, chains, num_output_draws),
        nested_rhat=diagnostics.nested_rhat(chains, num_superchains),
        rhat=diagnostics.rhat(chains),
        ess_bulk=diagnostics.ess_bulk(chains),
        ess_tail=diagnostics.ess_tail(chains),
        all_finite=jnp.all(jnp.isfinite(chains)),
        converged=jnp.zeros((), bool),  # the gate is applied on the host, per run
    )


def _scan_sample(key, step, states, num_samples, thin):
    """Run ``num_samples * thin`` transitions of ``step(key, states) -> (states, info)``.

    Returns ``(positions [N, C, d], per-transition info stacked [N * thin, ...])``.
    """

    def one(carry, k):
        s, info = step(k, carry)
        return s, info

    def block(carry, k):
        s, infos = jax.lax.scan(one, carry, jax.random.split(k, thin))
        return s, (s.position, infos)

    _, (pos, infos) = jax.lax.scan(block, states, jax.random.split(key, num_samples))
    infos = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), infos)
    return pos, infos


def _start(init, m):
    """``init [C0, d]`` -> ``[C0 * M, d]``: each superchain's point repeated for its M chains."""
    return jnp.repeat(init, m, axis=0)


def _vmapped_step(kernel, c):
    def step(k, s):
        return jax.vmap(kernel.step)(jax.random.split(k, c), s)

    return step


# --------------------------------------------------------------------------- per-dataset kernels


def _ensemble_setup(key, obs, model: Model, config):
    """``(config, num_chains, logdensity, (k_warm, k_samp, k_out))`` of an ensemble sampler."""
    return (config, config.num_chains, lambda theta: model.log_density_obs(theta, obs),
            jax.random.split(key, 3))


def chees_one(key, obs, init, *, model: Model, config: CheesConfig,
              num_output_draws: int | None = None) -> SamplerStats:
    """ChEES-HMC warmup + sampling for one dataset (``obs`` one Observation, ``init [C0, d]``)."""
    cfg, c, logdensity, (k_warm, k_samp, k_out) = _ensemble_setup(key, obs, model, config)
    warmup = blackjax.chees_adaptation(
        logdensity, c,
        target_acceptance_rate=cfg.target_acceptance_rate,
        decay_rate=cfg.decay_rate,
        max_leapfrog_steps=cfg.max_leapfrog_steps,
        mass_matrix_estimation=cfg.mass_matrix,
        adaptation_info_fn=get_filter_adapt_info_fn(info_keys=_INFO_KEYS),
    )
    (states, params), winfo = warmup.run(
        k_warm, _start(init, cfg.chains_per_superchain), cfg.initial_step_size,
        optax.adam(cfg.learning_rate), cfg.num_warmup,
        max_sampling_steps=cfg.num_samples * cfg.thin,
    )
    step = _vmapped_step(blackjax.dynamic_hmc(logdensity, **params), c)
    pos, info = _scan_sample(k_samp, step, states, cfg.num_samples, cfg.thin)
    chains = jnp.swapaxes(pos, 0, 1)  # [C, N, d]
    grads = (jnp.sum(winfo.info.num_integration_steps) + jnp.sum(info.num_integration_steps)
             + c)
    return _finish(k_out, chains, cfg.num_superchains, num_output_draws, info, winfo.info,
                   step_size=params["step_size"], num_grad_evals=grads,
                   mean_num_steps=jnp.mean(info.num_integration_steps.astype(jnp.float32)))


def _meads_chain_origin(key, num_chains, num_folds, num_steps):
    """Initial index of the chain found at each position after ``meads_adaptation.run``.

    Replays the chain permutations of BlackJAX 1.7.1's MEADS warmup (every ``num_folds`` steps
    ``states = states[permutation(split(step_key, C + 1)[C], C)]``, step keys from
    ``split(split(key)[1], num_steps)``); checked by ``tests/test_mcmc.py``.
    """
    if num_folds <= 1:
        return jnp.arange(num_chains)
    _, key_adapt = jax.random.split(key)
    keys = jax.random.split(key_adapt, num_steps)

    def body(origin, xs):
        t, k = xs
        perm = jax.random.permutation(jax.random.split(k, num_chains + 1)[num_chains], num_chains)
        return jnp.where((t + 1) % num_folds == 0, origin[perm], origin), None

    origin, _ = jax.lax.scan(body, jnp.arange(num_chains), (jnp.arange(num_steps), keys))
    return origin


def meads_one(key, obs, init, *, model: Model, config: MeadsConfig,
              num_output_draws: int | None = None) -> SamplerStats:
    """MEADS warmup + generalized-HMC sampling for one dataset (``init [C0, d]``)."""
    cfg, c, logdensity, (k_warm, k_samp, k_out) = _ensemble_setup(key, obs, model, config)
    warmup = blackjax.meads_adaptation(
        logdensity, c, num_folds=cfg.num_folds,
        step_size_multiplier=cfg.step_size_multiplier,
        damping_slowdown=cfg.damping_slowdown,
        adaptation_info_fn=get_filter_adapt_info_fn(info_keys=_INFO_KEYS),
    )
    # Interleaved layout: BlackJAX's folds are contiguous blocks of chains, so superchain-major
    # order would give a fold only one or two distinct starting points (the step size then
    # collapsed). Chain j starts at init[j % C0].
    c0, m = cfg.num_superchains, cfg.chains_per_superchain
    (states, params), winfo = warmup.run(k_warm, jnp.tile(init, (m, 1)), cfg.num_warmup)
    # MEADS reshuffles chains across folds during warmup; restore superchain-major order so
    # nested R-hat groups the chains that really share a starting point.
    origin = _meads_chain_origin(k_warm, c, cfg.num_folds, cfg.num_warmup)
    order = jnp.argsort((origin % c0) * m + origin // c0)
    states = jax.tree.map(lambda a: a[order], states)
    step = _vmapped_step(blackjax.ghmc(logdensity, **params), c)
    pos, info = _scan_sample(k_samp, step, states, cfg.num_samples, cfg.thin)
    chains = jnp.swapaxes(pos, 0, 1)
    # one leapfrog step per GHMC transition; during warmup one fold in num_folds is frozen
    active_warm = c - (c // cfg.num_folds if cfg.num_folds > 1 else 0)
    grads = c + cfg.num_warmup * active_warm + cfg.num_samples * cfg.thin * c
    return _finish(k_out, chains, cfg.num_superchains, num_output_draws, info, winfo.info,
                   step_size=params["step_size"], mean_num_steps=1.0, num_grad_evals=grads)


def nuts_one(key, obs, init, *, model: Model, config: NutsConfig,
             num_output_draws: int | None = None) -> SamplerStats:
    """NUTS with per-chain window adaptation for one dataset (``init [num_chains, d]``)."""
    logdensity = lambda theta: model.log_density_obs(theta, obs)  # noqa: E731
    cfg = config
    k_chains, k_out = jax.random.split(key)

    def one_chain(k, x0):
        k_warm, k_samp = jax.random.split(k)
        warmup = blackjax.window_adaptation(
            blackjax.nuts, logdensity,
            initial_step_size=cfg.initial_step_size,
            target_acceptance_rate=cfg.target_acceptance_rate,
            adaptation_info_fn=get_filter_adapt_info_fn(info_keys=_INFO_KEYS),
            max_num_doublings=cfg.max_num_doublings,
        )
        (state, params), winfo = warmup.run(k_warm, x0, cfg.num_warmup)
        kernel = blackjax.nuts(logdensity, **params)
        pos, info = _scan_sample(k_samp, kernel.step, state, cfg.num_samples, cfg.thin)
        return pos, info, winfo.info, params["step_size"]

    pos, info, winfo, step_size = jax.vmap(one_chain)(
        jax.random.split(k_chains, cfg.num_chains), init)
    grads = (jnp.sum(winfo.num_integration_steps) + jnp.sum(info.num_integration_steps)
             + cfg.num_chains)
    return _finish(k_out, pos, cfg.num_chains, num_output_draws, info, winfo,
                   step_size=jnp.mean(step_size), num_grad_evals=grads,
                   mean_num_steps=jnp.mean(info.num_integration_steps.astype(jnp.float32)),
                   max_tree_depth=jnp.max(info.num_trajectory_expansions))


# --------------------------------------------------------------------------- samplers as values


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A many-chain sampler: a per-dataset kernel and its configuration (hashable: the compile key).

    name: ``"chees"`` | ``"meads"`` | ``"nuts"`` (labels results).
    route: route of datasets accepted on it (``"mcmc"`` for ChEES/MEADS, ``"nuts"`` for NUTS).
    config: algorithm settings and chain layout (:class:`CheesConfig`, ...).
    kernel: ``(key, obs, init [C0, d], *, model, config, num_output_draws) -> SamplerStats``.
    title: display name in reports (``"ChEES"``, ``"MEADS"``, ``"NUTS"``).
    """

    name: str
    route: str
    config: Any
    kernel: Callable = dataclasses.field(repr=False)
    title: str = ""

    @property
    def num_superchains(self) -> int:
        return self.config.num_superchains

    @property
    def num_chains(self) -> int:
        return self.config.num_chains

    @property
    def num_draws(self) -> int:
        """Draws per dataset before subsampling (``num_chains * num_samples``)."""
        return self.config.num_chains * self.config.num_samples

    def per_dataset(self, model: Model, num_output_draws: int | None = None) -> Callable:
        """``(key, obs, init [C0, d]) -> SamplerStats`` for one dataset of ``model``."""
        return functools.partial(self.kernel, model=model, config=self.config,
                                 num_output_draws=num_output_draws)

    def with_config(self, **config_kw) -> "Sampler":
        """The same sampler with some configuration fields replaced."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **config_kw))


@dataclasses.dataclass(frozen=True)
class SamplerFamily:
    """Factory of :class:`Sampler` values of one algorithm: ``family(**config_kw)`` (the
    configuration's defaults: accelerator settings), ``.cpu_profile(**kw)``, ``.accelerator(**kw)``,
    ``.auto(**kw)`` (by backend) and ``.from_config(config)``."""

    name: str
    route: str
    title: str
    config_type: type
    kernel: Callable = dataclasses.field(repr=False)

    def from_config(self, config) -> Sampler:
        if not isinstance(config, self.config_type):
            raise TypeError(f"{self.name}: expected a {self.config_type.__name__}, "
                            f"got {type(config).__name__}")
        return Sampler(self.name, self.route, config, self.kernel, self.title)

    def __call__(self, **config_kw) -> Sampler:
        return self.from_config(self.config_type(**config_kw))

    def accelerator(self, **config_kw) -> Sampler:
        return self.from_config(self.config_type.accelerator(**config_kw))

    def cpu_profile(self, **config_kw) -> Sampler:
        return self.from_config(self.config_type.cpu_profile(**config_kw))

    def auto(self, **config_kw) -> Sampler:
        return self.from_config(self.config_type.auto(**config_kw))


chees = SamplerFamily("chees", "mcmc", "ChEES", CheesConfig, chees_one)
meads = SamplerFamily("meads", "mcmc", "MEADS", MeadsConfig, meads_one)
nuts = SamplerFamily("nuts", "nuts", "NUTS", NutsConfig, nuts_one)


# --------------------------------------------------------------------------- batched runner


class MCMCResult(NamedTuple):
    """A batched sampler run over ``K`` datasets (NumPy, leading axis ``K``).

    stats: :class:`SamplerStats` ``[K, ...]`` (``converged`` from the run's gate,
      ``num_grad_evals`` int64); its fields are also readable directly (``res.draws``).
    wall_time_s: ``[num_buckets]`` wall time of each compiled call.
    compile_time_s: ``[num_buckets]`` compile time spent before each call (0 when cached).
    batch_size: datasets per call (bucket size, padded).
    sampler: the sampler's name.
    """

    stats: SamplerStats
    wall_time_s: np.ndarray
    compile_time_s: np.ndarray
    batch_size: int
    sampler: str

    __getattr__ = forward_to_stats

    @property
    def wall_time_per_dataset_s(self) -> float:
        return float(np.sum(self.wall_time_s)) / max(len(self.stats.converged), 1)


def _check_init(sampler: Sampler, model: Model, init, k: int):
    want = (k, sampler.num_superchains, model.dim)
    if tuple(init.shape) != want:
        raise ValueError(f"{sampler.name}: init must be [K={k}, num_superchains="
                         f"{sampler.num_superchains}, d={model.dim}], got {tuple(init.shape)}")


def _run_bucket(runner_key, runner, keys, obs, init, s0, n, size, cache, announce=None):
    """Datasets ``s0 .. s0 + n`` padded to ``size`` rows: ``(stats rows [n], wall_s, compile_s)``."""
    rows, active = batching.pad_and_interleave(n, size, batching.num_devices())
    rows = rows + s0
    args = (jnp.asarray(active), keys[rows], take_rows(obs, rows), init[rows])
    compiled, compile_s = batching.compile_for(runner_key, runner, args, cache, announce)
    t0 = time.perf_counter()
    out = jax.tree.map(np.asarray, jax.block_until_ready(compiled(*args)))
    wall = time.perf_counter() - t0
    inverse = np.argsort(np.where(active, rows, 2**62), kind="stable")[:n]
    return take_rows(out, inverse), wall, compile_s


def run_sampler_keys(keys, model: Model, obs, init, sampler: Sampler, *,
                     num_output_draws: int | None = None, gate: ConvergenceGate = ConvergenceGate(),
                     layout: Layout = Layout(), cache: CompileCache | None = None,
                     progress: bool = False) -> MCMCResult:
    """Batched sampler with one PRNG key per dataset.

    Args:
      keys: ``[K]`` PRNG keys; a dataset's result depends only on its key, observation and
        starting points, not on which other datasets share its call or bucket.
      model: the model (``log_density_obs`` is compiled once for all datasets).
      obs: ``ys [K, *obs_shape]`` or a batched :class:`~amortflow.models.Observation`.
      init: ``[K, num_superchains, d]`` superchain starting points
        (:func:`amortflow.mcmc.initialize_positions`).
      sampler: a :class:`Sampler` (``chees.auto()``, ``nuts.cpu_profile()``, ...).
      num_output_draws: pooled draws returned per dataset (random subset without replacement);
        ``None``: all ``num_chains * num_samples``.
      gate: sets ``stats.converged``.
      layout: :class:`Layout`; datasets run in buckets of ``layout.bucket_size`` (default all
        ``K``), padded to a multiple of the device count, so one compiled function serves all.
      cache: :class:`~amortflow._compile.CompileCache` (default ``DEFAULT_CACHE``).
      progress: tqdm bar over buckets.
    """
    obs = batching.as_batch(obs)
    init = jnp.asarray(init, dtype=jnp.result_type(float))
    k = obs.num_datasets
    _check_init(sampler, model, init, k)
    n_dev = batching.num_devices()
    size = -(-(layout.bucket_size or k) // n_dev) * n_dev
    cache_key = (sampler, model, num_output_draws)
    bs = layout.map_batch_size
    runner = batching.cached_dataset_map(
        cache_key, lambda: sampler.per_dataset(model, num_output_draws), batch_size=bs, cache=cache)
    runner_key = batching.dataset_map_key(cache_key, bs)
    starts = range(0, k, size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"{sampler.name} buckets", unit="bucket")
    msg = (f"[amortflow.mcmc] compiling {sampler.name} for {size} datasets per call (once per "
           "model, sampler and layout; tens of seconds on a CPU)")
    announce = (lambda: print(msg, flush=True)) if progress else None
    outs, walls, compiles = [], [], []
    for s0 in starts:
        out, wall, compile_s = _run_bucket(runner_key, runner, keys, obs, init, s0,
                                           min(size, k - s0), size, cache, announce)
        outs.append(out)
        walls.append(wall)
        compiles.append(compile_s)
    stats = concat_rows(outs)
    stats = stats._replace(num_grad_evals=stats.num_grad_evals.astype(np.int64))
    return MCMCResult(stats._replace(converged=gate(stats)), np.asarray(walls),
                      np.asarray(compiles), size, sampler.name)


def run_sampler(key, model: Model, obs, init, sampler: Sampler, *, dataset_ids=None,
                **kw) -> MCMCResult:
    """:func:`run_sampler_keys` with per-dataset keys from one ``key``: ``split(key, K)``, or
    ``fold_in(key, dataset_ids[i])`` when stable ``dataset_ids [K]`` are given (then a dataset's
    result does not depend on which others are in the call). Other arguments as there."""
    k = batching.as_batch(obs).num_datasets
    ids = batching.dataset_ids_or_none(dataset_ids, k)
    keys = jax.random.split(key, k) if ids is None else batching.fold_in_each(key, ids)
    return run_sampler_keys(keys, model, obs, init, sampler, **kw)


__all__ = ["Sampler", "SamplerFamily", "chees", "meads", "nuts", "chees_one", "meads_one",
           "nuts_one", "MCMCResult", "run_sampler", "run_sampler_keys"]
