/* SPDX-License-Identifier: MIT */
/* libFuzzer: what the broker does with a control block a client may have filled with anything:
 * validation, statistics, candidate runs, claiming and completing purges. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "regions/ctl.h"

static int count_run(void *opaque, uint64_t start, uint64_t len, uint64_t stamp)
{
	struct mvr_ctl_view *v = opaque;
	if (start + len > v->npages || len == 0)
		__builtin_trap();
	uint64_t n = mvr_ctl_claim(v, start, len, stamp);
	if (n > len)
		__builtin_trap();
	mvr_ctl_complete(v, start, n, stamp, stamp & 1);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t npages, fsize = 0;

	if (size < 9)
		return 0;
	memcpy(&fsize, data, 8);
	if (mvr_npages_of_size(fsize, &npages) == 0 &&
	    (npages * MV_PAGE_SIZE < fsize || (npages - 1) * MV_PAGE_SIZE >= fsize))
		__builtin_trap();
	npages = 1 + data[8] % 96;
	size_t len = mvr_ctl_length(npages);
	unsigned char *ctl = aligned_alloc(MV_PAGE_SIZE, len);
	if (!ctl)
		return 0;
	const uint8_t *body = data + 9;
	size_t blen = size - 9;
	for (size_t i = 0; i < len; i++)
		ctl[i] = (blen ? body[i % blen] : 0) ^ (unsigned char)(i * 131);
	struct mvr_ctl_view v;
	mvr_ctl_view_init(&v, ctl, npages, -1);
	mvr_ctl_validate(v.hdr, npages);
	struct mvr_ctl_counts c;
	mvr_ctl_count(&v, &c);
	if (c.pinned + c.unpinned + c.purged + c.purging + c.compressed + c.other != npages)
		__builtin_trap();
	mvr_ctl_for_each_run(&v, count_run, &v);
	free(ctl);
	return 0;
}
