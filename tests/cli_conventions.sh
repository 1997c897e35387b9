#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The command-line conventions of memvisord and memvisor: --help and --version everywhere (exit 0, on
# stdout), a bad argument named on stderr with exit 2, and sizes with units wherever a size is taken.
set -euo pipefail
broker=$1 cli=$2
tmp=$(mktemp -d /tmp/memvisor-cli.XXXXXX)
rt=$tmp/rt
export MEMVISOR_RUNTIME_DIR=$rt MEMVISOR_AUTOSTART=0
cleanup() { pkill -f "^$broker --runtime-dir $rt" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
version=$("$cli" --version) || fail "memvisor --version"
[[ $version =~ ^memvisor\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "memvisor --version: '$version'"
[ "$("$broker" --version)" = "memvisord ${version#memvisor }" ] || fail "memvisord --version: $("$broker" --version)"
"$broker" --help | grep -q "^usage: memvisord" || fail "memvisord --help"
"$cli" --help | grep -q "^usage: memvisor" || fail "memvisor --help"

# Every command, with no broker running: --help and --version answer without one.
commands=$("$cli" --help | sed -n 's/^  \([a-z]\+\) .*/\1/p')
[ "$(wc -w <<<"$commands")" -ge 10 ] || fail "commands listed: $commands"
for c in $commands; do
  out=$("$cli" "$c" --help) || fail "memvisor $c --help exited $?"
  grep -q "^usage: memvisor $c" <<<"$out" || fail "memvisor $c --help: $out"
  [ "$("$cli" "$c" --version)" = "$version" ] || fail "memvisor $c --version"
done

# Exit 2 and the bad argument named on stderr.
bad() { # expected-word, command...
  local want=$1; shift
  set +e; "$@" > "$tmp/out" 2> "$tmp/err"; local rc=$?; set -e
  [ "$rc" -eq 2 ] || fail "'$*' exited $rc, not 2"
  grep -qF -- "$want" "$tmp/err" || fail "'$*' does not name '$want': $(cat "$tmp/err")"
}
bad "frobnicate" "$cli" frobnicate
bad "--bogus" "$cli" status --bogus
bad "extra" "$cli" regions extra
bad "12Q" "$cli" purge --bytes 12Q
bad "--every" "$cli" purge --every
bad "12Q" "$cli" config unpinned-budget 12Q
bad "colour" "$cli" config colour blue
bad "maybe" "$cli" config compress maybe
bad "0" "$cli" top --interval 0
bad "size-ish" "$cli" top --sort size-ish
bad "frob" "$cli" store frob /x
bad "abc" "$cli" store watch /x abc
bad "bogus" "$broker" --bogus
bad "12Q" "$broker" --unpinned-budget 12Q
bad "-5" "$broker" --compressed-budget -5
bad "5" "$broker" --sweep-ms 5
bad "stray" "$broker" --runtime-dir "$rt" stray

# Sizes with units: the broker's options and the tool's.
"$broker" --runtime-dir "$rt" --unpinned-budget 64M --min-available 4k --compressed-budget 1GiB ||
  fail "broker with sizes in units"
json() { "$cli" status --json; }
field() { json | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }
[ "$(field unpinned_budget)" = 67108864 ] || fail "--unpinned-budget 64M: $(field unpinned_budget)"
[ "$(field min_available)" = 4096 ] || fail "--min-available 4k: $(field min_available)"
[ "$(json | grep -o '"budget":[0-9]*' | tail -1 | cut -d: -f2)" = 1073741824 ] || fail "--compressed-budget 1GiB"
"$cli" config unpinned-budget 4096 && [ "$(field unpinned_budget)" = 4096 ] || fail "config 4096"
"$cli" config unpinned-budget 2GiB && [ "$(field unpinned_budget)" = 2147483648 ] || fail "config 2GiB"
"$cli" config min-available 1M && [ "$(field min_available)" = 1048576 ] || fail "config 1M"
"$cli" purge --bytes 64k > /dev/null || fail "purge --bytes 64k"
echo "ok"
