"""Batched many-chain samplers across datasets: ChEES-HMC, MEADS and NUTS (BlackJAX).

Each sampler is a pure per-dataset function ``(key, y, init [C0, d]) -> DatasetOutput`` that
runs warmup *and* sampling in one traced function (BlackJAX adaptation parameters hold Python
callables) with ``log_density(theta, y)`` taking the observation as an argument. It is mapped
over datasets by :mod:`amortflow.mcmc.batching` (dataset axis sharded over devices, ``lax.map``
on CPU / ``vmap`` on accelerators) and compiled once per ``(sampler, model, config, K)``.

Chain layout: ``C = C0 * M`` chains, consecutive blocks of ``M`` chains form a superchain and
start at the same point ``init[i]`` (as :func:`amortflow.diagnostics.nested_rhat` expects).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from blackjax.adaptation.base import get_filter_adapt_info_fn

from amortflow.mcmc import batching
from amortflow.mcmc._stats import convergence_stats
from amortflow.mcmc.config import CheesConfig, MeadsConfig, NutsConfig
from amortflow.models import Model

_INFO_KEYS = {"is_divergent", "num_integration_steps", "acceptance_rate", "num_trajectory_expansions"}


class DatasetOutput(NamedTuple):
    """What one dataset's compiled run returns (batched: leading ``[K]`` on every field)."""

    draws: jax.Array  # [S, d] pooled over chains (thinned; subsampled if num_output_draws)
    nested_rhat: jax.Array  # [d]
    rhat: jax.Array  # [d]
    ess_bulk: jax.Array  # [d]
    ess_tail: jax.Array  # [d]
    divergences: jax.Array  # [] sampling-phase divergent transitions, all chains
    warmup_divergences: jax.Array  # []
    step_size: jax.Array  # [] (NUTS: mean over chains)
    mean_num_steps: jax.Array  # [] mean leapfrog steps per sampling transition
    max_tree_depth: jax.Array  # [] NUTS: max doublings in sampling; others 0
    accept_rate: jax.Array  # [] mean acceptance probability in sampling
    num_grad_evals: jax.Array  # [] warmup + sampling, all chains (int32; float32 beyond 2^31)
    all_finite: jax.Array  # [] every draw finite


class MCMCResult(NamedTuple):
    """Result of a batched sampler over ``K`` datasets (numpy arrays, leading axis ``K``).

    draws: ``[K, S, d]`` pooled over chains, thinned, unconstrained.
    nested_rhat, rhat, ess_bulk, ess_tail: ``[K, d]``.
    divergences, warmup_divergences: ``[K]`` counts of divergent transitions.
    step_size, mean_num_steps, max_tree_depth, accept_rate: ``[K]`` tuning / trajectory stats.
    num_grad_evals: ``[K]`` gradient evaluations (warmup + sampling, all chains).
    converged: ``[K]`` gate: ``max_d nested_rhat < rhat_threshold``, all draws finite,
      ``min_d ess_bulk >= min_ess``.
    wall_time_s: ``[num_batches]`` wall time of each compiled call (bucket of datasets).
    compile_time_s: ``[num_batches]`` compile time spent before each call (0 when cached).
    batch_size: datasets per call (bucket size, padded).
    sampler: ``"chees"`` | ``"meads"`` | ``"nuts"``.
    """

    draws: np.ndarray
    nested_rhat: np.ndarray
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    divergences: np.ndarray
    warmup_divergences: np.ndarray
    step_size: np.ndarray
    mean_num_steps: np.ndarray
    max_tree_depth: np.ndarray
    accept_rate: np.ndarray
    num_grad_evals: np.ndarray
    converged: np.ndarray
    wall_time_s: np.ndarray
    compile_time_s: np.ndarray
    batch_size: int
    sampler: str

    @property
    def wall_time_per_dataset_s(self) -> float:
        return float(np.sum(self.wall_time_s)) / max(len(self.converged), 1)


# --------------------------------------------------------------------------- helpers


