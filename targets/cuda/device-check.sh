#!/usr/bin/env bash
# shellcheck disable=SC2317  # the stage functions are called indirectly (run_stage TITLE FUNCTION)
# One-shot GPU verification of the CUDA backend (issue 6): run from the repository root as
#
#     bash targets/cuda/device-check.sh
#
# with target/release/segicl-edge built here with `--features cuda` and the engines in models/.
# Results go to $OUT (default target/device-check), at most 8 files as the device tool brings back:
# device-check.log (everything printed), summary.txt, summary.json, bench-cuda.json, torch.json and
# details.tar.gz (every stage's log and JSON: agreement per set, benches, stages.tsv).
# Every stage prints a header and runs even when an earlier one failed. Exit code: 0 every stage
# passed and every target is met; 1 a stage failed; 2 every stage passed but a target was missed.
#
# Environment (all optional): OUT, SEGICL_EDGE (binary), ENGINE, FRAMES (timed frames, 500),
# PYTHON (python3), STEP_TIMEOUT (seconds per command, 120; the PyTorch stage gets 2×),
# DEADLINE (seconds after which no further stage starts, 360), SKIP (space-separated stage
# functions to skip, e.g. "stage_torch"). For a dry run of the script itself on a machine without
# a GPU: GPU_BACKEND=cpu TORCH_DEVICE=cpu FRAMES=5 (every "cuda" run then uses the CPU).
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
OUT=${OUT:-target/device-check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
BIN=${SEGICL_EDGE:-target/release/segicl-edge}
ENGINE=${ENGINE:-models/segicl-ref.plan}
FRAMES=${FRAMES:-500}
GPU_BACKEND=${GPU_BACKEND:-cuda}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
PY=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-120}
DEADLINE=${DEADLINE:-360}
SKIP=${SKIP:-}
HERE=targets/cuda
WORK=$(mktemp -d "${TMPDIR:-/tmp}/segicl-devcheck.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
RES=$WORK/results
mkdir -p "$RES"
rm -f "$OUT"/device-check.log "$OUT"/summary.txt "$OUT"/summary.json "$OUT"/bench-cuda.json "$OUT"/torch.json \
    "$OUT"/details.tar.gz
# Everything printed also lands in $OUT/device-check.log as it happens (kept if the run is killed).
exec > >(tee -a "$OUT/device-check.log") 2>&1
export PYTHONUNBUFFERED=1
: >"$RES/stages.tsv"

# The precision switch of the CUDA backend, if this build has one (its name is in the binary).
PRECISION_VAR=SEGICL_CUDA_PRECISION
HAVE_PRECISION=0
if [ -x "$BIN" ] && grep -aq "$PRECISION_VAR" "$BIN"; then HAVE_PRECISION=1; fi
# Its switch to launch kernels one by one instead of replaying CUDA graphs.
GRAPHS_VAR=SEGICL_CUDA_GRAPHS
HAVE_GRAPHS_VAR=0
if [ -x "$BIN" ] && grep -aq "$GRAPHS_VAR" "$BIN"; then HAVE_GRAPHS_VAR=1; fi

# cudarc loads libcuda, libnvrtc, libcublas (and cuDNN, if used) at run time. Where the system
# linker cache lacks NVRTC, cuBLAS or cuDNN, use the copies that PyTorch's wheels bring (nvidia/*/lib).
LIB_NOTE="system linker cache"
if ! { ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' && ldconfig -p 2>/dev/null | grep -q 'libcublas\.so' &&
        ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so'; }; then
    PIP_LIBS=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(d for d in glob.glob(os.path.join(sp, "nvidia", "*", "lib")) if os.path.isdir(d))
print(":".join(dirs))
EOF
)
    if [ -n "$PIP_LIBS" ]; then
        export LD_LIBRARY_PATH="$PIP_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        LIB_NOTE="pip wheels: $PIP_LIBS"
    fi
fi

step() { # a command with a time limit, echoed first
    echo "+ $*" >&2
    timeout "$STEP_TIMEOUT" "$@"
}

edge() { step "$BIN" --engine "$ENGINE" "$@"; }

run_stage() { # TITLE FUNCTION
    local title=$1 fn=$2 start=$SECONDS rc status
    printf '\n==================== %s ====================\n' "$title"
    case " $SKIP " in *" $fn "*)
        echo "skipped (SKIP)"; printf '%s\tskipped\t0\n' "$fn" >>"$RES/stages.tsv"; return 0 ;;
    esac
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
        echo "skipped: $SECONDS s used, DEADLINE $DEADLINE s"
        printf '%s\tskipped(deadline)\t0\n' "$fn" >>"$RES/stages.tsv"
        return 0
    fi
    "$fn" 2>&1 | tee "$RES/log-$fn.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then status=ok; else status="FAILED(rc=$rc)"; fi
    printf -- '---- %s: %s in %d s\n' "$title" "$status" $((SECONDS - start))
    printf '%s\t%s\t%d\n' "$fn" "$status" $((SECONDS - start)) >>"$RES/stages.tsv"
}

