#!/usr/bin/env bash
# Times the same engine graphs in three runtimes, alternated round by round, at 1 and 2 threads:
# segicl-edge's native CPU executor (--backend cpu), segicl-edge on tract (--backend tract) and
# ONNX Runtime (Python, CPU execution provider, the graphs read from the same engine file).
# Prints one table per engine: median and min over the rounds of each stage's p50, the ratio
# to ONNX Runtime and the share of this core's measured FMA peak.
#
#   bash bench/compare-onnxruntime.sh
#
# Environment (all optional):
#   ENGINES="a.plan b.plan"  engines to time (default: models/segicl-ref.plan and its int8 twin)
#   ROUNDS=N                 rounds; each runs every contender once per thread count (default 5)
#   FRAMES=N                 timed frames per run (default 100)
#   THREADS="1 2"            thread counts (default "1 2")
#   SEGICL_EDGE=path         segicl-edge binary to use (default: a release build)
#   PYTHON=python3           interpreter that makes bench/.venv
#
# Writes bench/out/ (the JSON of every run, table.txt) and prints the table.
set -euo pipefail

die() {
    echo "compare-onnxruntime: $*" >&2
    exit 1
}

abs() { realpath -m -- "$1"; }
SEGICL_EDGE=${SEGICL_EDGE:+$(abs "$SEGICL_EDGE")}
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
engines=()
for e in ${ENGINES:-$root/models/segicl-ref.plan $root/models/segicl-ref-int8.plan}; do
    engines+=("$(abs "$e")")
done
ROUNDS=${ROUNDS:-5}
FRAMES=${FRAMES:-100}
THREADS=${THREADS:-1 2}
PYTHON=${PYTHON:-python3}
cd -- "$root"
bench=bench
out=$bench/out
venv=$bench/.venv

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$ROUNDS'"
[[ $FRAMES =~ ^[1-9][0-9]*$ ]] || die "FRAMES must be a positive integer, not '$FRAMES'"
for t in $THREADS; do
    [[ $t =~ ^[1-9][0-9]*$ ]] || die "THREADS must list positive integers, not '$THREADS'"
done
for e in "${engines[@]}"; do
    [[ -f $e ]] || die "engine not found: $e"
done

# 1. Python venv with the pinned onnxruntime and numpy (reinstalled when requirements change).
req=$bench/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python ]]; then
    echo "== creating $venv"
    "$PYTHON" -m venv "$venv"
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "== installing $req into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
fi
py=$venv/bin/python

# 2. The binary (given, or a release build) and the FMA peak probe.
if [[ -z $SEGICL_EDGE ]]; then
    echo "== cargo build --release -p segicl-edge --bin segicl-edge (set SEGICL_EDGE to skip)"
    cargo build --release -p segicl-edge --bin segicl-edge
    SEGICL_EDGE=$(abs "${CARGO_TARGET_DIR:-target}/release/segicl-edge")
fi
[[ -x $SEGICL_EDGE ]] || die "segicl-edge binary not found or not executable: $SEGICL_EDGE"
mkdir -p -- "$out"
rm -f -- "$out"/*.json "$out/table.txt"
cc -O2 -march=native -o "$out/fma_peak" "$bench/fma_peak.c" || die "cannot build $bench/fma_peak.c (needs cc and AVX2+FMA or AVX-512)"

# 3. Rounds: in each, every engine × thread count × contender once, in turn, so that a change in
#    the machine's load shifts all contenders alike. The peak is measured between rounds too.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
    "$out/fma_peak" >"$out/peak-r$round.txt"
    for engine in "${engines[@]}"; do
        name=$(basename -- "$engine" .plan)
        for t in $THREADS; do
            for backend in cpu tract; do
                json=$out/$name-$backend-t$t-r$round.json
                echo "== round $round: $name, segicl-edge --backend $backend --threads $t"
                if ! "$SEGICL_EDGE" --engine "$engine" --backend "$backend" --threads "$t" bench --shots 3 \
                    --frames "$FRAMES" --json >"$json" 2>"$json.err"; then
                    # The native executor refuses engines whose ops the plan lacks: say why, go on.
                    "$py" -c 'import json,sys; print(json.dumps({"skipped": open(sys.argv[1]).read().strip()}))' \
                        "$json.err" >"$json"
                fi
                rm -f -- "$json.err"
            done
            echo "== round $round: $name, onnxruntime --threads $t"
            "$py" "$bench/ort_bench.py" --engine "$engine" --threads "$t" --frames "$FRAMES" --json \
                >"$out/$name-ort-t$t-r$round.json"
        done
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# 4. The table.
names=()
for e in "${engines[@]}"; do names+=("$(basename -- "$e" .plan)"); done
# shellcheck disable=SC2086 # THREADS is a list of integers, checked above.
"$py" "$bench/report.py" --out-dir "$out" --engines "${names[@]}" --threads $THREADS --rounds "$ROUNDS" \
    --nproc "$(nproc)" --segicl-version "$("$SEGICL_EDGE" --version)" \
    --load "$load_before" "$load_after" | tee "$out/table.txt"
