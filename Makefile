# ctrain: `make` builds the library and the CLI, `make check` runs every test suite,
# `make bench` prints one JSON object per benchmark, `make install PREFIX=...` installs.
# SANITIZE=1 builds everything under ASan+UBSan (in build/san) and runs the tests there.
# The default build runs on any x86-64-v3 (AVX2) machine, so a binary built on a login node
# runs on every compute node; kernels that gain from AVX-512 pick it at run time. NATIVE=1
# builds for this machine's CPU only (-march=native). -Werror is on for `make check` (and
# CI), not for a user's `make` with another compiler version (WERROR=1 forces it).

PREFIX    ?= /usr/local
SANITIZE  ?= 0
NATIVE    ?= 0
WERROR    ?= 0
PKGS      := openblas zlib inih jansson hwloc ompi-c libjpeg spng
DEPS_OK   := build/.deps-ok

ifeq ($(SANITIZE),1)
  B       := build/san
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  OPT     := -O1 -g
else
  B       := build
  SANFLAGS :=
  OPT     := -O2 -g
endif

# pkg-config is only asked once the packages exist (deps.sh runs first).
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

ifeq ($(NATIVE),1)
  ARCH    := -march=native
else
  ARCH    := -march=x86-64-v3
endif

CC      ?= cc
# -fopenmp: intra-op threads (libgomp; clang's fuzz build links its libomp the same way).
CFLAGS  := -std=c11 -Wall -Wextra $(OPT) $(ARCH) -fvect-cost-model=dynamic -fno-math-errno -fPIC -D_GNU_SOURCE \
           -fopenmp -Isrc $(SANFLAGS)
LDLIBS   = $(PKG_LIBS) -fopenmp -lm -lpthread

