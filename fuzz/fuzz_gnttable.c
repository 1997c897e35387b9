/* SPDX-License-Identifier: MIT */
/* libFuzzer: grant tables (xen/gnttab_table.h), which a table pool's granter and grantee can both write
 * anything into. The input is the table's first bytes and then operations: the broker's mappings, table
 * opens, counts, sweeps and the ends of both domains (gnttab_broker.c), the library's slot operations,
 * and more scribbling in between. Nothing may read or write out of bounds or loop for ever, and once
 * both domains are gone the broker must hold nothing of them. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "xen/gnttab_broker.h"
#include "xen/gnttab_table.h"

static unsigned notified;

static void notify(uint16_t dom, uint32_t port)
{
	(void)dom, (void)port;
	notified++;
}

struct input {
	const uint8_t *p;
	size_t len;
};

static uint32_t take(struct input *in, unsigned bytes)
{
	uint32_t v = 0;
	for (unsigned i = 0; i < bytes && in->len; i++, in->p++, in->len--)
		v |= (uint32_t)*in->p << (8 * i);
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mvg_state s;
	int granter_conn, mapper_conn, other_conn; /* their addresses name the connections */
	const uint16_t granter = 2, mapper = 3, other = 4;
	struct input in = { data, size };
	uint64_t ids[16] = { 0 };
	unsigned nids = 0;

	memset(&s, 0, sizeof(s));
	s.notify = notify;
	struct mvw_req_gnt_table_pool preq = { .domid = mapper, .flags = take(&in, 1) & MV_GNT_WRITABLE };
	struct mvw_rep_gnt_table rep;
	int fds[2];
	if (mvg_table_pool(&s, &granter_conn, granter, &preq, &rep, fds) < 0)
		return 0;
	if (rep.pages != MVGT_SLOTS || rep.window < MVGT_SLOTS || rep.base_ref < MV_GNT_FIRST_REF)
		__builtin_trap();
	struct mvgt_table *t = mmap(NULL, MVGT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	if (t == MAP_FAILED)
		abort();
	size_t init = take(&in, 2) % 512;
	init = init < in.len ? init : in.len;
	memcpy(t, in.p, init);
	in.p += init, in.len -= init;

	while (in.len) {
		uint32_t op = take(&in, 1), slot = take(&in, 2) % MVGT_SLOTS;
		uint32_t ref = rep.base_ref + (take(&in, 1) % MVGT_GENS) * MVGT_SLOTS + slot;
		uint64_t *w = &t->slot[slot];
		switch (op % 12) {
		case 0: { /* the broker maps a run, maybe with notifications, maybe for a copy */
			struct mvw_req_gnt_map req = { .domid = granter, .count = 1 + take(&in, 1) % 8 };
			uint32_t f = take(&in, 1);
			req.flags = f & (MV_GNT_WRITABLE | MV_GNT_MAP_TRANSIENT);
			req.notify_flags = (f >> 2) & 3;
			req.notify_offset = take(&in, 2);
			req.notify_port = 1 + (f >> 4);
			for (uint32_t i = 0; i < req.count; i++)
				req.refs[i] = ref + i;
			struct mvw_rep_gnt_map mrep;
			int fd;
			void *who = f & 0x80 ? (void *)&other_conn : (void *)&mapper_conn;
			if (mvg_map(&s, who, f & 0x80 ? other : mapper, &req, &mrep, &fd) == 0) {
				if (mrep.run == 0 || mrep.run > req.count || mrep.page + mrep.run > MVGT_SLOTS)
					__builtin_trap();
				if (mrep.map_id && nids < 16)
					ids[nids++] = mrep.map_id;
			}
			break;
		}
		case 1:
			if (nids)
				(void)mvg_unmap(&s, &mapper_conn, ids[--nids]);
			break;
		case 2: {
			struct mvw_req_gnt_table_open req = { .domid = granter, .ref = ref, .flags = take(&in, 1) & 1 };
			int ofds[2];
			(void)mvg_table_open(&s, op & 0x80 ? other : mapper, &req, &rep, ofds);
			break;
		}
		case 3: {
			uint64_t shares, maps;
			static uint32_t live[MV_DOMID_LAST + 1], mapped[MV_DOMID_LAST + 1];
			mvg_table_counts(&s, &shares, &maps, live);
			mvg_mapped_pages(&s, mapped);
			if (shares > MVGT_SLOTS || maps > MVGT_SLOTS || live[granter] > MVGT_SLOTS)
				__builtin_trap();
			live[granter] = 0;
			memset(mapped, 0, sizeof(mapped));
			break;
		}
		case 4: mvg_sweep(&s); break;
		case 5: mvg_grantee_gone(&s, mapper); break;
		case 6: { /* scribbling */
			uint64_t v = take(&in, 4);
			v |= (uint64_t)take(&in, 4) << 32;
			__atomic_store_n(w, v, __ATOMIC_RELAXED);
			break;
		}
		case 7: {
			uint64_t before = mvgt_mappings(mvgt_load(w));
			if (mvgt_map(w, ref) && mvgt_mappings(mvgt_load(w)) != before + 1)
				__builtin_trap();
			break;
		}
		case 8: mvgt_unmap(w); break;
		case 9:
			if (mvgt_claim(w, ref) && !(mvgt_grant(w, ref, op & 0x80) && mvgt_ref(mvgt_load(w)) == ref))
				__builtin_trap();
			break;
		case 10: (void)mvgt_end(w, ref, op & 0x80); break;
		case 11: {
			uint32_t g = mvgt_next_gen(rep.base_ref, rep.window, slot, mvgt_load(w));
			if (g > rep.window / MVGT_SLOTS || mvgt_slot_of(rep.base_ref, rep.window, ref) != (int64_t)slot)
				__builtin_trap();
			(void)mvgt_mark_clean(w, ref);
			break;
		}
		}
	}
	/* both domains go: nothing of theirs may stay */
	mvg_owner_gone(&s, &mapper_conn);
	mvg_owner_gone(&s, &other_conn);
	mvg_owner_gone(&s, &granter_conn);
	mvg_grantee_gone(&s, mapper);
	mvg_sweep(&s);
	if (s.npools || s.nshares || s.nmaps)
		__builtin_trap();
	munmap(t, MVGT_SIZE);
	return 0;
}
