# runvm: build, guest image, install, tests, benchmarks.
# `make run` sets everything up on a fresh Debian 12 host and runs a container
# in a VM; `make test` runs the whole test suite (what CI runs).

CARGO     ?= cargo
PREFIX    ?= /usr/local
GUEST_DIR := target/share/runvm
AGENT     := target/release/runvm-agent
RUNVM     := target/release/runvm

.PHONY: all deps build agent guest install deb deb-test run test bench soak fuzz clean

all: build guest

deps:
	scripts/install-deps.sh

build:
	$(CARGO) build --release --bin runvm

agent:
	$(CARGO) build --release -p runvm-agent

# The guest: runvm's kernel (built from Debian's pinned linux-source with
# guest/kernel.config, cached by version and config), Debian's backports cloud
# kernel as the fallback, and the initramfs with the agent; each rebuilt only
# when what it is made of changed.
guest: agent
	guest/build.sh $(AGENT) $(GUEST_DIR)

install: build guest
	install -D -m 0755 $(RUNVM) $(DESTDIR)$(PREFIX)/bin/runvm
	install -D -m 0644 $(GUEST_DIR)/vmlinux $(DESTDIR)$(PREFIX)/share/runvm/vmlinux
	install -D -m 0644 $(GUEST_DIR)/vmlinux-debian $(DESTDIR)$(PREFIX)/share/runvm/vmlinux-debian
	install -D -m 0644 $(GUEST_DIR)/initramfs.img $(DESTDIR)$(PREFIX)/share/runvm/initramfs.img
	install -D -m 0644 $(GUEST_DIR)/guest.txt $(DESTDIR)$(PREFIX)/share/runvm/guest.txt
	install -d $(DESTDIR)$(PREFIX)/share/man/man8
	$(RUNVM) __man $(DESTDIR)$(PREFIX)/share/man/man8
	gzip -9nf $(DESTDIR)$(PREFIX)/share/man/man8/runvm*.8
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/vendor-completions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(RUNVM) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/runvm
	$(RUNVM) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_runvm
	$(RUNVM) completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/runvm.fish

# The Debian package, target/deb/runvm_<version>-<DEB_REVISION>_amd64.deb,
# from a tree staged by `make install` (scripts/deb.sh says why not cargo-deb).
deb: build guest
	scripts/deb.sh

# Build the package, install it with apt-get, run containers with the
# installed runvm, upgrade it under a running one, purge it: nothing left.
deb-test: build guest
	scripts/deb-test.sh

# Set up and show a busybox container running under the guest kernel.
run: deps build guest
	scripts/demo.sh $(RUNVM)

# The gates first (unformatted code or any clippy warning fails), then the
# unit tests and the end-to-end tests (real QEMU, guest, virtiofsd, busybox),
# then the end-to-end tests again with every container cloned from a template,
# then the Debian package: built, installed, used, upgraded and purged.
test: deps guest
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2
	RUNVM_TEST_TEMPLATE=1 $(CARGO) test --no-fail-fast --test cli --test lifecycle \
		--test verbs --test terminals --test faults --test network --test hooks --test creating \
		--test clients --test network_clients --test host_cgroups --test shared_fs --test hardening \
		--test checkpoint -- --test-threads=2
	$(MAKE) deb-test

bench: deps build guest
	python3 scripts/bench.py --runvm $(RUNVM)

# Fuzz what runvm reads from others (fuzz/): the agent's frames and session,
# config.json, the configuration file; FUZZ_SECS seconds each. Not part of
# `make test`: it builds libFuzzer and takes its time. A crash stops it and
# leaves its input in fuzz/artifacts/<target>/.
FUZZ_SECS ?= 600
FUZZ_TARGETS ?= agent_frames agent_session config_json config_file
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	scripts/fuzz.sh $(FUZZ_SECS) $(FUZZ_TARGETS)

# Hundreds of run/delete cycles, sequential then parallel: failures and leaks.
soak: deps build guest
	python3 scripts/soak.py --runvm $(RUNVM)

clean:
	$(CARGO) clean
