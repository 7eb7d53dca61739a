# Ferry's entry points. `make test` and `make demo` work on a fresh Debian 12 machine
# (as root): both install what is missing first.
SWIFT ?= swift
BUILD_FLAGS ?=
FERRY = .build/debug/ferry

.PHONY: all deps build test unit integration demo lint clean

all: build

## Install Debian packages, CRIU 4.1.1 and CRIU's image descriptors (idempotent).
deps:
	bash scripts/deps.sh

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

## Every test: unit tests, then root + real-kernel + real-CRIU integration tests.
test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build $(BUILD_FLAGS)

## Only the unit tests (no root needed).
unit:
	$(SWIFT) test $(BUILD_FLAGS) --skip FerryIntegrationTests

integration: build
	$(SWIFT) test $(BUILD_FLAGS) --filter FerryIntegrationTests

## Build, run a container and show it working.
demo: build
	bash scripts/demo.sh $(FERRY)

## Formatting and lint (swift-format ships with the toolchain).
lint:
	$(SWIFT) format lint --recursive Sources Tests Integration

clean:
	rm -rf .build
