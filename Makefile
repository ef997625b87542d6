# kiln — `make` builds into build/ (CMake does the work).
#   make            build programs and example apps into build/
#   make test       build and run the whole suite (ctest)
#   make asan       the same suite under AddressSanitizer + UBSan (build-asan/)
#   make check      both: what CI runs
#   make up         run a local stack (kiln up)
#   make clean
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)

.PHONY: all build test asan check up clean deps

all: build

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

$(ASAN_BUILD)/Makefile:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON

asan: $(ASAN_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:abort_on_error=0 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

check: test asan

deps:
	./scripts/install-deps.sh

up: build
	./$(BUILD)/bin/kiln up

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
