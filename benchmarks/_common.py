"""Shared helpers for benchmarks: environment record, timing, JSON output, roofline."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def environment() -> dict:
    import amortflow

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "amortflow": amortflow.__version__,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": os.getloadavg(),
    }


def best_time(fn, repeats: int = 3) -> float:
    """Minimum wall time of ``fn()`` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply rate of this machine (the roofline), GFLOP/s."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    mm(a, b).block_until_ready()
    t = best_time(lambda: mm(a, b).block_until_ready(), repeats)
    return 2.0 * n**3 / t / 1e9


def compiled_flops(jitted, *args, **kwargs) -> float | None:
    """FLOPs XLA counts for one call of a jitted function (None if unavailable)."""
    try:
        ca = jitted.lower(*args, **kwargs).compile().cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca.get("flops", np.nan))
    except Exception:  # noqa: BLE001 - cost analysis is best-effort across backends
        return None


def write_result(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    payload = {"benchmark": name, "environment": environment(), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=lambda o: np.asarray(o).tolist())
    print(f"wrote {path}")
    try:
        print(f"wrote {write_readme()}")
    except Exception as e:  # noqa: BLE001 - the README is a convenience, never fail the benchmark
        print(f"README not regenerated: {type(e).__name__}: {e}")
    return path


# ----------------------------------------------------------------------------- small helpers
def quantiles(x) -> dict:
    """min / 5% / 25% / median / 75% / 95% / max of the finite entries of ``x`` ({} if none)."""
    x = np.asarray(x, float).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    q = np.quantile(x, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(["min", "q05", "q25", "median", "q75", "q95", "max"], map(float, q)))


# ----------------------------------------------------------------------------- numpyro baseline
# numpyro's MCMC recompiles on every .run and a process dies with "LLVM ERROR: Unable to allocate
# section memory" after 25-35 datasets (DESIGN.md), so the per-dataset baseline runs in chunks of
# fresh processes. The child imports the numpyro model from a module next to this file.
_NUMPYRO_CHILD = r"""
import importlib, json, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["path"])
import jax, jax.numpy as jnp
from numpyro.infer import MCMC, NUTS, init_to_value
from numpyro.infer.util import constrain_fn
mod = importlib.import_module(spec["module"])
model = getattr(mod, spec["model"])
to_init = getattr(mod, spec["init"]) if spec.get("init") else None
d = np.load(spec["inputs"])
ys = d["ys"]
init = d["init"] if "init" in d.files else None
times, samples, divs = [], {}, []
for i in range(ys.shape[0]):
    t0 = time.perf_counter()
    kw, nuts_kw = {}, {}
    if init is not None:
        kw["init_params"] = to_init(init[i])
        # numpyro's kernel init still searches its own starting point (init_to_uniform, 100 tries)
        # before taking init_params: start that search at the first given chain, which is valid
        # even where uniform draws almost never are (e.g. non-decision times below the fastest RT)
        first = constrain_fn(model, (jnp.asarray(ys[i]),), {}, {k: v[0] for k, v in kw["init_params"].items()})
        nuts_kw["init_strategy"] = init_to_value(values=first)
    mc = MCMC(NUTS(model, target_accept_prob=spec["target_accept"], **nuts_kw), num_warmup=spec["num_warmup"],
              num_samples=spec["num_samples"], num_chains=spec["num_chains"],
              chain_method="sequential", progress_bar=False)
    mc.run(jax.random.PRNGKey(spec["seed"] + i), jnp.asarray(ys[i]), extra_fields=("diverging",), **kw)
    s = jax.block_until_ready(mc.get_samples(group_by_chain=True))
    times.append(time.perf_counter() - t0)
    for k, v in s.items():
        samples.setdefault(k, []).append(np.asarray(v))
    divs.append(int(np.sum(np.asarray(mc.get_extra_fields()["diverging"]))))
    print(f"dataset {i}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
np.savez(spec["output"], times=np.asarray(times), divergences=np.asarray(divs),
         **{"site_" + k: np.stack(v) for k, v in samples.items()})
"""


def numpyro_nuts_per_dataset(ys, *, module: str, model: str, init=None, init_fn: str | None = None,
                             chunk: int = 10, num_warmup: int = 1000, num_samples: int = 1000,
                             num_chains: int = 4, target_accept: float = 0.8, seed: int = 0,
                             progress: bool = True) -> dict:
    """numpyro NUTS on every dataset of ``ys [n, ...]``, one ``MCMC.run`` per dataset (sequential
    chains), ``chunk`` datasets per fresh subprocess (one host device, as a user would run it).

    ``module:model`` is a numpyro model ``model(y)`` importable from ``benchmarks/``; with ``init
    [n, num_chains, d]`` the child passes ``module.init_fn(init[i])`` as ``init_params``.
    Returns per-dataset wall times (construction + compile + warmup + sampling; the process
    start and imports are reported separately as ``process_wall_s``), divergences, and samples
    per site ``[n, num_chains, num_samples, ...]``.
    """
    import tempfile

    ys = np.asarray(ys)
    n = ys.shape[0]
    times, divs, samples, proc_walls = [], [], {}, []
    starts = list(range(0, n, chunk))
    it = starts
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(starts, desc="numpyro NUTS (fresh process per chunk)", unit="chunk")
    env = dict(os.environ, XLA_FLAGS="")
    with tempfile.TemporaryDirectory() as tmp:
        for s0 in it:
            inputs, output = os.path.join(tmp, f"in_{s0}.npz"), os.path.join(tmp, f"out_{s0}.npz")
            arrays = {"ys": ys[s0:s0 + chunk]}
            if init is not None:
                arrays["init"] = np.asarray(init)[s0:s0 + chunk]
            np.savez(inputs, **arrays)
            spec = {"path": os.path.dirname(os.path.abspath(__file__)), "module": module, "model": model,
                    "init": init_fn if init is not None else None, "inputs": inputs, "output": output,
                    "num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
                    "target_accept": target_accept, "seed": seed + s0}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _NUMPYRO_CHILD, json.dumps(spec)],
                                  capture_output=True, text=True, env=env)
            proc_walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(f"numpyro child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
            with np.load(output) as z:
                times += z["times"].tolist()
                divs += z["divergences"].tolist()
                for k in z.files:
                    if k.startswith("site_"):
                        samples.setdefault(k[5:], []).append(z[k])
    return {"times_s": times, "divergences": divs, "process_wall_s": proc_walls, "chunk_size": chunk,
            "samples": {k: np.concatenate(v) for k, v in samples.items()}}


def likelihood_weighted_init(key, model, ys, design=None, num_chains=4, num_candidates=64):
    """Chain starting points ``[K, num_chains, d]`` for every dataset of ``ys [K, ...]`` (with
    its ``design``): random distinct finite-density points among ``num_candidates`` prior draws
    weighted by the likelihood (:func:`amortflow.mcmc.initialize_positions`)."""
    import amortflow as af
    from amortflow import mcmc

    obs = af.observe(np.asarray(ys, np.float32), design=design)
    k = len(ys)
    cand = jax.vmap(lambda kk: model.sample_prior(kk, num_candidates))(jax.random.split(jax.random.fold_in(key, 0), k))
    ll = jax.vmap(lambda th, o: jax.vmap(lambda t: model.log_likelihood(t, o.y, o.design))(th))(cand, obs)
    init, _ = mcmc.initialize_positions(jax.random.fold_in(key, 1), model, obs, cand, ll, num_chains)
    return init


def batched_nuts(key, model, ys, num_warmup=500, num_samples=500, num_chains=4, bucket_size=None, design=None):
    """amortflow's batched NUTS on the exact likelihood of every dataset of ``ys [K, ...]`` (and
    its ``design``; one compiled call, chains started from the best of 64 prior draws by
    likelihood): ``(draws [K, num_chains * num_samples, d], run stats, wall seconds incl.
    compilation)``."""
    import amortflow as af
    from amortflow import mcmc

    cfg = mcmc.nuts.auto(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    t0 = time.perf_counter()
    obs = af.observe(np.asarray(ys, np.float32), design=design)
    k = len(ys)
    init = likelihood_weighted_init(key, model, ys, design, cfg.num_chains)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, 2), i))(jnp.arange(k))
    res = mcmc.run_sampler_keys(keys, model, obs, init, cfg, layout=mcmc.Layout(bucket_size=bucket_size or k))
    draws = np.asarray(jax.block_until_ready(res.draws))
    return draws, res, time.perf_counter() - t0


