#!/usr/bin/env bash
# Runs libFuzzer harnesses: fuzz.sh SECONDS build/fuzz/fuzz_x ...
# Each first replays its regression inputs (tests/fuzz/regress/<name>/: every crash found
# so far), then fuzzes for SECONDS from its seed corpus (tests/fuzz/corpus/<name>/, read
# only; new inputs go to build/fuzz/corpus/<name>/). A crash leaves its input in
# build/fuzz/crash-<name>-* and fails the run; copy it to tests/fuzz/regress/<name>/.
set -uo pipefail
secs=$1
shift
fail=0
for bin in "$@"; do
    name=$(basename "$bin")
    work=build/fuzz/corpus/$name
    mkdir -p "$work"
    opts=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1
          "-artifact_prefix=$PWD/build/fuzz/crash-$name-") # absolute: a harness may chdir
    reg=tests/fuzz/regress/$name
    if [ -d "$reg" ] && [ -n "$(ls -A "$reg")" ]; then
        if ! "$bin" "${opts[@]}" "$reg"/* >"build/fuzz/$name.regress.log" 2>&1; then
            echo "FAIL $name: a regression input crashes again (build/fuzz/$name.regress.log)"
            fail=1
            continue
        fi
    fi
    if "$bin" "${opts[@]}" -max_total_time="$secs" "$work" "tests/fuzz/corpus/$name" \
        >"build/fuzz/$name.log" 2>&1; then
        runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "build/fuzz/$name.log" | grep -o '[0-9]*$')
        echo "ok: $name: ${secs}s, ${runs:-?} inputs, no crash"
    else
        echo "FAIL $name: crash, see build/fuzz/$name.log and build/fuzz/crash-$name-*"
        grep -m3 -E 'ERROR|runtime error|SUMMARY' "build/fuzz/$name.log" | sed 's/^/    /'
        fail=1
    fi
done
exit $fail
