# fastmail: `make serve` runs the server on the embedded default; `make test` runs the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test compile bench bench-load system-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install (compiling the Cython core) and start: SMTP 2525, submission 2587, submissions 2465, LMTP 2424,
# data in ./fastmail-data, demo user printed on first start.
serve: $(BIN)/python
	$(BIN)/pip install -q .
	$(BIN)/fastmail serve

# Debian packages the tests drive (swaks) or the benchmarks use (postfix's smtp-source).
system-deps:
	@command -v swaks >/dev/null && command -v smtp-source >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    swaks postfix libnet-ssleay-perl libauthen-sasl-perl ; }

# Editable install compiles the core in place (the .so files sit beside their .py twins).
compile: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python setup.py -q build_ext --inplace

test: system-deps compile
	$(BIN)/python -m pytest tests

bench: compile
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-columns=min,median,ops

bench-load: system-deps compile
	$(BIN)/python -m bench.load_smtp

clean:
	rm -rf build $(VENV) fastmail/_core/*.c fastmail/_core/*.so *.egg-info
