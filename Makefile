# Ferry's entry points. `make test` and `make demo` work on a fresh Debian 12 machine
# (as root): both install what is missing first.
SWIFT ?= swift
BUILD_FLAGS ?=
FERRY = .build/debug/ferry

PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps build build-tests install man test test-stress unit integration demo lint clean bench bench-quick bench-deps

all: build

## Install Debian packages, CRIU 4.1.1 and CRIU's image descriptors (idempotent).
deps:
	bash scripts/deps.sh

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

build-tests: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)

TEST_ENV = SWIFT="$(SWIFT)" BUILD_FLAGS="$(BUILD_FLAGS)"

## Every test, as two `swift test` processes: the unit tests, then the root + real-kernel
## + real-CRIU integration tests. Each prints a one-line summary; fails if either fails.
test: build-tests
	$(TEST_ENV) bash scripts/test.sh

## The same suite while a bounded CPU hog keeps one core busy (it stops by itself).
test-stress: build-tests
	$(TEST_ENV) bash scripts/test-stress.sh

## Only the unit tests (no root needed), or only the integration tests (root).
unit: build-tests
	$(TEST_ENV) bash scripts/test.sh unit

integration: build-tests
	$(TEST_ENV) bash scripts/test.sh integration

## man pages generated from the commands' help by swift-argument-parser's generate-manual
## tool (the package's own copy: nothing is fetched). The tool is run directly on the
## built ferry: its plugin form rebuilds ferry from scratch first.
man: build
	$(SWIFT) build --product generate-manual $(BUILD_FLAGS)
	rm -rf .build/man && mkdir -p .build/man
	"$$($(SWIFT) build --show-bin-path $(BUILD_FLAGS))/generate-manual" $(FERRY) --multi-page --output-directory .build/man

## ferry to $(PREFIX)/bin, its man pages, and bash, zsh and fish completions (which
## complete container, image and volume names from the state root).
install: build man
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	    $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
	    $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	    $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 0755 $(FERRY) $(DESTDIR)$(PREFIX)/bin/ferry
	install -m 0644 .build/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	$(FERRY) --generate-completion-script bash >$(DESTDIR)$(PREFIX)/share/bash-completion/completions/ferry
	$(FERRY) --generate-completion-script zsh >$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_ferry
	$(FERRY) --generate-completion-script fish >$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/ferry.fish

## Build, run a container and show it working.
demo: build
	bash scripts/demo.sh $(FERRY)

## Formatting and lint (swift-format ships with the toolchain): fails on any warning.
lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Integration Package.swift

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
