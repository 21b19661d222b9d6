#!/usr/bin/env bash
# Times the same encoder/decoder ONNX graphs in ONNX Runtime (Python, CPU) and in segicl-edge
# (tract), at 1 and 2 threads, and prints one table with the ratio segicl/ORT.
#
#   bash bench/compare-onnxruntime.sh
#
# Environment (all optional):
#   FRAMES=N             timed frames per measurement (default 200)
#   THREADS="1 2"        thread counts to compare (default "1 2")
#   SEGICL_EDGE=path     segicl-edge binary to use   } both set: no cargo build;
#   MAKE_PROTOTYPE=path  make-prototype binary       } otherwise a release build
#   ENGINE=path          engine file to time instead of a freshly made prototype;
#                        needs ONNX_DIR=dir with that engine's encoder.onnx, decoder.onnx
#                        and manifest.json (MAKE_PROTOTYPE is then not needed)
#   PYTHON=python3       interpreter that makes bench/.venv
#
# Writes bench/out/ (JSON of every run, the exported graphs) and prints the table.
set -euo pipefail

die() {
    echo "compare-onnxruntime: $*" >&2
    exit 1
}

# Paths given in the environment are relative to where the script was started.
abs() { realpath -m -- "$1"; }
SEGICL_EDGE=${SEGICL_EDGE:+$(abs "$SEGICL_EDGE")}
MAKE_PROTOTYPE=${MAKE_PROTOTYPE:+$(abs "$MAKE_PROTOTYPE")}
ENGINE=${ENGINE:+$(abs "$ENGINE")}
ONNX_DIR=${ONNX_DIR:+$(abs "$ONNX_DIR")}
FRAMES=${FRAMES:-200}
THREADS=${THREADS:-1 2}
PYTHON=${PYTHON:-python3}

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$root"
bench=bench
out=$bench/out
venv=$bench/.venv

[[ $FRAMES =~ ^[1-9][0-9]*$ ]] || die "FRAMES must be a positive integer, not '$FRAMES'"
for t in $THREADS; do
    [[ $t =~ ^[1-9][0-9]*$ ]] || die "THREADS must list positive integers, not '$THREADS'"
done
if [[ -n $ENGINE && -z $ONNX_DIR ]]; then
    die "ENGINE is set: also set ONNX_DIR to the folder with that engine's encoder.onnx, decoder.onnx and manifest.json"
fi
if [[ -z $ENGINE && -n $ONNX_DIR ]]; then
    die "ONNX_DIR is set without ENGINE: segicl would time another engine than those graphs"
fi

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

# 2. Binaries: given, or a release build.
need_make=1
[[ -n $ENGINE ]] && need_make=0
if [[ -z $SEGICL_EDGE || ($need_make == 1 && -z $MAKE_PROTOTYPE) ]]; then
    echo "== cargo build --release (set SEGICL_EDGE and MAKE_PROTOTYPE to skip)"
    cargo build --release -p segicl --bin segicl-edge -p segicl-models --bin make-prototype
    target=${CARGO_TARGET_DIR:-target}
    SEGICL_EDGE=${SEGICL_EDGE:-$(abs "$target/release/segicl-edge")}
    MAKE_PROTOTYPE=${MAKE_PROTOTYPE:-$(abs "$target/release/make-prototype")}
fi
[[ -x $SEGICL_EDGE ]] || die "segicl-edge binary not found or not executable: $SEGICL_EDGE"
if [[ $need_make == 1 ]]; then
    [[ -x $MAKE_PROTOTYPE ]] || die "make-prototype binary not found or not executable: $MAKE_PROTOTYPE"
fi

# 3. The graphs: export the prototype engine and its ONNX graphs, or take the given ones.
mkdir -p -- "$out"
rm -f -- "$out"/segicl-t*.json "$out"/ort-t*.json "$out/table.txt"
if [[ $need_make == 1 ]]; then
    ENGINE=$out/prototype.plan
    ONNX_DIR=$out/onnx
    rm -rf -- "$ENGINE" "$ONNX_DIR"
    echo "== $MAKE_PROTOTYPE -o $ENGINE --onnx-dir $ONNX_DIR"
    "$MAKE_PROTOTYPE" -o "$ENGINE" --onnx-dir "$ONNX_DIR"
fi
[[ -f $ENGINE ]] || die "engine not found: $ENGINE"
for f in encoder.onnx decoder.onnx manifest.json; do
    [[ -f $ONNX_DIR/$f ]] || die "$ONNX_DIR/$f not found"
done

# 4. Both runtimes, thread count by thread count (one after the other, never together).
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for t in $THREADS; do
    echo "== segicl-edge --threads $t bench --shots 3 --frames $FRAMES"
    "$SEGICL_EDGE" --engine "$ENGINE" --threads "$t" bench --shots 3 --frames "$FRAMES" --json \
        >"$out/segicl-t$t.json"
    echo "== ort_bench.py --threads $t --frames $FRAMES"
    "$py" "$bench/ort_bench.py" --onnx-dir "$ONNX_DIR" --threads "$t" --frames "$FRAMES" --json \
        >"$out/ort-t$t.json"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# 5. The table.
# shellcheck disable=SC2086 # THREADS is a list of integers, checked above.
"$py" "$bench/report.py" --out-dir "$out" --threads $THREADS --nproc "$(nproc)" \
    --segicl-edge "$SEGICL_EDGE" --segicl-version "$("$SEGICL_EDGE" --version)" \
    --segicl-built "$(date -u -r "$SEGICL_EDGE" +%Y-%m-%dT%H:%M:%SZ)" \
    --load "$load_before" "$load_after" | tee "$out/table.txt"
