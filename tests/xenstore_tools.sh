#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Debian's stock xenstore-* tools (package xenstore-utils, through libxenstore.so.4) and memvisor's own
# 'memvisor store' against the broker's xenstore. Both connect as the toolstack, domain 0.
# Usage: xenstore_tools.sh MEMVISORD MEMVISOR
set -euo pipefail
broker=$1
cli=$2
for t in xenstore-read xenstore-write xenstore-ls xenstore-list xenstore-rm xenstore-exists xenstore-chmod xenstore-watch; do
  command -v "$t" >/dev/null || { echo "xenstore_tools: $t missing (apt-get install xenstore-utils)"; exit 1; }
done
dir=$(mktemp -d /tmp/mvxs.XXXXXX)
"$broker" --foreground --runtime-dir "$dir" --no-psi 2>"$dir/log" &
bpid=$!
trap 'kill $bpid 2>/dev/null; wait $bpid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/xenstored.sock" ] && break; sleep 0.05; done
export XENSTORED_PATH=$dir/xenstored.sock
fail() { echo "xenstore_tools: $*"; cat "$dir/log"; exit 1; }
check() { [ "$1" = "$2" ] || fail "expected '$2', got '$1'"; }

xenstore-write /vm/a/name "web server" /vm/a/mem 512 /vm/b/name db
check "$(xenstore-read /vm/a/name)" "web server"
check "$(xenstore-read /local/domain/0/name)" "Domain-0"
check "$(xenstore-list /vm | tr '\n' ' ')" "a b "
check "$(xenstore-ls /vm)" $'a = ""\n name = "web server"\n mem = "512"\nb = ""\n name = "db"'
xenstore-chmod /vm/a/mem n0 r3 w4
check "$(xenstore-ls -p /vm/a | sed 's/ *\. [. ]*/ /')" $'name = "web server" (n0)\nmem = "512" (n0,r3,w4)'
xenstore-exists /vm/b/name
xenstore-rm /vm/b
if xenstore-exists /vm/b 2>/dev/null; then fail "/vm/b still exists"; fi
if xenstore-read /vm/nope 2>/dev/null; then fail "read of a missing node succeeded"; fi
if xenstore-write /bad//path x 2>/dev/null; then fail "a bad path was accepted"; fi
# a watch: the first event fires at once, then one per change
xenstore-watch -n 3 /vm/a >"$dir/events" &
wpid=$!
for _ in $(seq 100); do [ -s "$dir/events" ] && break; sleep 0.02; done
xenstore-write /vm/a/mem 1024
xenstore-rm /vm/a/name
wait $wpid
check "$(cat "$dir/events")" $'/vm/a\n/vm/a/mem\n/vm/a/name'
check "$(xenstore-read /vm/a/mem)" "1024"
# memvisor store: the same store, for people
export MEMVISOR_RUNTIME_DIR=$dir MEMVISOR_AUTOSTART=0
"$cli" store write /people/x 'say "hi"'
check "$(xenstore-read /people/x)" 'say "hi"'
check "$("$cli" store read /vm/a/mem)" "1024"
check "$("$cli" store ls /vm)" $'a = ""  (n0)\n mem = "1024"  (n0,r3,w4)'
check "$("$cli" store ls /people --json)" $'{"nodes": [\n    {"path": "/people/x", "value": "say \\"hi\\"", "perms": ["n0"]}\n]}'
"$cli" store watch /people 2 >"$dir/cli-events" &
wpid=$!
for _ in $(seq 100); do [ -s "$dir/cli-events" ] && break; sleep 0.02; done
"$cli" store rm /people/x
wait $wpid
check "$(cat "$dir/cli-events")" $'/people\n/people/x'
if "$cli" store read /people/x 2>"$dir/err"; then fail "read of a removed node succeeded"; fi
grep -q "memvisor store: read /people/x: No such file or directory" "$dir/err" || fail "unclear error: $(cat "$dir/err")"
if "$cli" store frobnicate 2>/dev/null; then fail "a bad command was accepted"; fi
# a tree as deep as paths may be long (1501 levels) is listed whole, without exhausting the stack
deep=$(printf '/d%.0s' $(seq 1501))
"$cli" store write "$deep" bottom
check "$("$cli" store ls /d | wc -l)" "1500"
check "$("$cli" store ls /d | tail -n 1 | sed 's/^ *//')" 'd = "bottom"  (n0)'
xenstore-rm /d
echo "xenstore_tools: all checks passed"
