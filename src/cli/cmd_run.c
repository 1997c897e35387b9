/* SPDX-License-Identifier: MIT */
/* memvisor run --domid N [--name NAME] -- PROGRAM ARGS: PROGRAM runs as Xen domain N, as a toolstack
 * starts a guest with a known id. The broker holds the domain for this process, which then becomes
 * PROGRAM (the same pid): any program, whether it loads memvisor's Xen libraries or only talks to the
 * xenstore, is domain N from its first request. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "memvisor/broker.h"

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "memvisor run: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nusage: memvisor run --domid N [--name NAME] -- PROGRAM [ARGS...]\n");
	return 2;
}

static bool name_ok(const char *n)
{
	size_t l = strlen(n);
	if (l == 0 || l > 63)
		return false;
	for (; *n; n++)
		if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') || (*n >= '0' && *n <= '9') || *n == '-' ||
		      *n == '_' || *n == '.'))
			return false;
	return true;
}

int cli_run(int argc, char **argv)
{
	const char *name = NULL;
	long domid = -1;
	int i = 0;

	if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
		printf("usage: memvisor run --domid N [--name NAME] -- PROGRAM [ARGS...]\n"
		       "  runs PROGRAM as Xen domain N (1..32751), named NAME in /local/domain/N/name;\n"
		       "  its fork children are domains of their own\n");
		return 0;
	}
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (strcmp(argv[i], "--domid") == 0 || strcmp(argv[i], "--name") == 0) {
			if (i + 1 >= argc)
				return usage_error("%s needs a value", argv[i]);
			if (argv[i][2] == 'n') {
				name = argv[++i];
				if (!name_ok(name))
					return usage_error("bad --name '%s' (1 to 63 of A-Z a-z 0-9 _ . -)", name);
				continue;
			}
			const char *v = argv[++i];
			char *end;
			errno = 0;
			domid = strtol(v, &end, 0);
			if (errno || end == v || *end || v[0] == '-')
				return usage_error("bad --domid '%s' (a number)", v);
			if (domid < 1 || domid > 0x7fef)
				return usage_error(
					"--domid %s is reserved (0 is the toolstack, 32752 (0x7ff0) and up are "
					"Xen's): take 1..32751",
					v);
			continue;
		}
		return usage_error("unknown option '%s'", argv[i]);
	}
	if (domid < 0)
		return usage_error("%s", "--domid is required");
	if (i >= argc)
		return usage_error("%s", "no PROGRAM after --");

	/* the tool's own patience for the broker is not the program's: put the environment back */
	bool had_timeout = getenv("MEMVISOR_TIMEOUT_MS") != NULL;
	if (!had_timeout)
		setenv("MEMVISOR_TIMEOUT_MS", "2000", 1);
	int r = mv_broker_domain_reserve((uint32_t)domid, name);
	if (!had_timeout)
		unsetenv("MEMVISOR_TIMEOUT_MS");
	if (r == -EEXIST) {
		fprintf(stderr, "memvisor run: domain %ld is taken (see 'memvisor domains')\n", domid);
		return 2;
	}
	if (r == -EBUSY) {
		fprintf(stderr, "memvisor run: this process is another domain already\n");
		return 2;
	}
	if (r < 0) {
		fprintf(stderr, "memvisor run: cannot make domain %ld: %s\n", domid, strerror(-r));
		return r == -EINVAL ? 2 : 1;
	}
	execvp(argv[i], argv + i);
	fprintf(stderr, "memvisor run: cannot run %s: %s\n", argv[i], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
