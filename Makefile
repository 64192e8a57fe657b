# vmwarden. `make run` and `make test` do all host set-up on a fresh Debian 12 machine.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run test setup build lint bench clean

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

# Unit, table and property tests, then the real-socket, real-libvirt, real-QEMU tests.
test: setup lint
	$(CARGO) test

bench: setup
	$(CARGO) bench --bench api
	$(CARGO) bench --bench launch

clean:
	$(CARGO) clean
	rm -rf dev-state
