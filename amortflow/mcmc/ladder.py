"""The sampler ladder: rung -> gate -> next rung for the datasets that failed -> reported failure.

A :class:`Ladder` is a tuple of :class:`Rung` values (a sampler, where its starting points come
from, the gate that accepts a dataset, the batch layout). Datasets that fail a rung's gate climb
to the next one; datasets move between rungs by gathering their indices into fixed-size buckets
(:func:`~amortflow.mcmc.batching.bucket_size_for`), so shapes -- and compiled functions -- are
reused across rungs and calls.

Keys: rung ``r`` uses ``skey = fold_in(key, r)``; its initialisation
``fold_in(fold_in(skey, 2**31 - 1), int(init from previous draws))``; dataset ``i`` samples with
``fold_in(skey, i)``, ``i`` its position in the call, or ``dataset_ids[i]`` when stable ids are
given (then its initialisation key is ``fold_in(init_key, dataset_ids[i])`` too, and a dataset's
result does not depend on which others share the call).
"""
from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._backend import on_accelerator
from amortflow._compile import CompileCache
from amortflow.mcmc import batching
from amortflow.mcmc.batching import Layout
from amortflow.mcmc.init import InitInfo, initialize_positions, initialize_positions_keys
from amortflow.mcmc.modes import MISSED_MODE_MIN_POINTS, missed_mode_check
from amortflow.mcmc.record import (
    ConvergenceGate, SamplerStats, describe_row, empty_stats, forward_to_stats, put_rows,
)
from amortflow.mcmc.samplers import MCMCResult, Sampler, chees, meads, nuts, run_sampler_keys
from amortflow.models import Model
from amortflow.models.observation import take

_INIT_FROM = ("candidates", "previous")


