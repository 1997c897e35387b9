#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the Debian packages (libmemvisor0, libmemvisor-dev, memvisor, memvisor-compat) from this
# tree's committed and staged files into OUTDIR, then runs lintian on them, failing on any error.
# dpkg-buildpackage writes next to the source directory, so the build happens in a copy under a
# temporary directory and never beside the working copy. DEB_BUILD_OPTIONS=nocheck skips the tests.
set -euo pipefail
out=${1:?usage: scripts/build-debs.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/memvisor-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/memvisor-$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)"
mkdir "$src"
(cd "$root" && git ls-files -z --cached | xargs -0 cp --parents -t "$src")
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
	cp "$work/build.log" "$out/build.log"
	tail -n 60 "$work/build.log" >&2
	echo "build-debs: dpkg-buildpackage failed (whole log: $out/build.log)" >&2
	exit 1
}
changes=$(ls "$work"/*.changes)
lintian --fail-on error --suppress-tags-from-file /dev/null "$changes"
cp "$work"/*.deb "$out"/
ls "$out"/*.deb
