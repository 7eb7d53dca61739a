# Ferry's entry points. `make test` and `make demo` work on a fresh Debian 12 machine
# (as root): both install what is missing first.
SWIFT ?= swift
BUILD_FLAGS ?=
FERRY = .build/debug/ferry

.PHONY: all deps build test unit integration demo lint clean bench bench-quick bench-deps

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

## Benchmark (issue #5): Ferry beside podman, runc and raw CRIU, against the machine's
## limits; writes bench/results/latest.json. Not part of `make test`.
BENCH_PACKAGE ?= .
BENCH_SCRATCH ?= .build-bench
BENCH_FERRY = $(BENCH_SCRATCH)/release/ferry
BENCH_ARGS ?=

## Debian's podman and runc for the benchmark's peers (idempotent).
bench-deps: deps
	bash bench/deps.sh

## Sizes 64, 512 and 2048 MiB, 3 repetitions, cold and warm (takes a while).
bench: bench-deps
	$(SWIFT) build -c release --package-path $(BENCH_PACKAGE) --scratch-path $(BENCH_SCRATCH)
	python3 bench/run.py --ferry $(BENCH_FERRY) --ferry-source $(BENCH_PACKAGE) $(BENCH_ARGS)

## The 512 MiB case only, one repetition, for use while developing.
bench-quick: bench-deps
	$(SWIFT) build -c release --package-path $(BENCH_PACKAGE) --scratch-path $(BENCH_SCRATCH)
	python3 bench/run.py --quick --ferry $(BENCH_FERRY) --ferry-source $(BENCH_PACKAGE) $(BENCH_ARGS)
