/* SPDX-License-Identifier: MIT */
/* libxenctrl.so.4.17, the little of it that vchan tools call (Debian's vchan-socket-proxy: open, close and
 * xc_domain_getinfo, to tell whether its peer domain still lives), answered from the broker's domain
 * table. Domain 0, the toolstack, is always there; a domain that has ended is not listed, as on Xen once
 * it is destroyed, so a caller asking for it gets the next one or none. Xen's ABI, built against Debian's
 * headers. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xenctrl.h>

#include "common/util.h"
#include "memvisor/broker.h"

struct xc_interface_core {
	unsigned flags;
};

MV_EXPORT xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
					  unsigned open_flags)
{
	(void)logger, (void)dombuild_logger;
	if (open_flags & ~(unsigned)(XC_OPENFLAG_DUMMY | XC_OPENFLAG_NON_REENTRANT)) {
		errno = EINVAL;
		return NULL;
	}
	xc_interface *x = calloc(1, sizeof(*x));
	if (!x) {
		errno = ENOMEM;
		return NULL;
	}
	x->flags = open_flags;
	return x;
}

MV_EXPORT int xc_interface_close(xc_interface *xch)
{
	free(xch);
	return 0;
}

static int by_domid(const void *a, const void *b)
{
	uint32_t x = ((const struct mv_broker_domain *)a)->domid, y = ((const struct mv_broker_domain *)b)->domid;
	return x < y ? -1 : x > y;
}

static void fill(xc_dominfo_t *info, uint32_t domid)
{
	memset(info, 0, sizeof(*info));
	info->domid = domid;
	info->running = 1;
	info->nr_online_vcpus = 1;
	info->xenstore = domid == 0;
}

/* Domains from first_domid up, in id order (Xen lists them so), at most max_doms. */
MV_EXPORT int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
	if (!xch || (max_doms && !info)) {
		errno = EINVAL;
		return -1;
	}
	struct mv_broker_domain *list = NULL;
	size_t n = 0;
	int r = mv_broker_domains(&list, &n);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	qsort(list, n, sizeof(*list), by_domid);
	unsigned got = 0;
	if (first_domid == 0 && got < max_doms)
		fill(&info[got++], 0);
	for (size_t i = 0; i < n && got < max_doms; i++)
		if (list[i].domid >= first_domid && list[i].domid != 0)
			fill(&info[got++], list[i].domid);
	free(list);
	return (int)got;
}
