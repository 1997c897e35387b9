#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The systemd user units as built: systemd-analyze verifies them (the broker's path pointed at this build
# tree, since the configured prefix is not installed yet), and the sockets they listen on are the ones the
# library and the broker use in $XDG_RUNTIME_DIR.
set -euo pipefail
units=$1 broker=$(realpath "$2") cli=$3
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze not installed (Debian package systemd)"
  exit 77
fi
tmp=$(mktemp -d /tmp/memvisor-units.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -m 700 "$tmp/run"
cp "$units/memvisord.socket" "$units/memvisord.service" "$tmp/"
grep -q "^ExecStart=[^ ]*/memvisord --foreground " "$tmp/memvisord.service" || { echo "FAIL: ExecStart"; exit 1; }
sed -i "s|^ExecStart=[^ ]*/memvisord |ExecStart=$broker |" "$tmp/memvisord.service"
out=$(XDG_RUNTIME_DIR=$tmp/run systemd-analyze verify --user --man=no "$tmp/memvisord.socket" "$tmp/memvisord.service" 2>&1) ||
  { echo "FAIL: systemd-analyze verify: $out"; exit 1; }
[ -z "$out" ] || { echo "FAIL: systemd-analyze verify warns: $out"; exit 1; }
grep -q "^Type=notify$" "$tmp/memvisord.service" || { echo "FAIL: not Type=notify"; exit 1; }

# %t is $XDG_RUNTIME_DIR for a user's service manager.
want=$(env -u MEMVISOR_RUNTIME_DIR XDG_RUNTIME_DIR=/run/user/4242 "$cli" env --json | grep -o '"broker_socket":"[^"]*"' | cut -d'"' -f4)
got=$(sed -n 's/^ListenSequentialPacket=//p' "$tmp/memvisord.socket" | sed 's|%t|/run/user/4242|')
[ "$got" = "$want" ] || { echo "FAIL: the socket unit listens on '$got', the library connects to '$want'"; exit 1; }
xs=$(sed -n 's/^ListenStream=//p' "$tmp/memvisord.socket" | sed 's|%t|/run/user/4242|' | tr '\n' ' ')
[ "$xs" = "$(dirname "$want")/xenstored.sock $(dirname "$want")/xenstored-toolstack.sock " ] ||
  { echo "FAIL: xenstore sockets '$xs'"; exit 1; }
grep -q -- "--runtime-dir %t/memvisor" "$tmp/memvisord.service" || { echo "FAIL: the service's runtime directory"; exit 1; }
echo "ok: units verified; sockets $got and $xs"
