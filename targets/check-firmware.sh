#!/usr/bin/env bash
# CI check of the C firmware example: install the small libsegicl (debug profile, no tract
# backend: what a firmware image that runs float engines links) into a temporary prefix, build
# targets/firmware/firmware.c with plain cc and pkg-config, run a few frames; then the same for
# aarch64 with the cross compiler, run under qemu-aarch64. The library with tract is tested from C
# by `cargo test -p segicl-ffi` (x86-64) and its Rust side by the aarch64 suite under qemu;
# building it here once more per target would compile tract twice for nothing new.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
engine="$root/models/prototype.plan"

echo "-- x86-64: install, cc \$(pkg-config ...), run"
SEGICL_PROFILE=dev SEGICL_NO_TRACT=1 bash "$root/runtime/ffi/install.sh" "$work/x86"
export PKG_CONFIG_PATH="$work/x86/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c11 -O2 -Wall -Wextra -Werror "$root/targets/firmware/firmware.c" $(pkg-config --cflags --libs segicl) -o "$work/firmware"
LD_LIBRARY_PATH="$work/x86/lib" "$work/firmware" "$engine" us-lesion 5

echo "-- aarch64: cross-install, aarch64-linux-gnu-gcc, run under qemu-aarch64"
SEGICL_PROFILE=dev SEGICL_NO_TRACT=1 SEGICL_TARGET=aarch64-unknown-linux-gnu bash "$root/runtime/ffi/install.sh" "$work/arm"
aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Werror "$root/targets/firmware/firmware.c" \
    -I "$work/arm/include" -L "$work/arm/lib" -lsegicl -o "$work/firmware-arm"
qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH="$work/arm/lib" "$work/firmware-arm" "$engine" us-lesion 3
