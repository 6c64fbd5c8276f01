# One entry point for users and CI. Everything installs what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PKGS := clang llvm libbpf-dev libssl-dev iproute2 redis-server openssl curl procps chromium apache2-utils \
  libnghttp2-dev
BPF_OBJ := scheduler/bpf/dlba_tc.o
TICKET_SO := dlba/tls/_ticket_cb.so
# The CPython extension's file name and headers, from the Python the venv is made with.
NGHTTP2_EXT := dlba/proxy/_nghttp2$(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
PY_INCLUDE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NATIVE := build/native/manifest.json
PURE_TESTS := tests/unit tests/integration/test_tls_transport.py \
  tests/integration/test_connection_lifetime.py tests/integration/test_node_bad_input.py \
  tests/integration/test_node_streaming.py tests/integration/test_node_audit.py \
  tests/integration/test_backend_flow_control.py tests/integration/test_learned_sessions.py

.PHONY: install run test lint bench clean

install: $(BIN)/dlba $(BPF_OBJ) $(TICKET_SO) $(NGHTTP2_EXT) $(NATIVE)

# Re-checked when this file changes (a package added to APT_PKGS).
.apt-stamp: Makefile
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PY) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(BIN)/dlba: .apt-stamp pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

$(BPF_OBJ): scheduler/bpf/dlba_tc.c scheduler/bpf/dlba_tc.h .apt-stamp
	clang -O2 -g -target bpf -I/usr/include/$$(gcc -print-multiarch) -c $< -o $@

# The TLS ticket-key callback in C (dlba/tls/ticket_native.py loads it; Python's if absent).
$(TICKET_SO): dlba/tls/ticket_cb.c .apt-stamp
	clang -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -lcrypto

# HTTP/2's protocol engine: libnghttp2 in a CPython extension, dlba.proxy._nghttp2
# (dlba/proxy/nghttp2_engine.py imports it; without it TLS listeners offer HTTP/1.1 only).
NGHTTP2_SRC := dlba/proxy/nghttp2_ext.c dlba/proxy/nghttp2_callbacks.c dlba/proxy/nghttp2_request.c \
  dlba/proxy/nghttp2_response.c
$(NGHTTP2_EXT): $(NGHTTP2_SRC) dlba/proxy/nghttp2_ext.h .apt-stamp
	clang -O2 -Wall -Wextra -Werror -shared -fPIC -I$(PY_INCLUDE) -o $@ $(NGHTTP2_SRC) -lnghttp2

# The request path compiled by mypyc (build_native.py; dlba/__init__.py uses it only while it
# matches every source of the package, so any change under dlba/ rebuilds it here).
$(NATIVE): build_native.py $(shell find dlba -name '*.py' -o -name '*.pyi') $(BIN)/dlba
	$(BIN)/python build_native.py > build-native.log 2>&1 || { tail -30 build-native.log; exit 1; }
	@tail -1 build-native.log

run: install
	$(BIN)/dlba up

test: install .bench-apt-stamp
	$(BIN)/ruff check dlba scheduler tests bench
	$(BIN)/mypy dlba scheduler
	$(BIN)/pytest -q -p no:cacheprovider --durations=20 tests
	@# The same source uncompiled (what runs between an edit and the next build): the pure core
	@# and the request path again, since compiled code can differ from Python in corner cases.
	DLBA_NATIVE=0 $(BIN)/pytest -q -p no:cacheprovider $(PURE_TESTS)

# docker-compose.yml run for real and checked from its client container (docker/test-compose.sh:
# installs docker.io, docker-compose, debootstrap when missing; leaves the host as it found it).
.PHONY: test-compose
test-compose:
	bash docker/test-compose.sh

# bench: HAProxy, nginx (back end and proxy), wrk, openssl s_time; installed when missing. A fresh
# Debian install starts the packaged services: stop them (the bench runs its own instances).
BENCH_APT_PKGS := haproxy nginx wrk openssl nghttp2-client

.bench-apt-stamp: Makefile
	@missing=""; for p in $(BENCH_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  for s in nginx haproxy; do case "$$missing " in *" $$s "*) \
	    (systemctl stop $$s || service $$s stop) >/dev/null 2>&1 || true;; esac; done; \
	fi
	@touch $@

bench: install .bench-apt-stamp
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,) $(if $(DURATION),--duration $(DURATION),)

clean:
	rm -rf $(VENV) .apt-stamp .bench-apt-stamp $(BPF_OBJ) $(TICKET_SO) run
