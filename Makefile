# spyglass — build, test and demo. Every target installs what it needs on Debian / Raspberry Pi OS.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Build tools for the crates (bindgen for v4l needs libclang; openh264 wants nasm on x86;
# libopus builds with cmake; alsa-sys links libasound) and the broker the tests start.
APT_PACKAGES := build-essential pkg-config cmake nasm clang libclang-dev libasound2-dev \
                mosquitto mosquitto-clients
# The viewer page's browser tests drive Debian's Chromium; node and npm build the page (Debian's
# nodejs/npm only where no node is installed already).
APT_PACKAGES += chromium $(if $(shell command -v node),,nodejs) $(if $(shell command -v npm),,npm)
CARGO ?= cargo
# Where cargo puts its builds (.ci/run moves it out of the tree); the browser tests need the binary.
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

.PHONY: all deps build release test demo clean web

all: build

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

build: deps web
	$(CARGO) build

release: deps web
	$(CARGO) build --release

test: deps web
	$(CARGO) build --bins
	$(CARGO) test --all-targets
	cd web && SPYGLASS_BIN="$(TARGET_DIR)/debug/spyglass" node --test test/*.test.mjs

# The viewer page: npm packages from package-lock.json, then the bundle in web/dist.
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web: deps web/node_modules/.package-lock.json
	cd web && node build.mjs

demo: release
	scripts/demo.sh

clean:
	$(CARGO) clean