# ----------------------------------------------------------------------------- README
README = os.path.join(os.path.dirname(__file__), "README.md")


def _fmt(x, nd=3):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(x):
        return "–"
    if x != 0 and (abs(x) >= 1e7 or abs(x) < 10 ** (-nd)):
        return f"{x:.{nd - 1}e}"
    if abs(x) >= 100:
        return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.1f}"
    return f"{x:.{nd}f}".rstrip("0").rstrip(".")


def goals_line(goals: dict) -> str:
    """``Goals: name **PASS**, ...`` (``None``: not measured in this run, shown as a dash)."""
    return "Goals: " + ", ".join(f"{k} **{'PASS' if v else ('–' if v is None else 'FAIL')}**" for k, v in goals.items())


def _table(rows, header=("quantity", "value")) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |")
    return out


def _env_line(d: dict) -> str:
    e = d.get("environment") or {}
    parts = [f"backend {e.get('backend', d.get('backend', '?'))}",
             f"{len(e.get('devices', [])) or d.get('devices', d.get('num_devices', '?'))} device(s)",
             f"{e.get('cpu_count', d.get('cpu_count', '?'))} CPU cores"]
    if e.get("commit"):
        parts.append(f"commit {e['commit']}")
    if e.get("date"):
        parts.append(e["date"])
    if e.get("load_average"):
        parts.append("load avg " + "/".join(f"{v:.1f}" for v in e["load_average"]))
    return "_" + ", ".join(parts) + (", **quick mode**" if d.get("quick") else "") + "_"


