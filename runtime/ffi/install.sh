#!/usr/bin/env bash
# Builds libsegicl in release and installs it under PREFIX:
#   PREFIX/lib/libsegicl.so.2 (+ libsegicl.so → libsegicl.so.2), PREFIX/lib/libsegicl.a,
#   PREFIX/include/segicl.h, PREFIX/lib/pkgconfig/segicl.pc
# Usage: bash runtime/ffi/install.sh PREFIX
# Environment: SEGICL_PROFILE=dev for a debug build (default release); SEGICL_TARGET=TRIPLE to
# install a cross-built library (e.g. aarch64-unknown-linux-gnu, see targets/jetson-orin/);
# SEGICL_NO_TRACT=1 for the small library without the tract backend (float engines on the native
# executor; no int8 engines, no refiners).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
mkdir -p "$1"
prefix=$(cd "$1" && pwd)
ffi=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$ffi/../.." && pwd)

cd "$root"
profile=${SEGICL_PROFILE:-release}
case $profile in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "SEGICL_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
cross=()
if [ -n "${SEGICL_TARGET:-}" ]; then
  cross=(--target "$SEGICL_TARGET")
  dir="$SEGICL_TARGET/$dir"
fi
features=()
if [ "${SEGICL_NO_TRACT:-0}" = 1 ]; then
  features=(--no-default-features)
fi
cargo build --profile "$profile" "${cross[@]}" "${features[@]}" -p segicl-ffi
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
release="${target:-$root/target}/$dir"

abi=$(sed -n 's/^#define SEGICL_ABI_VERSION \([0-9]*\).*/\1/p' "$ffi/include/segicl.h")
version=$(cargo pkgid -p segicl-ffi | sed 's/.*[#@]//')

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 755 "$release/libsegicl.so" "$prefix/lib/libsegicl.so.$abi"
ln -sf "libsegicl.so.$abi" "$prefix/lib/libsegicl.so"
install -m 644 "$release/libsegicl.a" "$prefix/lib/libsegicl.a"
install -m 644 "$ffi/include/segicl.h" "$prefix/include/segicl.h"

cat > "$prefix/lib/pkgconfig/segicl.pc" <<PC
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: segicl
Description: In-context medical image segmentation (C ABI $abi)
Version: $version
Libs: -L\${libdir} -lsegicl
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}
PC

echo "installed segicl $version (ABI $abi) into $prefix"
