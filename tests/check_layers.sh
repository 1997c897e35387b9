#!/bin/sh
# SPDX-License-Identifier: MIT
# The compatibility layers are thin: each needs libmemvisor.so.0, none needs a compression or hashing
# library (only the engine does), and each stays well under 100 KiB of code and data, whatever debug
# information the build type adds (not checked in sanitizer builds, whose instrumentation is most of
# their size: --no-size-limit).
set -eu
fail=0
limit=102400
if [ "${1:-}" = "--no-size-limit" ]; then
	limit=0
	shift
fi
for lib in "$@"; do
	needed=$(objdump -p "$lib" | awk '$1 == "NEEDED" {print $2}')
	size=$(size -d "$lib" | awk 'NR == 2 {print $4}')
	echo "$(basename "$lib"): $size bytes, needs" $needed
	echo "$needed" | grep -qx 'libmemvisor.so.0' || { echo "  does not link the engine"; fail=1; }
	if echo "$needed" | grep -Eq '^lib(lz4|zstd|xxhash)\.'; then echo "  carries engine dependencies"; fail=1; fi
	[ "$limit" -eq 0 ] || [ "$size" -lt "$limit" ] || { echo "  not thin: $size bytes"; fail=1; }
done
exit $fail
