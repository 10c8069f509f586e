"""Command line: ``amortflow train | run | demo`` (also ``python -m amortflow``).

``train``  trains a neural posterior estimator for a built-in model and saves it (JSON + msgpack).
``run``    runs the adaptive workflow (amortized draws -> OOD -> PSIS -> many-chain MCMC -> NUTS)
           on datasets from a file (``.npy`` / ``.npz`` / ``.csv``) or simulated ones, writing the
           result, the per-dataset table and figures. Re-running with the same ``--out`` resumes.
``demo``   the paper's GEV experiment end to end: train on 10k simulations, analyse 1000 test
           datasets drawn from the wider test prior, print routing and timing, write figures.

Expected errors (bad data files, incompatible estimators, invalid settings) print one line to
stderr and exit with status 1; set ``AMORTFLOW_DEBUG=1`` for the traceback.
"""
from __future__ import annotations

import argparse
import math
import json
import os
import sys
import threading
import time

import numpy as np

MODELS = ("gev", "gaussian_mean")
DATA_EXTENSIONS = (".npy", ".npz", ".csv")


class CLIError(ValueError):
    """An expected, user-facing error (reported without a traceback)."""


# ----------------------------------------------------------------------------- models / training
def make_cli_model(name: str, test_prior: bool = False):
    """The built-in model ``name`` (``test_prior`` only for GEV: the paper's doubled prior)."""
    import amortflow as af

    if name == "gev":
        return af.models.gev(test_prior=test_prior)
    if name == "gaussian_mean":
        if test_prior:
            raise CLIError("--test-prior is only defined for --model gev")
        return af.models.gaussian_mean()
    raise CLIError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def training_settings(model_name: str, quick: bool = False, simulations: int | None = None,
                      steps: int | None = None) -> dict:
    """Architecture and budget used by ``train`` / ``demo``: the GEV preset, or a small default
    for the Gaussian-mean model. ``simulations`` / ``steps`` override the budget."""
    import dataclasses

    from amortflow.estimators import TrainConfig
    from amortflow.nets import DeepSetSpec, FlowSpec

    if model_name == "gev":
        from amortflow.presets import gev_preset

        kw = gev_preset(quick=quick).fit_kwargs()
        summary, flow, train, n_sim = kw["summary"], kw["flow"], kw["train_config"], kw["num_simulations"]
    else:
        summary = DeepSetSpec(phi_hidden=(32, 32), rho_hidden=(32,), out_dim=8, pooling=("mean",))
        flow = FlowSpec(num_layers=4, hidden=(64, 64))
        train = TrainConfig(num_steps=300 if quick else 2000, batch_size=256, learning_rate=2e-3,
                            steps_per_call=100)
        n_sim = 2000 if quick else 10_000
    if steps is not None:
        if steps < 1:
            raise CLIError(f"--steps must be positive, got {steps}")
        train = dataclasses.replace(train, num_steps=int(steps), steps_per_call=min(train.steps_per_call, int(steps)))
    if simulations is not None:
        if simulations < 512:
            raise CLIError(f"--simulations must be at least 512 (validation needs 256), got {simulations}")
        n_sim = int(simulations)
    return {"summary": summary, "flow": flow, "train_config": train, "num_simulations": n_sim}


def _request(model_name: str, settings: dict, seed: int) -> dict:
    """JSON description of a training request (decides whether a saved estimator is reusable)."""
    import dataclasses

    return {"model": model_name, "seed": int(seed), "num_simulations": settings["num_simulations"],
            "summary": _plain(dataclasses.asdict(settings["summary"])),
            "flow": _plain(dataclasses.asdict(settings["flow"])),
            "train_config": _plain(dataclasses.asdict(settings["train_config"]))}


def _plain(x):
    return json.loads(json.dumps(x, default=str))


REQUEST_FILE = "cli_training.json"


_CHECKPOINT_FILES = {"train_state.msgpack", "train_history.json", REQUEST_FILE}


def _prepare_checkpoint(ckpt: str, request: dict) -> None:
    """Keep ``ckpt`` only if it holds an interrupted run of the same request; a stale one (other
    settings) is removed -- but only if it contains nothing but training-checkpoint files."""
    import shutil

    if os.path.isdir(ckpt):
        try:
            with open(os.path.join(ckpt, REQUEST_FILE)) as f:
                same = json.load(f) == request
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return
        foreign = [f for f in os.listdir(ckpt) if f not in _CHECKPOINT_FILES and not f.endswith(".tmp")]
        if foreign:
            raise CLIError(f"{ckpt} exists and is not an amortflow training checkpoint; move it away")
        shutil.rmtree(ckpt)
    os.makedirs(ckpt)
    with open(os.path.join(ckpt, REQUEST_FILE), "w") as f:
        json.dump(request, f, indent=1)


