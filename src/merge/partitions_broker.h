/* SPDX-License-Identifier: MIT */
/* The broker's side of named merge partitions (see partition_files.h). Internal to memvisord. */
#ifndef MV_MERGE_PARTITIONS_H
#define MV_MERGE_PARTITIONS_H

#include <stdint.h>
#include <sys/types.h>

struct mvp_part;

struct mvp_state {
	struct mvp_part *parts;
	uint64_t next_member_id;
	unsigned nparts;
};

/* A process joins partition `name` with its member file; gets the partition file (read-only) and the
 * hints file. owner identifies the connection: everything it joined leaves when it goes. */
int mvp_join(struct mvp_state *s, const char *name, uid_t uid, int member_fd, const void *owner, uint64_t *member_id,
	     uint32_t *slot, uint32_t *gen, int *part_fd, int *hints_fd);
/* Answers the member's n requests (partition_files.h): makes its staged pages canonical, grants pages it
 * found in the index, and counts each granted page in its ledger; the ids land in the member file. No
 * page gets more than max_sharing sites counted in all members' ledgers: a request beyond it gets
 * another canonical copy of the same bytes, made if there is none. */
int mvp_promote(struct mvp_state *s, uint64_t member_id, const void *owner, uint32_t n, uint32_t max_sharing,
		uint32_t *done);
int mvp_leave(struct mvp_state *s, uint64_t member_id, const void *owner);
void mvp_owner_gone(struct mvp_state *s, const void *owner);
/* Frees canonical pages no live member counts any more (after a grace period). */
void mvp_collect(struct mvp_state *s);
unsigned mvp_count_members(const struct mvp_state *s);

#endif
