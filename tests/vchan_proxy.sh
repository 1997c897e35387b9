#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Debian's unmodified vchan-socket-proxy (xen-utils-4.17, fetched with apt-get download + dpkg -x) on
# both sides of a vchan, on memvisor: libxenvchan, libxenstore and the proxy are Debian's; libxenevtchn,
# libxengnttab and libxenctrl.so.4.17 are memvisor's, first on LD_LIBRARY_PATH. A Unix-socket stream goes
# through it, 64 MiB each way checked byte for byte; the client side killed (the server notices, ends
# its stream and waits for the next client, as on Xen); the server side killed (the client gives up at
# its next connection, as on Xen). A new client process cannot read the server's kept vchan nodes yet
# (the dead client's domain lost its permissions: see docs/DESIGN.md), so one stream per server here.
# Usage: vchan_proxy.sh MEMVISORD MEMVISOR STREAM_PEER XEN_LIBDIR UTILS_DIR
set -euo pipefail
broker=$1 cli=$2 peer=$3 libdir=$4 utils=$5
proxy=$utils/usr/lib/xen-4.17/bin/vchan-socket-proxy
if [ ! -x "$proxy" ]; then
  mkdir -p "$utils"
  (cd "$utils" && apt-get download xen-utils-4.17 >/dev/null 2>&1 && dpkg -x xen-utils-4.17_*.deb .) ||
    { echo "vchan_proxy: cannot fetch xen-utils-4.17 (apt-get download xen-utils-4.17)"; exit 1; }
fi
dir=$(mktemp -d /tmp/mvvp.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$broker" --foreground --runtime-dir "$dir" --no-psi 2>"$dir/log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/xenstored.sock" ] && break; sleep 0.05; done
export XENSTORED_PATH=$dir/xenstored.sock MEMVISOR_RUNTIME_DIR=$dir MEMVISOR_AUTOSTART=0 LD_LIBRARY_PATH=$libdir
fail() { echo "vchan_proxy: $*"; for f in "$dir"/*.out "$dir/log"; do echo "== $f"; tail -n 8 "$f"; done; exit 1; }
# a line in a file within 20 s
await() { for _ in $(seq 400); do grep -qx "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; fail "no '$2' in $1"; }
mib64=$((64 << 20))
# in a sanitizer build the runtime goes first into Debian's proxy (MV_PROXY_PRELOAD), leaks not counted:
# the proxy is not ours
run_proxy=(env ASAN_OPTIONS=detect_leaks=0 ${MV_PROXY_PRELOAD:+LD_PRELOAD=$MV_PROXY_PRELOAD} "$proxy")
node=/local/domain/10/data/vchan/1

"$peer" listen "$dir/back.sock" $mib64 100 >"$dir/back.out" &
pids+=($!)
await "$dir/back.out" listening
# A client-side proxy for domain 11 listening on front$1.sock; cpid is its pid.
client_proxy() {
  "$cli" run --domid 11 --name frontend -- "${run_proxy[@]}" -m client 10 $node "$dir/front$1.sock" >"$dir/client$1.out" 2>&1 &
  cpid=$!; pids+=($cpid)
  for _ in $(seq 400); do [ -S "$dir/front$1.sock" ] && break; sleep 0.05; done
}
# the client side first: the server's vchan is for domain 11, which must exist (ESRCH otherwise, as on Xen)
client_proxy 1
"$cli" run --domid 10 --name backend -- "${run_proxy[@]}" -m server 11 $node "$dir/back.sock" >"$dir/server.out" 2>&1 &
spid=$!; pids+=($spid)
# ready when its vchan is in the xenstore (a client that comes before gives up, as on Xen)
for _ in $(seq 400); do "$cli" store read $node/event-channel >/dev/null 2>&1 && break; sleep 0.05; done
"$cli" domains | grep -q "^ *10 " || fail "domain 10 not listed: $("$cli" domains)"
out=$("$peer" connect "$dir/front1.sock" $mib64) || fail "connection: $out"
[ "$out" = ok ] || fail "connection: $out"
await "$dir/back.out" "exchanged 1"
# The client side dies (it keeps its vchan after its socket closes: it has no way to tell the server):
# the server side sees it go, ends its stream to the backend and waits for the next client.
kill -9 $cpid
await "$dir/back.out" "ok 1"
kill -0 $spid 2>/dev/null || fail "the server side exited when its client died"
wait $cpid 2>/dev/null || true
client_proxy 2

# the server side dies: the client side fails its next connection and exits, as it does on Xen
kill -9 $spid
wait $spid 2>/dev/null || true
if "$peer" connect "$dir/front2.sock" 4096 >"$dir/late.out" 2>&1; then fail "a stream went through a dead server"; fi
for _ in $(seq 200); do kill -0 $cpid 2>/dev/null || break; sleep 0.05; done
kill -0 $cpid 2>/dev/null && fail "the client side did not notice its server's death"
set +e; wait $cpid; rc=$?; set -e
[ $rc -ne 0 ] || fail "the client side exited 0 after its server died"
echo "vchan_proxy: all checks passed"