def train_estimator(model, settings: dict, seed: int, out: str, *, progress: bool = True):
    """Train, save to ``out`` (estimator files + ``cli_training.json``); returns ``(est, seconds)``.

    While training, its state is checkpointed in ``<out>_checkpoint``: an interrupted run with the
    same settings resumes from there; the folder is removed once the estimator is saved.
    """
    import shutil

    import jax

    import amortflow as af

    request = _request(model.name, settings, seed)
    ckpt = os.path.normpath(os.path.abspath(out)) + "_checkpoint"
    _prepare_checkpoint(ckpt, request)
    t0 = time.perf_counter()
    est = af.fit_posterior(jax.random.PRNGKey(seed), model, **settings, progress=progress,
                           checkpoint_dir=ckpt)
    seconds = time.perf_counter() - t0
    est.save(out)
    with open(os.path.join(out, REQUEST_FILE), "w") as f:
        json.dump({**request, "training_time_s": seconds}, f, indent=1)
    shutil.rmtree(ckpt, ignore_errors=True)
    return est, seconds


def reusable_estimator(path: str, model, settings: dict, seed: int):
    """A saved estimator at ``path`` trained by the CLI with exactly these settings, else ``None``
    (with the reason). Returns ``(est, training_time_s, why_not)``."""
    import amortflow as af

    req_file = os.path.join(path, REQUEST_FILE)
    if not os.path.isfile(req_file):
        return None, None, "no saved estimator"
    try:
        with open(req_file) as f:
            saved = json.load(f)
        t = saved.pop("training_time_s", None)
        if saved != _request(model.name, settings, seed):
            return None, None, "saved estimator was trained with other settings"
        est = af.load_estimator(path)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        return None, None, f"saved estimator unreadable ({e})"
    if tuple(est.param_names) != tuple(model.param_names) or tuple(est.spec.obs_shape) != tuple(model.obs_shape):
        return None, None, "saved estimator does not fit the model"
    return est, t, ""


# ----------------------------------------------------------------------------- data files
def load_datasets(path: str, model) -> np.ndarray:
    """Read datasets ``[K, *obs_shape]`` from ``.npy`` / ``.npz`` / ``.csv`` (never unpickles).

    ``.npz`` must hold one array (or one named ``ys``/``y``). A ``.csv`` has one dataset per row
    (its ``prod(obs_shape)`` values, row-major), optionally with a header line. A single dataset
    of shape ``obs_shape`` is accepted as ``K = 1``.

    Raises:
      CLIError: missing file, unknown extension, unreadable content, or a wrong shape.
    """
    if not os.path.isfile(path):
        raise CLIError(f"data file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    want = tuple(model.obs_shape)
    size = int(np.prod(want))
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                pick = next((n for n in ("ys", "y") if n in names), names[0] if len(names) == 1 else None)
                if pick is None:
                    raise CLIError(f"{path}: holds arrays {names}; name the datasets 'ys' or save one array")
                arr = z[pick]
        elif ext == ".csv":
            arr = _read_csv(path)
            if arr.ndim == 2 and arr.shape[1] == size:
                arr = arr.reshape((arr.shape[0],) + want)
            elif arr.ndim == 2:
                raise CLIError(f"{path}: rows have {arr.shape[1]} values, but one {model.name} dataset "
                               f"has {size} (shape {want}); write one dataset per row")
        else:
            raise CLIError(f"{path}: unsupported data format {ext!r} (use {', '.join(DATA_EXTENSIONS)})")
    except CLIError:
        raise
    except (ValueError, OSError) as e:  # pickled object arrays, corrupt files, non-numeric text
        raise CLIError(f"{path}: cannot read datasets ({e})") from None
    if arr.dtype.kind not in "fiub":
        raise CLIError(f"{path}: datasets must be numeric, got dtype {arr.dtype}")
    if tuple(arr.shape) == want:
        arr = arr[None]
    if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
        raise CLIError(f"{path}: array of shape {tuple(arr.shape)} does not hold {model.name} datasets; "
                       f"expected [K, {', '.join(map(str, want))}]")
    if arr.shape[0] == 0:
        raise CLIError(f"{path}: no datasets")
    return np.asarray(arr, np.float32)


def _is_number(field: str) -> bool:
    try:
        float(field)
        return True
    except ValueError:
        return False


def _read_csv(path: str) -> np.ndarray:
    """Rows of numbers; a first line with any field that is not a number is a header."""
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if not lines:
        raise CLIError(f"{path}: the file is empty (no datasets)")
    has_header = not all(_is_number(v) for v in lines[0].split(","))
    if has_header and len(lines) == 1:
        raise CLIError(f"{path}: only a header line, no datasets")
    return np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, dtype=np.float64, ndmin=2)


