# Two commands for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv with the pinned dependencies on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export ANNY_CACHE_DIR ?= $(CURDIR)/.cache/anny
export PUPPET_CACHE_DIR ?= $(CURDIR)/.cache/puppet

.PHONY: venv demo test bench clean

$(BIN)/puppet: pyproject.toml requirements.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and in the same command: the cached CPU wheel satisfies the pin.
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0 -e '.[test]'
	touch $(BIN)/puppet

venv: $(BIN)/puppet

demo: venv
	$(BIN)/python -m demos.puppet_demo

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .cache
