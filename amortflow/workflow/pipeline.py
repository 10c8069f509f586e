"""The workflow as a sequence of stages over small values.

A :class:`Stage` is a name plus a pure-ish function ``run(key, StageInput) -> StageResult``: it
sees the datasets still open (their indices, their :class:`~amortflow.models.Observation` and the
hand-on arrays earlier stages left for them) and returns, per dataset, a route (accepted here,
``"failed"``, or ``""`` = hand on), a reason, the accepted draws, diagnostics, costs and hand-on
arrays for later stages. The route of a dataset is decided in exactly one place: the stage that
returns it. :func:`run_stages` threads the open datasets through the stages, folding each result
into one per-dataset record (:class:`Records`), and :class:`ProgressStore` makes every stage
resumable the same way (one ``.npz`` + ``.json`` per stage chunk under ``out_dir/progress``).

Inserting a stage (a custom gate, a refinement sampler) is inserting a value into the tuple; no
other stage changes. Hand-on arrays are looked up by name (``"draws"``, ``"log_q"``,
``"log_weights"``), so a stage that needs one an earlier stage did not provide can fall back.
"""
from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from typing import Callable, NamedTuple

import jax
import numpy as np

from amortflow._files import read_json, write_json as _write_json
from amortflow.errors import ProgressError
from amortflow.models.observation import Observation, take

OPEN = ""  # route of a dataset no stage has decided yet
FAILED = "failed"
BUILTIN_ROUTES = ("amortized", "psis", "refined", "mcmc", "nuts", FAILED)
"""Routes of the built-in stages, in workflow order (custom stages add their own names)."""


class StageInput(NamedTuple):
    """What a stage sees: the ``n`` open datasets.

    index: ``[n]`` positions among the ``K`` datasets (per-dataset keys fold these in).
    obs: batched :class:`Observation` ``[n]`` (numpy leaves).
    carry: name -> ``[n, ...]`` hand-on arrays from earlier stages.
    """

    index: np.ndarray
    obs: Observation
    carry: dict


class StageResult(NamedTuple):
    """What a stage returns for its ``n`` datasets (rows aligned with ``StageInput.index``).

    route: ``[n]`` object: a route name (accepted here), ``"failed"``, or ``""`` (hand on).
    reason: ``[n]`` object: why a dataset was handed on or failed (``""`` if accepted or handed
      on by a stage that only observes, e.g. writes diagnostics: the record then keeps the
      reason an earlier stage handed it on for).
    draws: ``[n, S, d]`` final draws (read where a row is accepted), or ``None``.
    diagnostics: name -> ``[n]`` (a later stage's value for the same name replaces it).
    cost: name -> ``[n]`` counts added up over stages (e.g. gradient evaluations).
    carry: name -> ``[n, ...]`` hand-on arrays for later stages.
    info: JSON-able extras: ``times`` (name -> s), ``counts``, ``thresholds``, ``note``.
    weighted: ``(draws [n, S, d], log_weights [n, S])`` behind the accepted draws of an
      importance-sampling stage (normalized log weights), or ``None``; kept for accepted rows.
    """

    route: np.ndarray
    reason: np.ndarray
    draws: np.ndarray | None = None
    diagnostics: dict = {}
    cost: dict = {}
    carry: dict = {}
    info: dict = {}
    weighted: tuple | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the workflow.

    name: label in progress files, logs and stage times.
    run: ``(key, StageInput) -> StageResult``.
    chunk_size: datasets per call (and per progress file); ``None``: all open datasets at once.
    salt: the stage's key is ``fold_in(workflow_key, salt)`` (``None``: the workflow key itself).
      Every chunk gets the same key: a stage derives per-dataset randomness by folding in
      ``StageInput.index``, so a dataset's result does not depend on which others are open
      (invalid ones, earlier acceptances) or on the chunking.
    columns: name -> dtype of the per-dataset diagnostics and costs it reports; the result has
      these columns even for datasets (or runs) the stage never saw (NaN / 0 / False / "").
    """

    name: str
    run: Callable[[jax.Array, StageInput], StageResult]
    chunk_size: int | None = None
    salt: int | None = None
    columns: dict = dataclasses.field(default_factory=dict)


def hand_on(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(route, reason)`` arrays for ``n`` datasets, all handed on."""
    return np.full(n, OPEN, dtype=object), np.full(n, "", dtype=object)