def _section_gev(d: dict) -> list[str]:
    g = d.get("goals", {})
    w, t = d.get("workflow", {}), d.get("training", {})
    a, b = d.get("baseline_a_numpyro", {}), d.get("baseline_b_batched_nuts", {})
    acc, sp = d.get("accuracy", {}), d.get("speedups", {})
    n = d.get("num_datasets")
    rc = w.get("route_counts", {})
    lines = [_env_line(d), "",
             f"{n} test datasets from the doubled-scale prior; network trained on "
             f"{t.get('num_simulations')} simulations (`gev_preset({'quick=True' if d.get('quick') else ''})`); "
             f"workflow: {w.get('config_source', '')}. (A) is **scaled** from "
             f"{a.get('num_datasets_timed')} datasets; (B) is measured on all of them.", ""]
    rows = [("datasets accepted: " + r, f"{c} ({100 * c / max(n or 1, 1):.1f}%)") for r, c in rc.items()]
    rows += [("training wall time incl. simulation (s)", t.get("wall_s"))]
    for k, v in (w.get("stage_time_s") or {}).items():
        rows.append((f"workflow stage `{k}` (s)", v))
        if k == "mcmc":
            for st, tv in (w.get("mcmc_stage_time_s") or {}).items():
                rows.append((f"&nbsp;&nbsp;MCMC sub-stage `{st}` (s)", tv))
    rows += [("workflow wall time (s)", w.get("wall_s")),
             ("**total: training + workflow (s)**", d.get("total_s")),
             (f"(A) numpyro NUTS per dataset, {a.get('num_datasets_timed')} timed, scaled to {n} (s)",
              a.get("scaled_total_s")),
             (f"(B) batched NUTS (amortflow), all {b.get('num_datasets')} datasets, measured (s)",
              b.get("wall_s")),
             ("speed-up vs A (total incl. training)", sp.get("vs_a_total")),
             ("speed-up vs B (total incl. training)", sp.get("vs_b_total")),
             ("accurate / evaluable datasets",
              f"{acc.get('num_accurate')} / {acc.get('num_evaluable')} ({100 * (acc.get('fraction_accurate') or 0):.1f}%)"),
             ("reference runs not converged (excluded)", acc.get("num_reference_not_converged"))]
    for r, c in (acc.get("by_route") or {}).items():
        if c.get("evaluable"):
            rows.append((f"&nbsp;&nbsp;accurate, route {r}", f"{c['accurate']} / {c['evaluable']}"))
    m = acc.get("metrics") or {}
    if m:
        q = lambda k: (m.get(k) or {})  # noqa: E731
        rows += [("marginal TV: median / 95% / max",
                  f"{_fmt(q('marginal_tv').get('median'))} / {_fmt(q('marginal_tv').get('q95'))} / {_fmt(q('marginal_tv').get('max'))}"),
                 ("noise floor of marginal TV: median",
                  _fmt(((m.get("noise_floor") or {}).get("marginal_tv") or {}).get("median"))),
                 ("max abs. mean error (posterior sds): median / 95%",
                  f"{_fmt(q('max_abs_mean_error_std').get('median'))} / {_fmt(q('max_abs_mean_error_std').get('q95'))}"),
                 ("fraction with marginal TV < 0.2 (paper's rule)", m.get("fraction_paper_tv_lt_0.2"))]
    for label, base in (("(B) batched NUTS", b), ("(A) numpyro", a)):
        ab = base.get("accuracy_vs_reference") if base else None
        if ab:
            rows.append((f"{label} vs reference, accurate by the same criterion",
                         f"{ab.get('num_accurate')} / {ab.get('num_evaluated')}"))
    lines += _table(rows)
    if g:
        lines += ["", goals_line(g)]
    if acc.get("criterion"):
        lines += ["", "Accuracy criterion: " + acc["criterion"]]
    return lines


def _section_amortized(d: dict) -> list[str]:
    tr, sa = d.get("training", {}), d.get("sampling", {})
    rows = [("training steps/s (batch %s)" % tr.get("batch_size"), tr.get("steps_per_second")),
            ("ms per training step", tr.get("ms_per_step")),
            (f"amortized draws: {sa.get('num_datasets')} datasets x {sa.get('num_draws')} (s)", sa.get("seconds")),
            ("draws/s", sa.get("draws_per_second")),
            ("achieved matmul GFLOP/s", sa.get("achieved_matmul_gflops")),
            ("sgemm roofline GFLOP/s", d.get("roofline_sgemm_gflops")),
            ("fraction of roofline (target %s)" % _fmt(sa.get("target_fraction")), sa.get("fraction_of_roofline"))]
    return [_env_line(d), ""] + _table(rows)


