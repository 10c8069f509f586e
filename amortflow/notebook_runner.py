"""Execute notebooks with nbclient in a kernel running *this* interpreter.

``python -m amortflow.notebook_runner notebooks [--mode small|full] [--write DIR | --inplace]``

Every ``*.ipynb`` under the given paths runs top to bottom with ``AMORTFLOW_NOTEBOOK_MODE`` set
(``small`` by default: tiny sizes; ``full``: the real experiment sizes) and its own folder as
working directory. The kernel is ipykernel started with ``sys.executable``, whatever kernels are
registered on the machine, so the notebooks see the same environment (``.venv``) as the caller.
Exit status 1 if any notebook fails.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

MODES = ("small", "full")


def _kernel_manager():
    """A kernel manager whose ``python3`` kernel is ipykernel on ``sys.executable``.

    jupyter_client resolves the native kernel name to ipykernel's own spec built from
    ``sys.executable`` when no registered spec shadows it; an empty kernel search path
    guarantees that no user- or system-wide ``python3`` spec (another interpreter) is picked.
    """
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
    from jupyter_client.manager import KernelManager

    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    spec = ksm.get_kernel_spec(NATIVE_KERNEL_NAME)
    if not spec.argv or os.path.realpath(spec.argv[0]) != os.path.realpath(sys.executable):
        spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    km = KernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=ksm)
    km._kernel_spec = spec  # pin the resolved spec (same interpreter as the caller)
    return km


def find_notebooks(paths) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(f for f in glob.glob(os.path.join(p, "*.ipynb")) if "-checkpoint" not in f)
        else:
            out.append(p)
    return out


def execute_notebook(path: str, mode: str = "small", timeout: int = 1800, write_to: str | None = None):
    """Run one notebook; returns the executed ``NotebookNode`` (raises on a failing cell).

    Args:
      path: ``.ipynb`` file.
      mode: value of ``AMORTFLOW_NOTEBOOK_MODE`` inside the kernel.
      timeout: seconds allowed per cell.
      write_to: if given, the executed notebook (with outputs) is written to this path.
    """
    import nbformat
    from nbclient import NotebookClient

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("AMORTFLOW_NOTEBOOK_MODE")
    os.environ["AMORTFLOW_NOTEBOOK_MODE"] = mode  # the kernel inherits the environment
    try:
        client = NotebookClient(nb, km=_kernel_manager(), timeout=timeout,
                                resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
        client.execute()
    finally:
        if old is None:
            os.environ.pop("AMORTFLOW_NOTEBOOK_MODE", None)
        else:
            os.environ["AMORTFLOW_NOTEBOOK_MODE"] = old
    if write_to is not None:
        os.makedirs(os.path.dirname(os.path.abspath(write_to)), exist_ok=True)
        nbformat.write(nb, write_to)
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m amortflow.notebook_runner", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="notebooks or folders of notebooks")
    p.add_argument("--mode", choices=MODES, default=os.environ.get("AMORTFLOW_NOTEBOOK_MODE", "small"),
                   help="AMORTFLOW_NOTEBOOK_MODE for the kernels (default: the env var, else small)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="DIR", default=None,
                   help="write executed notebooks to DIR (default: <folder>/executed/)")
    g.add_argument("--inplace", action="store_true", help="write outputs back into the notebooks")
    g.add_argument("--no-write", action="store_true", help="only execute")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = p.parse_args(argv)
    notebooks = find_notebooks(args.paths)
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    failed = []
    for nb_path in notebooks:
        if args.no_write:
            target = None
        elif args.inplace:
            target = nb_path
        else:
            folder = args.write or os.path.join(os.path.dirname(nb_path), "executed")
            target = os.path.join(folder, os.path.basename(nb_path))
        t0 = time.perf_counter()
        print(f"[notebooks] {nb_path} ({args.mode}) ...", flush=True)
        try:
            execute_notebook(nb_path, args.mode, args.timeout, target)
        except Exception as e:  # report every notebook, then fail
            failed.append(nb_path)
            msg = str(e).strip().splitlines()
            print(f"[notebooks] FAILED {nb_path}: {msg[-1] if msg else type(e).__name__}", file=sys.stderr)
            continue
        print(f"[notebooks] ok {nb_path} in {time.perf_counter() - t0:.0f} s"
              + (f" -> {target}" if target else ""), flush=True)
    if failed:
        print(f"[notebooks] {len(failed)} of {len(notebooks)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