@dataclasses.dataclass(frozen=True)
class Rung:
    """One rung of a :class:`Ladder`.

    name: label reported per dataset (unique within a ladder).
    sampler: the :class:`~amortflow.mcmc.Sampler`; its ``route`` (``"mcmc"`` for ChEES/MEADS,
      ``"nuts"`` for NUTS) is the route of datasets accepted here.
    init_from: ``"candidates"`` (the amortized / PSIS draws given to :func:`run_ladder`) or
      ``"previous"`` (this dataset's draws from the rung before: work is reused).
    gate: :class:`~amortflow.mcmc.ConvergenceGate` that accepts a dataset on this rung.
    layout: :class:`~amortflow.mcmc.Layout`; ``bucket_size=None`` takes the ladder's.
    title: display name in failure reasons (default: the name with the sampler's title, e.g.
      ``"nuts_retry"`` -> ``"NUTS retry"``).
    """

    name: str
    sampler: Sampler
    init_from: str = "candidates"
    gate: ConvergenceGate = ConvergenceGate()
    layout: Layout = Layout()
    title: str = ""

    def __post_init__(self):
        if self.init_from not in _INIT_FROM:
            raise ValueError(f"Rung.init_from must be one of {_INIT_FROM}, got {self.init_from!r}")
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"Rung {self.name!r}: sampler must be a Sampler (e.g. mcmc.nuts.auto()), "
                            f"got {type(self.sampler).__name__}")

    @property
    def display_name(self) -> str:
        if self.title:
            return self.title
        words = self.name.split("_")
        if words[0] == self.sampler.name:
            words[0] = self.sampler.title or self.sampler.name
        return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Ladder:
    """Rungs tried in order, plus settings shared by all of them.

    bucket_size: maximum datasets per compiled call (rounded up to the device count).
    num_prior_draws: prior draws screened per dataset by the fallback initialisation.
    """

    rungs: tuple[Rung, ...]
    bucket_size: int = 64
    num_prior_draws: int = 1024

    def __post_init__(self):
        object.__setattr__(self, "rungs", tuple(self.rungs))
        if not self.rungs:
            raise ValueError("Ladder needs at least one rung")
        names = [r.name for r in self.rungs]
        if len(set(names)) != len(names):
            raise ValueError(f"Ladder rung names must be unique, got {names}")
        if self.bucket_size < 1:
            raise ValueError(f"Ladder.bucket_size must be >= 1, got {self.bucket_size}")

    def yielding(self, num_output_draws: int) -> "Ladder":
        """The same ladder with every rung's ``num_samples`` raised (never lowered) so that it
        yields at least ``num_output_draws`` draws per dataset (more draws per chain, same
        chains: the compiled layouts and the nested-R-hat grouping stay as configured)."""
        rungs = []
        for r in self.rungs:
            if r.sampler.num_draws < num_output_draws:
                need = -(-num_output_draws // r.sampler.num_chains)
                r = dataclasses.replace(r, sampler=r.sampler.with_config(num_samples=need))
            rungs.append(r)
        return dataclasses.replace(self, rungs=tuple(rungs))

    def check_num_draws(self, num_output_draws: int) -> None:
        """Every rung must yield at least ``num_output_draws`` draws per dataset."""
        for r in self.rungs:
            if r.sampler.num_draws < num_output_draws:
                raise ValueError(f"rung {r.name!r} yields {r.sampler.num_draws} draws per dataset "
                                 f"< num_output_draws={num_output_draws}")


def default_ladder(**kw) -> Ladder:
    """The backend's ladder (``kw``: :class:`Ladder` settings).

    Accelerators (the paper): ChEES 16 x 128 -> ChEES with 3x warmup from its own draws -> NUTS.
    CPU: MEADS 4 x 16 (the cheapest per converged dataset on the GEV benchmark) -> NUTS
    4 x (1000 + 1000) restarted from the candidates -> the same NUTS once more from its own
    draws. (A middle ChEES rung rescued some MEADS failures but its compilation cost more than
    NUTS alone on so few datasets.)
    """
    if on_accelerator():
        c = chees.accelerator()
        rungs = (
            Rung("chees", c),
            Rung("chees_long_warmup", c.with_config(num_warmup=3 * c.config.num_warmup),
                 init_from="previous"),
            Rung("nuts", nuts.accelerator(), init_from="previous"),
        )
        return Ladder(rungs, **kw)
    rungs = (
        # 4 datasets per lax.map step: GHMC has no data-dependent loop, so vmapping a few
        # datasets costs nothing extra and halves the per-op overhead (NUTS, whose trees differ
        # in depth, gains nothing)
        Rung("meads", meads.cpu_profile(num_superchains=4, chains_per_superchain=16,
                                        num_warmup=400, num_samples=50, thin=5),
             layout=Layout(batch_size=4)),
        # a dataset MEADS could not settle restarts from the PSIS-weighted candidates (or
        # likelihood-weighted prior draws): chains stuck where MEADS left them would not help
        Rung("nuts", nuts.cpu_profile(), init_from="candidates"),
        # the same compiled NUTS again, restarted from its own draws with fresh keys and a fresh
        # adaptation: on GEV a rare dataset (posterior against the support edge, hundreds of
        # divergences) ends NUTS just above the gate; costs nothing where NUTS converged and no
        # compilation where it did not
        Rung("nuts_retry", nuts.cpu_profile(), init_from="previous"),
    )
    return Ladder(rungs, **kw)


# Datasets per lax.map step for a cheap density (a surrogate likelihood: a small network), where
# per-op overhead dominates a step: 16 measured 0.034 s per dataset vs 0.057 s at 4 (NRE on the
# conjugate normal, 256 datasets; a per-dataset loop of the same ladder: 0.45 s).
CHEAP_DENSITY_DATASETS_PER_STEP = 16


def widen_batches(ladder, datasets_per_step: int = CHEAP_DENSITY_DATASETS_PER_STEP) -> Ladder:
    """``ladder`` with every rung that maps several datasets per step (``layout.batch_size``
    set, e.g. the CPU MEADS rung's 4) mapping at least ``datasets_per_step``; rungs left to the
    backend default (vmap on accelerators, one dataset per step for NUTS on CPU) are unchanged."""
    ladder = as_ladder(ladder)
    rungs = tuple(r if r.layout.batch_size is None else dataclasses.replace(
        r, layout=dataclasses.replace(r.layout, batch_size=max(r.layout.batch_size, int(datasets_per_step))))
        for r in ladder.rungs)
    return dataclasses.replace(ladder, rungs=rungs)


class RungReport(NamedTuple):
    """One rung: the datasets that reached it (``indices [n]``, positions in the call), their
    init report (rows aligned with ``indices``), the sampler result (rows aligned with
    ``indices[init_info.ok]``; ``None`` if none could start), accepted count, wall time."""

    name: str
    indices: np.ndarray
    init_info: InitInfo | None
    result: MCMCResult | None
    num_accepted: int
    wall_time_s: float


class LadderResult(NamedTuple):
    """Per-dataset outcome of :func:`run_ladder` (leading axis ``K``).

    route: ``"mcmc"`` | ``"nuts"`` | ``"failed"`` (the accepting rung's sampler route).
    rung: name of the accepting rung (the last rung tried if failed; ``""`` if none ran).
    reason: why a dataset failed (``""`` if accepted).
    stats: :class:`~amortflow.mcmc.SamplerStats` of the accepting (or last) rung: ``draws
      [K, num_output_draws, d]`` (NaN if never run), diagnostics, ``converged`` = accepted;
      ``num_grad_evals`` summed over every rung the dataset went through. Its fields are also
      readable directly (``res.draws``, ``res.nested_rhat``).
    rung_index: index into ``ladder.rungs`` of ``rung`` (-1 if none ran).
    num_rungs_run: rungs whose sampler ran on the dataset.
    num_init_fallback: starting points from the prior fallback (first rung it reached).
    reports: one :class:`RungReport` per rung that ran.
    wall_time_s: total wall time.
    """

    route: np.ndarray
    rung: np.ndarray
    reason: np.ndarray
    stats: SamplerStats
    rung_index: np.ndarray
    num_rungs_run: np.ndarray
    num_init_fallback: np.ndarray
    reports: tuple
    wall_time_s: float

    __getattr__ = forward_to_stats

    @property
    def rung_time_s(self) -> dict[str, float]:
        """Wall time of each rung that ran."""
        return {r.name: r.wall_time_s for r in self.reports}

    @property
    def rung_accepted(self) -> dict[str, int]:
        """Datasets accepted by each rung (failures are not counted anywhere)."""
        return {r.name: r.num_accepted for r in self.reports}

    # legacy names read by amortflow/workflow/run.py until it moves to the fields above
    @property
    def stage_name(self) -> np.ndarray:
        return self.rung

    @property
    def stages(self) -> tuple:
        return self.reports

    def summary(self) -> dict:
        """Counts per route and per accepting rung, total cost."""
        routes, counts = np.unique(self.route.astype(str), return_counts=True)
        return {
            "routes": dict(zip(routes.tolist(), counts.tolist())),
            "accepted_by_rung": self.rung_accepted,
            "num_grad_evals": int(self.stats.num_grad_evals.sum()),
            "wall_time_s": float(self.wall_time_s),
            "rung_time_s": self.rung_time_s,
        }


@dataclasses.dataclass
class _Book:
    """Per-dataset bookkeeping of one :func:`run_ladder` call (host arrays, ``[K]``)."""

    stats: SamplerStats
    route: np.ndarray
    rung: np.ndarray
    rung_index: np.ndarray
    reason: np.ndarray
    grads: np.ndarray
    rungs_run: np.ndarray
    fallback: np.ndarray
    init_failed: np.ndarray
    mode_note: np.ndarray

    @classmethod
    def start(cls, k: int, num_draws: int, dim: int) -> "_Book":
        return cls(empty_stats(k, num_draws, dim), np.full(k, "failed", object),
                   np.full(k, "", object), np.full(k, -1), np.full(k, "", object),
                   np.zeros(k, np.int64), np.zeros(k, np.int64), np.full(k, -1, np.int64),
                   np.zeros(k, bool), np.full(k, "", object))


class _Call(NamedTuple):
    """What every rung of one :func:`run_ladder` call shares."""

    model: Model
    obs: object
    candidates: jax.Array
    log_weights: object
    ladder: Ladder
    num_output_draws: int
    ids: np.ndarray | None
    cache: CompileCache | None
    progress: bool


def _rung_init(ikey, call: _Call, book: _Book, idx, rung: Rung):
    """Starting points for the datasets ``idx``: their previous draws where the rung asks for
    them and the dataset has run before, the original candidates otherwise."""
    prev = (book.rungs_run[idx] > 0) & (rung.init_from == "previous")
    parts, rows = [], []
    for mask, use_prev in ((prev, True), (~prev, False)):
        sub = idx[mask]
        if sub.size == 0:
            continue
        if use_prev:
            cand, logw = jnp.asarray(book.stats.draws[sub]), None
        else:
            cand = call.candidates[sub]
            logw = None if call.log_weights is None else call.log_weights[sub]
        k_sub = jax.random.fold_in(ikey, int(use_prev))
        args = (call.model, take(call.obs, sub), cand, logw, rung.sampler.num_superchains)
        kw = dict(num_prior_draws=call.ladder.num_prior_draws, cache=call.cache)
        if call.ids is None:
            parts.append(initialize_positions(k_sub, *args, **kw))
        else:
            keys = batching.fold_in_each(k_sub, call.ids[sub])
            parts.append(initialize_positions_keys(keys, *args, **kw))
        rows.append(np.nonzero(mask)[0])
    inverse = np.argsort(np.concatenate(rows))
    init = jnp.concatenate([p[0] for p in parts])[inverse]
    info = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs])[inverse],
                        *[p[1] for p in parts])
    return init, info


