#!/usr/bin/env bash
# Peak RSS as firmware sees it: bench/firmware_rss.c linked against the small libsegicl (the
# native executor alone, `cargo build --release -p segicl-ffi --no-default-features`) opens each
# engine, takes a task's default shots and segments FRAMES frames on the CPU. Prints one row per
# engine: the file's size, the peak before the engine opened (the program and the library), after
# it opened and after the frames, against the issue's target (the file + 16 MB).
#
#   bash bench/firmware-rss.sh
#
# Environment (optional): ENGINES="a.plan:TASK b.plan:TASK" (engines and the default shots' task
# to take; default: the three segicl-ref engines with optic-disc and the prototype with
# fundus-disc), THREADS (default 1), FRAMES (default 50).
set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$root"
engines=${ENGINES:-models/segicl-ref.plan:optic-disc models/segicl-ref-fp16.plan:optic-disc \
    models/segicl-ref-int8.plan:optic-disc models/prototype.plan:fundus-disc}
threads=${THREADS:-1}
frames=${FRAMES:-50}
out=bench/out/firmware
mkdir -p "$out"

echo "== cargo build --release -p segicl-ffi --no-default-features (the small library)" >&2
# Its own target directory, so that the default build's full library is left alone.
CARGO_TARGET_DIR=target/small cargo build --release --locked -p segicl-ffi --no-default-features >&2
lib=target/small/release
# The library's SONAME carries the ABI version (libsegicl.so.2), a name cargo does not lay out.
soname=$(objdump -p "$lib/libsegicl.so" | awk '/SONAME/ {print $2}')
ln -sf "$root/$lib/libsegicl.so" "$out/$soname"
cc -O2 -o "$out/firmware_rss" bench/firmware_rss.c -I runtime/ffi/include -L "$lib" -lsegicl -lpthread \
    -Wl,-rpath,"$root/$out"

printf '%-28s %10s %12s %12s %12s %12s\n' engine "file MiB" "before MiB" "opened MiB" "peak MiB" "target MiB"
for pair in $engines; do
    engine=${pair%%:*}
    line=$("$out/firmware_rss" "$engine" "${pair#*:}" "$threads" "$frames")
    declare -A v=()
    for kv in $line; do v[${kv%%=*}]=${kv#*=}; done
    awk -v e="$(basename "$engine")" -v f="${v[engine_bytes]}" -v b="${v[baseline_kib]}" -v o="${v[opened_kib]}" \
        -v p="${v[peak_kib]}" 'BEGIN {
            m = 1048576; printf "%-28s %10.1f %12.1f %12.1f %12.1f %12.1f\n", e, f / m, b / 1024, o / 1024, p / 1024, (f + 16e6) / m
        }'
done
