/* SPDX-License-Identifier: MIT */
/* libFuzzer: the broker's side of a merge partition when a member's file holds anything: staged pages,
 * ledger counts, requests naming any id and any number of sites, joins and leaves in any order. The
 * broker must neither crash nor hand out an id outside the store, nor answer a page it did not count in
 * the member's ledger, nor count more sites on a page than the limit. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "merge/partition_files.h"
#include "merge/partitions_broker.h"

static struct mvp_state S;
static int member_fd = -1;
static uint8_t *member;
static uint64_t member_id;
static char owner;

static void setup(void)
{
	member_fd = memfd_create("fuzz-member", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (member_fd < 0 || ftruncate(member_fd, (off_t)MV_PART_MEMBER_SIZE) < 0 ||
	    fcntl(member_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		__builtin_trap();
	member = mmap(NULL, MV_PART_MEMBER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, member_fd, 0);
	if (member == MAP_FAILED)
		__builtin_trap();
}

static void join(void)
{
	uint32_t slot, gen;
	int pfd, hfd;
	if (mvp_join(&S, "fuzz", getuid(), member_fd, &owner, &member_id, &slot, &gen, &pfd, &hfd) != 0)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (member_fd < 0) {
		setup();
		join();
	}
	struct mvm_part_member_head *mh = (struct mvm_part_member_head *)member;
	uint32_t *ledger = (uint32_t *)(member + MV_PART_LEDGER_OFF);
	size_t i = 0;
	while (i + 2 <= size) {
		uint8_t op = data[i++] % 5, arg = data[i++];
		switch (op) {
		case 0: { /* requests: staged pages made of the input, ids of any kind, any site counts */
			uint32_t n = arg % (MV_PART_STAGE + 4);
			for (uint32_t k = 0; k < n && k < MV_PART_STAGE; k++) {
				uint8_t b = data[(i + k) % size];
				memset(member + MV_PART_STAGE_OFF + (uint64_t)k * 4096, b, 4096);
				mh->want[k] =
					b & 1 ? MV_PART_WANT_STAGED : (uint32_t)b * 0x01000001u % (MV_PART_CAP + 8);
				mh->sites[k] = b % 4;
			}
			uint32_t done = 0;
			uint32_t limit = arg % 5 == 0 ? arg % 3 : 2u + arg % 7; /* sometimes too small */
			int r = mvp_promote(&S, member_id, &owner, n, limit, &done);
			if (r == 0) {
				if (n > MV_PART_STAGE || limit < 2 || done > n)
					__builtin_trap();
				uint32_t granted = 0;
				for (uint32_t k = 0; k < n; k++) {
					if (mh->ids[k] == UINT32_MAX)
						continue;
					if (mh->ids[k] >= MV_PART_CAP || mh->sites[k] < 1 || mh->sites[k] > 2)
						__builtin_trap();
					/* counted for the member before the answer */
					if ((ledger[mh->ids[k]] & ~MV_PART_INHERITED) < mh->sites[k])
						__builtin_trap();
					/* the only member: its ledger holds every site counted */
					if ((ledger[mh->ids[k]] & ~MV_PART_INHERITED) > limit)
						__builtin_trap();
					granted++;
				}
				if (granted != done)
					__builtin_trap();
				/* as a member does when its comparison fails or its merges break: give the counts back */
				for (uint32_t k = 0; k < n && (arg & 0x80); k++)
					if (mh->ids[k] != UINT32_MAX) {
						ledger[mh->ids[k]] -= mh->sites[k];
						mh->frees++;
					}
			} else if (n <= MV_PART_STAGE && limit >= 2) {
				__builtin_trap();
			}
			break;
		}
		case 1: /* scribble on the ledger: counts, the inherited bit, anything */
			for (uint32_t k = 0; k < 64; k++)
				ledger[(arg * 64u + k) % 4096] = (uint32_t)data[(i + k) % size] * 0x01010101u;
			break;
		case 2: mvp_collect(&S); break;
		case 3: /* leave and come back */
			if (mvp_leave(&S, member_id, &owner) != 0)
				__builtin_trap();
			join();
			break;
		case 4: /* a request for somebody else's membership */
			if (mvp_leave(&S, member_id + 1000, &owner) == 0)
				__builtin_trap();
			break;
		}
	}
	return 0;
}
