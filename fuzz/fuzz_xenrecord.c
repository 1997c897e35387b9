/* SPDX-License-Identifier: MIT */
/* libFuzzer: the Xen record a new broker reads at start (xen/xen_record.h), which a dead broker or
 * anyone of its user may have written. Every record goes through the codec a broker uses, and the
 * xenstore's into a store; the store must then dump to records that rebuild the same number of nodes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xen/xen_record.h"
#include "xenstore/xenstore.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void apply(void *ud, uint8_t kind, const uint8_t *p, size_t len)
{
	struct mvx_store *s = ud;
	struct mvb_rec_domain d;
	struct mvb_rec_grants g;
	if (kind == MVB_REC_DOMAIN && mvb_rec_domain_decode(p, len, &d) == 0 && (d.domid == 0 || d.domid > 0x7fef))
		__builtin_trap();
	if (kind == MVB_REC_GRANTS && mvb_rec_grants_decode(p, len, &g) == 0 && g.domid > 0x7fef)
		__builtin_trap();
	(void)mvx_store_replay(s, kind, p, len);
}

/* The framing the broker's file uses, into memory. */
static void collect(void *ud, uint8_t kind, const void *p, size_t len)
{
	struct buf *b = ud;
	if (b->len + 5 + len > b->cap) {
		size_t cap = (b->len + 5 + len) * 2;
		uint8_t *n = realloc(b->p, cap);
		if (!n)
			abort();
		b->p = n;
		b->cap = cap;
	}
	uint32_t l = (uint32_t)len;
	memcpy(b->p + b->len, &l, 4);
	b->p[b->len + 4] = kind;
	memcpy(b->p + b->len + 5, p, len);
	b->len += 5 + len;
}

static void apply_store(void *ud, uint8_t kind, const uint8_t *p, size_t len)
{
	if (mvx_store_replay(ud, kind, p, len) < 0)
		__builtin_trap(); /* what a store dumps, a store takes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *in = malloc(size + 8);
	if (!in)
		return 0;
	/* most inputs get the header, so the fuzzer spends its time on the records */
	size_t n = 0;
	if (size && data[0] & 1) {
		memcpy(in, "MVXREC1\n", 8);
		n = 8;
		data++;
		size--;
	}
	memcpy(in + n, data, size);
	n += size;
	struct mvx_store *s = mvx_store_new(), *t = mvx_store_new();
	if (s && t) {
		mvb_rec_parse(in, n, apply, s);
		struct buf b = { 0 };
		collect(&b, 0, "", 0); /* room for the header */
		b.len = 0;
		memcpy(b.p, "MVXREC1\n", 8);
		b.len = 8;
		mvx_store_set_journal(s, collect, &b);
		mvx_store_dump(s);
		mvx_store_set_journal(s, NULL, NULL);
		mvb_rec_parse(b.p, b.len, apply_store, t);
		if (mvx_store_nodes(s) != mvx_store_nodes(t))
			__builtin_trap();
		free(b.p);
	}
	mvx_store_free(s);
	mvx_store_free(t);
	free(in);
	return 0;
}