def _sample(skey, call: _Call, rung: Rung, run_idx, init) -> MCMCResult:
    keys = batching.fold_in_each(skey, run_idx if call.ids is None else call.ids[run_idx])
    size = batching.bucket_size_for(run_idx.size, rung.layout.bucket_size or call.ladder.bucket_size)
    return run_sampler_keys(keys, call.model, take(call.obs, run_idx), init, rung.sampler,
                            num_output_draws=call.num_output_draws, gate=rung.gate,
                            layout=dataclasses.replace(rung.layout, bucket_size=size),
                            cache=call.cache, progress=call.progress)


def _missed_modes(key, call: _Call, run_idx, stats: SamplerStats, acc: np.ndarray) -> dict:
    """row -> reason for the accepted rows whose chains missed a high-density region the
    candidates reached (:func:`amortflow.mcmc.modes.missed_mode_check`)."""
    rows = np.nonzero(acc)[0]
    if rows.size == 0 or not np.isfinite(np.asarray(call.candidates[run_idx[rows]])).any():
        return {}
    sub = run_idx[rows]
    n_far, ratio = missed_mode_check(key, call.model, take(call.obs, sub), call.candidates[sub],
                                     np.asarray(stats.draws)[rows], cache=call.cache)
    out = {}
    for r, n, q in zip(rows, n_far, ratio):
        if n >= MISSED_MODE_MIN_POINTS:
            out[int(r)] = (f"the chains missed a region of high posterior density: {int(n)} candidate "
                           f"draws with log density above the chains' 1% quantile lie up to {q:.1f}x "
                           "the draws' own spacing from every MCMC draw (a mode the chains did not visit)")
    return out


