# postback - build, test, demo.
#
#   make                 build/5.4/ (LUA=lua5.3|lua5.1|luajit for the others)
#   make test            everything the project promises; ends "N passed, N failed"
#   make demo            the main job on the local mock (no network, no account)
#   make asan-test       specs against an ASan+UBSan build
#   make valgrind-test   specs under valgrind (no errors, no definite leaks)
#   make bench           benchmarks with ratios against peers
#   make clean

LUA      ?= lua5.4
CC       ?= cc
ABI      := $(shell $(LUA) -e 'print(jit and "luajit" or _VERSION:match("%d+%.%d+"))' 2>/dev/null)
BUILD    ?= build/$(ABI)
LUA_PC   := $(if $(filter luajit,$(ABI)),luajit,lua$(ABI))
LUA_INC  ?= $(shell pkg-config --cflags-only-I $(LUA_PC) 2>/dev/null)
CURL_INCDIR ?= $(shell pkg-config --variable=includedir libcurl 2>/dev/null)
CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
# libidn2: core/url.c converts internationalised hosts itself, whatever the locale.
IDN_CFLAGS  ?= $(shell pkg-config --cflags libidn2 2>/dev/null)
IDN_LIBS    ?= $(shell pkg-config --libs libidn2 2>/dev/null || echo -lidn2)
# What every program built from core/ compiles and links with.
CORE_CFLAGS = $(CURL_CFLAGS) $(IDN_CFLAGS)
CORE_LIBS   = $(CURL_LIBS) $(IDN_LIBS)
# hiredis, for postback.redis only (the queue): <hiredis/hiredis.h> under HIREDIS_INCDIR
HIREDIS_INCDIR ?=
HIREDIS_LIBS   ?= $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)

WARN     := -std=c99 -Wall -Wextra -Werror -pedantic -Wmissing-prototypes -Wshadow
OPT      ?= -O2 -g
CFLAGS_ALL = $(WARN) $(OPT) -fPIC -fvisibility=hidden -D_POSIX_C_SOURCE=200809L \
             $(LUA_INC) $(CORE_CFLAGS) -I. $(EXTRA_CFLAGS)
LDFLAGS_ALL = -shared $(CORE_LIBS) -lm $(EXTRA_LDFLAGS)

