#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Debian's unmodified vchan-socket-proxy (xen-utils-4.17, fetched with apt-get download + dpkg -x) on
# both sides of a vchan, on memvisor: libxenvchan, libxenstore and the proxy are Debian's; libxenevtchn,
# libxengnttab and libxenctrl.so.4.17 are memvisor's, first on LD_LIBRARY_PATH. The proxy keeps one vchan
# on its server side for all its clients, and its client side opens a vchan per accepted connection and
# closes it after (its source, and its usage: "handle multiple _subsequent_ connections").
#  1. Four connections in sequence through one pair of proxies (64 MiB, then 4 MiB, each way), every
#     byte checked and the checksums of both ends compared.
#  2. Either side killed with SIGKILL, in the middle of a stream and while idle, with what the other
#     does then, as on Xen: a server side whose client dies ends its stream to its backend and waits; a
#     client side whose server dies closes its stream, then gives up at its next connection (exit 1).
#  3. A dead client domain's permissions on the server's vchan nodes are gone (XSA-322): a new process
#     made domain 11 cannot read them, and its proxy waits, as a guest that reused the id would on Xen.
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
# a line matching a regular expression in a file within 20 s
await() { for _ in $(seq 400); do grep -qE "^$2\$" "$1" 2>/dev/null && return 0; sleep 0.05; done; fail "no '$2' in $1"; }
# process $1 gone within 10 s
gone() { for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; return 1; }
alive() { kill -0 "$1" 2>/dev/null; }
mib4=$((4 << 20)) mib64=$((64 << 20)) gib=$((1 << 30))
# The backend's connections in order, each UP[:DOWN] (front to back, back to front). A stream cut short
# by a kill is 1 GiB one way only: the side that survives then only reads its vchan. One that is writing
# to it when the peer goes exits 1 instead ("vchan write failed": libxenvchan_write refuses a vchan that
# is no longer open), on Xen as here; which of the two happens would be down to timing.
sizes=($mib64 $mib4 $mib4 $mib4 $gib:4096 $mib4 4096:$gib $mib4)
# in a sanitizer build the runtime goes first into Debian's proxy (MV_PROXY_PRELOAD), leaks not counted:
# the proxy is not ours
run_proxy=(env ASAN_OPTIONS=detect_leaks=0 ${MV_PROXY_PRELOAD:+LD_PRELOAD=$MV_PROXY_PRELOAD} "$proxy")
node=/local/domain/10/data/vchan/1