def _record(book: _Book, si: int, call: _Call, run_idx, stats: SamplerStats, key=None) -> np.ndarray:
    """Write rung ``si``'s results for ``run_idx`` into ``book``; returns accepted ``[n]``."""
    rung = call.ladder.rungs[si]
    book.init_failed[run_idx] = False
    book.grads[run_idx] += stats.num_grad_evals
    book.rungs_run[run_idx] += 1
    put_rows(book.stats, run_idx, stats)
    book.rung[run_idx] = rung.name
    book.rung_index[run_idx] = si
    acc = np.asarray(stats.converged, bool)
    missed = _missed_modes(jax.random.fold_in(key, 7) if key is not None else jax.random.PRNGKey(si),
                           call, run_idx, stats, acc)
    after = ", ".join(r.display_name for r in call.ladder.rungs[: si + 1])
    for row, why in missed.items():
        acc[row] = False
        book.mode_note[run_idx[row]] = f"{rung.display_name}: {why}"
    book.stats.converged[run_idx] = acc  # the record says what was accepted
    book.route[run_idx[acc]] = rung.sampler.route
    for row in np.nonzero(~acc)[0]:
        why = missed.get(int(row)) or rung.gate.explain(stats, row, call.model.param_names)
        book.reason[run_idx[row]] = f"not converged after {after}: {why}; {describe_row(stats, row)}"
    return acc


def _run_rung(si: int, key, call: _Call, book: _Book, pending) -> tuple[RungReport, np.ndarray]:
    """Rung ``si`` on the ``pending`` datasets; returns its report and the still pending ones."""
    t0 = time.perf_counter()
    rung = call.ladder.rungs[si]
    skey = jax.random.fold_in(key, si)
    idx = pending
    init, info = _rung_init(jax.random.fold_in(skey, 2**31 - 1), call, book, idx, rung)
    ok = np.asarray(info.ok)
    first = book.fallback[idx] < 0
    book.fallback[idx[first]] = np.asarray(info.num_fallback)[first]
    book.init_failed[idx[~ok]] = True
    run_idx, result, n_acc = idx[ok], None, 0
    if run_idx.size:
        result = _sample(skey, call, rung, run_idx, init[np.nonzero(ok)[0]])
        acc = _record(book, si, call, run_idx, result.stats, skey)
        n_acc = int(acc.sum())
        pending = np.sort(np.concatenate([run_idx[~acc], idx[~ok]]))
    report = RungReport(rung.name, idx, info, result, n_acc, time.perf_counter() - t0)
    if call.progress:
        print(f"[amortflow.mcmc] rung {rung.name}: {idx.size} datasets, {n_acc} accepted, "
              f"{pending.size} escalated ({report.wall_time_s:.1f} s)")
    return report, pending


