/* SPDX-License-Identifier: MIT */
/* Named merge partitions: processes of one user merge across each other through canonical pages the
 * broker keeps. Shared by the broker (src/merge/partitions_broker.c) and the library (src/merge/merge.c).
 *
 * Three memfds per member:
 *  - the partition file (broker-owned; members get it read-only): a header, the index of canonical
 *    pages (hash tag + id, open addressing), then the store of canonical pages. It is sealed against
 *    writes (F_SEAL_FUTURE_WRITE) once the broker has mapped it: no descriptor, reopened or not, can
 *    write, punch or resize it, so only the broker's own mapping changes canonical pages.
 *  - the hints file (shared read-write by the members): a direct-mapped table of hashes of pages some
 *    member has seen once. Only a hint: whoever acts on it compares bytes.
 *  - the member file (created by the member, shared with the broker): its ledger (how many of its pages
 *    map each canonical page; the broker frees a canonical page only when no live member's ledger counts
 *    it, and only the broker raises a count from zero) and a staging area through which it hands the
 *    broker pages to make canonical.
 * The broker trusts none of the shared bytes: everything it reads is bounds-checked and re-derived.
 */
#ifndef MV_MERGE_PARTITION_H
#define MV_MERGE_PARTITION_H

#include <stdint.h>

#include "memvisor/memvisor.h" /* MV_PAGE_SIZE */

#define MV_PART_NAME_MAX 64
#define MV_PART_CAP (1u << 20)         /* canonical pages per partition (4 GiB of merged content) */
#define MV_PART_INDEX_SLOTS (1u << 21) /* 2 * cap: the index stays at most half full */
#define MV_PART_HINT_SLOTS (1u << 21)
#define MV_PART_STAGE 256u /* pages per promotion request */
#define MV_PART_MAX_MEMBERS 256u

#define MV_PART_MAGIC 0x5452504dul /* "MPRT" */

struct mvm_part_slot {
	uint32_t id1; /* canonical id + 1; 0: empty */
	uint32_t tag; /* high half of the content's hash */
};

struct mvm_part_member_state {
	uint32_t gen;  /* bumped when the slot is taken: hints name (slot, gen) */
	uint32_t live; /* 1 while the member's connection is open */
};

/* The partition file. Offsets are from the start of the file; all are page aligned. */
struct mvm_part_head {
	uint32_t magic;
	uint32_t cap;
	uint32_t index_slots;
	uint32_t reserved;
	uint64_t index_off; /* struct mvm_part_slot[index_slots] */
	uint64_t store_off; /* cap pages */
	uint64_t file_size;
	uint64_t live_canon; /* canonical pages in use (kept by the broker, for statistics) */
	struct mvm_part_member_state members[MV_PART_MAX_MEMBERS];
};

struct mvm_part_hint {
	uint64_t hash;
	uint32_t slot; /* member slot + 1; 0: empty */
	uint32_t gen;
};

/* The member file. A request (MERGE_PROMOTE) lists n pages the member wants to merge: for each, the
 * canonical id it found in the index, or MV_PART_WANT_STAGED for the next page of its staging area,
 * and how many of its sites will map it. The broker answers in ids[] and, in the same step, adds each
 * granted page's sites to the member's ledger: a page is counted before the member can map it and
 * before any collection can look at it. */
#define MV_PART_INHERITED 0x80000000u /* ledger bit: a fork child may map it; never free it */
#define MV_PART_WANT_STAGED UINT32_MAX
struct mvm_part_member_head {
	uint32_t magic;
	uint32_t reserved;
	uint32_t ids[MV_PART_STAGE];  /* the broker's answer: canonical id per request, UINT32_MAX: none */
	uint64_t frees;               /* bumped when a ledger count drops to zero: time to collect */
	uint32_t want[MV_PART_STAGE]; /* the request: an id found in the index, or MV_PART_WANT_STAGED */
	uint8_t sites[MV_PART_STAGE]; /* the request: 1 or 2 */
};
#define MV_PART_LEDGER_OFF ((uint64_t)MV_PAGE_SIZE)
#define MV_PART_STAGE_OFF (MV_PART_LEDGER_OFF + (uint64_t)MV_PART_CAP * 4)
#define MV_PART_MEMBER_SIZE (MV_PART_STAGE_OFF + (uint64_t)MV_PART_STAGE * MV_PAGE_SIZE)

#define MV_PART_INDEX_OFF 65536ull
#define MV_PART_STORE_OFF (MV_PART_INDEX_OFF + (uint64_t)MV_PART_INDEX_SLOTS * sizeof(struct mvm_part_slot))
#define MV_PART_FILE_SIZE (MV_PART_STORE_OFF + (uint64_t)MV_PART_CAP * MV_PAGE_SIZE)
#define MV_PART_HINTS_SIZE ((uint64_t)MV_PART_HINT_SLOTS * sizeof(struct mvm_part_hint))

_Static_assert(sizeof(struct mvm_part_head) <= MV_PART_INDEX_OFF, "head fits");
_Static_assert(sizeof(struct mvm_part_member_head) <= MV_PART_LEDGER_OFF, "member head fits");

#endif
