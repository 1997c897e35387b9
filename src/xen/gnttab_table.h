/* SPDX-License-Identifier: MIT */
/* A grant table: the memfd that a table pool's granter and its one grantee both map, so that sharing,
 * mapping and unmapping a page need no broker round trip. One 64-bit word per page of the pool:
 *
 *   bits  0-31  the ref granted in that slot last (0: never granted)
 *   bit  32     GRANTED: the granter grants it now
 *   bit  33     FIRST: the first page of a share (what the broker counts as one share)
 *   bit  34     KEPT: ended while the granter still maps it; this granter does not grant it again
 *   bit  35     CLEAN: ended, unmapped and zeroed since: the next grant need not zero it
 *   bits 40-63  mappings of the page the grantee holds
 *
 * Every change is a compare-and-swap on the word, by the granter (grant, end), the grantee (a mapping
 * more or less, only while GRANTED for more) or the broker (ending all, on the granter's death; dropping
 * all mappings, on the grantee's). Both processes can write any byte of it, so nothing read here is
 * trusted: a word only ever decides what happens to that slot, between these two domains, and the
 * slot's index always comes from the reader's own arithmetic, never from the table. A domain that
 * scribbles on it can only make its own grants misbehave: the granter may then reuse a page the
 * grantee still maps (the grantee sees a later grant to itself there), the grantee may keep a page from
 * being reused. No other domain's page is ever in the pool. Internal to memvisor. */
#ifndef MV_XEN_GNTTAB_TABLE_H
#define MV_XEN_GNTTAB_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#define MVGT_MAGIC 0x3154475456534d4dull /* "MMSVTGT1" */
#define MVGT_SLOTS 1024u                 /* pages in a table pool (MV_GNT_SHARE_LIMIT) */
#define MVGT_GENS 64u                    /* refs a slot goes through before its first comes back */
#define MVGT_WINDOW (MVGT_SLOTS * MVGT_GENS)

#define MVGT_REF_MASK 0xffffffffull
#define MVGT_GRANTED (1ull << 32)
#define MVGT_FIRST (1ull << 33)
#define MVGT_KEPT (1ull << 34)
#define MVGT_CLEAN (1ull << 35)
#define MVGT_MAP_SHIFT 40
#define MVGT_MAP_ONE (1ull << MVGT_MAP_SHIFT)
#define MVGT_MAP_MAX ((1ull << (64 - MVGT_MAP_SHIFT)) - 1)

struct mvgt_table {
	uint64_t magic;  /* written by the broker; informative */
	uint64_t maps;   /* mapping requests the grantee holds (the broker's mapping count); untrusted */
	uint64_t pad[6]; /* the slots start on their own cache line */
	uint64_t slot[MVGT_SLOTS];
};
#define MVGT_SIZE sizeof(struct mvgt_table) /* two pages and a line: the memfd is rounded up */

static inline uint64_t mvgt_load(const uint64_t *w)
{
	return __atomic_load_n(w, __ATOMIC_ACQUIRE);
}

