#!/bin/sh
# Runs the project's test suites and ends with one line "N passed, N failed".
#
#   sh spec/support/run-all.sh            every suite (what `make test` runs)
#   sh spec/support/run-all.sh SUITE...   some of: lint ctest lua5.4 lua5.3
#                                          lua5.1 luajit asan valgrind fuzz
#
# Each suite prints TAP; its "ok"/"not ok" lines are counted. A suite that
# exits non-zero without a failing test line counts as one failure.
set -u
cd "$(dirname "$0")/../.." || exit 2
suites=${*:-"lint ctest lua5.4 lua5.3 lua5.1 luajit asan valgrind fuzz"}
logdir=build/logs
mkdir -p "$logdir"
total_pass=0
total_fail=0
total_skip=0
BUSTED=$(command -v busted)

run_suite() {  # name, command...
  name=$1; shift
  log="$logdir/$name.log"
  echo "== $name"
  start=$(date +%s)
  "$@" >"$log" 2>&1
  rc=$?
  skip=$(grep -c '^ok .*# SKIP' "$log")
  pass=$(( $(grep -c '^ok ' "$log") - skip ))
  fail=$(grep -c '^not ok ' "$log")
  if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
    fail=1
    echo "   $name exited with status $rc:"
    tail -n 40 "$log" | sed 's/^/   | /'
  fi
  if [ "$fail" -gt 0 ]; then
    # Show each failing test with its diagnostics.
    awk '/^not ok /{show=1} /^ok /{show=0} show' "$log" | head -n 300 | sed 's/^/   | /'
  fi
  echo "   [$name] $pass ok, $fail not ok, $skip skipped, $(( $(date +%s) - start ))s"
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  total_skip=$((total_skip + skip))
}

busted_suite() {  # name, interpreter, build dir, [wrapper...]
  name=$1; lua=$2; dir=$3; shift 3
  POSTBACK_BUILD=$dir POSTBACK_TEST_LUA=$lua POSTBACK_TEST_SUITE=$name \
    run_suite "$name" "$@" "$lua" "$BUSTED" --ignore-lua -o TAP spec
}

for s in $suites; do
  case $s in
    ctest)
      make -s build/ctest/test_core >/dev/null 2>"$logdir/ctest-build.log" ||
        { cat "$logdir/ctest-build.log"; total_fail=$((total_fail + 1)); continue; }
      run_suite ctest build/ctest/test_core
      # core's URL checks against libcurl's own parser
      make -s build/ctest/url_diff >/dev/null 2>"$logdir/url_diff-build.log" ||
        { cat "$logdir/url_diff-build.log"; total_fail=$((total_fail + 1)); continue; }
      run_suite url_diff build/ctest/url_diff README.md ;;
    lua5.4|lua5.3|lua5.1|luajit)
      command -v "$s" >/dev/null 2>&1 || { echo "== $s: not installed, skipped"; continue; }
      make -s LUA="$s" all >/dev/null || { total_fail=$((total_fail + 1)); continue; }
      abi=$("$s" -e 'print(jit and "luajit" or _VERSION:match("%d+%.%d+"))')
      busted_suite "$s" "$s" "build/$abi" ;;
    asan)
      make -s BUILD=build/asan OPT="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" all >/dev/null ||
        { total_fail=$((total_fail + 1)); continue; }
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
        busted_suite asan lua5.4 build/asan ;;
    valgrind)
      make -s all >/dev/null || { total_fail=$((total_fail + 1)); continue; }
      POSTBACK_UNDER_VALGRIND=1 busted_suite valgrind lua5.4 build/5.4 \
        valgrind -q --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --error-exitcode=99 --trace-children=no ;;
    lint)
      # luacheck over all Lua (.luacheckrc), and the C under clang's warnings
      run_suite lint sh -c '
        if command -v luacheck >/dev/null 2>&1; then
          if luacheck -q --no-color lua bin/postback mock examples bench spec >build/logs/luacheck.log 2>&1; then
            echo "ok 1 - luacheck: no warnings"
          else echo "not ok 1 - luacheck"; sed "s/^/# /" build/logs/luacheck.log | tail -30; fi
        else echo "ok 1 - # SKIP luacheck is not installed"; fi
        if clang -std=c99 -Wall -Wextra -Werror -pedantic -Wmissing-prototypes -Wshadow \
             -D_POSIX_C_SOURCE=200809L $(pkg-config --cflags lua5.4 libcurl libidn2) -I. -fsyntax-only \
             lua_postback.c core/*.c redis/*.c examples/game_server/main.c >build/logs/clang.log 2>&1; then
          echo "ok 2 - clang -Wall -Wextra -Werror: clean"
        else echo "not ok 2 - clang warnings"; sed "s/^/# /" build/logs/clang.log | head -30; fi' ;;
    fuzz)
      # each libFuzzer harness for FUZZ_SECONDS (default 15): one test each
      run_suite fuzz sh -c '
        n=0
        for src in fuzz/fuzz_*.c; do
          h=$(basename "$src" .c); n=$((n + 1))
          if ! make -s "build/fuzz/$h" >/dev/null 2>&1; then echo "not ok $n - $h: build failed"; continue; fi
          mkdir -p "build/fuzz/corpus-$h"
          if "build/fuzz/$h" -max_total_time="${FUZZ_SECONDS:-15}" -print_final_stats=1 \
               "build/fuzz/corpus-$h" "fuzz/seeds/$h" >"build/logs/fuzz-$h.log" 2>&1; then
            echo "ok $n - $h: $(grep -o "number_of_executed_units: *[0-9]*" "build/logs/fuzz-$h.log" | grep -o "[0-9]*$") executions, no crash"
          else
            echo "not ok $n - $h: crash, see build/logs/fuzz-$h.log"
            grep -A20 "ERROR" "build/logs/fuzz-$h.log" | sed "s/^/# /" | head -40
          fi
        done' ;;
    *) echo "unknown suite: $s"; total_fail=$((total_fail + 1)) ;;
  esac
done

echo "$total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" -eq 0 ]
