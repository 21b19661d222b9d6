#!/usr/bin/env bash
# One-shot check of the TensorRT backend on a Jetson Orin (JetPack 6: TensorRT 10.3, CUDA 12.6).
# Build on the Orin, then run from the repository root:
#
#     cargo build --release -p segicl-edge --features tensorrt,cuda-12
#     bash targets/jetson-orin/device-check.sh
#
# For each bundled engine (fp32, fp16, int8): the plans built at first open into a fresh plan
# cache and taken from it at the second (both timed); the masks of --backend tensorrt against the
# CPU backend's (Dice agreement ≥ 0.99 per set, with targets/cuda/devcheck.py); and the frame time
# of tensorrt against the CUDA backend and the CPU. Results go to $OUT (default
# target/orin-check): orin-check.log and one JSON per agreement set and bench.
# Exit code: 0 every step passed; 1 a step failed (the log says which).
#
# Environment (all optional): OUT, SEGICL_EDGE (binary), ENGINES (space-separated engine files),
# FRAMES (timed frames, 300), PYTHON (python3 with numpy and Pillow), STEP_TIMEOUT (seconds per
# command, 600: the first open builds plans). A dry run of the script on a machine without a GPU:
# TRT_BACKEND=cpu CUDA_BACKEND=cpu FRAMES=5.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
OUT=${OUT:-target/orin-check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
BIN=${SEGICL_EDGE:-target/release/segicl-edge}
ENGINES=${ENGINES:-models/segicl-ref.plan models/segicl-ref-fp16.plan models/segicl-ref-int8.plan}
FRAMES=${FRAMES:-300}
TRT_BACKEND=${TRT_BACKEND:-tensorrt}
CUDA_BACKEND=${CUDA_BACKEND:-cuda}
PY=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-600}
DEVCHECK=targets/cuda/devcheck.py
WORK=$(mktemp -d "${TMPDIR:-/tmp}/segicl-orin.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
exec > >(tee "$OUT/orin-check.log") 2>&1
# A fresh plan cache: the first open of each engine builds its plans.
export SEGICL_TENSORRT_CACHE="$WORK/plans"
failed=0
fail() { echo "FAIL $*"; failed=1; }
step() { echo "+ $*" >&2; timeout "$STEP_TIMEOUT" "$@"; }

echo "==================== 1. board, TensorRT, binary"
date -u +"%Y-%m-%dT%H:%M:%SZ"; uname -a
cat /etc/nv_tegra_release 2>/dev/null || echo "(no /etc/nv_tegra_release: not a Jetson?)"
dpkg-query -W 'libnvinfer10' 'libnvonnxparsers10' 'cuda-cudart-12-*' 2>/dev/null || echo "(dpkg-query: no TensorRT packages)"
[ -x "$BIN" ] || { echo "FAIL $BIN missing: cargo build --release -p segicl-edge --features tensorrt,cuda-12"; exit 1; }
"$BIN" --version
[ "$TRT_BACKEND" != tensorrt ] || grep -aq segicl_trt_build "$BIN" || fail "$BIN has no TensorRT backend (build with --features tensorrt,cuda-12)"

echo "==================== 2. plans: built at first open, cached at the second"
for e in $ENGINES; do
    for open in first second; do
        start=$(date +%s%N)
        step "$BIN" --engine "$e" --backend "$TRT_BACKEND" -v verify >"$WORK/verify.txt" 2>&1 || fail "$e: verify on $TRT_BACKEND ($open open)"
        grep -E "tensorrt:|FAIL|verified" "$WORK/verify.txt"
        echo "$e: $open open + verify $((($(date +%s%N) - start) / 1000000)) ms"
    done
done
ls -l "$SEGICL_TENSORRT_CACHE" 2>/dev/null

echo "==================== 3. masks: $TRT_BACKEND against cpu (Dice agreement ≥ 0.99 per set)"
SYNTH="us-lesion us-bright fundus-disc fundus-cup"
for t in $SYNTH; do
    "$BIN" synth --task "$t" --count 11 --out "$WORK/synth/$t" >/dev/null || fail "synth $t"
done
for e in $ENGINES; do
    name=$(basename "$e" .plan)
    for backend in cpu "$TRT_BACKEND"; do
        for t in $SYNTH; do
            d="$WORK/synth/$t" shots=() imgs=("$WORK/synth/$t"/images/*.png)
            for i in 0 1 2; do shots+=(--shot "${imgs[$i]}=$d/masks/$(basename "${imgs[$i]}")"); done
            step "$BIN" --engine "$e" --backend "$backend" segment "${shots[@]}" --query "${imgs[@]:3}" \
                --out "$WORK/seg/$name/$backend-$t" >/dev/null || fail "$e: segment $t on $backend"
        done
    done
    for t in $SYNTH; do
        "$PY" "$DEVCHECK" dice --a "$WORK/seg/$name/cpu-$t" --b "$WORK/seg/$name/$TRT_BACKEND-$t" \
            --gt "$WORK/synth/$t/masks" --label "$name $t" --json "$OUT/agreement-$name-$t.json" ||
            fail "$e: $t masks disagree"
    done
done

echo "==================== 4. frame time: $TRT_BACKEND, $CUDA_BACKEND and cpu (3 cached shots, $FRAMES frames)"
for e in $ENGINES; do
    name=$(basename "$e" .plan)
    for backend in "$TRT_BACKEND" "$CUDA_BACKEND" cpu; do
        json="$OUT/bench-$name-$backend.json"
        echo "--- $e on $backend"
        if step "$BIN" --engine "$e" --backend "$backend" bench --shots 3 --frames "$FRAMES" --json >"$json"; then
            "$PY" "$DEVCHECK" print-bench "$json"
        else
            rm -f "$json"
            # The CUDA backend may not run every engine (its ops); the others must.
            [ "$backend" = "$CUDA_BACKEND" ] && [ "$backend" != cpu ] && echo "(info) $e does not run on $backend" ||
                fail "$e: bench on $backend"
        fi
    done
done

echo "==================== done: $([ "$failed" = 0 ] && echo "every step passed" || echo "a step FAILED (see above)")"
exit "$failed"