def _pooled_output(key, chains, num_output_draws):
    """``chains [C, N, d]`` -> pooled ``[S, d]`` (random subset if ``num_output_draws``)."""
    c, n, d = chains.shape
    pooled = chains.reshape(c * n, d)
    if num_output_draws is None or num_output_draws >= c * n:
        return pooled
    idx = jax.random.choice(key, c * n, (num_output_draws,), replace=False)
    return pooled[idx]


def _finish(key, chains, num_superchains, config, **stats):
    """Common tail: diagnostics and pooled draws from ``chains [C, N, d]``."""
    conv = convergence_stats(chains, num_superchains)
    return DatasetOutput(
        draws=_pooled_output(key, chains, config.num_output_draws),
        all_finite=jnp.all(jnp.isfinite(chains)),
        **conv,
        **stats,
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


# --------------------------------------------------------------------------- per-dataset kernels


def chees_one(key, y, init, *, model: Model, config: CheesConfig) -> DatasetOutput:
    """ChEES-HMC warmup + sampling for one dataset (``init [C0, d]``)."""
    logdensity = lambda theta: model.log_density(theta, y)  # noqa: E731
    cfg = config
    c = cfg.num_chains
    k_warm, k_samp, k_out = jax.random.split(key, 3)
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
    kernel = blackjax.dynamic_hmc(logdensity, **params)

    def step(k, s):
        return jax.vmap(kernel.step)(jax.random.split(k, c), s)

    pos, info = _scan_sample(k_samp, step, states, cfg.num_samples, cfg.thin)
    chains = jnp.swapaxes(pos, 0, 1)  # [C, N, d]
    grads = (jnp.sum(winfo.info.num_integration_steps) + jnp.sum(info.num_integration_steps)
             + c)
    return _finish(
        k_out, chains, cfg.num_superchains, cfg,
        divergences=jnp.sum(info.is_divergent),
        warmup_divergences=jnp.sum(winfo.info.is_divergent),
        step_size=jnp.asarray(params["step_size"], jnp.float32),
        mean_num_steps=jnp.mean(info.num_integration_steps.astype(jnp.float32)),
        max_tree_depth=jnp.zeros((), jnp.int32),
        accept_rate=jnp.mean(info.acceptance_rate),
        num_grad_evals=grads.astype(jnp.int32),
    )


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


def meads_one(key, y, init, *, model: Model, config: MeadsConfig) -> DatasetOutput:
    """MEADS warmup + generalized-HMC sampling for one dataset (``init [C0, d]``)."""
    logdensity = lambda theta: model.log_density(theta, y)  # noqa: E731
    cfg = config
    c = cfg.num_chains
    k_warm, k_samp, k_out = jax.random.split(key, 3)
    warmup = blackjax.meads_adaptation(
        logdensity, c, num_folds=cfg.num_folds,
        step_size_multiplier=cfg.step_size_multiplier,
        damping_slowdown=cfg.damping_slowdown,
        adaptation_info_fn=get_filter_adapt_info_fn(info_keys=_INFO_KEYS),
    )
    # Interleaved layout: BlackJAX's folds are contiguous blocks of chains, so superchain-major
    # order would give a fold only one or two distinct starting points (measured: step size
    # collapse). Chain j starts at init[j % C0].
    c0, m = cfg.num_superchains, cfg.chains_per_superchain
    (states, params), winfo = warmup.run(k_warm, jnp.tile(init, (m, 1)), cfg.num_warmup)
    # MEADS reshuffles chains across folds during warmup; restore superchain-major order so
    # nested R-hat groups the chains that really share a starting point.
    origin = _meads_chain_origin(k_warm, c, cfg.num_folds, cfg.num_warmup)
    order = jnp.argsort((origin % c0) * m + origin // c0)
    states = jax.tree.map(lambda a: a[order], states)
    kernel = blackjax.ghmc(logdensity, **params)

    def step(k, s):
        return jax.vmap(kernel.step)(jax.random.split(k, c), s)

    pos, info = _scan_sample(k_samp, step, states, cfg.num_samples, cfg.thin)
    chains = jnp.swapaxes(pos, 0, 1)
    # one leapfrog step per GHMC transition; during warmup one fold in num_folds is frozen
    active_warm = c - (c // cfg.num_folds if cfg.num_folds > 1 else 0)
    grads = c + cfg.num_warmup * active_warm + cfg.num_samples * cfg.thin * c
    return _finish(
        k_out, chains, cfg.num_superchains, cfg,
        divergences=jnp.sum(info.is_divergent),
        warmup_divergences=jnp.sum(winfo.info.is_divergent),
        step_size=jnp.asarray(params["step_size"], jnp.float32),
        mean_num_steps=jnp.ones((), jnp.float32),
        max_tree_depth=jnp.zeros((), jnp.int32),
        accept_rate=jnp.mean(info.acceptance_rate),
        num_grad_evals=jnp.asarray(grads, jnp.int32),
    )


def nuts_one(key, y, init, *, model: Model, config: NutsConfig) -> DatasetOutput:
    """NUTS with per-chain window adaptation for one dataset (``init [num_chains, d]``)."""
    logdensity = lambda theta: model.log_density(theta, y)  # noqa: E731
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
    return _finish(
        k_out, pos, cfg.num_chains, cfg,
        divergences=jnp.sum(info.is_divergent),
        warmup_divergences=jnp.sum(winfo.is_divergent),
        step_size=jnp.mean(step_size).astype(jnp.float32),
        mean_num_steps=jnp.mean(info.num_integration_steps.astype(jnp.float32)),
        max_tree_depth=jnp.max(info.num_trajectory_expansions).astype(jnp.int32),
        accept_rate=jnp.mean(info.acceptance_rate),
        num_grad_evals=grads.astype(jnp.int32),
    )


SAMPLERS: dict[str, Callable] = {"chees": chees_one, "meads": meads_one, "nuts": nuts_one}


def sampler_name(config) -> str:
    return config.name


# --------------------------------------------------------------------------- batched runner

_COMPILED: dict = {}


def _runner(model: Model, config):
    """Jitted, sharded ``(active [Kp], keys [Kp], ys, init) -> DatasetOutput`` (memoised)."""
    name = sampler_name(config)
    one = SAMPLERS[name]
    return batching.cached_dataset_map(
        (name, model, config),
        lambda: (lambda k, y, x0: one(k, y, x0, model=model, config=config)),
        batch_size=batching.default_batch_size(config.batch_size),
    )


def _compiled_call(runner, args):
    """AOT-compile ``runner`` for these argument shapes once; returns (compiled, compile_s)."""
    shapes = tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(args))
    key = (id(runner), shapes)
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    t0 = time.perf_counter()
    compiled = runner.lower(*args).compile()
    _COMPILED[key] = compiled
    return compiled, time.perf_counter() - t0


def converged_gate(out: DatasetOutput | MCMCResult, config) -> np.ndarray:
    """``[K]``: max_d nested R-hat below threshold, finite draws, enough bulk ESS."""
    nr = np.asarray(out.nested_rhat)
    ok = np.all(np.isfinite(nr), axis=-1) & (np.max(nr, axis=-1) < config.rhat_threshold)
    if isinstance(out, DatasetOutput):
        ok &= np.asarray(out.all_finite)
    if config.min_ess > 0:
        ok &= np.min(np.asarray(out.ess_bulk), axis=-1) >= config.min_ess
    return ok


def run_sampler_keys(keys, model: Model, ys, init, config, *, bucket_size: int | None = None,
                     progress: bool = False) -> MCMCResult:
    """Batched sampler with one PRNG key per dataset (``keys [K]``); see :func:`run_chees`.

    Datasets are processed in buckets of ``bucket_size`` (default: all ``K`` padded to a
    multiple of the device count); every bucket has the same padded shape, so one compiled
    function serves all of them. A dataset's result depends only on its own key, data and
    starting points, not on which bucket it lands in.
    """
    ys = jnp.asarray(ys)
    init = jnp.asarray(init, dtype=jnp.result_type(float))
    k = ys.shape[0]
    if init.shape[:2] != (k, config.num_superchains) or init.shape[2] != model.dim:
        raise ValueError(
            f"{config.name}: init must be [K={k}, num_superchains={config.num_superchains}, "
            f"d={model.dim}], got {tuple(init.shape)}")
    n_dev = batching.num_devices()
    size = bucket_size or k
    size = -(-size // n_dev) * n_dev
    runner = _runner(model, config)
    outs, walls, compiles = [], [], []
    starts = range(0, k, size)
    it = starts
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm
        it = tqdm(starts, desc=f"{config.name} buckets", unit="bucket")
    for s0 in it:
        n = min(size, k - s0)
        rows, active = batching.pad_and_interleave(n, size, n_dev)
        rows = rows + s0
        args = (jnp.asarray(active), keys[rows], ys[rows], init[rows])
        compiled, c_s = _compiled_call(runner, args)
        t0 = time.perf_counter()
        out = compiled(*args)
        out = jax.tree.map(np.asarray, jax.block_until_ready(out))
        walls.append(time.perf_counter() - t0)
        compiles.append(c_s)
        inverse = np.argsort(np.where(active, rows, 2**62), kind="stable")[:n]
        outs.append(jax.tree.map(lambda o: o[inverse], out))
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)
    return MCMCResult(
        draws=out.draws, nested_rhat=out.nested_rhat, rhat=out.rhat, ess_bulk=out.ess_bulk,
        ess_tail=out.ess_tail, divergences=out.divergences,
        warmup_divergences=out.warmup_divergences, step_size=out.step_size,
        mean_num_steps=out.mean_num_steps, max_tree_depth=out.max_tree_depth,
        accept_rate=out.accept_rate, num_grad_evals=out.num_grad_evals.astype(np.int64),
        converged=converged_gate(out, config), wall_time_s=np.asarray(walls),
        compile_time_s=np.asarray(compiles), batch_size=size, sampler=config.name,
    )


def _run(key, model, ys, init, config, bucket_size, progress):
    k = jnp.asarray(ys).shape[0]
    return run_sampler_keys(jax.random.split(key, k), model, ys, init, config,
                            bucket_size=bucket_size, progress=progress)


def run_chees(key, model: Model, ys, init, config: CheesConfig | None = None, *,
              bucket_size: int | None = None, progress: bool = False) -> MCMCResult:
    """ChEES-HMC on every dataset at once.

    Args:
      key: PRNG key (split into one key per dataset).
      model: the model; ``log_density(theta, y)`` is compiled once for all datasets.
      ys: ``[K, *obs_shape]``.
      init: ``[K, num_superchains, d]`` superchain starting points (see
        :func:`amortflow.mcmc.initialize_positions`).
      config: :class:`CheesConfig` (default ``CheesConfig.auto()``).
      bucket_size: datasets per compiled call (default all).
      progress: tqdm bar over buckets.
    Returns:
      :class:`MCMCResult`.
    """
    return _run(key, model, ys, init, config or CheesConfig.auto(), bucket_size, progress)


def run_meads(key, model: Model, ys, init, config: MeadsConfig | None = None, *,
              bucket_size: int | None = None, progress: bool = False) -> MCMCResult:
    """MEADS on every dataset at once; arguments as :func:`run_chees`."""
    return _run(key, model, ys, init, config or MeadsConfig.auto(), bucket_size, progress)


def run_nuts(key, model: Model, ys, init, config: NutsConfig | None = None, *,
             bucket_size: int | None = None, progress: bool = False) -> MCMCResult:
    """NUTS (window adaptation per chain) on every dataset; ``init [K, num_chains, d]``."""
    return _run(key, model, ys, init, config or NutsConfig.auto(), bucket_size, progress)


def run_sampler(key, model: Model, ys, init, config, **kw) -> MCMCResult:
    """Dispatch on the config type (:class:`CheesConfig` / :class:`MeadsConfig` /
    :class:`NutsConfig`)."""
    return _run(key, model, ys, init, config, kw.get("bucket_size"), kw.get("progress", False))
