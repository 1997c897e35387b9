#!/bin/sh
# SPDX-License-Identifier: MIT
# The manual pages: each renders with groff without a warning; each alias page (.so) points at a
# page that exists; every function libmemvisor.so.0 exports (its private MEMVISOR_PRIVATE seam
# aside) is named in the NAME or SYNOPSIS of a section-3 page; every memvisor page a page refers
# to exists; and every option and command the programs' --help lists is in their page.
set -eu
man=${1:?usage: check_man.sh MAN_DIR LIBMEMVISOR_SO [MEMVISORD MEMVISOR]}
lib=${2:?usage: check_man.sh MAN_DIR LIBMEMVISOR_SO [MEMVISORD MEMVISOR]}
memvisord=${3:-}
memvisor=${4:-}
fail=0
bad() {
	echo "$*"
	fail=$((fail + 1))
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pages=0
for f in "$man"/*.[1-8]; do
	base=$(basename "$f")
	first=$(head -n 1 "$f")
	case "$first" in
	.so\ *)
		target=${first#.so }
		case "$target" in
		man[1-8]/*) ;;
		*) bad "$base: .so target '$target' is not manN/page.N" ;;
		esac
		t="$man/$(basename "$target")"
		[ -f "$t" ] || bad "$base: .so target $target does not exist"
		[ -f "$t" ] && head -n 1 "$t" | grep -q '^\.so ' && bad "$base: .so target $target is itself a link"
		continue
		;;
	esac
	pages=$((pages + 1))
	sec=${base##*.}
	grep -q "^\.TH [^ ]* $sec " "$f" || bad "$base: .TH does not name section $sec"
	# -ww: every warning category; -z: format, print nothing.
	LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$f" >"$tmp/warn" 2>&1 || bad "$base: groff failed"
	if [ -s "$tmp/warn" ]; then
		bad "$base: groff warnings:"
		cat "$tmp/warn"
	fi
	# The NAME and SYNOPSIS sections of section-3 pages, for the symbol check.
	if [ "$sec" = 3 ]; then
		awk '/^\.SH (NAME|SYNOPSIS)/ {f = 1; next} /^\.SH/ {f = 0} f' "$f" >>"$tmp/synopses"
	fi
	# References to memvisor's own pages must resolve.
	sed -n 's/^\.BR \(mv_[a-z_]*\|ashmem_[a-z_]*\|memvisord\?\) (\([1-8]\)).*/\1.\2/p' "$f" | while read -r ref; do
		[ -f "$man/$ref" ] || echo "$base: refers to $ref, which does not exist"
	done >>"$tmp/refs"
done
[ "$pages" -ge 4 ] || bad "only $pages pages in $man"
if [ -s "$tmp/refs" ]; then
	cat "$tmp/refs"
	fail=$((fail + $(wc -l <"$tmp/refs")))
fi

# Exported functions: every defined dynamic symbol with a public version (not the version nodes
# themselves, which nm lists as absolute symbols).
nm -D --defined-only --with-symbol-versions "$lib" | awk '$2 != "A" {print $3}' |
	grep -v '@MEMVISOR_PRIVATE$' | sed 's/@.*//' | sort -u >"$tmp/symbols"
nsym=$(wc -l <"$tmp/symbols")
[ "$nsym" -ge 10 ] || bad "only $nsym exported symbols found in $lib"
while read -r sym; do
	grep -q "\\(^\\|[^a-z_0-9]\\)$sym\\([^a-z_0-9]\\|\$\\)" "$tmp/synopses" ||
		bad "exported $sym is in no section-3 page's NAME or SYNOPSIS"
done <"$tmp/symbols"

# What the programs say they take must be documented.
check_help() { # PROGRAM PAGE
	"$1" --help >"$tmp/help" 2>&1 || true
	# Long options, and the tool's commands (the first word of each indented usage line).
	{
		grep -o -- '--[a-z][a-z0-9-]*' "$tmp/help" || true
		sed -n 's/^  \([a-z][a-z-]*\)\( .*\)\?$/\1/p' "$tmp/help"
	} | sort -u >"$tmp/words"
	[ -s "$tmp/words" ] || bad "$1 --help lists nothing"
	while read -r w; do
		# roff writes - as \- in names
		esc=$(printf '%s' "$w" | sed 's/-/\\\\-/g')
		grep -q -- "$esc" "$2" || bad "$(basename "$1") takes '$w', which $(basename "$2") does not document"
	done <"$tmp/words"
}
[ -z "$memvisord" ] || check_help "$memvisord" "$man/memvisord.8"
[ -z "$memvisor" ] || check_help "$memvisor" "$man/memvisor.1"

if [ "$fail" -eq 0 ]; then
	echo "$pages pages render without warnings; all $nsym exported functions are documented"
fi
[ "$fail" -eq 0 ]