def restrict(stage: Stage, select: Callable[[StageInput], np.ndarray], *, name: str | None = None) -> Stage:
    """``stage`` run only on the open datasets where ``select(inp)`` (``[n]`` bool) is True; the
    others are handed on with an empty reason (they keep the one they had). The inner stage sees
    its rows only (index, observation and carry gathered); its per-row outputs are scattered back,
    the unselected rows getting each column's fill value (NaN / 0 / False / ""), as if the stage
    had never seen them -- which they are not: a column of the same name an earlier stage wrote
    is overwritten for them, so select on rows that no earlier stage gave that column."""

    def run(key, inp: StageInput) -> StageResult:
        rows = np.asarray(select(inp), bool)
        n = inp.index.size
        if rows.shape != (n,):
            raise ValueError(f"restrict({stage.name!r}): select returned shape {rows.shape}, expected ({n},)")
        route, reason = hand_on(n)
        if not rows.any():
            return StageResult(route, reason)
        sub = StageInput(inp.index[rows], take(inp.obs, rows), {k: np.asarray(v)[rows] for k, v in inp.carry.items()})
        res = stage.run(key, sub)
        route[rows], reason[rows] = res.route, res.reason

        def grow(a):
            a = np.asarray(a)
            col = _column(n, a)
            col[rows] = a
            return col

        def grow_all(d):
            return {k: grow(v) for k, v in d.items()}

        weighted = None
        if res.weighted is not None:  # unselected rows: NaN draws of weight zero
            weighted = (grow(res.weighted[0]), grow(res.weighted[1]))
            weighted[1][~rows] = -np.inf
        return StageResult(route, reason, draws=None if res.draws is None else grow(res.draws),
                           diagnostics=grow_all(res.diagnostics), cost=grow_all(res.cost), carry=grow_all(res.carry),
                           info=res.info, weighted=weighted)

    return dataclasses.replace(stage, name=name or stage.name, run=run)


# ----------------------------------------------------------------------------- the record
def _fill_value(a: np.ndarray):
    kind = np.asarray(a).dtype.kind
    return np.nan if kind in "fc" else (False if kind == "b" else (0 if kind in "iu" else ""))


def _pad_width(a: np.ndarray, width: int, fill) -> np.ndarray:
    """``a [n, w, ...]`` padded along axis 1 to ``width`` with ``fill`` (a float32 copy)."""
    a = np.asarray(a, np.float32)
    out = np.full((a.shape[0], width) + a.shape[2:], fill, np.float32)
    out[:, :a.shape[1]] = a
    return out


def _column(k: int, like: np.ndarray) -> np.ndarray:
    like = np.asarray(like)
    dtype = object if like.dtype.kind in "USO" else like.dtype
    return np.full((k,) + like.shape[1:], _fill_value(like), dtype=dtype)


@dataclasses.dataclass(frozen=True)
class Records:
    """Everything known per dataset (leading axis ``K`` everywhere); :meth:`apply` returns an
    updated copy. ``route == ""`` marks the datasets still open. ``weighted``: ``(draws
    [K, S, d], log_weights [K, S])`` of the datasets accepted by importance sampling (NaN /
    -inf elsewhere), or ``None`` while no stage has accepted any that way."""

    route: np.ndarray
    reason: np.ndarray
    draws: np.ndarray
    diagnostics: dict
    carry: dict
    weighted: tuple | None = None

    @classmethod
    def start(cls, problem: np.ndarray, num_draws: int, dim: int, columns: dict | None = None) -> "Records":
        """Invalid datasets (``problem != ""``) start failed with their reason; the rest open.
        ``columns``: name -> dtype (or ``[K]`` array of initial values) of diagnostics."""
        problem = np.asarray(problem, dtype=object)
        k = problem.size
        bad = problem != ""
        route = np.where(bad, FAILED, OPEN).astype(object)
        reason = np.array(["invalid input: " + str(p) if p else "" for p in problem] + [None], dtype=object)[:-1]
        draws = np.full((k, num_draws, dim), np.nan, np.float32)
        diags = {}
        for name, dt in (columns or {}).items():
            diags[name] = (np.asarray(dt).copy() if isinstance(dt, np.ndarray)
                           else _column(k, np.zeros(1, dtype=dt)))
        return cls(route, reason, draws, diags, {})

    @property
    def open(self) -> np.ndarray:
        return np.nonzero(self.route == OPEN)[0]

    def apply(self, index: np.ndarray, res: StageResult) -> "Records":
        k = self.route.shape[0]
        route, reason, draws = self.route.copy(), self.reason.copy(), self.draws
        route[index] = res.route
        accepted = (res.route != OPEN) & (res.route != FAILED)
        # an accepted dataset keeps the reason it was escalated for (why it needed this stage),
        # and one handed on without a reason keeps its earlier one (a stage that only observes)
        reason[index] = np.where((res.route != FAILED) & (res.reason == ""), reason[index], res.reason)
        if res.draws is not None and accepted.any():
            draws = draws.copy()
            draws[index[accepted]] = res.draws[accepted]
        weighted = self.weighted
        if res.weighted is not None and accepted.any():
            wd, wl = (np.asarray(a) for a in res.weighted)
            width = max(wd.shape[1], 0 if weighted is None else weighted[0].shape[1])
            # stages may weight different numbers of draws: pad with NaN draws of weight zero
            old_d, old_l = weighted if weighted is not None else (
                np.full((k, 0) + wd.shape[2:], np.nan, np.float32), np.full((k, 0), -np.inf, np.float32))
            weighted = (_pad_width(old_d, width, np.nan), _pad_width(old_l, width, -np.inf))
            wd, wl = _pad_width(wd, width, np.nan), _pad_width(wl, width, -np.inf)
            weighted[0][index[accepted]] = wd[accepted]
            weighted[1][index[accepted]] = wl[accepted]
        diags = dict(self.diagnostics)
        for name, v in res.diagnostics.items():
            col = diags[name].copy() if name in diags else _column(k, v)
            col[index] = v
            diags[name] = col
        for name, v in res.cost.items():
            col = diags[name].copy() if name in diags else np.zeros(k, np.int64)
            col[index] += np.asarray(v, np.int64)
            diags[name] = col
        carry = dict(self.carry)
        for name, v in res.carry.items():
            col = carry[name] if name in carry else _column(k, v)
            col[index] = v  # large: updated in place (earlier Records are not reused)
            carry[name] = col
        return dataclasses.replace(self, route=route, reason=reason, draws=draws,
                                   diagnostics=diags, carry=carry, weighted=weighted)


