#!/usr/bin/env bash
# Set up the `arm` target: Debian cross toolchain + qemu, the aarch64 TVM runtime wheels, the runner.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pkgs="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
exec "$PYTHON" -m backends.tvm.arm_setup