"$peer" listen "$dir/back.sock" "$(IFS=,; echo "${sizes[*]}")" ${#sizes[@]} >"$dir/back.out" &
pids+=($!)
await "$dir/back.out" listening
# A client-side proxy for domain 11 listening on front$1.sock; cpid is its pid.
client_proxy() {
  "$cli" run --domid 11 --name frontend -- "${run_proxy[@]}" -m client 10 $node "$dir/front$1.sock" >"$dir/client$1.out" 2>&1 &
  cpid=$!; pids+=($cpid)
  for _ in $(seq 400); do [ -S "$dir/front$1.sock" ] && break; sleep 0.05; done
  [ -S "$dir/front$1.sock" ] || fail "client side $1 did not listen"
}
# The server side, domain 10, forwarding to the backend; spid is its pid. The client side first: the
# server's vchan is for domain 11, which must exist (ESRCH otherwise, as on Xen). Ready when its vchan
# is in the xenstore (a client that comes before gives up, as on Xen).
server_proxy() {
  "$cli" run --domid 10 --name backend -- "${run_proxy[@]}" -m server 11 $node "$dir/back.sock" >"$dir/server$1.out" 2>&1 &
  spid=$!; pids+=($spid)
  for _ in $(seq 400); do "$cli" store read $node/event-channel >/dev/null 2>&1 && break; sleep 0.05; done
  "$cli" store read $node/event-channel >/dev/null 2>&1 || fail "server side $1 published no vchan"
}
# Backend connection $2 through front$1.sock, all of it: both ends' checksums agree, and the server side
# saw the client side end its vchan (it closed the backend's connection: "ok N").
stream() {
  local out sums
  out=$(timeout 120 "$peer" connect "$dir/front$1.sock" "${sizes[$2 - 1]}" "$2") || fail "connection $2: $out"
  [[ $out =~ ^ok\ ([0-9a-f]{16})\ ([0-9a-f]{16})$ ]] || fail "connection $2: $out"
  await "$dir/back.out" "ok $2"
  sums=$(sed -n "s/^exchanged $2 //p" "$dir/back.out")
  # what the front sent is what the back got, and the other way round
  [ "$sums" = "${BASH_REMATCH[2]} ${BASH_REMATCH[1]}" ] || fail "connection $2: checksums $out / $sums"
}
# Backend connection $2 through front$1.sock, in the background (mpid), running once the backend has it.
stream_started() {
  timeout 120 "$peer" connect "$dir/front$1.sock" "${sizes[$2 - 1]}" "$2" >"$dir/mid$2.out" 2>&1 &
  mpid=$!; pids+=($mpid)
  await "$dir/back.out" "accepted $2"
  sleep 0.3
  grep -q "^exchanged $2 " "$dir/back.out" && fail "connection $2 was over before the kill"
  return 0
}

# 1. Several connections through one pair of proxies.
client_proxy 1
server_proxy 1
"$cli" domains | grep -q "^ *10 " || fail "domain 10 not listed: $("$cli" domains)"
for n in 1 2 3 4; do
  stream 1 $n
  alive $cpid && alive $spid || fail "a proxy exited after connection $n"
done
"$cli" store ls $node | grep -q "ring-ref .*(n10,r11)" || fail "the vchan is not readable by 11: $("$cli" store ls $node)"

# 2a. The client side dies in the middle of a stream: the server side sees its vchan client go (the
# broker cleared cli_live and fired the event), ends its backend connection and waits for the next one.
stream_started 1 5
kill -9 $cpid
await "$dir/back.out" "failed 5"
set +e; wait $mpid; rc=$?; set -e
[ $rc -ne 0 ] || fail "the stream through a killed client side succeeded"
alive $spid || fail "the server side exited when its client died"

# 3. Domain 11 is dead: its entries in the server's node permissions went with it (XSA-322), so a new
# domain 11 finds the vchan unreadable and its proxy, as on Xen, waits for a vchan it can read.
"$cli" store ls $node | grep -q "ring-ref .*(n10)" || fail "the dead domain kept its permissions: $("$cli" store ls $node)"
client_proxy 2
if timeout 2 "$peer" connect "$dir/front2.sock" 4096 >"$dir/denied.out" 2>&1; then
  fail "a new domain 11 used the dead one's vchan"
fi
alive $cpid || fail "the new client side did not wait: $(cat "$dir/client2.out")"
alive $spid || fail "the server side exited"

# 2b. The server side dies while idle: the client side waiting for its vchan hears @releaseDomain, finds
# domain 10 gone (xc_domain_getinfo) and exits 1.
kill -9 $spid
gone $cpid || fail "the waiting client side did not notice its server's death"
set +e; wait $cpid; rc=$?; set -e
[ $rc -ne 0 ] || fail "the client side exited 0 after its server died"

# 2c. A new pair works; then the server side dies in the middle of a stream: the client side sees
# srv_live cleared, closes its stream at once (not a stall) and waits for its next connection, where
# it gives up (exit 1).
client_proxy 3
server_proxy 2
stream 3 6
stream_started 3 7
kill -9 $spid
set +e; wait $mpid; rc=$?; set -e
[ $rc -ne 0 ] || fail "the stream through a killed server side succeeded"
grep -q stalled "$dir/mid7.out" && fail "the client side kept the stream open: $(cat "$dir/mid7.out")"
await "$dir/back.out" "failed 7"
alive $cpid || fail "the client side exited when its server died, before its next connection"
if timeout 10 "$peer" connect "$dir/front3.sock" 4096 >"$dir/late.out" 2>&1; then fail "a stream went through a dead server"; fi
gone $cpid || fail "the client side did not give up at its next connection"
set +e; wait $cpid; rc=$?; set -e
[ $rc -ne 0 ] || fail "the client side exited 0 after its server died"

# 2d. The client side dies while idle (no vchan open): the server side has nothing to notice and waits;
# the dead domain's permissions go as in 3.
client_proxy 4
server_proxy 3
stream 4 8
kill -9 $cpid
gone $cpid || fail "kill -9 did not end the client side"
wait $cpid 2>/dev/null || true
for _ in $(seq 200); do "$cli" store ls $node | grep -q "ring-ref .*(n10)" && break; sleep 0.05; done
"$cli" store ls $node | grep -q "ring-ref .*(n10)" || fail "the dead domain kept its permissions: $("$cli" store ls $node)"
sleep 0.5
alive $spid || fail "the server side exited when its idle client died"
[ "$(grep -c '^accepted' "$dir/back.out")" = 8 ] || fail "the server side connected to its backend unasked"
echo "vchan_proxy: all checks passed"
