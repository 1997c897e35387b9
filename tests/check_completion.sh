#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The bash completion offers what the programs take: every command memvisor --help lists, every
# option memvisord --help lists, and the right words after a command.
set -euo pipefail
comp=${1:?usage: check_completion.sh COMPLETION_FILE MEMVISORD MEMVISOR}
memvisord=${2:?}
memvisor=${3:?}
# shellcheck source=/dev/null
source "$comp"
fail=0

# complete LINE: COMPREPLY for the last word of LINE (a trailing space starts an empty word).
complete_line() {
	local line=$1 fn=$2
	read -r -a COMP_WORDS <<<"$line"
	[[ $line == *" " ]] && COMP_WORDS+=("")
	COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
	COMPREPLY=()
	"$fn"
	printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//'
}
expect() { # LINE FUNCTION EXPECTED
	local got
	got=$(complete_line "$1" "$2")
	if [[ $got != "$3" ]]; then
		echo "'$1': offered '$got', expected '$3'"
		fail=$((fail + 1))
	fi
}
expect "memvisor sta" _memvisor "status"
expect "memvisor st" _memvisor "status store"
expect "memvisor config " _memvisor "--help compress compressed-budget min-available unpinned-budget"
expect "memvisor config compress " _memvisor "off on"
expect "memvisor --json config compress o" _memvisor "off on"
expect "memvisor purge --" _memvisor "--all --bytes --help --json"
expect "memvisor purge --bytes " _memvisor ""
expect "memvisor store " _memvisor "--help ls read rm watch write"
expect "memvisor store ls " _memvisor "/"
expect "memvisord --no" _memvisord "--no-compress --no-psi"
expect "memvisord --sweep-ms " _memvisord ""

# Nothing the programs take is missing from the completion.
all=$(complete_line "memvisor " _memvisor)
for c in $("$memvisor" --help 2>&1 | sed -n 's/^  \([a-z][a-z-]*\)\( .*\)\?$/\1/p'); do
	[[ " $all " == *" $c "* ]] || { echo "memvisor $c is not completed"; fail=$((fail + 1)); }
done
all=$(complete_line "memvisord --" _memvisord)
for o in $("$memvisord" --help 2>&1 | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
	[[ " $all " == *" $o "* ]] || { echo "memvisord $o is not completed"; fail=$((fail + 1)); }
done
[[ $fail -eq 0 ]] && echo "the completion offers every command and option"
exit "$fail"
