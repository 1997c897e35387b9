/* SPDX-License-Identifier: MIT */
/* libFuzzer: the broker's packet decoder and the client's REGIONS, DOMAINS and STATS image checks, on
 * arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mvw_msg m;

	if (size < 1)
		return 0;
	/* First byte: descriptor count and direction, as the transport would report them. */
	unsigned nfds = data[0] & 7;
	int reply = (data[0] >> 3) & 1;
	int r = mvw_decode(data + 1, size - 1, nfds, reply, &m);
	if (r == 0) {
		size_t plen;
		unsigned pfds;
		/* Whatever decodes must match the protocol table exactly. */
		if (m.hdr.magic != MV_WIRE_MAGIC || m.hdr.len != size - 1 - sizeof(struct mvw_hdr))
			__builtin_trap();
		if (m.hdr.status == 0 &&
		    (mvw_expect(m.hdr.type & 0x7f, reply, &plen, &pfds) < 0 || plen != m.hdr.len || pfds != nfds))
			__builtin_trap();
	}
	mvw_regions_check(data, size);
	mvw_domains_check(data, size);
	struct mvw_stats_head sh;
	if (mvw_stats_check(data, size, &sh) >= 0 && sizeof(sh) + (size_t)sh.count * sh.rec_size > size)
		__builtin_trap(); /* a count the image cannot hold */
	return 0;
}