def as_ladder(ladder) -> Ladder:
    """A :class:`Ladder`, or the ``.ladder`` of a value that holds one (the legacy
    :class:`~amortflow.mcmc.EscalationPolicy`)."""
    inner = ladder if isinstance(ladder, Ladder) else getattr(ladder, "ladder", None)
    if not isinstance(inner, Ladder):
        raise TypeError(f"expected a Ladder (or an EscalationPolicy), got {type(ladder).__name__}")
    return inner


def run_ladder(key, model: Model, obs, candidates, candidate_log_weights, ladder: Ladder, *,
               num_output_draws: int, dataset_ids=None, progress: bool = True,
               cache: CompileCache | None = None) -> LadderResult:
    """Climb ``ladder`` with every dataset until a rung's gate accepts it.

    Args:
      key: PRNG key (see the module docstring for how it is split).
      model: the model.
      obs: ``ys [K, *obs_shape]`` or a batched :class:`~amortflow.models.Observation` (``beta``
        and ``design`` reach every sampler and the initialisation).
      candidates: ``[K, S, d]`` amortized (or PSIS-resampled) draws used for initialisation.
      candidate_log_weights: ``[K, S]`` log weights or ``None``.
      ladder: :class:`Ladder` (e.g. :func:`default_ladder`), or an ``EscalationPolicy`` (its
        ladder; its ``num_output_draws`` is ignored: the argument below decides).
      num_output_draws: draws per dataset in the result (every rung must yield this many).
      dataset_ids: ``[K]`` distinct stable ids (e.g. positions in the full data set) for the
        per-dataset keys; ``None``: positions in this call.
      progress: one line per rung and a tqdm bar over buckets.
      cache: :class:`~amortflow._compile.CompileCache` (default ``DEFAULT_CACHE``).
    Returns:
      :class:`LadderResult`.
    """
    t_start = time.perf_counter()
    ladder = as_ladder(ladder)
    ladder.check_num_draws(num_output_draws)
    obs = batching.as_batch(obs)
    k = obs.num_datasets
    candidates = jnp.asarray(candidates)
    if candidates.shape[0] != k or candidates.ndim != 3 or candidates.shape[2] != model.dim:
        raise ValueError(f"run_ladder: candidates must be [K={k}, S, d={model.dim}], got "
                         f"{tuple(candidates.shape)}")
    logw = None if candidate_log_weights is None else jnp.asarray(candidate_log_weights)
    call = _Call(model, obs, candidates, logw, ladder, int(num_output_draws),
                 batching.dataset_ids_or_none(dataset_ids, k), cache, progress)
    book = _Book.start(k, int(num_output_draws), model.dim)
    reports, pending = [], np.arange(k)
    for si in range(len(ladder.rungs)):
        if pending.size == 0:
            break
        report, pending = _run_rung(si, key, call, book, pending)
        reports.append(report)
    for i in np.nonzero(book.init_failed)[0]:
        book.reason[i] = ("no finite-density starting point: all candidates and "
                          f"{ladder.num_prior_draws} prior draws have log density -inf")
    for i in np.nonzero(~np.asarray(book.stats.converged, bool) & (book.mode_note != ""))[0]:
        if book.mode_note[i] not in book.reason[i]:
            book.reason[i] += f" (earlier, {book.mode_note[i]}: multimodal posterior?)"
    book.reason[book.stats.converged] = ""
    return LadderResult(book.route, book.rung, book.reason,
                        book.stats._replace(num_grad_evals=book.grads), book.rung_index,
                        book.rungs_run, np.maximum(book.fallback, 0), tuple(reports),
                        time.perf_counter() - t_start)


__all__ = ["Rung", "Ladder", "RungReport", "LadderResult", "default_ladder", "run_ladder", "as_ladder"]
