# Makefile: the README's entry points (deps, build, test, demo, bench) over CMake.
#
# Every target installs what it needs on a fresh Debian 12 machine first.

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_TSAN ?= build-tsan
JOBS       ?= $(shell nproc)
CMAKE_GEN  := -DCMAKE_BUILD_TYPE=RelWithDebInfo

BUILD_FUZZ ?= build-fuzz
FUZZ_TARGETS := $(notdir $(basename $(wildcard tests/fuzz/fuzz_*.c)))
# Seconds each fuzz target runs in `make test` (about a minute in all) and in `make fuzz`.
FUZZ_SECONDS ?= $(shell expr 60 / $(words $(FUZZ_TARGETS)))
FUZZ_LONG_SECONDS ?= 600

.PHONY: all deps build test test-unit test-asan test-tsan test-fuzz fuzz stress demo bench clean format
STRESS_SECONDS ?= 300

all: build

deps:
	@scripts/ensure-deps.sh

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_GEN) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Unit tests, then the same suite under ASan + UBSan, then the concurrency
# tests under TSan.
test: deps
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-asan
	@$(MAKE) --no-print-directory test-tsan
	@$(MAKE) --no-print-directory test-fuzz
	@echo "== make test: all passed =="

test-unit: build
	@echo "== unit tests (RelWithDebInfo) =="
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

test-asan: deps
	@echo "== unit tests under AddressSanitizer + UBSan =="
	@cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DRMAPVM_SANITIZE=address >/dev/null
	@cmake --build $(BUILD_ASAN) -j $(JOBS)
	@cd $(BUILD_ASAN) && ctest --output-on-failure -j $(JOBS) --timeout 600

test-tsan: deps
	@echo "== concurrency tests under ThreadSanitizer =="
	@cmake -S . -B $(BUILD_TSAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRMAPVM_SANITIZE=thread >/dev/null
	@cmake --build $(BUILD_TSAN) -j $(JOBS)
	@cd $(BUILD_TSAN) && ctest --output-on-failure -L concurrency --timeout 600

# libFuzzer (clang) on every target for a bounded time, on a scratch copy of
# the checked-in corpus; the corpus itself is also replayed by ctest above.
test-fuzz: deps
	@echo "== fuzzing: $(FUZZ_TARGETS), $(FUZZ_SECONDS) s each =="
	@CC=clang cmake -S . -B $(BUILD_FUZZ) -DRMAPVM_FUZZ=ON -DRMAPVM_SANITIZE=address \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD_FUZZ) -j $(JOBS) --target $(FUZZ_TARGETS)
	@scripts/run-fuzz.sh $(BUILD_FUZZ)/tests $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz:
	@$(MAKE) --no-print-directory test-fuzz FUZZ_SECONDS=$(FUZZ_LONG_SECONDS)

# Long runs under TSan of vCPUs, harvests, invalidations and memslot changes
# at once, checking the dirty-log invariant throughout (not part of `make test`).
stress: deps
	@cmake -S . -B $(BUILD_TSAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRMAPVM_SANITIZE=thread >/dev/null
	@cmake --build $(BUILD_TSAN) -j $(JOBS) --target stress_mmu test_faults_net
	@$(BUILD_TSAN)/tests/stress_mmu $(STRESS_SECONDS) exclusive
	@$(BUILD_TSAN)/tests/stress_mmu $(STRESS_SECONDS) shared
	@# random network faults on live migrations, each attempt verified or recovered
	@FAULTS_SECONDS=$(STRESS_SECONDS) $(BUILD_TSAN)/tests/test_faults_net

demo: build
	@$(BUILD)/rmapvm demo

# Every figure at full size (about ten minutes): CSVs, PNGs and docs/RESULTS.md
# in docs/results/. `make bench QUICK=1` is a smoke run into bench-results/.
bench: build
	@scripts/ensure-deps.sh gnuplot-nox qemu-system-x86
ifeq ($(QUICK),1)
	@$(BUILD)/rmapvm bench all --quick --out bench-results
else
	@$(BUILD)/rmapvm bench all --out docs/results --results-md docs/RESULTS.md
endif

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN)