# ----------------------------------------------------------------------------- workflow settings
def quick_policy(num_draws: int):
    """Tiny MCMC ladder for smoke tests: a short ChEES run (32 chains), then the same sampler
    again from its own final draws (one compiled function serves both rungs; the NUTS fallback
    of the default ladder is left out because compiling it dominates a tiny run). Returned as
    the :class:`~amortflow.mcmc.EscalationPolicy` that ``WorkflowConfig.mcmc`` holds."""
    from amortflow import mcmc

    chees = mcmc.chees.cpu_profile(num_superchains=4, chains_per_superchain=8, num_warmup=100,
                                   num_samples=max(-(-num_draws // 32), 20))
    return mcmc.EscalationPolicy(
        stages=(mcmc.Rung("chees", chees), mcmc.Rung("chees_continued", chees, init_from="previous")),
        num_output_draws=num_draws, bucket_size=16)


def workflow_config(num_draws: int | None, quick: bool, ood_accept: bool = False,
                    high_stakes: bool = False):
    """``WorkflowConfig`` for the CLI: the defaults (every dataset passes PSIS), the paper's OOD
    acceptance (``ood_accept``), or ``WorkflowConfig.high_stakes`` (every
    dataset must pass PSIS with k-hat AND ESS gates)."""
    import amortflow as af

    kw = {} if num_draws is None else {"num_draws": num_draws}
    if quick:
        s = num_draws or 500
        kw.update(num_draws=s, num_ood_simulations=1000, mcmc=quick_policy(s))
        # a quick run with few draws loosens the Monte Carlo error gate to what they can meet
        # (a full run with too few draws gets the ConfigError that says how many are needed)
        kw["psis_max_error"] = max(0.1, math.ceil(100 * 2.2 / math.sqrt(s)) / 100)
    if high_stakes:
        return af.WorkflowConfig.high_stakes(**kw)
    if ood_accept:
        return af.WorkflowConfig.paper(**kw)
    return af.WorkflowConfig(**kw)


# ----------------------------------------------------------------------------- outputs
def write_outputs(result, out: str, *, truth: dict | None = None, estimator=None, key=None,
                  ys=None, training_time_s: float | None = None) -> list[str]:
    """Write ``summary.txt``, ``table.csv`` and PNG figures under ``out/figures``; returns the
    figure paths. ``truth`` (constrained name -> ``[K]``) adds the recovery plot; ``estimator``,
    ``key`` and ``ys`` add stage-1 amortized draws to the posterior comparisons."""
    from amortflow import plots

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(result.summary() + "\n")
    result.table().to_csv(os.path.join(out, "table.csv"), index=False)
    fig_dir = os.path.join(out, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    figs = {
        "routing": plots.plot_routing(result, training_time_s=training_time_s),
        "workflow_diagnostics": plots.plot_workflow_diagnostics(result),
    }
    if truth is not None:
        figs["recovery"] = plots.plot_recovery(truth, result)
    for route in result.routes[:-1]:  # one posterior figure per accepting route
        idx = np.nonzero(result.route == route)[0]
        if idx.size == 0:
            continue
        i = int(idx[0])
        ref, label = None, "reference"
        if route != "amortized" and estimator is not None and ys is not None:
            import jax

            ref = np.asarray(estimator.sample(jax.random.fold_in(key, 10_000 + i), ys[i][None],
                                              result.draws.shape[1]))[0]
            label = "amortized (stage 1)"
        t = None if truth is None else {k: float(np.asarray(v)[i]) for k, v in truth.items()}
        figs[f"posterior_{route}_dataset{i}"] = plots.plot_posterior_comparison(
            result, i, reference_draws=ref, reference_label=label, truth=t)
    paths = []
    for name, fig in figs.items():
        p = os.path.join(fig_dir, f"{name}.png")
        fig.savefig(p, dpi=110)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- subcommands
def cmd_train(args) -> int:
    if os.path.exists(os.path.join(args.out, "estimator.json")) and not args.overwrite:
        raise CLIError(f"{args.out} already holds an estimator; pass --overwrite to replace it, "
                       "or choose another --out")
    model = make_cli_model(args.model)
    settings = training_settings(args.model, args.quick, args.simulations, args.steps)
    est, seconds = train_estimator(model, settings, args.seed, args.out, progress=not args.no_progress)
    best = est.history.get("best_val_loss")
    print(f"trained {model.name} estimator in {seconds:.1f} s"
          + (f" (best validation loss {float(best):.3f})" if best is not None else "")
          + f"; saved to {args.out}")
    return 0


def _simulate(model_name: str, k: int, test_prior: bool, seed: int):
    import jax

    if k < 1:
        raise CLIError(f"--simulate must be positive, got {k}")
    sim_model = make_cli_model(model_name, test_prior=test_prior)
    theta, ys = jax.jit(sim_model.sample_prior_predictive, static_argnums=1)(jax.random.PRNGKey(seed), int(k))
    truth = {n: np.asarray(v) for n, v in jax.jit(sim_model.constrain)(theta).items()}
    return np.asarray(ys, np.float32), np.asarray(theta), truth


def cmd_run(args) -> int:
    import jax

    import amortflow as af

    model = make_cli_model(args.model)
    est = af.load_estimator(args.estimator)
    if est.model_name != model.name or tuple(est.param_names) != tuple(model.param_names):
        raise CLIError(f"{args.estimator}: estimator was trained for {est.model_name!r} "
                       f"(parameters {list(est.param_names)}), not --model {args.model}")
    os.makedirs(args.out, exist_ok=True)
    truth = None
    if args.data is not None:
        if args.test_prior:
            raise CLIError("--test-prior applies to --simulate only")
        ys = load_datasets(args.data, model)
        print(f"read {ys.shape[0]} datasets from {args.data}")
    else:
        ys, theta, truth = _simulate(args.model, args.simulate, args.test_prior, args.seed + 1)
        np.savez(os.path.join(args.out, "datasets.npz"), ys=ys, theta=theta,
                 **{f"true_{k}": v for k, v in truth.items()})
        print(f"simulated {ys.shape[0]} datasets" + (" from the test prior" if args.test_prior else ""))
    cfg = workflow_config(args.num_draws, args.quick, args.ood_accept, args.high_stakes)
    key = jax.random.PRNGKey(args.seed)
    result = af.run_workflow(key, model, est, ys, cfg, out_dir=args.out, progress=not args.no_progress)
    if args.no_progress:  # with progress on, run_workflow has printed the summary already
        print(result.summary())
    paths = write_outputs(result, args.out, truth=truth, estimator=est, key=key, ys=ys)
    print(f"wrote {os.path.join(args.out, 'result')}, {os.path.join(args.out, 'table.csv')} and "
          f"{len(paths)} figures in {os.path.join(args.out, 'figures')}")
    return 0


def cmd_demo(args) -> int:
    import jax

    import amortflow as af

    out = args.out
    os.makedirs(out, exist_ok=True)
    quick = args.quick
    k = args.datasets or (50 if quick else 1000)
    settings = training_settings("gev", quick, args.simulations, args.steps)
    model = af.models.gev()
    print(f"amortflow demo: GEV, {settings['num_simulations']} training simulations, {k} test datasets "
          f"from the wider test prior{' (quick mode)' if quick else ''}")

    est_dir = os.path.join(out, "estimator")
    est, t_train, why = reusable_estimator(est_dir, model, settings, args.seed)
    note = ""
    if est is not None:
        note = " (trained earlier; reused from " + est_dir + ")"
        print(f"[demo] reusing the trained estimator in {est_dir}")
    else:
        print(f"[demo] training ({why}) ...")
        est, t_train = train_estimator(model, settings, args.seed, est_dir, progress=not args.no_progress)
        print(f"[demo] trained in {t_train:.1f} s")

    ys, theta, truth = _simulate("gev", k, True, args.seed + 1)
    np.savez(os.path.join(out, "datasets.npz"), ys=ys, theta=theta, **{f"true_{n}": v for n, v in truth.items()})
    cfg = workflow_config(args.num_draws, quick)  # the workflow's defaults
    key = jax.random.PRNGKey(args.seed + 2)
    result = af.run_workflow(key, model, est, ys, cfg, out_dir=os.path.join(out, "workflow"),
                             progress=not args.no_progress)
    paths = write_outputs(result, out, truth=truth, estimator=est, key=key, ys=ys, training_time_s=t_train)
    text = "\n".join([result.routing_text(f"routing ({result.num_datasets} datasets):"),
                      result.timing_text(t_train, note)])
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)
    print(f"\nresults: {os.path.join(out, 'workflow', 'result')} (draws.nc, table.csv, result.json)")
    print(f"table:   {os.path.join(out, 'table.csv')}")
    print(f"figures: {', '.join(os.path.basename(p) for p in paths)} in {os.path.join(out, 'figures')}")
    return 0


# ----------------------------------------------------------------------------- parser / entry
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amortflow", description="amortflow: train a neural posterior, run the "
                                "adaptive amortized workflow on many datasets, or run the GEV demo.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a posterior estimator for a built-in model")
    t.add_argument("--model", choices=MODELS, required=True)
    t.add_argument("--simulations", type=int, default=None, help="training simulations (default: preset)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: preset)")
    t.add_argument("--quick", action="store_true", help="the preset's small quick budget")
    t.add_argument("--out", required=True, help="directory for the estimator (JSON + msgpack)")
    t.add_argument("--overwrite", action="store_true", help="replace an estimator already in --out")
    common(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="run the adaptive workflow on datasets")
    r.add_argument("--model", choices=MODELS, required=True)
    r.add_argument("--estimator", required=True, help="directory written by `amortflow train`")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="datasets [K, *obs_shape]: .npy, .npz (array 'ys') or .csv (one per row)")
    src.add_argument("--simulate", type=int, metavar="K", help="simulate K datasets instead")
    r.add_argument("--test-prior", action="store_true", help="simulate from the wider GEV test prior")
    r.add_argument("--out", required=True, help="output directory (re-running with it resumes)")
    r.add_argument("--num-draws", type=int, default=None, help="draws per dataset (default 2000; quick 500)")
    r.add_argument("--ood-accept", action="store_true",
                   help="the paper's default: accept datasets that pass the OOD check without the PSIS gate")
    r.add_argument("--high-stakes", action="store_true",
                   help="every dataset must pass PSIS (k-hat and ESS >= 60%% of draws); else MCMC")
    r.add_argument("--quick", action="store_true", help="small OOD reference and MCMC policy (smoke tests)")
    common(r)
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="GEV end to end: train, 1000 test datasets, routing, timing, figures")
    d.add_argument("--out", default="demo_output", help="output directory (default demo_output; resumable)")
    d.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, ~1-2 min on 2 CPU cores)")
    d.add_argument("--datasets", type=int, default=None, help="test datasets (default 1000; quick 50)")
    d.add_argument("--simulations", type=int, default=None, help="training simulations (default 10000)")
    d.add_argument("--steps", type=int, default=None, help="optimizer steps (default: preset)")
    d.add_argument("--num-draws", type=int, default=None, help="draws per dataset (default 2000; quick 500)")
    common(d)
    d.set_defaults(func=cmd_demo)
    return p


