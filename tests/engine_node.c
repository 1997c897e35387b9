/* SPDX-License-Identifier: MIT */
/* A program that uses every memvisor library a process can load at once: libmemvisor.so.0 itself, the
 * Xen libraries and, with --ashmem under LD_PRELOAD, the /dev/ashmem preload; each of them talks to the
 * broker. It says "1" on stdout once all are in use, and exits
 * when stdin closes. Linked with no memvisor code of its own. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include <memvisor/memvisor.h>

#define ASHMEM_SET_SIZE _IOW(0x77, 3, size_t)

int main(int argc, char **argv)
{
	xenevtchn_handle *e = xenevtchn_open(NULL, 0);
	xengntshr_handle *g = xengntshr_open(NULL, 0);
	mv_region *r;
	char c;

	if (!e || !g)
		return 1;
	if (mv_region_new("engine-node", 4096, &r) < 0)
		return 3;
	if (argc > 1 && strcmp(argv[1], "--ashmem") == 0) {
		int fd = open("/dev/ashmem", O_RDWR);
		if (fd < 0 || ioctl(fd, ASHMEM_SET_SIZE, (size_t)4096) < 0)
			return 4;
		if (mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
			return 5;
	}
	if (write(1, "1", 1) != 1)
		return 6;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
