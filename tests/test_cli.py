"""Command line: ``amortflow demo --quick`` end to end, ``train`` + ``run``, and bad inputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import amortflow as af
from amortflow import cli

FIGURES = ("routing.png", "workflow_diagnostics.png", "recovery.png")


def _run_cli(args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("AMORTFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "amortflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_demo_quick_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "routing (50 datasets):" in text
    for route in ("amortized", "psis", "mcmc", "nuts", "failed"):
        assert f"  {route} " in text
    for stage in ("training", "amortized_draws", "ood_check", "psis", "mcmc", "total (with training)"):
        assert stage in text
    res_dir = out / "workflow" / "result"
    for f in ("draws.nc", "table.csv", "result.json"):
        assert (res_dir / f).is_file()
    assert (out / "table.csv").is_file() and (out / "summary.txt").is_file()
    assert (out / "estimator" / "estimator.json").is_file() and (out / "estimator" / "arrays.msgpack").is_file()
    figs = os.listdir(out / "figures")
    for f in FIGURES:
        assert f in figs and (out / "figures" / f).stat().st_size > 10_000
    assert any(f.startswith("posterior_") for f in figs)
    result = af.WorkflowResult.load(str(res_dir), model=af.models.gev())
    assert result.num_datasets == 50 and sum(result.route_counts().values()) == 50
    assert (result.route != "failed").mean() > 0.5

    # a re-run reuses the estimator and every stage already written (no retraining, same routes)
    progress = out / "workflow" / "progress"
    stamps = {f: (progress / f).stat().st_mtime_ns for f in os.listdir(progress) if f.endswith(".npz")}
    assert {"amortized.npz", "psis.npz"} <= set(stamps)
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text2 = capsys.readouterr().out
    assert "reusing the trained estimator" in text2
    assert "training (" not in text2
    assert {f: (progress / f).stat().st_mtime_ns for f in stamps} == stamps  # nothing recomputed
    again = af.WorkflowResult.load(str(res_dir))
    assert list(again.route) == list(result.route)


@pytest.fixture(scope="module")
def gaussian_cli_estimator(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "est"
    assert cli.main(["train", "--model", "gaussian_mean", "--quick", "--simulations", "1000", "--steps", "200",
                     "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_then_run_gaussian(gaussian_cli_estimator, tmp_path, capsys):
    est_dir = gaussian_cli_estimator
    capsys.readouterr()
    with open(est_dir / cli.REQUEST_FILE) as f:
        assert json.load(f)["train_config"]["num_steps"] == 200
    model = af.models.gaussian_mean()
    import jax

    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(5), 6)
    ys = np.asarray(ys)
    csv = tmp_path / "data.csv"
    np.savetxt(csv, ys.reshape(6, -1), delimiter=",",
               header=",".join(f"y{i}" for i in range(ys[0].size)), comments="")
    out = tmp_path / "run"
    assert cli.main(["run", "--model", "gaussian_mean", "--estimator", str(est_dir), "--data", str(csv),
                     "--out", str(out), "--quick", "--num-draws", "200", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "read 6 datasets" in text and "gaussian_mean: 6 datasets" in text
    res = af.WorkflowResult.load(str(out / "result"))
    assert res.draws.shape == (6, 200, 2)
    assert (out / "table.csv").is_file()
    for f in ("routing.png", "workflow_diagnostics.png"):
        assert (out / "figures" / f).is_file()


def test_load_datasets_formats_and_errors(tmp_path):
    model = af.models.gaussian_mean()  # obs_shape (10, 2)
    ys = np.random.default_rng(0).normal(size=(3, 10, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", ys)
    np.savez(tmp_path / "b.npz", ys=ys, other=np.zeros(2))
    np.savetxt(tmp_path / "c.csv", ys.reshape(3, -1), delimiter=",")
    for f in ("a.npy", "b.npz", "c.csv"):
        np.testing.assert_allclose(cli.load_datasets(str(tmp_path / f), model), ys, rtol=1e-6)
    np.save(tmp_path / "one.npy", ys[0])  # a single dataset
    assert cli.load_datasets(str(tmp_path / "one.npy"), model).shape == (1, 10, 2)

    np.save(tmp_path / "bad.npy", np.zeros((3, 7)))
    with pytest.raises(cli.CLIError, match=r"shape \(3, 7\).*expected \[K, 10, 2\]"):
        cli.load_datasets(str(tmp_path / "bad.npy"), model)
    np.savetxt(tmp_path / "bad.csv", np.zeros((2, 5)), delimiter=",")
    with pytest.raises(cli.CLIError, match="rows have 5 values"):
        cli.load_datasets(str(tmp_path / "bad.csv"), model)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(cli.CLIError, match="cannot read"):  # never unpickled
        cli.load_datasets(str(tmp_path / "obj.npy"), model)
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(cli.CLIError, match="unsupported data format"):
        cli.load_datasets(str(tmp_path / "x.txt"), model)
    with pytest.raises(cli.CLIError, match="does not exist"):
        cli.load_datasets(str(tmp_path / "missing.npy"), model)


def test_bad_inputs_exit_nonzero_with_a_clear_message(gaussian_cli_estimator, tmp_path, capfd):
    np.save(tmp_path / "bad.npy", np.zeros((4, 3)))
    r = _run_cli(["run", "--model", "gaussian_mean", "--estimator", str(gaussian_cli_estimator),
                  "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 1
    assert "amortflow run: error:" in r.stderr and "shape (4, 3)" in r.stderr and "[K, 10, 2]" in r.stderr
    assert "Traceback" not in r.stderr

    # the rest in-process (same code path as the console script)
    capfd.readouterr()
    assert cli.main(["run", "--model", "gev", "--estimator", str(tmp_path), "--simulate", "3",
                     "--out", str(tmp_path / "o2")]) == 1
    assert "not a saved amortflow estimator" in capfd.readouterr().err
    assert cli.main(["run", "--model", "gev", "--estimator", str(gaussian_cli_estimator), "--simulate", "3",
                     "--out", str(tmp_path / "o3")]) == 1
    assert "trained for 'gaussian_mean'" in capfd.readouterr().err
    assert cli.main(["run", "--model", "gaussian_mean", "--estimator", str(gaussian_cli_estimator),
                     "--simulate", "3", "--test-prior", "--out", str(tmp_path / "o4")]) == 1
    assert "--test-prior is only defined for --model gev" in capfd.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: missing data source
        cli.main(["run", "--model", "gev", "--estimator", "x", "--out", "y"])
    assert e.value.code == 2
    assert "one of the arguments --data --simulate is required" in capfd.readouterr().err


def test_stale_training_checkpoint_is_replaced_but_foreign_folders_are_kept(tmp_path):
    ckpt = tmp_path / "est_checkpoint"
    ckpt.mkdir()
    (ckpt / "train_state.msgpack").write_bytes(b"old")
    (ckpt / cli.REQUEST_FILE).write_text(json.dumps({"model": "gev", "seed": 1}))
    cli._prepare_checkpoint(str(ckpt), {"model": "gev", "seed": 0})  # other settings: start afresh
    assert sorted(os.listdir(ckpt)) == [cli.REQUEST_FILE]
    (ckpt / "train_state.msgpack").write_bytes(b"partial")
    cli._prepare_checkpoint(str(ckpt), {"model": "gev", "seed": 0})  # same settings: resume
    assert (ckpt / "train_state.msgpack").read_bytes() == b"partial"
    (ckpt / "notes.txt").write_text("mine")
    with pytest.raises(cli.CLIError, match="not an amortflow training checkpoint"):
        cli._prepare_checkpoint(str(ckpt), {"model": "gev", "seed": 2})
    assert (ckpt / "notes.txt").is_file()