# ----------------------------------------------------------------------------- progress files
class ProgressStore:
    """Stage outputs under ``out_dir/progress`` (``out_dir=None``: keep nothing).

    ``manifest.json`` holds the run's fingerprint; a folder of another run is refused. Each stage
    chunk is ``<name>.npz`` (arrays; written last, it marks the chunk done) and ``<name>.json``.
    """

    def __init__(self, out_dir: str | None, fingerprint: str):
        self.dir = None if out_dir is None else os.path.join(out_dir, "progress")
        if self.dir is None:
            return
        os.makedirs(self.dir, exist_ok=True)
        manifest = os.path.join(self.dir, "manifest.json")
        if not os.path.exists(manifest):
            _write_json(manifest, {"fingerprint": fingerprint})
            return
        old = _read_json(manifest).get("fingerprint")
        if old != fingerprint:
            raise ProgressError(
                f"{out_dir} holds progress of a different run (other datasets, temperatures, model, "
                "estimator, key or configuration); use a new output directory or delete its "
                "progress/ folder")

    def load(self, name: str) -> StageResult | None:
        if self.dir is None:
            return None
        npz = os.path.join(self.dir, f"{name}.npz")
        if not os.path.exists(npz):
            return None
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ProgressError(f"{npz} is damaged ({type(e).__name__}: {e}); delete it to "
                                f"recompute stage chunk {name!r}") from None
        return _unpack(arrays, _read_json(os.path.join(self.dir, f"{name}.json")))

    def save(self, name: str, res: StageResult) -> None:
        if self.dir is None:
            return
        arrays, text = _pack(res)
        _write_json(os.path.join(self.dir, f"{name}.json"), text)
        tmp = os.path.join(self.dir, f"{name}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.dir, f"{name}.npz"))


def _read_json(path) -> dict:
    return read_json(path, ProgressError, "delete it and the .npz of the same name (or the whole "
                     "progress/ folder) to recompute that stage")


def _pack(res: StageResult) -> tuple[dict, dict]:
    """A :class:`StageResult` as npz arrays (no objects: strings become unicode arrays) + JSON."""
    arrays = {"route": np.asarray(res.route, dtype=str)}
    if res.draws is not None:
        arrays["draws"] = np.asarray(res.draws)
    if res.weighted is not None:
        arrays["weighted_draws"], arrays["weighted_log_weights"] = (np.asarray(a) for a in res.weighted)
    for group in ("diagnostics", "cost", "carry"):
        for name, v in getattr(res, group).items():
            v = np.asarray(v)
            arrays[f"{group}/{name}"] = v.astype(str) if v.dtype == object else v
    return arrays, {"reason": [str(r) for r in res.reason], "info": res.info}


def _unpack(arrays: dict, text: dict) -> StageResult:
    groups: dict = {"diagnostics": {}, "cost": {}, "carry": {}}
    for key, v in arrays.items():
        if "/" in key:
            group, name = key.split("/", 1)
            groups[group][name] = v.astype(object) if v.dtype.kind == "U" else v
    return StageResult(route=arrays["route"].astype(object),
                       reason=np.asarray(text.get("reason", []), dtype=object),
                       draws=arrays.get("draws"), info=text.get("info", {}),
                       weighted=((arrays["weighted_draws"], arrays["weighted_log_weights"])
                                 if "weighted_draws" in arrays else None), **groups)


# ----------------------------------------------------------------------------- running stages
def _chunks(open_idx: np.ndarray, size: int | None) -> list[np.ndarray]:
    if size is None or open_idx.size == 0:
        return [open_idx]
    return [open_idx[i:i + size] for i in range(0, open_idx.size, size)]


def run_stage(key, stage: Stage, records: Records, obs: Observation, store: ProgressStore,
              log=print) -> tuple[Records, dict]:
    """Run one stage on the open datasets, chunk by chunk, resuming from ``store``.

    Returns the updated records and the stage's report (datasets, times, route counts, info)."""
    stage_key = key if stage.salt is None else jax.random.fold_in(key, stage.salt)
    open_idx = records.open
    report = {"num_datasets": int(open_idx.size), "wall_time_s": 0.0, "routes": {}, "info": []}
    chunks = _chunks(open_idx, stage.chunk_size)
    for ci, idx in enumerate(chunks):
        if idx.size == 0:
            continue
        name = stage.name if len(chunks) == 1 and stage.chunk_size is None else f"{stage.name}_{ci:04d}"
        res = store.load(name)
        if res is None:
            t0 = time.perf_counter()
            res = stage.run(stage_key, StageInput(idx, take(obs, idx), {n: v[idx] for n, v in records.carry.items()}))
            res = res._replace(info={**res.info, "wall_time_s": time.perf_counter() - t0})
            _check_result(stage, res, idx.size)
            store.save(name, res)
        else:
            log(f"[amortflow] {stage.name}: chunk {ci} restored from progress")
        records = records.apply(idx, res)
        report["wall_time_s"] += float(res.info.get("wall_time_s", 0.0))
        report["info"].append(res.info)
        for r in res.route:
            report["routes"][r] = report["routes"].get(r, 0) + 1
    return records, report


def _check_result(stage: Stage, res: StageResult, n: int) -> None:
    if np.shape(res.route) != (n,) or np.shape(res.reason) != (n,):
        raise ValueError(f"stage {stage.name!r} returned route/reason of shapes "
                         f"{np.shape(res.route)}/{np.shape(res.reason)} for {n} datasets")
    accepted = (res.route != OPEN) & (res.route != FAILED)
    if accepted.any() and (res.draws is None or np.shape(res.draws)[0] != n):
        raise ValueError(f"stage {stage.name!r} accepted datasets but returned no draws for them")


def stage_message(name: str, report: dict) -> str:
    routes = report["routes"]
    handed, failed = routes.get(OPEN, 0), routes.get(FAILED, 0)
    accepted = {r: c for r, c in routes.items() if r not in (OPEN, FAILED)}
    notes = "; ".join(i["note"] for i in report["info"] if i.get("note"))
    acc = ", ".join(f"{c} {r}" for r, c in accepted.items()) or "0"
    return (f"[amortflow] {name}: {report['num_datasets']} datasets, accepted {acc}, "
            f"{handed} handed on, {failed} failed ({report['wall_time_s']:.1f} s)"
            + (f"; {notes}" if notes else ""))


def run_stages(key, stages, records: Records, obs: Observation, store: ProgressStore,
               log=print) -> tuple[Records, dict]:
    """Thread the open datasets through ``stages``; what no stage decided ends ``"failed"``.

    Returns ``(records, reports)`` with one report per stage name."""
    reports = {}
    for stage in stages:
        if records.open.size == 0:
            break
        records, reports[stage.name] = run_stage(key, stage, records, obs, store, log)
        log(stage_message(stage.name, reports[stage.name]))
    left = records.open
    if left.size:
        route, reason = records.route.copy(), records.reason.copy()
        route[left] = FAILED
        reason[left] = [f"no stage accepted it (last: {r})" if r else "no stage accepted it"
                        for r in reason[left]]
        records = dataclasses.replace(records, route=route, reason=reason)
    return records, reports


__all__ = ["Stage", "StageInput", "StageResult", "Records", "ProgressStore", "run_stage",
           "run_stages", "hand_on", "restrict", "OPEN", "FAILED", "BUILTIN_ROUTES"]
