#!/bin/sh
# SPDX-License-Identifier: MIT
# Every source, header, script, linker script and CMake file starts with its SPDX line (within its
# first two lines, to leave room for a #!). Build trees (build*, and dh's obj-* and its staging trees
# under debian/) hold generated files and are not looked at.
set -eu
root=${1:?usage: check_spdx.sh SOURCE_DIR}
cd "$root"
missing=0
for f in $(find . -path ./build -prune -o -path './build-*' -prune -o -path './obj-*' -prune -o -path ./debian -prune \
	-o -path ./.git -prune -o -type f \
	\( -name '*.c' -o -name '*.h' -o -name '*.sh' -o -name '*.bash' -o -name '*.map' -o -name '*.in' -o -name CMakeLists.txt \) -print) \
	.ci/run; do
	if ! head -n 2 "$f" | grep -q 'SPDX-License-Identifier: '; then
		echo "no SPDX-License-Identifier line: $f"
		missing=$((missing + 1))
	fi
done
[ -f LICENSE ] || { echo "no LICENSE file"; missing=$((missing + 1)); }
[ "$missing" -eq 0 ] && echo "every file carries its SPDX line"
exit "$missing"
