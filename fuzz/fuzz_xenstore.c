/* SPDX-License-Identifier: MIT */
/* libFuzzer: the broker's xenstore fed whatever clients send. The input is a script of chunks, each for
 * one of three connections (domain 0, and two guests) or a domain coming and going; every reply and
 * event the store produces must be a well-formed xs_wire message, and nothing may leak or crash. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <xen/io/xs_wire.h>

#include "xenstore/xenstore.h"

static void check_output(struct mvx_conn *c)
{
	const void *buf;
	size_t n = mvx_conn_pending(c, &buf);
	const uint8_t *p = buf;
	while (n) {
		struct xsd_sockmsg h;
		if (n < sizeof(h))
			__builtin_trap();
		memcpy(&h, p, sizeof(h));
		/* payloads may exceed XENSTORE_PAYLOAD_MAX by nothing but an event's token */
		if (h.len > 2 * XENSTORE_PAYLOAD_MAX || h.len > n - sizeof(h) || h.type >= XS_TYPE_COUNT)
			__builtin_trap();
		p += sizeof(h) + h.len;
		n -= sizeof(h) + h.len;
	}
	mvx_conn_consume(c, mvx_conn_pending(c, &buf));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mvx_store *s = mvx_store_new();
	if (!s)
		return 0;
	/* small quotas, so the fuzzer reaches them */
	struct mvx_limits *lim[2] = { &mvx_store_quota(s)->guest, &mvx_store_quota(s)->dom0 };
	for (int i = 0; i < 2; i++) {
		lim[i]->nodes = 50 + 30 * (uint32_t)i;
		lim[i]->watches = 4;
		lim[i]->transactions = 3;
		lim[i]->tx_entries = 40;
	}
	mvx_domain_introduce(s, 5, "five");
	mvx_domain_introduce(s, 9, "nine");
	struct mvx_conn *conns[3] = { mvx_conn_new(s, 0, NULL), mvx_conn_new(s, 5, NULL), mvx_conn_new(s, 9, NULL) };
	while (size >= 3) {
		uint8_t who = data[0];
		size_t len = (size_t)data[1] | (size_t)data[2] << 8;
		data += 3;
		size -= 3;
		if (len > size)
			len = size;
		if (who == 0xfe) {
			mvx_domain_release(s, 9);
		} else if (who == 0xff) {
			mvx_domain_introduce(s, 9, "nine-again");
		} else {
			struct mvx_conn **c = &conns[who % 3];
			if (!*c)
				*c = mvx_conn_new(s, who % 3 == 0 ? 0 : who % 3 == 1 ? 5 : 9, NULL);
			if (*c && mvx_conn_input(*c, data, len) == -EPROTO) {
				mvx_conn_free(*c); /* the broker drops such a client */
				*c = NULL;
			}
		}
		data += len;
		size -= len;
		for (int i = 0; i < 3; i++)
			if (conns[i])
				check_output(conns[i]);
	}
	mvx_store_free(s);
	return 0;
}
