# Makefile: the README's entry points (deps, build, test, demo, bench) over CMake.
#
# Every target installs what it needs on a fresh Debian 12 machine first.

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_TSAN ?= build-tsan
JOBS       ?= $(shell nproc)
CMAKE_GEN  := -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: all deps build test test-unit test-asan test-tsan demo bench clean format

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

demo: build
	@$(BUILD)/rmapvm demo

bench: build
	@$(BUILD)/rmapvm bench all --out bench-results

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN)
