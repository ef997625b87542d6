# kiln — `make` builds into build/ (CMake does the work).
#   make            build programs and example apps into build/
#   make up         install missing packages, build, run a local stack (kiln up)
#   make check      install missing packages, build and run the suite (ctest),
#                   then the same suite under AddressSanitizer + UBSan (build-asan/):
#                   what CI runs
#   make test       build and run the suite
#   make asan       the sanitizer build and its suite
#   make deps       install the Debian packages kiln needs (scripts/install-deps.sh)
#   make clean
#
#   make up UP_ARGS="--dir /tmp/kiln --no-examples" passes options to kiln up.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
UP_ARGS    ?=

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

# deps first, then the rest in order, whatever -j says.
check: deps
	$(MAKE) --no-print-directory test
	$(MAKE) --no-print-directory asan

up: deps
	$(MAKE) --no-print-directory build
	./$(BUILD)/bin/kiln up $(UP_ARGS)

deps:
	./scripts/install-deps.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
