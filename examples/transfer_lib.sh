# Sourced by the transfer examples' run.sh (examples/transfer_resnet/, examples/vit/transfer/)
# with the example's folder and the script's arguments: `source .../transfer_lib.sh DIR [NP]`.
# Builds ctrain, then gives
#   run NAME         trains DIR/NAME.ini on NP ranks (default 2) through ctrun, prints its
#                    last evaluation line and keeps its accuracy and wall time;
#   table LABEL=NAME ...  the markdown table of those runs.
# Extra key=value overrides for every run: RUN_ARGS.
set -euo pipefail
EX=$1
np=${2:-2}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
make -s all
declare -A acc secs
run() {
    local t0=$SECONDS out
    # shellcheck disable=SC2086 # RUN_ARGS is a list of overrides
    out=$(launcher/ctrun -np "$np" -- ctrain train "$EX/$1.ini" ${RUN_ARGS:-} | tail -n 1)
    secs[$1]=$((SECONDS - t0))
    acc[$1]=$(sed -E 's/.*"accuracy":([0-9.]+).*/\1/' <<<"$out")
    echo "$1: $out (${secs[$1]} s)"
}
table() {
    printf '\n| run | test accuracy | wall time (s) |\n|---|---|---|\n'
    local row
    for row in "$@"; do
        printf '| %s | %s | %s |\n' "${row%=*}" "${acc[${row##*=}]}" "${secs[${row##*=}]}"
    done
}