def _section_diagnostics(d: dict) -> list[str]:
    p, nr, ac = d.get("psis", {}), d.get("nested_rhat", {}), d.get("accuracy", {})
    rows = [(f"PSIS {p.get('num_datasets')} x {p.get('num_draws')}: JAX (s)", p.get("jax_s")),
            ("PSIS arviz loop (s)", p.get("arviz_loop_s")), ("PSIS speed-up", p.get("speedup_vs_arviz")),
            ("PSIS k̂ max abs. difference vs arviz (float64)", p.get("khat_max_abs_diff_float64_vs_arviz"))]
    n2 = nr.get("nested_rhat", {})
    rows += [(f"nested R̂ {nr.get('num_datasets')} datasets x {nr.get('num_chains')} chains: JAX (s)", n2.get("jax_s")),
             ("nested R̂ NumPy loop (s)", n2.get("numpy_loop_s")), ("nested R̂ speed-up", n2.get("speedup_vs_numpy_loop"))]
    rr = nr.get("rank_rhat", {})
    rows += [("rank R̂ speed-up vs arviz", rr.get("speedup_vs_arviz"))]
    rows += [(f"accuracy metrics, ms per dataset ({ac.get('num_draws')} vs {ac.get('num_reference')} draws)",
              ac.get("ms_per_dataset"))]
    return [_env_line(d), ""] + _table(rows)


def _section_mcmc(d: dict) -> list[str]:
    rows = []
    for name, s in (d.get("batched") or {}).items():
        rows.append((f"{name} ({s.get('num_datasets')} datasets)", s.get("datasets_per_s"),
                     s.get("datasets_per_s_excl_compile"), s.get("converged_fraction"),
                     (s.get("max_nested_rhat") or {}).get("median")))
    out = [_env_line(d), ""] + _table(rows, ("sampler", "datasets/s", "datasets/s excl. compile",
                                             "converged", "median max nested R̂"))
    ratios = d.get("ratios") or {}
    if ratios:
        out += [""] + _table([(k, v) for k, v in ratios.items()], ("ratio (throughput)", "value"))
    return out


def _section_defaults(d: dict) -> list[str]:
    models = d.get("models") or {}
    lines = [_env_line(d), "",
             f"Defaults only: `af.fit_posterior(key, model)` and `af.run_workflow(key, model, est, ys, "
             f"af.WorkflowConfig())` on {d.get('num_sbc_datasets')} prior-predictive datasets per model (one "
             f"batched call); the first {d.get('num_test_datasets')} are checked against numpyro NUTS. "
             "Without MCMC = routes amortized / psis / refined. SBC: ECDF simultaneous-band test of the "
             "final draws (whatever the route) and of the amortized draws alone; PASS = every parameter's "
             "p-value >= 0.05 / d (Bonferroni).", ""]
    if d.get("quick"):
        lines += ["_Quick mode: shortened training, few datasets — indicative only._", ""]
    rows = []
    for name, m in models.items():
        w, acc, sbc, tr = m.get("workflow", {}), m.get("accuracy") or {}, m.get("sbc") or {}, m.get("training", {})
        rc = w.get("route_counts") or {}
        routes = ", ".join(f"{r} {c}" for r, c in rc.items() if c)
        fin, am = sbc.get("final") or {}, sbc.get("amortized") or {}

        def verdict(t):
            if not t.get("num_datasets"):
                return "–"
            return f"{'PASS' if t.get('passed') else 'FAIL'} (min p {_fmt(t.get('min_pvalue'))})"

        accurate = (f"{acc.get('num_accurate')} / {acc.get('num_evaluable')} "
                    f"({100 * (acc.get('fraction_accurate') or 0):.0f}%)" if acc else "–")
        rows.append((f"`{name}` ({m.get('dim')} params)", accurate,
                     f"{100 * (w.get('fraction_without_mcmc') or 0):.1f}%", routes,
                     verdict(fin) + (f", {sbc.get('num_failed')} failed" if sbc.get("num_failed") else ""),
                     verdict(am), tr.get("wall_s"), w.get("wall_s"), m.get("total_s")))
    lines += _table(rows, ("model", "accurate / evaluable", "without MCMC", "routes (all datasets)",
                           "SBC final", "SBC amortized only", "training (s)", "workflow (s)", "total (s)"))
    stage_rows = []
    for name, m in models.items():
        for k, v in ((m.get("workflow") or {}).get("stage_time_s") or {}).items():
            stage_rows.append((f"`{name}`", k, v))
    if stage_rows:
        lines += [""] + _table(stage_rows, ("model", "stage", "time (s)"))
    g = d.get("goals") or {}
    if g:
        lines += ["", goals_line(g)]
        per = [f"`{n}`: " + ", ".join(f"{k} {'yes' if v else ('–' if v is None else 'no')}"
                                      for k, v in (m.get("goals") or {}).items()) for n, m in models.items()]
        lines += [""] + [f"- {p}" for p in per]
    if d.get("criterion"):
        lines += ["", "Accuracy criterion: " + d["criterion"]]
    return lines