# ---------------------------------------------------------------- 1. machine
stage_machine() {
    local rc=0
    date -u +"%Y-%m-%dT%H:%M:%SZ"; uname -a
    nvidia-smi || rc=1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,mig.mode.current \
        --format=csv || true
    "$PY" - <<'EOF' || rc=1
import torch
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
EOF
    command -v nvcc >/dev/null && nvcc --version | tail -2
    echo "CUDA libraries from: $LIB_NOTE"
    ldconfig -p 2>/dev/null | grep -E 'lib(cuda|nvrtc|cublas|cublasLt|cudnn)\.so' | head -12
    local d f
    for d in ${LD_LIBRARY_PATH//:/ }; do
        for f in "$d"/libnvrtc.so* "$d"/libcublas.so* "$d"/libcublasLt.so* "$d"/libcudnn.so*; do
            [ -e "$f" ] && echo "  $f"
        done
    done | head -12
    echo "binary: $BIN"
    if [ -x "$BIN" ]; then
        "$BIN" --version
        ls -l "$BIN"
        echo "$PRECISION_VAR in this build: $([ "$HAVE_PRECISION" = 1 ] && echo yes || echo 'no (f32 runs skipped)')"
        echo "$GRAPHS_VAR in this build: $([ "$HAVE_GRAPHS_VAR" = 1 ] && echo yes || echo 'no (no-graph bench skipped)')"
    else
        echo "FAIL $BIN missing: build it with cargo build --release -p segicl-edge --features cuda and carry it"
        rc=1
    fi
    ls -l models/*.plan
    return "$rc"
}

# ---------------------------------------------------------------- 2. verify / inspect on cuda
stage_verify() {
    local rc=0 e
    edge --backend "$GPU_BACKEND" -v verify || rc=1
    edge --backend "$GPU_BACKEND" inspect >"$WORK/inspect.txt" || rc=1
    head -8 "$WORK/inspect.txt"
    # the other bundled engines: informative only (fp16 weights, the prototype's ops)
    for e in models/*.plan; do
        [ "$e" = "$ENGINE" ] && continue
        echo "(info) $e:"
        step "$BIN" --engine "$e" --backend "$GPU_BACKEND" verify | tail -1 || echo "(info) $e does not load on cuda"
    done
    return "$rc"
}

# ---------------------------------------------------------------- 3. cpu vs cuda agreement
# Frames: the engine's 18 real default shots (extracted from its SHOTS section) segmented with
# every task's default shots; 4 synthetic tasks with 3 shots from files; one ROI (two-pass) run.
seg() { # BACKEND DEST_SET ENVS SEGMENT-ARGS... : one segment run; returns 2 on a timeout
    local backend=$1 dest=$2 envs=$3 r
    shift 3
    # shellcheck disable=SC2086  # ENVS is a space-separated list of VAR=VALUE (or empty)
    env $envs timeout "$STEP_TIMEOUT" "$BIN" --engine "$ENGINE" --backend "$backend" segment "$@" --out "$dest" >/dev/null
    r=$?
    [ "$r" -eq 0 ] && return 0
    echo "FAIL ($r) segment on $backend ${envs:+($envs) }-> $(basename "$dest")"
    [ "$r" -eq 124 ] || [ "$r" -eq 137 ] && return 2
    return 1
}

segment_all() { # BACKEND DEST [ENVS]
    local backend=$1 dest=$2 envs=${3:-} rc=0 r task
    mkdir -p "$dest"
    for task in $TASKS; do
        seg "$backend" "$dest/real-$task" "$envs" --task "$task" --query "$WORK"/real/images/*.png
        r=$?; [ "$r" -eq 2 ] && { echo "timed out: no further runs on $backend"; return 1; }; [ "$r" -ne 0 ] && rc=1
    done
    for task in $SYNTH; do
        local d="$WORK/synth/$task" shots=() imgs=("$WORK/synth/$task"/images/*.png)
        for i in 0 1 2; do shots+=(--shot "${imgs[$i]}=$d/masks/$(basename "${imgs[$i]}")"); done
        seg "$backend" "$dest/synth-$task" "$envs" "${shots[@]}" --query "${imgs[@]:3}"
        r=$?; [ "$r" -eq 2 ] && { echo "timed out: no further runs on $backend"; return 1; }; [ "$r" -ne 0 ] && rc=1
    done
    if [ -n "$ROI_TASK" ]; then
        seg "$backend" "$dest/roi-$ROI_TASK" "$envs" --task "$ROI_TASK" --roi --query "$WORK"/real/images/*.png || rc=1
    fi
    return "$rc"
}

compare_all() { # LABEL_PREFIX DIR_A DIR_B
    local prefix=$1 a=$2 b=$3 rc=0 set gt
    for set in "$a"/*/; do
        set=$(basename "$set")
        gt=
        case $set in synth-*) gt="$WORK/synth/${set#synth-}/masks" ;; esac
        "$PY" "$HERE/devcheck.py" dice --a "$a/$set" --b "$b/$set" ${gt:+--gt "$gt"} --label "$prefix$set" \
            --json "$RES/agreement-$prefix${set}.json" || rc=1
    done
    return "$rc"
}

