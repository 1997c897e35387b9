#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what building, testing and fuzzing memvisor needs on Debian 12 (uses sudo when not root).
set -euo pipefail
pkgs=(cmake make gcc pkg-config groff-base libcmocka-dev liburing-dev android-libcutils-dev liblz4-dev libzstd-dev libxxhash-dev libsystemd-dev systemd tmux libxen-dev libxenmisc4.17 libxenstore4 xenstore-utils)
if [ "${1:-}" = "--all" ]; then
  pkgs+=(clang libclang-rt-14-dev llvm clang-format)   # libFuzzer targets, sanitizer runtimes, the style check
  pkgs+=(dpkg-dev debhelper lintian)                    # the Debian packages (scripts/build-debs.sh)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