def _section_gbi(d: dict) -> list[str]:
    st = d.get("settings") or {}
    betas = [f"{b:g}" for b in st.get("betas", [])]
    lines = [_env_line(d), "",
             f"Generalized Bayes: `af.fit_posterior(key, model, tempering=af.Tempering())` (default objective, "
             f"beta in [0.05, 2], {st.get('train_steps')} steps), then every one of {st.get('num_datasets')} "
             f"datasets at each beta of the grid; accuracy against the power posterior by the bench-gev "
             "criterion (analytic references for the normal models, batched NUTS on the tempered density "
             "for GEV). numpyro times are per (dataset, beta) pair, **scaled** from the pairs timed.", ""]
    if st.get("quick"):
        lines += ["_Quick mode: shortened training, few datasets — indicative only._", ""]
    rows = []
    for name in ("normal", "gev", "misspecified"):
        m = d.get(name)
        if not m or "amortized" not in m:
            continue
        parts = [("amortized", m["amortized"]), ("workflow", m["workflow"])]
        if m.get("route_b"):
            parts.insert(1, ("amortized, route (B)", m["route_b"]))
        for label, part in parts:
            fr = part.get("fraction_accurate_per_beta") or {}
            rows.append((f"`{name}` {label}",) + tuple("–" if fr.get(b) is None else f"{100 * fr[b]:.0f}%" for b in betas))
        ess = m.get("route_b_weight_ess_fraction") or {}
        if ess:
            rows.append((f"`{name}` route (B) weight ESS / N",) + tuple(_fmt(ess.get(b)) for b in betas))
    if rows:
        lines += ["Accurate pairs per beta (default objective `SelfNormalizedKL` unless marked route (B) = "
                  "`ReweightedSimulations`):", ""] + _table(rows, ("model",) + tuple(betas))
    trows = []
    for name in ("normal", "gev", "misspecified"):
        m = d.get(name)
        if not m or "amortized" not in m:
            continue
        npp = m.get("numpyro_per_pair") or {}
        sp = m.get("speedup_vs_numpyro_per_pair") or {}
        rc = (m.get("workflow") or {}).get("routes") or {}
        trows.append((f"`{name}`", m.get("num_pairs"), (m.get("training") or {}).get("wall_s"),
                      (m.get("workflow") or {}).get("wall_s"), m.get("total_wall_s"),
                      ", ".join(f"{r} {c}" for r, c in rc.items() if c),
                      npp.get("scaled_total_s"), sp.get("total_incl_training"),
                      m.get("speedup_vs_batched_nuts_reference")))
    if trows:
        lines += ["", "Time (s) and routes:", ""] + _table(
            trows, ("model", "pairs", "training", "workflow", "total", "routes", "numpyro per pair (scaled)",
                    "speed-up vs numpyro", "speed-up vs batched NUTS"))
    mis = d.get("misspecified") or {}
    cov = mis.get("coverage") or {}
    if cov:
        lines += ["", f"Misspecified example ({mis.get('description', '')}): coverage of the true mean by 90% "
                      "intervals:", ""]
        crow = [(k, f"{100 * v:.0f}%" if isinstance(v, (int, float)) else v) for k, v in cov.items()]
        lines += _table(crow, ("beta", "coverage"))
    goals = {f"{n}: {k}": v for n in ("normal", "gev", "misspecified") for k, v in ((d.get(n) or {}).get("goals") or {}).items()}
    if goals:
        lines += ["", goals_line(goals)]
    return lines


