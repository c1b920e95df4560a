# rtlab: every target bootstraps .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TRANSPORT ?= websocket
HOST ?= 127.0.0.1
PORT ?= 8080
EXP ?= baseline
QUICK ?=
SET ?=
RUN ?=
LAB_PORT ?= 8888

.PHONY: venv test serve demo demo-cluster demo-screenshot locust run-experiment report lab clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "rtlab needs Python >= 3.11 ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,notebooks,peers]'
	@touch $@

# Two pytest workers (pytest-xdist): most tests wait on sockets and timers, not on a CPU. --dist loadscope keeps each
# module on one worker, so a module's end-to-end fixture (a run, a cluster, a peers run) is set up once, not once per
# worker its tests landed on; --no-loadscope-reorder hands the modules out in collection order, where
# tests/conftest.py puts the longest first (LONGEST_FIRST) so that short ones, not a long one, end the run.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

serve: $(STAMP)
	$(PY) -m servers --transport $(TRANSPORT) --host $(HOST) --port $(PORT)

# The teaching page (docs/demo.md): every transport on one port, the page at /. TLS=1: over HTTPS through HAProxy,
# HTTP/2 to the browser (HTTP=1.1 for ALPN http/1.1 only), the page at https://127.0.0.1:PORT/.
TLS ?=
HTTP ?= 2
demo: $(STAMP)
ifeq ($(TLS),1)
	$(PY) -m experiments demo-tls --port $(PORT) --http $(HTTP)
else
	@echo "rtlab demo: open http://$(HOST):$(PORT)/ in a browser (Ctrl-C stops the server)"
	$(PY) -m servers --transport all --host $(HOST) --port $(PORT)
endif

# docs/demo.png again: every transport's pane after a short conversation (a free port, Debian's Chromium).
demo-screenshot: $(STAMP)
	$(PY) -m experiments demo-screenshot

# The scaling half (docs/demo.md): three instances behind HAProxy (Redis where needed), the page on PORT; Ctrl-C stops all.
demo-cluster: $(STAMP)
	$(PY) -m experiments demo-cluster --port $(PORT)

# The server for TRANSPORT on a free port and the Locust web UI on 127.0.0.1:8089 with the default
# profile (RTLAB_PROFILE=path to use another); the server stops when Locust exits (Ctrl-C).
locust: $(STAMP)
	$(PY) -m clients --transport $(TRANSPORT) --serve

# Run experiments/$(EXP).toml (default: baseline) for every transport; QUICK=1 for a smoke run; SET="KEY=VALUE ..."
# changes keys of the file for this run (e.g. SET="profile.duration_s=690"). Then its report.
run-experiment: $(STAMP)
	$(PY) -m experiments run $(EXP) $(if $(QUICK),--quick,) $(foreach s,$(SET),--set '$(s)')
	$(PY) -m experiments report

# Run every notebook headless on RUN (default: results/latest, else results/reference): RUN/report/index.html.
report: $(STAMP)
	$(PY) -m experiments report $(RUN)

# JupyterLab on notebooks/, bound to 127.0.0.1; installs jupyterlab into the venv on first use (not in the bootstrap).
lab: $(STAMP)
	@$(PY) -c 'import jupyterlab' 2>/dev/null || $(PY) -m pip install --quiet -e '.[lab]'
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --ServerApp.root_dir=notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

clean:
	rm -rf $(VENV) .pytest_cache
