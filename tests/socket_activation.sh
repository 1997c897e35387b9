#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Socket activation as systemd's memvisord.socket does it, with systemd-socket-activate passing real
# LISTEN_FDS. A supervisor loop plays the socket unit: it listens again whenever the broker has gone.
#   - the first connection starts the broker, which takes the passed socket and reports READY=1;
#   - memvisor status works against it;
#   - a stopped broker reports STOPPING=1, and the next connection starts another;
#   - the library never auto-starts a broker of its own meanwhile (a spawn would be recorded);
#   - without activation the same client does auto-start one (the record is real), and a real broker
#     auto-started that way runs without any service manager.
set -euo pipefail
broker=$1 cli=$2 client=$3
if ! command -v systemd-socket-activate >/dev/null; then
  echo "SKIP: systemd-socket-activate not installed (Debian package systemd)"
  exit 77
fi
tmp=$(mktemp -d /tmp/memvisor-activate.XXXXXX)
rt=$tmp/rt
mkdir -m 700 "$rt"
pids=()
cleanup() {
  touch "$tmp/stop"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The supervisor's listener, left waiting for a connection when the test fails early.
  pkill -f "^systemd-socket-activate .* -l $tmp/" 2>/dev/null || true
  pkill -f "^$broker --foreground --runtime-dir $tmp/" 2>/dev/null || true
  pkill -f "^$broker --runtime-dir $rt" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- supervisor log"; cat "$tmp/act.log" 2>/dev/null; echo "--- notifications"; cat "$tmp/notify.log" 2>/dev/null; exit 1; }
wait_for() { # seconds, command...
  local n=$(( $1 * 20 )); shift
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.05; done
  return 1
}
count() { grep -c -- "$1" "$2" 2>/dev/null || true; }
listening_times() { [ "$(count 'Listening on' "$tmp/act.log")" -ge "$1" ]; }

# A library that tries to start a broker runs this instead, and it leaves a record.
cat > "$tmp/spawn-recorder" <<EOS
#!/bin/sh
echo "\$@ ppid \$PPID \$(cat /proc/\$PPID/cmdline | tr "\\0" " ") \$(date +%s.%N)" >> "$tmp/spawned"
exit 1
EOS
chmod +x "$tmp/spawn-recorder"
export MEMVISOR_RUNTIME_DIR=$rt MEMVISOR_BROKER=$tmp/spawn-recorder MEMVISOR_TIMEOUT_MS=10000
unset MEMVISOR_AUTOSTART

# Not a client of the broker: its Xen libraries, loaded with it, must not ask for one.
MEMVISOR_AUTOSTART=0 "$client" notify "$tmp/notify.sock" > "$tmp/notify.log" &
pids+=($!)
wait_for 10 grep -q bound "$tmp/notify.log" || fail "notification socket"

( while [ ! -e "$tmp/stop" ]; do
    systemd-socket-activate --seqpacket -l "$rt/broker.sock" -E NOTIFY_SOCKET="$tmp/notify.sock" -- \
      "$broker" --foreground --runtime-dir "$rt" >> "$tmp/act.log" 2>&1 || true
  done ) &
pids+=($!)
wait_for 10 listening_times 1 || fail "systemd-socket-activate did not listen"
! pgrep -f "^$broker --foreground --runtime-dir $rt" >/dev/null || fail "a broker ran before any connection"

pid1=$("$client" status) || fail "first connection: no answer"
[ "$pid1" -gt 0 ] && kill -0 "$pid1" || fail "first connection: broker pid '$pid1' not running"
grep -q "Communication attempt" "$tmp/act.log" || fail "the broker was not started by the connection"
[ "$(cat /proc/"$pid1"/cmdline | tr '\0' ' ')" = "$broker --foreground --runtime-dir $rt " ] ||
  fail "pid $pid1 is not the activated broker"
out=$("$cli" status) || fail "memvisor status"
grep -q "pid $pid1," <<<"$out" || fail "memvisor status names another broker: $out"
wait_for 10 grep -q "READY=1" "$tmp/notify.log" || fail "no READY=1"
grep -q "STATUS=listening on $rt/broker.sock (socket-activated)" "$tmp/notify.log" || fail "no activation STATUS"

kill "$pid1"
wait_for 10 eval "! kill -0 $pid1 2>/dev/null" || fail "broker $pid1 did not stop"
wait_for 10 grep -q "STOPPING=1" "$tmp/notify.log" || fail "no STOPPING=1"
[ -S "$rt/broker.sock" ] || fail "the activated broker removed the socket it was given"
wait_for 10 listening_times 2 || fail "the supervisor did not listen again"

pid2=$("$client" status) || fail "second connection: no answer"
[ "$pid2" -gt 0 ] && [ "$pid2" != "$pid1" ] && kill -0 "$pid2" || fail "second connection: broker '$pid2'"
[ "$(count 'Communication attempt' "$tmp/act.log")" -eq 2 ] || fail "expected two activations"
[ "$(pgrep -fc "^$broker --foreground --runtime-dir $rt")" -eq 1 ] || fail "more than one broker"
[ ! -e "$tmp/spawned" ] || fail "the library auto-started a broker: $(cat "$tmp/spawned")"

# The xenstore's socket alone (a stream socket, as ListenStream= passes it): the first xenstore client
# starts the broker, which takes that socket and binds its own broker.sock.
rt2=$tmp/rt2
mkdir -m 700 "$rt2"
systemd-socket-activate -l "$rt2/xenstored.sock" -- "$broker" --foreground --runtime-dir "$rt2" >> "$tmp/act2.log" 2>&1 &
pids+=($!)
wait_for 10 grep -q "Listening on" "$tmp/act2.log" || fail "no xenstore socket"
MEMVISOR_RUNTIME_DIR=$rt2 "$cli" store write /activated yes || fail "xenstore write through the passed socket"
[ "$(MEMVISOR_RUNTIME_DIR=$rt2 "$cli" store read /activated)" = yes ] || fail "xenstore read"
MEMVISOR_RUNTIME_DIR=$rt2 "$cli" status > /dev/null || fail "the broker did not bind broker.sock itself"
pkill -f "^$broker --foreground --runtime-dir $rt2" || true

# The supervisor goes; with no socket listening, the same client asks for a broker of its own.
touch "$tmp/stop"
kill "$pid2"
wait_for 10 eval "! kill -0 $pid2 2>/dev/null" || fail "broker $pid2 did not stop"
for _ in $(seq 100); do pgrep -f "systemd-socket-activate --seqpacket -l $rt/" >/dev/null || break; sleep 0.05; done
rm -f "$rt/broker.sock"
! "$client" status 2>/dev/null || fail "an answer with no broker"
[ -s "$tmp/spawned" ] || fail "without activation the library did not try to start a broker"

# And the real broker, auto-started with no service manager around, serves it.
export MEMVISOR_BROKER=$broker
unset NOTIFY_SOCKET
pid3=$("$client" status) || fail "auto-start without systemd"
kill -0 "$pid3" || fail "auto-started broker $pid3 not running"
kill "$pid3"
echo "ok: activated $pid1 then $pid2; auto-started $pid3 without systemd"