def _section_spatial(d: dict) -> list[str]:
    st = d.get("settings") or {}
    lines = [_env_line(d), "",
             f"The review's spatial GP (`af.models.spatial_gp()`, 16 x 16 grid, ell ~ U(0, 0.6)): every "
             f"estimator trained on one bank of {st.get('num_train')} + {st.get('num_validation')} simulated "
             f"fields ({st.get('train_steps')} steps), tested on {st.get('num_test')} fresh fields. Metrics x 10^2 "
             "in the review's convention (posterior median; **median** over fields of squared error -> RMSPE, "
             "of the 90% interval score -> MIS90 and of the CRPS -> MCRPS; COV90 = mean coverage). The "
             "reference is the exact posterior by quadrature; accuracy = the bench-gev criterion against it. "
             "Per-field MCMC times are **scaled** from the fields timed.", ""]
    if st.get("quick"):
        lines += ["_Quick mode: small bank, short training, few fields — indicative only._", ""]
    m = d.get("methods") or {}
    rev = d.get("review_table_x100") or {}
    ran = st.get("methods")
    missing = [k for k in ("nbe", "npe", "workflow", "nle", "nre") if ran is not None and k not in ran]
    if missing or not st.get("num_mcmc"):
        lines += ["_Partial run: " + "; ".join(
            ([f"not run: {', '.join(missing)} (`--methods`)"] if missing else [])
            + ([] if st.get("num_mcmc") else ["no exact-likelihood batched NUTS subset (`--num-mcmc 0`)"]))
            + "._", ""]
    rows = []
    for key, review in (("exact", "MCMC"), ("mcmc_batched", "MCMC"), ("nbe", "NBE"), ("npe", "NPE"),
                        ("npe_workflow", "NPE"), ("nle", None), ("nre", "NRE")):
        e = m.get(key)
        if not e:
            continue
        r = rev.get(review) or {}

        def x100(v):
            return "–" if v is None else f"{100 * v:.2f}"

        rows.append((e.get("label", key), x100(e.get("rmspe")), x100(e.get("mis90")), x100(e.get("mcrps")),
                     "–" if e.get("cov90") is None else f"{100 * e['cov90']:.1f}",
                     "–" if e.get("accurate_vs_exact") is None else f"{100 * e['accurate_vs_exact']:.1f}%",
                     _fmt(e.get("train_s")), _fmt(e.get("inference_s", e.get("wall_s"))),
                     _fmt(e.get("speedup_vs_per_field_mcmc")),
                     ", ".join(f"{k} {v}" for k, v in (e.get("routes") or {}).items() if v) or "–",
                     f"{r.get('rmspe', '–')} / {r.get('mis90', '–')} / {r.get('cov90', '–')}" if r else "–"))
    if rows:
        lines += _table(rows, ("method", "RMSPE", "MIS90", "MCRPS", "COV90 %", "accurate vs exact", "train (s)",
                               "inference (s)", "speed-up vs per-field MCMC (incl. training)", "routes",
                               "review RMSPE / MIS90 / COV90"))
    np_ = m.get("mcmc_numpyro") or {}
    if np_:
        lines += ["", f"Per-field MCMC: {np_.get('label')}: {_fmt(np_.get('per_field_s'))} s per field, "
                      f"{_fmt(np_.get('scaled_total_s'))} s for all fields (scaled)."]
    loops = [(k, (m.get(k) or {}).get("per_field_loop")) for k in ("nle", "nre")]
    for k, lp in loops:
        if lp:
            lines.append(f"`{k}`: batched surrogate MCMC vs {lp.get('label')}: **{_fmt(lp.get('batched_speedup'))}x**.")
    goals = d.get("goals") or {}
    if goals:
        lines += ["", goals_line(goals)]
    return lines


def _sbc_cell(t: dict) -> str:
    """``PASS (min p 0.12, 180 datasets)`` for one ``WorkflowSBC.tests()`` entry."""
    if t.get("passed") is None:
        return "–"
    return f"{'PASS' if t['passed'] else 'FAIL'} (min p {_fmt(t.get('min_pvalue'))}, {t.get('num_datasets')} datasets)"


def _section_paper(d: dict) -> list[str]:
    """A paper experiment run by ``benchmarks/_paper.py`` (GLM, psychometric, DDM)."""
    st = d.get("settings") or {}
    wf, acc = d.get("workflow") or {}, d.get("accuracy") or {}
    desc = d.get("description") or ("`af.models.bernoulli_glm()` (10 parameters, 100 bins), preset "
                                    "`af.presets.bernoulli_glm_preset()` (the network sees X^T y, online training)")
    lines = [_env_line(d), "",
             f"{desc}; {st.get('train_steps')} training steps; the workflow with the preset's `WorkflowConfig` on "
             f"{st.get('num_test')} prior-predictive datasets. Reference: numpyro NUTS per dataset on the first "
             f"{st.get('num_ref')}; accuracy by bench-gev's criterion. The numpyro and batched-NUTS totals are "
             "**scaled** from the datasets timed.", ""]
    if st.get("quick"):
        lines += [f"_Quick mode: {st.get('num_test')} datasets, short training — indicative only._", ""]
    nb, npy = d.get("batched_nuts") or {}, d.get("numpyro") or {}
    rows = [("training (s)", _fmt((d.get("training") or {}).get("wall_s"))),
            ("workflow on all datasets (s)", _fmt(wf.get("wall_s"))),
            ("total incl. training (s)", _fmt(d.get("total_s"))),
            ("routes", ", ".join(f"{k} {v}" for k, v in (wf.get("route_counts") or {}).items() if v)),
            ("accepted without MCMC", f"{100 * wf['fraction_without_mcmc']:.1f}%" if wf.get("fraction_without_mcmc") is not None else "–"),
            ("time per stage (s)", ", ".join(f"{k} {_fmt(v)}" for k, v in (wf.get("stage_time_s") or {}).items())),
            ("accurate vs reference", f"{acc.get('num_accurate')}/{acc.get('num_evaluable')}"),
            *[(f"SBC of the {k} draws, all datasets", _sbc_cell((d.get("sbc") or {}).get(k)))
              for k in ("final", "amortized") if (d.get("sbc") or {}).get(k)],
            ("batched NUTS, scaled total (s)", f"{_fmt(nb.get('scaled_total_s'))} ({nb.get('label', '')})"),
            ("numpyro NUTS, scaled total (s)", f"{_fmt(npy.get('scaled_total_s'))} ({npy.get('label', '')})"),
            ("speed-up vs batched NUTS", _fmt(d.get("speedup_vs_batched_nuts"))),
            ("speed-up vs numpyro", _fmt(d.get("speedup_vs_numpyro")))]
    lines += _table(rows)
    goals = d.get("goals") or {}
    if goals:
        lines += ["", goals_line(goals)]
    return lines


