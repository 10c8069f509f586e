"""Every notebook in notebooks/ runs top to bottom in small mode (AMORTFLOW_NOTEBOOK_MODE=small),
in an ipykernel started with this interpreter (the test environment, e.g. .venv)."""
import glob
import json
import os
import sys

import pytest

from amortflow import notebook_runner

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


def test_notebooks_exist_and_are_valid():
    import nbformat

    names = [os.path.basename(p) for p in NOTEBOOKS]
    for expected in ("01_gev_workflow.ipynb", "02_bring_your_own_numpyro_model.ipynb",
                     "03_reading_a_workflow_result.ipynb", "04_generalized_bayes.ipynb",
                     "05_bernoulli_glm.ipynb", "06_psychometric_curves.ipynb",
                     "07_drift_diffusion.ipynb"):
        assert expected in names
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)
        src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "AMORTFLOW_NOTEBOOK_MODE" in src
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
            f"{p}: commit notebooks without outputs"


def test_kernel_runs_this_interpreter():
    km = notebook_runner._kernel_manager()
    assert os.path.realpath(km.kernel_spec.argv[0]) == os.path.realpath(sys.executable)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_executes_in_small_mode(path, tmp_path):
    out = tmp_path / os.path.basename(path)
    nb = notebook_runner.execute_notebook(path, mode="small", timeout=600, write_to=str(out))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # the kernel saw small mode, and figures were rendered
    first = json.dumps(nb.cells[1].get("outputs", []))
    assert "mode=small" in first
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
