/* SPDX-License-Identifier: MIT */
/* Benchmarks' real-memory corpora: the resident pages of another process's heap. */
#pragma once

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* Reads the resident pages of pid's private anonymous writable mappings (and its [heap]), up to max. */
static inline size_t dump_process(pid_t pid, unsigned char *out, size_t max)
{
	const size_t pg = 4096;
	char path[64], line[512];
	size_t n = 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *maps = fopen(path, "re");
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	int pm = open(path, O_RDONLY | O_CLOEXEC);
	while (maps && pm >= 0 && n < max && fgets(line, sizeof(line), maps)) {
		unsigned long lo, hi;
		char perms[8], rest[256] = "";
		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255[^\n]", &lo, &hi, perms, rest) < 3)
			continue;
		if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || (rest[0] && strcmp(rest, "[heap]")))
			continue; /* anonymous mappings and the heap only */
		for (unsigned long a = lo; a < hi && n < max; a += pg) {
			uint64_t ent;
			if (pread(pm, &ent, 8, (off_t)(a / pg * 8)) != 8 || !(ent >> 63))
				continue; /* not resident */
			struct iovec l = { out + n * pg, pg }, r = { (void *)a, pg };
			if (process_vm_readv(pid, &l, 1, &r, 1, 0) == (ssize_t)pg)
				n++;
		}
	}
	if (maps)
		fclose(maps);
	if (pm >= 0)
		close(pm);
	return n;
}