_SECTIONS = (
    ("gev", "GEV workflow: the paper's Table 1 row (`make bench-gev`)", _section_gev),
    ("defaults", "Defaults end to end on four models (`make bench-defaults`)", _section_defaults),
    ("gbi", "Amortized generalized Bayes over a temperature grid (`make bench-gbi`)", _section_gbi),
    ("spatial", "Neural estimators on the review's spatial GP (`make bench-spatial`)", _section_spatial),
    ("glm", "Bernoulli GLM: the paper's 10 000 datasets (`make bench-glm`)", _section_paper),
    ("psychometric", "Psychometric curves with per-dataset designs (`make bench-psychometric`)", _section_paper),
    ("ddm", "Six-parameter drift-diffusion model (`make bench-ddm`)", _section_paper),
    ("amortized", "Amortized stage (`make bench-amortized`)", _section_amortized),
    ("diagnostics", "Diagnostics (`make bench-diagnostics`)", _section_diagnostics),
    ("mcmc", "Many-chain MCMC (`make bench-mcmc`)", _section_mcmc),
)


def write_readme(results_dir: str = RESULTS, path: str = README) -> str:
    """Regenerate ``benchmarks/README.md`` from every result JSON in ``results_dir``.

    Each benchmark has a section; a missing JSON gives a "not run yet" line. ``<name>.json`` is
    preferred over ``<name>_quick.json``. Any benchmark script may call this after writing.
    """
    lines = ["# Benchmarks", "",
             "Generated by `benchmarks/_common.py:write_readme()` from the JSON files in "
             "`benchmarks/results/` (re-run a benchmark to refresh its section). "
             "Numbers are measured on the machine named in each section; run `make bench` "
             "(or `make bench-<name>`).", ""]
    for name, title, fn in _SECTIONS:
        lines += [f"## {title}", ""]
        data = None
        for cand in (f"{name}.json", f"{name}_quick.json"):
            f = os.path.join(results_dir, cand)
            if os.path.exists(f):
                try:
                    with open(f) as fh:
                        data = json.load(fh)
                    break
                except (OSError, json.JSONDecodeError) as e:
                    lines += [f"_could not read {cand}: {e}_", ""]
        if data is None:
            lines += ["_not run yet_", ""]
            continue
        try:
            lines += fn(data) + [""]
        except Exception as e:  # noqa: BLE001 - a malformed result must not break the others
            lines += [f"_could not render {name}: {type(e).__name__}: {e}_", ""]
    lines += ["## Measurements behind design choices", "",
              "Kept here rather than in docstrings (the code keeps the reasoning). Numbers "
              "from the benchmarks above, on the 2-core CPU, at the time the choice was made:", ""]
    lines += [f"- {note}" for note in DESIGN_NOTES] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


