# spyglass — build, test and demo. Every target installs what it needs on Debian / Raspberry Pi OS.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Build tools for the crates (bindgen for v4l needs libclang; openh264 wants nasm on x86;
# libopus builds with cmake; alsa-sys links libasound) and the broker the tests start.
APT_PACKAGES := build-essential pkg-config cmake nasm clang libclang-dev libasound2-dev \
                mosquitto mosquitto-clients
# The MQTT TLS tests make their CA and certificates with the openssl command.
APT_PACKAGES += openssl
# The viewer page's browser tests drive Debian's Chromium; node and npm build the page (Debian's
# nodejs/npm only where no node is installed already).
APT_PACKAGES += chromium $(if $(shell command -v node),,nodejs) $(if $(shell command -v npm),,npm)
# The namespace test network (tests/netlab): iproute2 (ip, tc), nftables for the NAT routers,
# coturn for STUN/TURN, ethtool (checksum/segmentation offloads off where the link emulator
# reads frames), ping for the tests' own RTT check, python3 for the tool itself (stdlib only).
APT_PACKAGES += iproute2 nftables coturn ethtool iputils-ping python3
# Standards counterparts the browser tests start (issue 17): Janus as the SFU behind the tests'
# WHIP front-end (web/test/standards/), djpeg to decode Home Assistant camera snapshots.
APT_PACKAGES += janus libjpeg-turbo-progs
# The process source's tests and `make bench` (issue 16): Debian's ffmpeg with libx264 stands in
# for rpicam-vid (raw I420, and H.264 with headers before every IDR).
APT_PACKAGES += ffmpeg
CARGO ?= cargo
# Where cargo puts its builds (.ci/run moves it out of the tree); the browser tests need the binary.
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

.PHONY: all deps build release test demo clean web

all: build

# Installs only what is missing; `apt-get update` errors (a mirror mid-sync) do not stop the install.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq || echo "apt-get update reported errors; trying the install anyway"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -o DPkg::Lock::Timeout=600 -y -qq $$missing; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

build: deps web
	$(CARGO) build

release: deps web
	$(CARGO) build --release

# `make test`: one stage per line. scripts/stage.sh prints a line as each stage starts and ends,
# keeps each stage's output in build/test-logs/NN-stage.log (the tail is shown when it fails; the
# stages after a failure do not run), and ends with a table of stages, times and results.
# A new stage is one more line: @$(STAGE) 'what it checks' -- COMMAND...
STAGE := scripts/stage.sh
test:
	@$(STAGE) begin
	@$(STAGE) 'deps'                        -- $(MAKE) --no-print-directory deps deps-cross deps-emulated
	@$(STAGE) 'viewer page'                 -- $(MAKE) --no-print-directory web
	@$(STAGE) 'build (debug, test binaries)' -- $(MAKE) --no-print-directory test-build
	@$(STAGE) 'Rust tests'                  -- $(CARGO) test --all-targets
	@$(STAGE) 'browser tests'               -- $(MAKE) --no-print-directory test-web
	@$(STAGE) 'emulated board (qemu-system)' -- $(MAKE) --no-print-directory test-vm
	@$(STAGE) 'ARM build (local profile)'   -- $(MAKE) --no-print-directory cross-local
	@$(STAGE) 'ARM selftest (qemu-user)'    -- $(MAKE) --no-print-directory test-qemu-user
	@$(STAGE) end

# The debug build that every test runs: `cargo test` builds the spyglass binary too, with the
# dev-dependencies' features (serde's among them), so a plain `cargo build` would build much of
# the tree a second time. The browser tests and the emulated board run this binary.
.PHONY: test-build test-web
test-build: deps web
	$(CARGO) test --all-targets --no-run

