# kiln — `make` builds into build/ (CMake does the work).
#   make            build programs and example apps into build/
#   make up         install missing packages, build, run a local stack (kiln up)
#   make check      install missing packages, build and run the suite (ctest),
#                   then the same suite under AddressSanitizer + UBSan (build-asan/):
#                   what CI runs
#   make test       build and run the suite
#   make asan       the sanitizer build and its suite, with LeakSanitizer on: a leak
#                   in any kiln process fails the test that ran it
#   make chaos      build, then a long chaos soak (tests/chaos/chaos.py: kills and restarts
#                   runners, worker, broker, gateway, redis under load; CHAOS_SECONDS=600,
#                   CHAOS_SEED=random by default)
#   make deps       install the Debian packages kiln needs (scripts/install-deps.sh)
#   make fuzz       libFuzzer targets (clang, build-fuzz/), each run FUZZ_SECONDS (60)
#                   over fuzz/corpus; fails on any finding (docs/FUZZING.md)
#   make bench      install wrk, nginx, gnuplot, Node.js + BullMQ, build, run the
#                   benchmarks on loopback (bench/kiln_bench.py): bench/results/REPORT.md;
#                   BENCH_QUICK=1 for a smoke run (bench/README.md lists the knobs)
#   make clean
#
#   make up UP_ARGS="--dir /tmp/kiln --no-examples" passes options to kiln up.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
UP_ARGS    ?=

.PHONY: all build test asan check up clean deps bench

all: build

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

CHAOS_SECONDS ?= 600
CHAOS_SEED    ?=
.PHONY: chaos
chaos: build
	KILN_BUILD_DIR=$(abspath $(BUILD)) KILN_SOURCE_DIR=$(CURDIR) python3 -u tests/chaos/chaos.py \
	    --seconds $(CHAOS_SECONDS) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

$(ASAN_BUILD)/Makefile:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON

asan: $(ASAN_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:protect_shadow_gap=0:abort_on_error=0 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# deps first, then the rest in order, whatever -j says.
check: deps
	$(MAKE) --no-print-directory test
	$(MAKE) --no-print-directory asan

up: deps
	$(MAKE) --no-print-directory build
	./$(BUILD)/bin/kiln up $(UP_ARGS)

deps:
	./scripts/install-deps.sh

# The bench measures a RelWithDebInfo build (what $(BUILD)/Makefile configures).
bench: deps
	./scripts/install-bench-deps.sh
	$(MAKE) --no-print-directory build
	KILN_BUILD_DIR=$(abspath $(BUILD)) python3 bench/kiln_bench.py

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

#  clang only for this build; the targets alone (the rest may not build
#  with clang's warnings). FUZZ_SECONDS=N make fuzz to run longer.
.PHONY: fuzz
fuzz: deps
	./scripts/install-fuzz-deps.sh
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DKILN_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS) --target kiln_fuzz_all
	./fuzz/run.sh build-fuzz