CORE_SRC := $(wildcard core/*.c)
CORE_HDR := $(wildcard core/*.h)
REDIS_SRC := $(wildcard redis/*.c)
REDIS_HDR := $(wildcard redis/*.h)
LUA_SRC  := $(shell find lua -name '*.lua')
LUA_OUT  := $(patsubst lua/%,$(BUILD)/%,$(LUA_SRC))

# Debian packages each job needs (installed by .ci/deps.sh when missing).
PKG_BUILD := make gcc pkg-config libcurl4-openssl-dev libidn2-dev lua5.4 liblua5.4-dev lua-cjson libhiredis-dev
PKG_DEMO  := $(PKG_BUILD) lua-socket
PKG_TEST  := $(PKG_BUILD) lua-busted lua-socket lua-check luarocks clang valgrind libclang-rt-14-dev \
             nginx libnginx-mod-http-lua lua-nginx-dns wrk curl lua5.3 liblua5.3-dev lua5.1 liblua5.1-0-dev \
             luajit2 libluajit2-5.1-dev redis-server openssl iproute2 locales strace

export LUA_PATH  := $(BUILD)/?.lua;$(BUILD)/?/init.lua;spec/support/?.lua;;
export LUA_CPATH := $(BUILD)/?.so;;

.PHONY: all deps demo-deps test-deps test spec ctest asan-test valgrind-test demo bench fuzz clean

all: $(BUILD)/postback/core.so $(BUILD)/postback/redis.so $(LUA_OUT)

deps:
	@sh .ci/deps.sh $(PKG_BUILD)

demo-deps:
	@sh .ci/deps.sh $(PKG_DEMO)

test-deps:
	@sh .ci/deps.sh $(PKG_TEST)

BINDING_SRC := $(wildcard binding/*.c)

$(BUILD)/postback/core.so: lua_postback.c $(BINDING_SRC) $(CORE_SRC) $(CORE_HDR) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) lua_postback.c $(CORE_SRC) -o $@ $(LDFLAGS_ALL)

# The queue's Redis connection: a module of its own, the only one linking hiredis.
$(BUILD)/postback/redis.so: $(REDIS_SRC) $(REDIS_HDR) | deps
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) -fPIC -fvisibility=hidden -D_POSIX_C_SOURCE=200809L $(LUA_INC) \
	  $(if $(HIREDIS_INCDIR),-I$(HIREDIS_INCDIR)) -I. $(EXTRA_CFLAGS) $(REDIS_SRC) -o $@ \
	  -shared $(HIREDIS_LIBS) -lm $(EXTRA_LDFLAGS)

$(BUILD)/%.lua: lua/%.lua
	@mkdir -p $(dir $@)
	cp $< $@

# Every suite the project promises, summed into one line.
test: test-deps
	@sh spec/support/run-all.sh

# The busted specs only, for the interpreter in LUA.
spec: all
	busted --lua=$(LUA) -o utfTerminal spec

ctest: test-deps
	@sh spec/support/run-all.sh ctest

asan-test: test-deps
	@sh spec/support/run-all.sh asan

valgrind-test: test-deps
	@sh spec/support/run-all.sh valgrind

# C unit tests of core/ (no Lua), under ASan+UBSan, with a failing allocator.
SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
build/ctest/test_core: spec/c/test_core.c spec/c/test_helpers.h $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O1 -g $(SAN) -D_POSIX_C_SOURCE=200809L $(CORE_CFLAGS) -I. \
	  spec/c/test_core.c $(CORE_SRC) -o $@ $(CORE_LIBS) -lm

# postback's URL checks against libcurl's own parser (curl_url), on generated URLs.
build/ctest/url_diff: spec/c/url_diff.c spec/c/test_helpers.h $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O1 -g $(SAN) -D_POSIX_C_SOURCE=200809L $(CORE_CFLAGS) -I. \
	  spec/c/url_diff.c $(CORE_SRC) -o $@ $(CORE_LIBS) -lm

# The embedded example: a C game loop with Lua 5.4 and postback linked in.
build/game_server: examples/game_server/main.c lua_postback.c $(BINDING_SRC) $(CORE_SRC) $(CORE_HDR) | deps
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O2 -g -D_POSIX_C_SOURCE=200809L $(shell pkg-config --cflags lua5.4) \
	  $(CORE_CFLAGS) -I. examples/game_server/main.c lua_postback.c $(CORE_SRC) -o $@ \
	  $(shell pkg-config --libs lua5.4) $(CORE_LIBS) -lm

# libcurl's own multi loop in plain C: the ceiling the fire benchmark compares with.
build/bench/multi_c: bench/multi_c.c
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -O2 -D_POSIX_C_SOURCE=200809L $(CURL_CFLAGS) $< -o $@ $(CURL_LIBS)

# The pure-C peer of the render benchmark.
build/bench/render_c: bench/render_c.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -O2 -D_POSIX_C_SOURCE=200809L $(CORE_CFLAGS) -I. bench/render_c.c \
	  $(CORE_SRC) -o $@ $(CORE_LIBS) -lm

# libFuzzer harnesses: make fuzz FUZZ_SECONDS=N runs each for N seconds,
# starting from the checked-in seeds in fuzz/seeds/<harness>/.
FUZZ_SECONDS ?= 10
FUZZERS := $(patsubst fuzz/%.c,build/fuzz/%,$(wildcard fuzz/fuzz_*.c))
build/fuzz/%: fuzz/%.c fuzz/fuzz_common.h spec/c/test_helpers.h $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  -D_POSIX_C_SOURCE=200809L $(CORE_CFLAGS) -I. $< $(CORE_SRC) -o $@ $(CORE_LIBS) -lm

fuzz: test-deps $(FUZZERS)
	@for f in $(FUZZERS); do \
	  n=$$(basename $$f); mkdir -p build/fuzz/corpus-$$n; \
	  echo "== $$n ($(FUZZ_SECONDS)s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/corpus-$$n fuzz/seeds/$$n \
	    2>&1 | grep -E 'stat::number_of_executed_units|ERROR|SUMMARY|Done' || exit 1; \
	done

demo: demo-deps all
	@$(LUA) examples/demo.lua

bench: test-deps all build/bench/render_c build/bench/multi_c
	@$(LUA) bench/run.lua

clean:
	rm -rf build
