"""``WorkflowResult``: per-dataset route, draws, diagnostics and cost; tables, ArviZ and files.

On disk (a directory): ``draws.nc`` (netCDF via xarray/h5netcdf: unconstrained draws
``[dataset, draw, param]``), ``table.csv`` (one row per dataset; also ``table.parquet`` when
pyarrow is installed), ``result.json`` (routes, reasons, stage costs, configuration, names).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from amortflow._files import read_json, write_json
from amortflow.errors import ResultFileError
from amortflow.workflow.pipeline import BUILTIN_ROUTES as ROUTES

FORMAT = "amortflow-workflow-result"
FORMAT_VERSION = 1


@dataclasses.dataclass(eq=False)
class WorkflowResult:
    """Outcome of :func:`amortflow.run_workflow` for ``K`` datasets.

    Attributes:
      route: ``[K]`` one of ``"amortized" | "psis" | "refined" | "mcmc" | "nuts" | "failed"``
        (or the route of a custom stage).
      reason: ``[K]`` why a dataset failed or was escalated (empty when accepted at stage 1).
      draws: ``[K, S, d]`` accepted draws in the unconstrained space (NaN rows for failed).
      diagnostics: name -> ``[K]`` array (OOD score/flag, k-hat, PSIS ESS, nested R-hat, ESS,
        divergences, step size, MCMC stage, log-density and gradient evaluations).
      stage_time_s: stage -> wall seconds; ``stage_counts``: stage -> datasets processed.
      param_names, model_name, config: what produced the result.
      weighted: ``(draws [K, S, d], log_weights [K, S])``: for datasets accepted by importance
        sampling (``psis``, ``refined``), the weighted draws their resampled ``draws`` came from
        and the normalized log weights (NaN / -inf rows elsewhere); ``None`` if there are none.
        Summaries (:meth:`table`, :meth:`posterior_mean`) use the weighted estimates, which
        resampling can only make noisier.
    """

    route: np.ndarray
    reason: np.ndarray
    draws: np.ndarray
    diagnostics: dict[str, np.ndarray]
    stage_time_s: dict[str, float]
    stage_counts: dict[str, int]
    param_names: tuple[str, ...]
    model_name: str
    config: dict = dataclasses.field(default_factory=dict)
    model: Any = None  # the Model, when available (for constrain / inference_data)
    mcmc_stage_time_s: dict = dataclasses.field(default_factory=dict)  # per rung: "<rung>" of "mcmc", else "<stage>:<rung>"
    thresholds: dict = dataclasses.field(default_factory=dict)  # gates used: ood, khat
    weighted: tuple | None = None

    @property
    def num_datasets(self) -> int:
        return int(self.route.shape[0])

    @property
    def routes(self) -> tuple[str, ...]:
        """The built-in routes in workflow order, then any custom stage's routes present."""
        extra = sorted(set(map(str, self.route)) - set(ROUTES))
        return ROUTES[:-1] + tuple(extra) + ROUTES[-1:]

    def route_counts(self) -> dict[str, int]:
        """Datasets per route, in workflow order."""
        return {r: int((self.route == r).sum()) for r in self.routes}

    @classmethod
    def from_records(cls, records, reports: dict, model, config: dict) -> "WorkflowResult":
        """The result of :func:`~amortflow.workflow.pipeline.run_stages`: per-dataset records
        plus per-stage reports (times, counts, thresholds, MCMC rung times)."""
        times, counts, rung_times, thresholds = {}, {}, {}, {}
        for name, rep in reports.items():
            for info in rep["info"]:
                for t_name, t in info.get("times", {name: info.get("wall_time_s", 0.0)}).items():
                    times[t_name] = times.get(t_name, 0.0) + float(t)
                    counts[t_name] = rep["num_datasets"]
                for rung, t in info.get("rung_time_s", {}).items():
                    # rungs of the "mcmc" stage by name; of any other ladder stage as "<stage>:<rung>"
                    r = rung if name == "mcmc" else f"{name}:{rung}"
                    rung_times[r] = rung_times.get(r, 0.0) + float(t)
                for rung, c in info.get("rung_accepted", {}).items():
                    counts[f"{name}:{rung}"] = counts.get(f"{name}:{rung}", 0) + int(c)
                thresholds.update(info.get("thresholds", {}))
        return cls(records.route, records.reason, records.draws, records.diagnostics, times, counts,
                   model.param_names, model.name, config, model, mcmc_stage_time_s=rung_times,
                   thresholds=thresholds, weighted=records.weighted)

    @property
    def total_time_s(self) -> float:
        return float(sum(self.stage_time_s.values()))

    def _constrain(self, draws) -> dict[str, np.ndarray]:
        import jax
        import jax.numpy as jnp

        out = jax.jit(self.model.constrain)(jnp.asarray(np.nan_to_num(draws)))
        bad = ~np.isfinite(draws).all(axis=(1, 2))
        res = {}
        for k, v in out.items():
            v = np.array(v, dtype=np.float64)
            v[bad] = np.nan
            res[k] = v
        return res

    def constrained_draws(self) -> dict[str, np.ndarray]:
        """Draws on the constrained scale: name -> ``[K, S]`` (needs the model)."""
        if self.model is None:
            raise ValueError("constrained draws need the model: WorkflowResult.load(path, model=...)")
        return self._constrain(self.draws)

    def summary_draws(self, constrained: bool | None = None):
        """``(draws, weights)`` behind every summary: name -> ``[K, W]`` draws and ``[K, W]``
        normalized weights -- the weighted draws of importance-sampling routes, the equally
        weighted draws elsewhere (zero-weight padding where the widths differ; failed datasets
        keep NaN draws). ``constrained=None``: constrained when the model is known."""
        constrained = self.model is not None if constrained is None else constrained
        k, s, d = self.draws.shape
        width = s if self.weighted is None else max(s, self.weighted[0].shape[1])
        draws = np.full((k, width, d), np.nan, np.float32)
        draws[:, :s] = self.draws
        w = np.zeros((k, width))
        w[:, :s] = 1.0 / s
        if self.weighted is not None:
            lw = np.asarray(self.weighted[1], np.float64)
            rows = np.isfinite(lw).any(axis=1)
            if rows.any():
                wd = self.weighted[0][rows]
                draws[rows] = np.nan
                draws[rows, :wd.shape[1]] = wd
                e = np.zeros((int(rows.sum()), width))
                lr = lw[rows]
                e[:, :lr.shape[1]] = np.where(np.isfinite(lr), np.exp(lr - lr.max(axis=1, keepdims=True)), 0.0)
                w[rows] = e / e.sum(axis=1, keepdims=True)
        # padding (weight 0) gets a finite placeholder: the first draw of its dataset
        pad = (w == 0) & ~np.isfinite(draws).all(axis=2)
        draws = np.where(pad[..., None], draws[:, :1], draws)
        if constrained:
            if self.model is None:
                raise ValueError("constrained summaries need the model: WorkflowResult.load(path, model=...)")
            named = self._constrain(draws)
        else:
            named = {n: draws[:, :, j].astype(np.float64) for j, n in enumerate(self.param_names)}
        return named, w

    def posterior_mean(self, constrained: bool | None = None) -> dict[str, np.ndarray]:
        """name -> ``[K]`` posterior means (weighted for importance-sampling routes)."""
        named, w = self.summary_draws(constrained)
        return {k: np.sum(w * v, axis=1) for k, v in named.items() if v.ndim == 2}

    def posterior_sd(self, constrained: bool | None = None) -> dict[str, np.ndarray]:
        """name -> ``[K]`` posterior sds (weighted for importance-sampling routes)."""
        named, w = self.summary_draws(constrained)
        out = {}
        for k, v in named.items():
            if v.ndim == 2:
                m = np.sum(w * v, axis=1, keepdims=True)
                out[k] = np.sqrt(np.sum(w * (v - m) ** 2, axis=1))
        return out

    def table(self):
        """pandas DataFrame, one row per dataset: route, reason, every diagnostic and cost, and
        posterior mean / sd of each (constrained when the model is known) parameter (weighted
        estimates for importance-sampling routes)."""
        import pandas as pd

        cols: dict[str, Any] = {"dataset": np.arange(self.num_datasets), "route": self.route,
                                "reason": self.reason}
        cols.update({k: np.asarray(v) for k, v in self.diagnostics.items()})
        # failed datasets have NaN draws, hence NaN summaries
        means, sds = self.posterior_mean(), self.posterior_sd()
        for name in means:
            cols[f"{name}_mean"] = means[name]
            cols[f"{name}_sd"] = sds[name]
        return pd.DataFrame(cols)

    def routing_text(self, title: str | None = None) -> str:
        """The routing table: datasets (and %) per route."""
        counts, k = self.route_counts(), max(self.num_datasets, 1)
        lines = [title or f"{self.model_name}: {self.num_datasets} datasets" + self._beta_note()]
        lines += [f"  {r:<10} {n:>6}  ({100 * n / k:5.1f}%)" for r, n in counts.items()]
        post = self.diagnostics.get("posterior")
        if post is not None:  # surrogate workflows: whose posterior the draws are
            post = np.asarray(post, dtype=object)
            done = self.route != "failed"
            for label in sorted({str(p) for p in post[done] if p}):
                lines.append(f"  ({int(np.sum(done & (post == label)))} of them: posterior of the {label} "
                             "likelihood, not of the model's)")
            exact = int(np.sum(done & (post == "")))
            if exact:
                lines.append(f"  ({exact} of them: the model's own likelihood)")
        return "\n".join(lines)

    def _beta_note(self) -> str:
        """``", power posterior at beta = ..."`` when any dataset's temperature is not 1."""
        b = np.asarray(self.diagnostics.get("beta", np.ones(0)), np.float64)
        b = b[np.isfinite(b)]
        if b.size == 0 or np.all(b == 1.0):
            return ""
        vals = np.unique(b)
        shown = ", ".join(f"{v:g}" for v in vals) if vals.size <= 6 else f"{vals.min():g} .. {vals.max():g} ({vals.size} values)"
        return f", power posterior at beta = {shown}"

    def timing_text(self, training_time_s: float | None = None, training_note: str = "") -> str:
        """Stage times (datasets processed; MCMC rungs with the datasets they accepted), with
        the training time and the grand total when ``training_time_s`` is given."""
        lines = ["stage times:"]
        if training_time_s is not None:
            lines.append(f"  {'training':<22} {training_time_s:8.1f} s{training_note}")
        for k, v in self.stage_time_s.items():
            lines.append(f"  {k:<22} {v:8.1f} s  ({self.stage_counts.get(k, 0)} datasets)")
            for st, t in self.mcmc_stage_time_s.items():
                stage, _, rung = st.rpartition(":")
                if (stage or "mcmc") == k:
                    lines.append(f"    {rung:<20} {t:8.1f} s  ({self.stage_counts.get(f'{k}:{rung}', 0)} accepted)")
        lines.append(f"  {'total (workflow)':<22} {self.total_time_s:8.1f} s")
        if training_time_s is not None:
            lines.append(f"  {'total (with training)':<22} {self.total_time_s + training_time_s:8.1f} s")
        return "\n".join(lines)

    def summary(self) -> str:
        """Routing table and stage times as text."""
        return self.routing_text() + "\n" + self.timing_text()

    def inference_data(self, i: int):
        """ArviZ ``InferenceData`` of dataset ``i`` (constrained names; one pooled chain).

        ``posterior`` holds the equally weighted draws every ArviZ function expects. For an
        importance-sampling route the weighted draws they were resampled from are in group
        ``importance_weighted`` with variable ``log_weight`` (normalized), for weighted
        estimates (e.g. ``np.average(x, weights=np.exp(log_weight))``)."""
        import arviz as az
        import xarray as xr

        if self.model is not None:
            post = {k: np.asarray(v[i])[None] for k, v in self.constrained_draws().items()}
        else:
            post = {n: self.draws[i, :, j][None] for j, n in enumerate(self.param_names)}
        idata = az.from_dict(posterior=post)
        if self.weighted is not None and np.isfinite(self.weighted[1][i]).any():
            keep = np.isfinite(self.weighted[1][i])  # drop zero-weight padding
            wd = np.asarray(self.weighted[0][i:i + 1, keep])
            named = (self._constrain(wd) if self.model is not None
                     else {n: wd[:, :, j] for j, n in enumerate(self.param_names)})
            lw = np.asarray(self.weighted[1][i, keep], np.float64)
            grp = {k: (("chain", "draw") + tuple(f"{k}_dim_{a}" for a in range(v.ndim - 2)), v)
                   for k, v in named.items()}
            grp["log_weight"] = (("chain", "draw"), (lw - np.logaddexp.reduce(lw))[None])
            import warnings

            with warnings.catch_warnings():  # a non-standard group name is intended
                warnings.simplefilter("ignore", UserWarning)
                idata.add_groups(importance_weighted=xr.Dataset(grp))
        idata.posterior.attrs.update({
            "route": str(self.route[i]), "reason": str(self.reason[i]), "dataset": int(i),
            "model": self.model_name,
            **{k: float(np.asarray(v[i])) for k, v in self.diagnostics.items()
               if np.asarray(v).dtype.kind in "fiub"},
        })
        return idata

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write ``draws.nc``, ``table.csv`` (+ ``table.parquet`` if pyarrow), ``result.json``."""
        import xarray as xr

        os.makedirs(path, exist_ok=True)
        arrays = {"draws": (("dataset", "draw", "param"), np.asarray(self.draws, np.float32))}
        if self.weighted is not None:
            arrays["weighted_draws"] = (("dataset", "wdraw", "param"), np.asarray(self.weighted[0], np.float32))
            arrays["weighted_log_weights"] = (("dataset", "wdraw"), np.asarray(self.weighted[1], np.float32))
        ds = xr.Dataset(
            arrays,
            coords={"dataset": np.arange(self.num_datasets), "param": list(self.param_names)},
            attrs={"model": self.model_name, "space": "unconstrained"},
        )
        tmp = os.path.join(path, "draws.nc.tmp")
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, os.path.join(path, "draws.nc"))
        table = self.table()
        table.to_csv(os.path.join(path, "table.csv"), index=False)
        try:
            table.to_parquet(os.path.join(path, "table.parquet"), index=False)
        except ImportError:
            pass
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_name": self.model_name, "param_names": list(self.param_names),
            "route": [str(r) for r in self.route], "reason": [str(r) for r in self.reason],
            "diagnostics": {k: np.asarray(v).tolist() for k, v in self.diagnostics.items()},
            "stage_time_s": self.stage_time_s, "stage_counts": self.stage_counts,
            "mcmc_stage_time_s": self.mcmc_stage_time_s, "thresholds": self.thresholds,
            "config": self.config,
        }
        write_json(os.path.join(path, "result.json"), meta, default=_json_default)

    @classmethod
    def load(cls, path, model=None) -> "WorkflowResult":
        """Read a result written by :meth:`save`; validates format and shapes."""
        import xarray as xr

        jf, nf = os.path.join(path, "result.json"), os.path.join(path, "draws.nc")
        for f in (jf, nf):
            if not os.path.isfile(f):
                raise ResultFileError(f"{path}: missing {os.path.basename(f)} (not a saved WorkflowResult)")
        meta = read_json(jf, ResultFileError, "re-save the result")
        if (meta.get("format") != FORMAT
                or int(meta.get("format_version", 0)) > FORMAT_VERSION):
            raise ResultFileError(f"{jf}: not a readable amortflow workflow result")
        missing = {"route", "reason", "diagnostics", "param_names", "model_name", "stage_time_s",
                   "stage_counts"} - set(meta)
        if missing:
            raise ResultFileError(f"{jf}: missing fields {sorted(missing)} (a partial write?); re-save the result")
        try:
            with xr.open_dataset(nf, engine="h5netcdf") as ds:
                draws = np.asarray(ds["draws"].values)
                weighted = ((np.asarray(ds["weighted_draws"].values), np.asarray(ds["weighted_log_weights"].values))
                            if "weighted_draws" in ds else None)
        except Exception as e:  # h5py/xarray raise many types for a damaged file
            raise ResultFileError(f"{nf} is damaged ({type(e).__name__}: {e}); re-save the result") from None
        if model is not None and (model.name != meta["model_name"]
                                  or tuple(model.param_names) != tuple(meta["param_names"])):
            raise ResultFileError(
                f"{path} holds a result of model {meta['model_name']!r} with parameters "
                f"{tuple(meta['param_names'])}, not of {model.name!r} {tuple(model.param_names)}; "
                "pass the model the result was computed with")
        k = len(meta["route"])
        if draws.ndim != 3 or draws.shape[0] != k or draws.shape[2] != len(meta["param_names"]):
            raise ResultFileError(f"{nf}: draws of shape {draws.shape} do not match {k} datasets and "
                             f"{len(meta['param_names'])} parameters")
        if weighted is not None and (weighted[0].shape[0] != k or weighted[0].shape[2] != draws.shape[2]
                                     or weighted[1].shape != weighted[0].shape[:2]
                                     or np.isnan(weighted[1]).any() or (weighted[1] == np.inf).any()):
            raise ResultFileError(f"{nf}: weighted draws {weighted[0].shape} / log weights "
                                  f"{weighted[1].shape} do not match {k} datasets or hold NaN weights")
        if len(meta["reason"]) != k or not all(isinstance(r, str) and r for r in meta["route"]):
            raise ResultFileError(f"{jf}: routes and reasons do not describe {k} datasets")
        diags = {key: np.asarray(v) for key, v in meta["diagnostics"].items()}
        for key, v in diags.items():
            if v.ndim == 0 or v.shape[0] != k:
                raise ResultFileError(f"{jf}: diagnostic {key!r} has {v.shape[:1]} rows, expected {k}")
        return cls(route=np.asarray(meta["route"], dtype=object), reason=np.asarray(meta["reason"], dtype=object),
                   draws=draws, diagnostics=diags, stage_time_s=meta["stage_time_s"],
                   stage_counts=meta["stage_counts"], param_names=tuple(meta["param_names"]),
                   model_name=meta["model_name"], config=meta.get("config", {}), model=model,
                   mcmc_stage_time_s=meta.get("mcmc_stage_time_s", {}),
                   thresholds=meta.get("thresholds", {}), weighted=weighted)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