# The browser tests alone.
test-web: test-build
	cd web && SPYGLASS_BIN="$(TARGET_DIR)/debug/spyglass" node --test test/*.test.mjs

# The viewer page: npm packages from package-lock.json, then the bundle in web/dist.
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web: deps web/node_modules/.package-lock.json
	cd web && node build.mjs

# The demo runs the local profile's build (Cargo.toml): the hot paths as optimised as in a
# release, without the release's fat LTO, so that it builds in a fraction of the time.
LOCAL_PROFILE := local
demo: deps web
	$(CARGO) build --profile $(LOCAL_PROFILE)
	scripts/demo.sh $(TARGET_DIR)/$(LOCAL_PROFILE)/spyglass

# Benchmarks (issue 7): one Markdown table on stdout and in $(TARGET_DIR)/bench.md (raw figures in
# bench.json beside it). Benchmarks, not tests: nothing here fails on a time. ~10 minutes.
.PHONY: bench
bench: release
	python3 bench/run.py --bin $(TARGET_DIR)/release/spyglass --out $(TARGET_DIR)/bench.md

# Figures on real networks (issues 14 and 15; needs root): offer -> first frame through NATs and
# TURN with `spyglass view` and Chromium (each case's candidate pair, the median of
# NETBENCH_SESSIONS sessions, default 10; ~3 minutes), then headless Chromium viewers behind shaped
# links (loss, jitter, caps, a cut, a shared uplink) and the daemon's CPU with 10 viewers against 1
# (~12 minutes; also in $(TARGET_DIR)/ratebench.md). Benchmarks: nothing here fails on a time.
.PHONY: netbench
netbench: release
	cd web && SPYGLASS_BIN="$(TARGET_DIR)/release/spyglass" node test/netbench.mjs $(or $(NETBENCH_SESSIONS),10)
	cd web && SPYGLASS_BIN="$(TARGET_DIR)/release/spyglass" node test/ratebench.mjs --out $(TARGET_DIR)/ratebench.md

clean:
	$(CARGO) clean

# --- Deployment: cross builds, .deb packages, emulated boards, hardware in the loop (issue 6) ---
CROSS_TRIPLES := aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
CROSS_APT_PACKAGES := gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
                      g++-arm-linux-gnueabihf qemu-user-static libasound2-dev:arm64 libasound2-dev:armhf \
                      libstdc++6:arm64 libstdc++6:armhf
EMULATED_APT_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static cpio kmod alsa-utils
# The board's network and extra kernel drivers (tests/vm/README.md): v4l2loopback's source
# (Debian's DKMS package) and the kernel's own vim2m/vicodec/v4l2-mem2mem sources (Debian's
# kernel builds none of the three) are built for the guest's kernel against its headers;
# v4l2-ctl (v4l-utils) runs in the guest; ffmpeg/libx264 make the H.264 clip it feeds;
# mosquitto and Chromium (from `deps`) are the broker and the browser in the board's namespace.
EMULATED_APT_PACKAGES += linux-headers-amd64 linux-source v4l2loopback-dkms v4l-utils ffmpeg xz-utils
DEB_APT_PACKAGES := dpkg-dev adduser

.PHONY: deps-cross deps-emulated deps-deb cross deb deb-test test-emulated test-qemu-user test-vm hil

deps-cross: deps
	@for arch in arm64 armhf; do dpkg --print-foreign-architectures | grep -qx $$arch || $(SUDO) dpkg --add-architecture $$arch; done
	$(call apt_install,$(CROSS_APT_PACKAGES))
	@installed=$$(rustup target list --installed); for t in $(CROSS_TRIPLES); do \
	  echo "$$installed" | grep -qx $$t || rustup target add $$t; done

deps-emulated: deps
	$(call apt_install,$(EMULATED_APT_PACKAGES))

deps-deb: deps
	$(call apt_install,$(DEB_APT_PACKAGES))
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked

# Release binaries for 64-bit and 32-bit Raspberry Pi OS, then a check that openh264 has NEON
# and their selftest under qemu-user.
cross: deps-cross
	cross/build.sh $(CROSS_TRIPLES)
	@for t in $(CROSS_TRIPLES); do cross/check-simd.sh $$t $(TARGET_DIR)/$$t/release/spyglass; done
	tests/qemu-user.sh $(foreach t,$(CROSS_TRIPLES),$(TARGET_DIR)/$(t)/release/spyglass)

# The ARM binaries that `make test` runs under emulation: the same code in the local profile,
# which builds in a fraction of the release's time (Cargo.toml says what differs).
.PHONY: cross-local
cross-local: deps-cross
	cross/build.sh --profile $(LOCAL_PROFILE) $(CROSS_TRIPLES)
	@for t in $(CROSS_TRIPLES); do cross/check-simd.sh $$t $(TARGET_DIR)/$$t/$(LOCAL_PROFILE)/spyglass; done

# .deb packages for arm64, armhf and amd64 in $(TARGET_DIR)/deb/. The viewer page is whatever
# web/dist holds; without it the packages are built without the page (a note says so).
deb: cross deps-deb
	$(CARGO) build --release --locked
	cross/check-simd.sh x86_64-unknown-linux-gnu $(TARGET_DIR)/release/spyglass
	rm -rf build/deb-web && mkdir -p build/deb-web
	@if [ -d web/dist ] && [ -n "$$(ls -A web/dist)" ]; then cp -r web/dist/. build/deb-web/; \
	else echo "note: web/dist is missing: the packages hold no viewer page (build it first)"; \
	  echo "The viewer page was not built when this package was made." > build/deb-web/README.txt; fi
	mkdir -p $(TARGET_DIR)/deb
	$(CARGO) deb --no-build -o $(TARGET_DIR)/deb/ $(DEB_FLAGS)
	@for t in $(CROSS_TRIPLES); do $(CARGO) deb --no-build --target $$t -o $(TARGET_DIR)/deb/ $(DEB_FLAGS) || exit 1; done
	@ls -l $(TARGET_DIR)/deb/*.deb

# Install, upgrade, remove and purge the amd64 package on this machine (needs root; leaves
# nothing installed), and check the ARM packages' contents and control fields.
deb-test: deb
	rm -rf $(TARGET_DIR)/deb-upgrade
	$(CARGO) deb --no-build --deb-version "$$($(CARGO) pkgid | sed 's/.*[#@]//')-1+upgradetest" -o $(TARGET_DIR)/deb-upgrade/
	tests/deb.sh $(TARGET_DIR)/deb $$(ls $(TARGET_DIR)/deb-upgrade/*.deb)

# The emulated checks, part of `make test`: the ARM binaries under qemu-user, and an x86-64
# board under qemu-system with real kernel camera, sound, loopback and M2M drivers and a network.
test-emulated: test-qemu-user test-vm

# The self-test, then (issue 12) the daemon under qemu with its clock moved days ahead, streaming to
# a viewer built for this machine (the debug binary that `test-build` makes for every test: a
# plain `cargo build` would build it a second time, without the dev-dependencies' features).
test-qemu-user: cross-local test-build
	SPYGLASS_HOST_BIN=$(TARGET_DIR)/debug/spyglass tests/qemu-user.sh $(foreach t,$(CROSS_TRIPLES),$(TARGET_DIR)/$(t)/$(LOCAL_PROFILE)/spyglass)

# The board (tests/vm/README.md): selftests on its drivers, then the daemon in it streaming over a
# namespace network to `spyglass view` and Chromium. (tests/board.rs runs with the cargo tests.)
test-vm: deps-emulated test-build
	tests/vm/run.sh $(TARGET_DIR)/debug/spyglass
	cd web && SPYGLASS_BIN="$(TARGET_DIR)/debug/spyglass" node --test test/vm/*.test.mjs

# Hardware in the loop, on a Pi or any Linux box with a USB webcam: see docs/HARDWARE.md.
hil: release
	tests/hil.sh $(TARGET_DIR)/release/spyglass

# --- Dependency audit (issue 12), not part of `make test` ---
.PHONY: audit

# RustSec advisories for every crate in Cargo.lock (cargo-deny, installed if missing). The
# advisory database comes from github.com: where it cannot be fetched, this says so and fails.
audit:
	@command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked
	@out=$$($(CARGO) deny check advisories 2>&1); rc=$$?; echo "$$out"; \
	if [ $$rc -ne 0 ] && echo "$$out" | grep -q "failed to fetch advisory database"; then \
	  echo "make audit: the RustSec advisory database could not be fetched (no access to github.com?):"; \
	  echo "make audit: NOTHING WAS CHECKED. Run it where github.com is reachable; docs/SECURITY.md lists the crates."; \
	  exit 2; \
	fi; exit $$rc

# --- Long runs (issue 5), not part of `make test` ---
.PHONY: fuzz soak deps-fuzz

# cargo-fuzz on stable Rust (RUSTC_BOOTSTRAP=1); libFuzzer's sanitizer runtime comes with clang.
deps-fuzz: deps
	$(call apt_install,libclang-rt-14-dev)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

# Every fuzz target for FUZZ_SECONDS (default 60) each: executions and crashes per target.
fuzz: deps-fuzz
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) scripts/fuzz.sh

# 1000 sessions one after another and 20 at once (leaks), then SOAK_MINUTES (default 1440: 24 h)
# of sessions in a loop beside one connected viewer: RSS, fds, threads and latency at the start
# and the end; release build. SOAK_SESSIONS, SOAK_PARALLEL scale part 1.
soak: release
	scripts/soak.sh $(TARGET_DIR)