DESIGN_NOTES = (
    "Generalized-Bayes training objective, conjugate 2-d normal (10 observations), 3000 steps except "
    "where noted, error of q's posterior mean in posterior sds (RMS over 300 datasets) at beta = 0.05 .. 2: "
    "SelfNormalizedKL 64 tempered datasets x 16 proposals (the default) 0.040-0.074, sd ratio 0.99-1.00, "
    "median PSIS k-hat 0.09-0.38; 32 x 8 proposals 0.045-0.110, k-hat up to 0.42 (90% of datasets "
    "below 0.7 at beta = 0.1 vs 94%), at half the step cost on GEV (13.7 vs 30.2 ms per step; plain NPE "
    "7.2 ms); route (B) ReweightedSimulations at 1500 steps 0.14-0.63, sd ratio 0.49 at beta = 0.05.",
    "GEV amortized accuracy in bench-gbi (bench-gev criterion, 200 in-distribution datasets per beta) is "
    "the flow's precision, not the tempering: plain NPE (3000 steps) is accurate on 56% at beta = 1 "
    "(0-7% at beta <= 0.5, where it ignores beta), the tempered default 57% at beta = 1 (44-89% over "
    "the grid), 8000 tempered steps 57-95% (68% at beta = 1) in 3.2x the training time; the default "
    "stays at 3000 steps and the workflow's PSIS / refinement close the gap (99.5-100% after correction).",
    "fit_posterior defaults (online simulation, 3000 steps at lr 2e-3, summary by observation "
    "kind): GEV held-out NLL -3.086 vs the preset's -2.881 on the same 4096 simulations, in "
    "40-42 s at load 2.5-3.8; the old 10k-bank default overfit the 2-d Gaussian (validation loss "
    "best at step 600 of 4000; posterior-mean error 0.168 sd RMS, now 0.054). Full tables, the "
    "spline-inverse NaN-gradient fix and the opt-in WidenedPrior: benchmarks/notes_training.md.",
    "Refinement's final defensive mixture (2S Student-t + 2S amortized draws, balance heuristic): "
    "on the 11-parameter hierarchical model 86 of 100 datasets accepted without MCMC (15 with PSIS "
    "and Student-t rounds alone; 60 with S + S draws); on the GEV test set MCMC took 42 datasets "
    "instead of 204, at the price of ~2S flow log densities per refined dataset.",
    "Default importance-sampling gate (`psis_max_error=0.1`: Monte Carlo error of weighted means, "
    "sds and 5%/95% quantiles <= 0.1 posterior sd), from `benchmarks/study_is_gate.py` on the 1000 "
    "GEV test datasets vs reference NUTS (wrong = |mean error| >= 0.2 sd or sd ratio outside "
    "[0.8, 1.25]): PSIS with k-hat alone accepted 630 (108 wrong), with ESS >= 400 511 (39 wrong), "
    "with the error gate 213 (3 wrong), with ESS >= 0.6 S 295 (2 wrong); refinement with the error "
    "gate 798 (2 wrong), with ESS >= 0.6 S 916 (2 wrong). The error gate is the one that follows "
    "what the answer needs on any model (0.6 S is a GEV-tuned fraction); high_stakes() adds it.",
    "CPU MCMC ladder, MEADS 4 x 16 first rung: the cheapest sampler per converged GEV dataset "
    "(about 35k gradient evaluations per dataset; 537 of 569 datasets accepted on the first rung). "
    "A middle ChEES rung rescued 15 of the 32 MEADS failures but cost a ~35 s compilation, more "
    "than NUTS alone on so few datasets.",
    "MEADS at 4 datasets per `lax.map` step (GHMC has no data-dependent loop): 38.6 -> 20.2 ms "
    "per dataset on 128 GEV datasets; NUTS (trees of different depth) gains nothing.",
    "Tracing BlackJAX NUTS takes ~2.4 s; the dataset map traces each sampler once per "
    "compilation (it used to trace twice: NUTS lowering 4.7 -> 2.7 s).",
    "`mcmc_chunk=256`: fewer, fuller ladder calls than 128 saved ~2 s of 55 on the GEV benchmark; "
    "a chunk of MEADS is ~8 s on this CPU, the most an interrupted run loses.",
    "High-stakes PSIS ESS gate at 60% of S: on GEV (1000 datasets vs reference NUTS) a 20% gate "
    "let 17 of 431 accepted datasets be off by > 0.1 posterior sd; 50% left 7-9 of ~360 off by "
    "4-5.5 Monte-Carlo standard errors, most with ESS below 60%; 60% cut those to 2-4 for ~55 "
    "more datasets sent to MCMC (~1 s).",
    "Spline kernel: the unrolled forward layout made a 6-layer flow's sampling pass several times "
    "faster than distrax's kernel and 3x faster than the one-hot layout at 4096 x 2 elements; the "
    "one-hot inverse's gradient takes 0.3 ms instead of 2.9 ms at 256 x 2 elements (9-15x), which "
    "made NPE training steps about 3x faster (21.4 -> 6.9 ms per step, GEV preset, batch 256).",
    "Bank augmentation by the model's symmetries (`af.models.symmetry`), spatial GP NBE (pinball "
    "5/50/95%, 16 000 + 2 000 bank, 3000 steps of 256, 1000 test fields; RMSPE / MIS90 x 10^2 / "
    "COV90; exact posterior 1.50 / 9.42 / 89.4%; `benchmarks/study_spatial_training.py`): default CNN "
    "(16, 32, 64) on the bank 2.04 / 11.65 / 82.4% (validation loss best at mid-run, then rising); "
    "the same CNN with online simulation (768k fresh fields, 655 s) 1.78 / 10.16 / 89.1%; a wider CNN "
    "(32, 64, 128) on the bank memorised it (train loss 0.03, validation 0.17 at step 600 rising to "
    "0.29; 2.28 / 13.04) and `pooling=\"flatten\"` did too (2.00 / 10.87 / 80.1%); the default CNN on "
    "the bank with its 16 symmetries (dihedral x sign) 1.79 / 9.80 / 88.5%, train and validation loss "
    "equal (0.136 / 0.147) and still falling at step 3000: the remaining gap is capacity/budget, not "
    "overfitting.",
    "Amortized pass on CPU: about 2**12 draws in flight per `lax.map` step keeps activations in "
    "L2 (1000 GEV datasets x 2000 draws: 8.5 s at 262 datasets per step, 5.0 s at 2).",
)
