# vmwarden. `make run` and `make test` do all host set-up on a fresh Debian 12 machine.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run test setup build lint bench clean deb package-test contract-tools fuzz test-postgres

setup:
	bash scripts/setup-host.sh

build: setup
	$(CARGO) build --bins

# Runs the daemon in the foreground against qemu:///system, with state under dev-state/.
run: build
	./target/debug/vmwardend --config config/dev.toml

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Unit, table and property tests, then the real-socket, real-libvirt, real-QEMU tests (the
# contract tests among them: schemathesis and a generated client), then every fuzz target for
# a bounded time, then the package: build, lintian, install, run as user vmwarden, remove,
# purge.
test: setup lint contract-tools
	$(CARGO) test
	$(MAKE) test-postgres
	$(MAKE) fuzz
	$(MAKE) package-test

# schemathesis, openapi-python-client and ruff, pinned, in a virtualenv under target/.
VENV := target/contract-venv
contract-tools:
	@if ! cmp -s scripts/contract-requirements.txt $(VENV)/requirements.txt; then \
	  rm -rf $(VENV) && python3 -m venv $(VENV) && \
	  $(VENV)/bin/pip install -q --disable-pip-version-check -r scripts/contract-requirements.txt && \
	  cp scripts/contract-requirements.txt $(VENV)/requirements.txt; \
	fi

# Each fuzz target for FUZZ_SECONDS (default 60) from its corpus in fuzz/corpus/<target>;
# new inputs it finds are kept there. Stable rustc builds them with RUSTC_BOOTSTRAP=1.
FUZZ_SECONDS ?= 60
# Every socket suite (each integration test in tests/ starts real daemons) again on
# PostgreSQL: each daemon on a fresh database of a throwaway cluster the tests start. The
# contract suite needs the venv of `make contract-tools` (which `make test` builds first). The
# store's own tests run on both engines in every `cargo test`, so they are not run again here.
test-postgres:
	VMWARDEN_TEST_STORE=postgres $(CARGO) test --test '*'

fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# target/debian/vmwarden_<version>-1_<arch>.deb (cargo-deb; installs it when missing).
deb:
	CARGO=$(CARGO) bash packaging/build-deb.sh

# Builds and checks the .deb on this machine (as root): lintian, systemd-analyze verify and
# security, dpkg -i, the daemon as user vmwarden on the packaged socket, dpkg -r, dpkg -P.
package-test: setup
	CARGO=$(CARGO) bash scripts/package-test.sh

bench: setup
	$(CARGO) bench --bench api
	$(CARGO) bench --bench launch
	$(CARGO) bench --bench idle
	$(CARGO) bench --bench fleet

clean:
	$(CARGO) clean
	rm -rf dev-state
