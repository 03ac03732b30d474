# Two entry points for a fresh machine: `make demo` (the CPU demo) and `make test` (the test suite).
# Both install the CPU stack into $(VENV) first; the install re-runs only when its inputs change.
VENV ?= .venv
STACK ?= cpu
STAMP := $(VENV)/.rlaif-installed-$(STACK)

.PHONY: install demo test unit

$(STAMP): pyproject.toml cluster/install.sh cluster/torchvision_cpu_shim.py
	bash cluster/install.sh $(STACK) $(VENV)
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlaif demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

unit: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not integration" $(ARGS)

# Reruns every figure of docs/performance.md and writes bench/results.md (bench/all.sh: REPEAT, QUICK, ONLY).
.PHONY: bench
bench: $(STAMP)
	PYTHON=$(VENV)/bin/python bash bench/all.sh