stage_agreement() {
    local rc=0 t start
    mkdir -p "$WORK/real" "$WORK/synth"
    "$PY" "$HERE/devcheck.py" extract-shots "$ENGINE" "$WORK/real" || rc=1
    TASKS=$(find "$WORK/real/images" -name '*.png' -printf '%f\n' 2>/dev/null | sed 's/-[0-9]*\.png$//' | sort -u | tr '\n' ' ')
    ROI_TASK=$(echo "$TASKS" | tr ' ' '\n' | grep -m1 -x 'optic-cup' || true)
    SYNTH="us-lesion us-bright fundus-disc fundus-cup"
    for t in $SYNTH; do
        "$BIN" synth --task "$t" --count 11 --out "$WORK/synth/$t" >/dev/null || { echo "FAIL synth $t"; rc=1; }
    done
    echo "real tasks: ${TASKS:-none}; synthetic: $SYNTH (3 shots + 8 queries each); ROI: ${ROI_TASK:-none}"
    start=$SECONDS; segment_all cpu "$WORK/seg/cpu" || rc=1; echo "cpu segmentation: $((SECONDS - start)) s"
    start=$SECONDS; segment_all "$GPU_BACKEND" "$WORK/seg/cuda" || rc=1; echo "cuda segmentation: $((SECONDS - start)) s"
    echo "cpu (a) vs cuda (b), per set:"
    compare_all "" "$WORK/seg/cpu" "$WORK/seg/cuda" || rc=1
    if [ "$HAVE_PRECISION" = 1 ]; then
        start=$SECONDS; segment_all "$GPU_BACKEND" "$WORK/seg/cuda-f32" "$PRECISION_VAR=f32" || rc=1
        echo "cuda f32 segmentation: $((SECONDS - start)) s"
        echo "cpu (a) vs cuda with $PRECISION_VAR=f32 (b), per set:"
        compare_all "f32-" "$WORK/seg/cpu" "$WORK/seg/cuda-f32" || rc=1
    else
        echo "(no $PRECISION_VAR in this build: cuda runs in its default precision only)"
    fi
    return "$rc"
}

