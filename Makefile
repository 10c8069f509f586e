# Every target that needs Python creates .venv (if missing) and installs into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.amortflow-installed
# Two host devices so datasets are sharded over both CPU cores (no effect on GPU).
HOSTDEV := XLA_FLAGS="--xla_force_host_platform_device_count=2 $(XLA_FLAGS)"
BENCHES := amortized diagnostics mcmc gev defaults gbi spatial glm psychometric ddm

.PHONY: install demo test test-slow bench notebooks clean $(addprefix bench-,$(BENCHES))

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,notebooks,bench]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(HOSTDEV) $(PY) -m amortflow.cli demo --out demo_output

# two workers: much of a JAX test suite is single-threaded compilation
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --max-worker-restart=0

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# all benchmarks at quick sizes; bench-<name> runs one at full size
bench: $(STAMP)
	@for b in $(BENCHES); do echo "== bench $$b (quick)"; $(HOSTDEV) $(PY) benchmarks/bench_$$b.py --quick || exit 1; done

bench-amortized: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_amortized.py

bench-diagnostics: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_diagnostics.py

bench-mcmc: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_mcmc.py

bench-gev: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_gev.py

bench-defaults: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_defaults.py

bench-gbi: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_gbi.py

bench-spatial: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_spatial.py

bench-glm: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_glm.py

bench-psychometric: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_psychometric.py

bench-ddm: $(STAMP)
	$(HOSTDEV) $(PY) benchmarks/bench_ddm.py

notebooks: $(STAMP)
	AMORTFLOW_NOTEBOOK_MODE=full $(PY) -m amortflow.notebook_runner notebooks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