def console() -> None:
    """The ``amortflow`` console script and ``python -m amortflow``: :func:`main`, then exit.

    After Ctrl-C the process leaves with status 130 through ``os._exit``: tearing the
    interpreter down while XLA's worker threads are still running crashed it (SIGSEGV)."""
    _watch_for_interrupt()
    status = main()
    _EXITING.set()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)


#: seconds between Ctrl-C and a forced exit when the main thread sits in a long XLA call
INTERRUPT_GRACE_S = 20.0


def _watch_for_interrupt(grace_s: float = INTERRUPT_GRACE_S) -> None:
    """Deliver Ctrl-C reliably. Python's SIGINT handler only marks the interrupt; the main thread
    raises KeyboardInterrupt (the usual clean-up and message) once it runs Python code again,
    which inside a long compiled XLA call can take minutes. The handler also writes the signal
    number to a wakeup pipe -- from whichever thread the kernel chose -- and a watcher thread
    reading it exits with status 130 itself if ``main`` has not returned ``grace_s`` later."""
    import signal

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # embedded use, or SIGINT ignored / handled by the caller: leave it alone
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch():
        while int(signal.SIGINT) not in os.read(r, 64):
            pass
        if not _EXITING.wait(grace_s):
            print("amortflow: interrupted (re-run with the same --out to resume)", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)

    threading.Thread(target=watch, name="amortflow-sigint", daemon=True).start()


_EXITING = threading.Event()  # set once main() has returned: the watcher then leaves it be


def main(argv=None) -> int:
    """Entry point of the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from amortflow.errors import AmortflowError

    expected = (CLIError, AmortflowError, ValueError, FileNotFoundError, PermissionError)
    try:
        return int(args.func(args) or 0)
    except expected as e:
        if os.environ.get("AMORTFLOW_DEBUG"):
            raise
        print(f"amortflow {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"amortflow {args.command}: interrupted (re-run with the same --out to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    console()
