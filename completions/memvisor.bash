# SPDX-License-Identifier: MIT
# bash completion for memvisor(1) and memvisord(8). Needs only bash; installed into
# share/bash-completion/completions, which bash-completion loads on first use of each command.

_memvisor()
{
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
	local cmd="" sub="" i w words=""
	local -a args=()

	for ((i = 1; i < COMP_CWORD; i++)); do
		w=${COMP_WORDS[i]}
		case $w in
		--json) ;;
		*) if [[ -z $cmd ]]; then cmd=$w; else args+=("$w"); fi ;;
		esac
	done
	sub=${args[0]-}
	case $cmd in
	"") words="status regions purge config env merge domains store top run tour help --help --version" ;;
	status | regions | env | merge | domains | tour) words="--json --help" ;;
	top) words="--once --json --help" ;;
	run)
		# after "--" the words are the program's
		if [[ " ${args[*]} " == *" -- "* ]]; then
			COMPREPLY=($(compgen -c -- "$cur"))
			return
		fi
		[[ $prev == --domid || $prev == --name ]] && words="" || words="--domid --name -- --help"
		;;
	purge)
		if [[ $prev == --bytes ]]; then
			words=""
		else
			words="--all --bytes --json --help"
		fi
		;;
	config)
		case ${#args[@]} in
		0) words="unpinned-budget min-available compress compressed-budget --help" ;;
		1) case $sub in
			compress) words="on off" ;;
			unpinned-budget) words="none" ;;
			min-available) words="0" ;;
			esac ;;
		esac
		;;
	store)
		case ${#args[@]} in
		0) words="ls read write rm watch --help" ;;
		1) [[ $cur == /* || -z $cur ]] && words="/" ;;
		esac
		;;
	esac
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _memvisor memvisor

_memvisord()
{
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}

	case $prev in
	--runtime-dir)
		COMPREPLY=($(compgen -d -- "$cur"))
		return
		;;
	--xs-toolstack)
		COMPREPLY=($(compgen -W "any socket" -- "$cur"))
		return
		;;
	--unpinned-budget | --min-available | --compressed-budget | --sweep-ms | --exit-idle | --ready-fd | \
		--clients-per-pid | --xs-conns-per-pid | --xs-dom0-*)
		COMPREPLY=()
		return
		;;
	esac
	COMPREPLY=($(compgen -W "--runtime-dir --foreground --unpinned-budget --min-available --no-psi \
		--no-compress --compressed-budget --sweep-ms --exit-idle --clients-per-pid --xs-conns-per-pid \
		--xs-dom0-nodes --xs-dom0-watches --xs-dom0-transactions --xs-dom0-tx-entries --xs-toolstack --ready-fd \
		--help --version" -- "$cur"))
}
complete -F _memvisord memvisord