# ---------------------------------------------------------------- 4. segicl-edge bench
stage_bench() {
    local rc=0
    edge --backend "$GPU_BACKEND" bench --shots 3 --frames "$FRAMES" --json >"$RES/bench-cuda.json" || { rc=1; rm -f "$RES/bench-cuda.json"; }
    [ -s "$RES/bench-cuda.json" ] && "$PY" "$HERE/devcheck.py" print-bench "$RES/bench-cuda.json"
    if [ "$HAVE_PRECISION" = 1 ]; then
        env "$PRECISION_VAR=f32" timeout "$STEP_TIMEOUT" "$BIN" --engine "$ENGINE" --backend "$GPU_BACKEND" bench --shots 3 --frames "$FRAMES" --json \
            >"$RES/bench-cuda-f32.json" || { rc=1; rm -f "$RES/bench-cuda-f32.json"; }
        [ -s "$RES/bench-cuda-f32.json" ] && echo "with $PRECISION_VAR=f32:" && "$PY" "$HERE/devcheck.py" print-bench "$RES/bench-cuda-f32.json"
    fi
    if [ "$HAVE_GRAPHS_VAR" = 1 ]; then # kernels launched one by one (no CUDA graph replay)
        env "$GRAPHS_VAR=0" timeout "$STEP_TIMEOUT" "$BIN" --engine "$ENGINE" --backend "$GPU_BACKEND" bench --shots 3 \
            --frames "$FRAMES" --json >"$RES/bench-cuda-nographs.json" || { rc=1; rm -f "$RES/bench-cuda-nographs.json"; }
        [ -s "$RES/bench-cuda-nographs.json" ] && echo "with $GRAPHS_VAR=0:" &&
            "$PY" "$HERE/devcheck.py" print-bench "$RES/bench-cuda-nographs.json"
    fi
    # the CPU backend on this machine's CPU, for reference (fewer frames: ~10 ms each)
    edge --backend cpu bench --shots 3 --frames 100 --json >"$RES/bench-cpu.json" || { rc=1; rm -f "$RES/bench-cpu.json"; }
    [ -s "$RES/bench-cpu.json" ] && "$PY" "$HERE/devcheck.py" print-bench "$RES/bench-cpu.json"
    return "$rc"
}

# ---------------------------------------------------------------- 5. PyTorch on the same model
stage_torch() {
    STEP_TIMEOUT=$((2 * STEP_TIMEOUT)) step "$PY" "$HERE/torch_baseline.py" --engine "$ENGINE" --device "$TORCH_DEVICE" --frames "$FRAMES" --dtype f16,f32 \
        --bn both --json "$RES/torch.json"
}

# ---------------------------------------------------------------- 7. optional tract-cuda-bench
stage_tract_cuda() {
    if [ -x target/release/tract-cuda-bench ]; then
        step target/release/tract-cuda-bench
    else
        echo "target/release/tract-cuda-bench not carried: skipped"
    fi
}

echo "segicl-edge device check: engine $ENGINE, binary $BIN (backend $GPU_BACKEND), $FRAMES frames, results in $OUT"
run_stage "1. machine, driver, CUDA" stage_machine
run_stage "2. verify and inspect on --backend cuda" stage_verify
run_stage "3. cpu vs cuda agreement (Dice of masks)" stage_agreement
run_stage "4. segicl-edge bench (3 cached shots)" stage_bench
run_stage "5. PyTorch baseline (eager, CUDA graph)" stage_torch
run_stage "7. tract-cuda-bench (optional)" stage_tract_cuda
printf '\n==================== 6. summary ====================\n'
"$PY" "$HERE/devcheck.py" summary --out "$RES" 2>&1 | tee "$RES/summary.txt"
code=${PIPESTATUS[0]}
for f in summary.txt summary.json bench-cuda.json torch.json; do
    [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/$f"
done
tar -czf "$OUT/details.tar.gz" -C "$RES" . || echo "could not pack $OUT/details.tar.gz"
echo "device check finished in $SECONDS s, exit $code (0 all met, 1 a stage failed, 2 a target missed); results in $OUT"
# let tee write the last lines before the shell exits
exec >&- 2>&-
wait
exit "$code"