static inline bool mvgt_cas(uint64_t *w, uint64_t *old, uint64_t new)
{
	return __atomic_compare_exchange_n(w, old, new, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline uint32_t mvgt_ref(uint64_t w)
{
	return (uint32_t)(w & MVGT_REF_MASK);
}

static inline uint64_t mvgt_mappings(uint64_t w)
{
	return w >> MVGT_MAP_SHIFT;
}

/* The slot a ref of the window names, or -1. */
static inline int64_t mvgt_slot_of(uint32_t base, uint32_t window, uint32_t ref)
{
	if (ref < base || ref - base >= window)
		return -1;
	return (ref - base) % MVGT_SLOTS;
}

/* The generation after the slot's last ref (0 if it had none of this window): a share of several
 * slots takes the highest of theirs, so that its refs are consecutive, ref = base + gen * slots + slot,
 * and none is one its slot had just before. */
static inline uint32_t mvgt_next_gen(uint32_t base, uint32_t window, uint32_t slot, uint64_t w)
{
	uint32_t last = mvgt_ref(w);
	if (window < MVGT_SLOTS || last < base || last - base >= window || (last - base) % MVGT_SLOTS != slot)
		return 0;
	return (last - base) / MVGT_SLOTS + 1;
}

/* Grantee: one mapping more of ref in its slot, if it is granted under that ref now. */
static inline bool mvgt_map(uint64_t *w, uint32_t ref)
{
	uint64_t v = mvgt_load(w);
	do {
		if (!(v & MVGT_GRANTED) || mvgt_ref(v) != ref || mvgt_mappings(v) == MVGT_MAP_MAX)
			return false;
	} while (!mvgt_cas(w, &v, v + MVGT_MAP_ONE));
	return true;
}

/* Grantee: one mapping less; never below none. */
static inline void mvgt_unmap(uint64_t *w)
{
	uint64_t v = mvgt_load(w);
	do {
		if (mvgt_mappings(v) == 0)
			return;
	} while (!mvgt_cas(w, &v, v - MVGT_MAP_ONE));
}

/* Broker, for a grantee that is gone: every mapping it held is let go. */
static inline void mvgt_unmap_all(uint64_t *w)
{
	uint64_t v = mvgt_load(w);
	while (mvgt_mappings(v) && !mvgt_cas(w, &v, v & ~(MVGT_MAP_MAX << MVGT_MAP_SHIFT)))
		;
}

/* Granter: the slot may take a new grant (never granted or ended, unmapped, not kept). */
static inline bool mvgt_free(uint64_t w)
{
	return !(w & (MVGT_GRANTED | MVGT_KEPT)) && mvgt_mappings(w) == 0;
}

/* Granter: takes a free slot for ref, not yet granted (a mapper cannot map it while its page is made
 * ready). False if the slot changed meanwhile. */
static inline bool mvgt_claim(uint64_t *w, uint32_t ref)
{
	uint64_t v = mvgt_load(w);
	return mvgt_free(v) && mvgt_cas(w, &v, (uint64_t)ref);
}

/* Granter: the claimed slot is granted. */
static inline bool mvgt_grant(uint64_t *w, uint32_t ref, bool first)
{
	uint64_t v = mvgt_load(w);
	do {
		if ((v & MVGT_GRANTED) || mvgt_ref(v) != ref)
			return false;
	} while (!mvgt_cas(w, &v, v | MVGT_GRANTED | (first ? MVGT_FIRST : 0)));
	return true;
}

/* Granter (and the broker, for a granter that is gone): the grant ends; its mappings stay counted until
 * they go. keep: the granter still maps the page. True if it was granted. */
static inline bool mvgt_end(uint64_t *w, uint32_t ref, bool keep)
{
	uint64_t v = mvgt_load(w);
	do {
		if (!(v & MVGT_GRANTED) || mvgt_ref(v) != ref)
			return false;
	} while (!mvgt_cas(w, &v, (v & ~MVGT_GRANTED) | (keep ? MVGT_KEPT : 0)));
	return true;
}

/* Granter: the ended, unmapped page of ref was zeroed. False if the slot changed since. */
static inline bool mvgt_mark_clean(uint64_t *w, uint32_t ref)
{
	uint64_t v = mvgt_load(w);
	return mvgt_ref(v) == ref && mvgt_free(v) && mvgt_cas(w, &v, v | MVGT_CLEAN);
}

/* Granter: whether a slot's page must be zeroed before it is granted again. */
static inline bool mvgt_dirty(uint64_t w)
{
	return mvgt_ref(w) != 0 && !(w & MVGT_CLEAN);
}

/* Broker: a granter that is gone grants nothing any more. */
static inline void mvgt_end_any(uint64_t *w)
{
	uint64_t v = mvgt_load(w);
	while ((v & MVGT_GRANTED) && !mvgt_cas(w, &v, v & ~MVGT_GRANTED))
		;
}

/* What the broker counts: a share lives while its first page is granted or mapped. */
static inline bool mvgt_share_lives(uint64_t w)
{
	return (w & MVGT_FIRST) && ((w & MVGT_GRANTED) || mvgt_mappings(w));
}

/* Nothing in the slot holds the pool: not granted, not mapped (kept pages hold only the memory). */
static inline bool mvgt_idle(uint64_t w)
{
	return !(w & MVGT_GRANTED) && mvgt_mappings(w) == 0;
}

#endif
