# spyglass — build, test and demo. Every target installs what it needs on Debian / Raspberry Pi OS.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Build tools for the crates (bindgen for v4l needs libclang; openh264 wants nasm on x86;
# libopus builds with cmake; alsa-sys links libasound) and the broker the tests start.
APT_PACKAGES := build-essential pkg-config cmake nasm clang libclang-dev libasound2-dev \
                mosquitto mosquitto-clients
CARGO ?= cargo

.PHONY: all deps build release test demo clean

all: build

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

test: deps
	$(CARGO) build --bins
	$(CARGO) test --all-targets

demo: release
	scripts/demo.sh

clean:
	$(CARGO) clean
