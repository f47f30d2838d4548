# The two commands of the README:
#   make lab    the local lab demo (as root): a two-node dataplane in network
#               namespaces, the testweb/testcurl walkthrough on real packets, with
#               palisade-operator and one enforcer agent per node as separate processes
#   make test   everything CI checks: format, lints, unit/property/netns tests,
#               the scenario suite through the engine and on the real dataplane
SHELL := /bin/bash
CARGO ?= cargo
# postgresql: the audit store's tests start their own server from its binaries
# (audit/src/pg_harness.rs: initdb into a temporary folder, a loopback port).
APT_PACKAGES := iptables ipset conntrack iproute2 kmod procps nftables postgresql
# The chart's tests (charts/tests) drive the real Helm engine through helm-python-sdk.
PYTHON ?= python3
PIP_PACKAGES := helm-python-sdk==0.2.2 pytest==9.2.0 PyYAML==6.0.3

.PHONY: deps test lab scenarios bench

# Installs the system packages the enforcer and the lab need, if any is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null; }
	@$(PYTHON) -c 'import importlib.metadata as m, sys; \
		sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))' \
		$(PIP_PACKAGES) 2>/dev/null || { echo "installing: $(PIP_PACKAGES)"; \
		$(PYTHON) -m pip install -q --disable-pip-version-check $(PIP_PACKAGES) 2>/dev/null || \
		$(PYTHON) -m pip install -q --disable-pip-version-check --break-system-packages $(PIP_PACKAGES); }

# --sctp-raw: kernels built without SCTP sockets (this machine's) still get real SCTP
# INIT / INIT ACK packets through iptables and conntrack (see e2e/README.md).
# No incremental cache: a clean run never reuses it, and it doubles target/.
test: export CARGO_INCREMENTAL = 0
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q --workspace --no-deps
	$(CARGO) build --workspace --bins
	# after the build: the chart's test runs the binaries' argument parsers on what it renders
	PYTHONDONTWRITEBYTECODE=1 $(PYTHON) -m pytest -q -p no:cacheprovider charts/tests
	$(CARGO) test --workspace
	$(CARGO) run -q -p palisade-cli --bin palisade -- test e2e/scenarios/
	$(CARGO) run -q -p e2e -- run --sctp-raw e2e/scenarios/

scenarios:
	$(CARGO) run -q -p palisade-cli --bin palisade -- test e2e/scenarios/

lab: deps
	$(CARGO) build -q -p palisade-cli -p palisade-enforcer -p palisade-operator -p e2e
	$(CARGO) run -q -p e2e -- demo

bench:
	$(CARGO) bench -p palisade-policy --bench matrix