LIB_SRC  := $(sort $(wildcard src/*/*.c))
LIB_SRC  := $(filter-out src/cli/%,$(LIB_SRC))
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(B)/obj/%.o)
CLI_LIB_OBJ := $(filter-out %/main.o,$(CLI_OBJ))
HEADERS  := src/ctrain.h $(wildcard src/*/*.h)
# One public header per layer; the CLI's and the internal.h files stay private.
PUBLIC_H := $(foreach l,core autograd ops nn optim data io parallel,src/$(l)/$(l).h)

UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
MPI_SRC  := $(sort $(wildcard tests/mpi/test_*.c))
MPI_BIN  := $(MPI_SRC:tests/mpi/%.c=$(B)/tests/mpi/%)
TEST_UTIL := $(B)/obj/tests/unit/util.o
PARITY_SRC := $(sort $(wildcard tests/parity/*_dump.c))
PARITY_UTIL := $(B)/obj/tests/parity/dump_util.o
PARITY_BIN := $(PARITY_SRC:tests/parity/%.c=$(B)/tests/parity/%)
BENCH_SRC := $(sort $(wildcard tests/bench/bench_*.c))
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(B)/bench/%)

# libFuzzer harnesses (tests/fuzz): the library built again with clang under ASan+UBSan.
# `make fuzz FUZZ_SECONDS=N` runs each for N seconds on its seed corpus; `make check` runs
# each for a few seconds, after replaying every input in tests/fuzz/regress/.
FUZZ_SECONDS ?= 600
FUZZ_CHECK_SECONDS ?= 8
FUZZ_FLAGS := -std=c11 -O1 -g -march=x86-64-v3 -fno-math-errno -fPIC -D_GNU_SOURCE -fopenmp -Isrc \
              -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_OBJ := $(LIB_SRC:%.c=build/fuzz/obj/%.o) build/fuzz/obj/src/cli/config.o
FUZZ_OBJ += build/fuzz/obj/src/cli/sweep_list.o

.PHONY: all check bench clean install deps fuzz check-fuzz check-valgrind check-faults
.SECONDARY:
all: $(B)/libctrain.a $(B)/libctrain.so $(B)/ctrain

deps: $(DEPS_OK)
$(DEPS_OK): scripts/deps.sh
	@bash scripts/deps.sh
	@mkdir -p $(dir $@) && touch $@

# Objects depend on the flags they were built with (not on -Werror, which changes no code),
# so switching NATIVE rebuilds everything.
FLAGS_STAMP := $(B)/.cflags
.PHONY: FORCE
$(FLAGS_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(CC) $(CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS)' > $@

check: WERROR = 1
$(B)/obj/%.o: %.c $(HEADERS) $(wildcard tests/unit/*.h tests/mpi/*.h tests/parity/*.h) $(FLAGS_STAMP) | $(DEPS_OK)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(if $(filter 1,$(WERROR)),-Werror) $(PKG_CFLAGS) -c $< -o $@

# scripts/plot.py as a C string, so `ctrain sweep` runs the one plotting program even when
# installed without the scripts directory.
$(B)/gen/plot_py.h: scripts/plot.py
	@mkdir -p $(dir $@)
	@{ echo 'static const char ct_plot_py[] ='; \
	   sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; echo ';'; } >$@
$(B)/obj/src/cli/sweep_report.o: $(B)/gen/plot_py.h
$(B)/obj/src/cli/sweep_report.o: CFLAGS += -I$(B)/gen

$(B)/libctrain.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/libctrain.so: $(LIB_OBJ)
	$(CC) -shared $(SANFLAGS) -o $@ $^ $(LDLIBS)

$(B)/ctrain: $(CLI_OBJ) $(B)/libctrain.a
	$(CC) $(SANFLAGS) -o $@ $(CLI_OBJ) $(B)/libctrain.a $(LDLIBS)

$(B)/tests/%: $(B)/obj/tests/unit/%.o $(TEST_UTIL) $(B)/libctrain.a
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $< $(TEST_UTIL) $(B)/libctrain.a $(CHECK_LIBS) $(LDLIBS)

# Unit tests of the command line's own code (test_cli_*.c) link its objects, all but main.
$(B)/tests/test_cli_%: $(B)/obj/tests/unit/test_cli_%.o $(TEST_UTIL) $(CLI_LIB_OBJ) $(B)/libctrain.a
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $< $(TEST_UTIL) $(CLI_LIB_OBJ) $(B)/libctrain.a $(CHECK_LIBS) $(LDLIBS)

$(B)/tests/mpi/%: $(B)/obj/tests/mpi/%.o $(B)/obj/tests/mpi/mpi_util.o $(B)/libctrain.a
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $< $(B)/obj/tests/mpi/mpi_util.o $(B)/libctrain.a $(CHECK_LIBS) $(LDLIBS)

# PyTorch parity dump programs, run by tests/scripts/test_parity.sh
$(B)/tests/parity/%: $(B)/obj/tests/parity/%.o $(PARITY_UTIL) $(B)/libctrain.a
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $< $(PARITY_UTIL) $(B)/libctrain.a $(LDLIBS)

$(B)/bench/%: $(B)/obj/tests/bench/%.o $(B)/libctrain.a
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $< $(B)/libctrain.a $(LDLIBS)

# Every suite runs even when an earlier one fails; the target fails if any did.
# detect_leaks=1 makes LeakSanitizer report anything left allocated at exit.
check: all $(UNIT_BIN) $(MPI_BIN) $(PARITY_BIN) $(FUZZ_BIN)
	@SANITIZE=$(SANITIZE) B=$(B) MPI_TESTS="$(MPI_BIN)" bash scripts/run_tests.sh $(UNIT_BIN)
	@bash scripts/fuzz.sh $(FUZZ_CHECK_SECONDS) $(FUZZ_BIN)

# The build's command lines go to stderr, so stdout is nothing but the JSON lines.
bench:
	@$(MAKE) --no-print-directory all $(BENCH_BIN) >&2
	@B=$(B) bash scripts/bench.sh

# The unit suites and a short training run under valgrind's memcheck (slow: not in check).
check-valgrind: all $(UNIT_BIN)
	@B=$(B) bash scripts/valgrind.sh $(UNIT_BIN)

build/fuzz/obj/%.o: %.c $(HEADERS) | $(DEPS_OK)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -c $< -o $@
build/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz.h $(FUZZ_OBJ)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) -o $@ $< $(FUZZ_OBJ) $(LDLIBS)
fuzz: $(FUZZ_BIN)
	@bash scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BIN)
check-fuzz: $(FUZZ_BIN)
	@bash scripts/fuzz.sh $(FUZZ_CHECK_SECONDS) $(FUZZ_BIN)

install: all
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/ctrain $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(B)/libctrain.a $(B)/libctrain.so $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(B)/ctrain launcher/ctrun $(DESTDIR)$(PREFIX)/bin/
	install -m 644 src/ctrain.h $(DESTDIR)$(PREFIX)/include/ctrain/
	for h in $(PUBLIC_H); do \
	  install -d $(DESTDIR)$(PREFIX)/include/ctrain/$$(dirname $${h#src/}); \
	  install -m 644 $$h $(DESTDIR)$(PREFIX)/include/ctrain/$${h#src/}; done
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@REQUIRES@|$(PKGS)|' ctrain.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/ctrain.pc

clean:
	rm -rf build

# The fault suite alone (also part of check): killed, stopped and preempted ranks, damaged
# checkpoints and a full disk, each relaunched by ctrun --restarts.
check-faults: all
	@B=$(B) bash tests/faults/test_faults.sh
