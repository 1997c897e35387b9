#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Debian's stock xenstore-* tools (package xenstore-utils, through libxenstore.so.4) and memvisor's own
# 'memvisor store' against the broker's xenstore. Both connect as the toolstack, domain 0; under
# 'memvisor run --domid N' a program is domain N and its children are domains of their own. Then the same
# with a broker that gives domain 0 only on its toolstack socket (--xs-toolstack socket).
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

# memvisor run: a program as a chosen domain, whether or not it loads memvisor's libraries
check "$("$cli" run --domid 7 --name guest7 -- xenstore-read domid)" "7"
check "$("$cli" run --domid 7 --name guest7 -- xenstore-read name)" "guest7"
# a guest is no toolstack: the toolstack's nodes are not its to write
if "$cli" run --domid 7 -- xenstore-write /vm/a/mem 1 2>/dev/null; then fail "a guest wrote the toolstack's node"; fi
check "$(xenstore-read /vm/a/mem)" "1024"
# its children (fork, then exec of a plain tool) are new domains: not 7, never 0
kid=$("$cli" run --domid 7 -- sh -c 'xenstore-read domid; true')
[ "$kid" -gt 0 ] && [ "$kid" != 7 ] || fail "a child of domain 7 read its domid as '$kid'"
if "$cli" run --domid 7 -- sh -c 'xenstore-write /vm/a/mem 2; true' 2>/dev/null &&
  [ "$(xenstore-read /vm/a/mem)" != 1024 ]; then fail "a child of a domain acted as the toolstack"; fi
check "$(xenstore-read /vm/a/mem)" "1024"
# bad arguments: a message and exit 2; a taken id likewise
runs() { set +e; "$cli" run "$@" 2>"$dir/err"; rc=$?; set -e; }
"$cli" run --help | grep -q "^usage: memvisor run --domid N" || fail "memvisor run --help"
runs --domid 0 -- true; check "$rc" 2; grep -q "reserved" "$dir/err" || fail "unclear: $(cat "$dir/err")"
runs --domid 32752 -- true; check "$rc" 2
runs --domid x7 -- true; check "$rc" 2; grep -q "bad --domid 'x7'" "$dir/err" || fail "unclear: $(cat "$dir/err")"
runs --domid 5 --name 'a b' -- true; check "$rc" 2
runs --domid 5; check "$rc" 2
runs --domid 5 -- /nonexistent/prog; check "$rc" 127
"$cli" run --domid 9 -- sleep 5 &
spid=$!
for _ in $(seq 100); do [ "$(xenstore-read /local/domain/9/domid 2>/dev/null)" = 9 ] && break; sleep 0.05; done
runs --domid 9 -- true; check "$rc" 2; grep -q "domain 9 is taken" "$dir/err" || fail "unclear: $(cat "$dir/err")"
kill $spid; wait $spid 2>/dev/null || true

# --xs-toolstack socket: domain 0 only on the toolstack's socket
dir2=$(mktemp -d /tmp/mvxs.XXXXXX)
"$broker" --foreground --runtime-dir "$dir2" --no-psi --xs-toolstack socket 2>"$dir2/log" &
bpid2=$!
trap 'kill $bpid $bpid2 2>/dev/null; wait $bpid $bpid2 2>/dev/null; rm -rf "$dir" "$dir2"' EXIT
for _ in $(seq 100); do [ -S "$dir2/xenstored-toolstack.sock" ] && break; sleep 0.05; done
export MEMVISOR_RUNTIME_DIR=$dir2
XENSTORED_PATH=$dir2/xenstored-toolstack.sock xenstore-write /vm/t 1
check "$(XENSTORED_PATH=$dir2/xenstored-toolstack.sock xenstore-read domid)" "0"
check "$("$cli" store read /vm/t)" "1"
# on the common socket a plain process is a guest: a domid of its own, no toolstack rights
d=$(XENSTORED_PATH=$dir2/xenstored.sock xenstore-read domid)
[ "$d" -gt 0 ] || fail "a plain process on the common socket read its domid as '$d'"
if XENSTORED_PATH=$dir2/xenstored.sock xenstore-write /vm/t 2 2>/dev/null; then fail "a guest wrote /vm/t"; fi
# a domain's child never is the toolstack, even on the toolstack's socket
if "$cli" run --domid 4 -- sh -c "XENSTORED_PATH=$dir2/xenstored-toolstack.sock xenstore-write /vm/t 3" 2>/dev/null
then fail "a domain's child wrote through the toolstack socket"; fi
check "$("$cli" store read /vm/t)" "1"
echo "xenstore_tools: all checks passed"
