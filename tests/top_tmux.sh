#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# memvisor top in a real terminal (tmux): it draws the broker, the regions, merging and the domains a
# client holds; a sort key reorders the regions; q quits with status 0 and gives the terminal back.
# Piped, --once prints one plain frame (no escape sequences).
set -euo pipefail
broker=$1 cli=$2 client=$3
if ! command -v tmux >/dev/null; then
  echo "SKIP: tmux is not installed (scripts/install-deps.sh installs it)"
  exit 77
fi
tmp=$(mktemp -d /tmp/memvisor-top.XXXXXX)
rt=$tmp/rt
export MEMVISOR_RUNTIME_DIR=$rt MEMVISOR_AUTOSTART=0
tm() { tmux -S "$tmp/tmux.sock" -f /dev/null "$@"; }
cleanup() {
  exec 7>&- 2>/dev/null || true
  tm kill-server 2>/dev/null || true
  pkill -f "^$broker --runtime-dir $rt" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- screen"; tm capture-pane -p -t top 2>/dev/null || true; exit 1; }
wait_for() { local n=$(( $1 * 20 )); shift; for _ in $(seq "$n"); do "$@" && return 0; sleep 0.05; done; return 1; }
screen() { tm capture-pane -p -t top; }
screen_has() { screen | grep -q -- "$1"; }

"$broker" --runtime-dir "$rt" --exit-idle 0 || fail "broker did not start"
mkfifo "$tmp/in"
"$client" hold < "$tmp/in" > "$tmp/held" &
hold_pid=$!
exec 7> "$tmp/in"
wait_for 20 grep -q ready "$tmp/held" || fail "the client made nothing to show"
read -r _ cpid domid saved < "$tmp/held"
[ "$saved" -gt 0 ] || fail "the client's merging saved nothing"

# Piped: one plain frame.
"$cli" top --once > "$tmp/once" || fail "top --once"
! grep -q $'\x1b' "$tmp/once" || fail "escape sequences in piped output"
for want in "memvisor top - broker pid" "alpha-cache" "zeta-big" "purge" "hit rate" "ratio"; do
  grep -q -- "$want" "$tmp/once" || fail "--once lacks '$want'"
done
# The domain's row: its pid, one grant, one channel.
grep -Eq "^$domid +$cpid +1 +0 +1 " "$tmp/once" || fail "domain row: $(grep -E "^$domid " "$tmp/once")"
grep -Eq "^ +$cpid .* service_client" "$tmp/once" || fail "no merging row for $cpid"

# A terminal: 160x50, refreshed every 0.2 s.
# (not holding the client's stdin open: the server would keep it)
tm new-session -d -s top -x 160 -y 50 "$cli top --interval 0.2; echo exit=\$? > $tmp/rc; sleep 30" 7>&-
wait_for 20 screen_has "memvisor top - broker pid" || fail "nothing drawn"
wait_for 20 screen_has "alpha-cache" || fail "regions not drawn"
screen_has "q quit" || fail "no key help"
# The default sort is by size: the 4 MiB region first.
order() { screen | grep -oE "alpha-cache|zeta-big" | tr '\n' ' '; }
[ "$(order)" = "zeta-big alpha-cache " ] || fail "size order: $(order)"
tm send-keys -t top n
wait_for 10 screen_has "sort: name" || fail "the n key did not sort by name"
[ "$(order)" = "alpha-cache zeta-big " ] || fail "name order: $(order)"
tm send-keys -t top c
wait_for 10 screen_has "sort: compressed" || fail "the c key did not sort by compressed"
[ "$(order)" = "zeta-big alpha-cache " ] || fail "compressed order: $(order)"
# It keeps refreshing: the client's end shows within a few frames.
exec 7>&-
wait "$hold_pid" || fail "the client exited with $?"
wait_for 20 eval '! screen_has alpha-cache' || fail "the regions of a client that left are still shown"
tm send-keys -t top q
wait_for 10 test -s "$tmp/rc" || fail "q did not quit"
[ "$(cat "$tmp/rc")" = "exit=0" ] || fail "top exited with $(cat "$tmp/rc")"
# The terminal is given back: the alternate screen is left, so the frame is gone from the pane.
! screen_has "memvisor top - broker pid" || fail "the frame is still on the screen after q"
echo "ok"
