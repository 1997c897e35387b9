/* SPDX-License-Identifier: MIT */
/* memvisord: named merge partitions. The broker owns each partition's canonical pages; members hand it
 * pages to make canonical and count, in ledgers of their own, which canonical pages they map. */
#define _GNU_SOURCE
#include "merge/partitions_broker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "merge/page_hash.h"
#include "merge/partition_files.h"

#define MVP_MAX_PARTITIONS 64 /* each one reserves ~4.3 GiB of the broker's address space */

struct mvp_member {
	uint64_t id;
	const void *owner;
	uint32_t slot;
	uint8_t *map; /* the member file, MV_PART_MEMBER_SIZE bytes */
	uint64_t last_frees;
};

enum { C_FREE = 0, C_LIVE = 1, C_PINNED = 2 };

struct mvp_part {
	char name[MV_PART_NAME_MAX];
	uid_t uid;
	int fd, ro_fd, hints_fd;
	uint8_t *map;
	struct mvm_part_head *head;
	struct mvm_part_slot *index;
	uint8_t *store;
	uint64_t *hashes; /* the full hash of each canonical page (the index keeps only a tag) */
	uint8_t *state;   /* C_* per id */
	uint32_t *free_ids;
	uint32_t nfree, used;
	struct mvp_member *members[MV_PART_MAX_MEMBERS];
	unsigned nmembers;
	bool dirty; /* a member left or freed something: collect */
	struct mvp_part *next;
};

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* A memfd of a fixed size; seals decides whether it can still be sealed further (F_SEAL_SEAL) or not. */
static int sized_memfd(const char *name, uint64_t size, int seals)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | seals) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static void part_free(struct mvp_part *p)
{
	if (p->map)
		munmap(p->map, MV_PART_FILE_SIZE);
	if (p->hashes)
		munmap(p->hashes, (size_t)MV_PART_CAP * 8);
	if (p->state)
		munmap(p->state, MV_PART_CAP);
	if (p->free_ids)
		munmap(p->free_ids, (size_t)MV_PART_CAP * 4);
	if (p->fd >= 0)
		close(p->fd);
	if (p->ro_fd >= 0)
		close(p->ro_fd);
	if (p->hints_fd >= 0)
		close(p->hints_fd);
	free(p);
}

static struct mvp_part *part_new(const char *name, uid_t uid)
{
	struct mvp_part *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->fd = p->ro_fd = p->hints_fd = -1;
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->uid = uid;
	char fdpath[64];
	p->fd = sized_memfd("memvisor-partition", MV_PART_FILE_SIZE, 0);
	if (p->fd < 0)
		goto fail;
	p->map = mmap(NULL, MV_PART_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, p->fd, 0);
	if (p->map == MAP_FAILED) {
		p->map = NULL;
		goto fail;
	}
	/* As read-only grants are: from here on only the mapping above writes the file. A member reopening
	 * its descriptor read-write (through /proc/self/fd, after fchmod or not) can neither write, map
	 * writable, punch nor resize it. The cost: freed canonical pages cannot be punched either; their
	 * ids are reused by overwriting them here, once no member counts them. */
	if (fcntl(p->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0)
		goto fail;
	/* members get a read-only open of the same file: they can map canonical pages, never change them */
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", p->fd);
	p->ro_fd = open(fdpath, O_RDONLY | O_CLOEXEC);
	p->hints_fd = sized_memfd("memvisor-partition-hints", MV_PART_HINTS_SIZE, F_SEAL_SEAL);
	if (p->ro_fd < 0 || p->hints_fd < 0)
		goto fail;
	p->hashes = map_anon((size_t)MV_PART_CAP * 8);
	p->state = map_anon(MV_PART_CAP);
	p->free_ids = map_anon((size_t)MV_PART_CAP * 4);
	if (!p->hashes || !p->state || !p->free_ids)
		goto fail;
	p->head = (struct mvm_part_head *)p->map;
	p->index = (struct mvm_part_slot *)(p->map + MV_PART_INDEX_OFF);
	p->store = p->map + MV_PART_STORE_OFF;
	p->head->magic = MV_PART_MAGIC;
	p->head->cap = MV_PART_CAP;
	p->head->index_slots = MV_PART_INDEX_SLOTS;
	p->head->index_off = MV_PART_INDEX_OFF;
	p->head->store_off = MV_PART_STORE_OFF;
	p->head->file_size = MV_PART_FILE_SIZE;
	return p;
fail:
	part_free(p);
	return NULL;
}

static void index_insert(struct mvp_part *p, uint32_t id)
{
	uint32_t mask = MV_PART_INDEX_SLOTS - 1;
	uint64_t h = p->hashes[id];
	uint32_t j = (uint32_t)h & mask;
	while (__atomic_load_n(&p->index[j].id1, __ATOMIC_RELAXED))
		j = (j + 1) & mask;
	/* the tag first: a reader that sees the id sees its tag */
	__atomic_store_n(&p->index[j].tag, (uint32_t)(h >> 32), __ATOMIC_RELAXED);
	__atomic_store_n(&p->index[j].id1, id + 1, __ATOMIC_RELEASE);
}

static void index_remove(struct mvp_part *p, uint32_t id)
{
	uint32_t mask = MV_PART_INDEX_SLOTS - 1;
	uint32_t j = (uint32_t)p->hashes[id] & mask;
	while (p->index[j].id1 && p->index[j].id1 != id + 1)
		j = (j + 1) & mask;
	if (!p->index[j].id1)
		return;
	/* backward-shift deletion; members probing meanwhile may miss an entry once, never see a wrong id */
	uint32_t i = j;
	for (;;) {
		__atomic_store_n(&p->index[i].id1, 0, __ATOMIC_RELEASE);
		uint32_t k = i;
		for (;;) {
			k = (k + 1) & mask;
			if (!p->index[k].id1)
				return;
			uint32_t home = (uint32_t)p->hashes[p->index[k].id1 - 1] & mask;
			bool movable = (i <= k) ? (home <= i || home > k) : (home <= i && home > k);
			if (movable)
				break;
		}
		__atomic_store_n(&p->index[i].tag, p->index[k].tag, __ATOMIC_RELAXED);
		__atomic_store_n(&p->index[i].id1, p->index[k].id1, __ATOMIC_RELEASE);
		i = k;
	}
}

static struct mvp_member *find_member(struct mvp_state *s, uint64_t member_id, const void *owner, struct mvp_part **pp)
{
	for (struct mvp_part *p = s->parts; p; p = p->next)
		for (unsigned i = 0; i < MV_PART_MAX_MEMBERS; i++) {
			struct mvp_member *mb = p->members[i];
			if (mb && mb->id == member_id && mb->owner == owner) {
				*pp = p;
				return mb;
			}
		}
	return NULL;
}

static bool name_ok(const char *name)
{
	size_t n = strnlen(name, MV_PART_NAME_MAX);
	if (n == 0 || n == MV_PART_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (name[i] <= ' ' || name[i] > '~' || name[i] == '/')
			return false;
	return true;
}

int mvp_join(struct mvp_state *s, const char *name, uid_t uid, int member_fd, const void *owner, uint64_t *member_id,
	     uint32_t *slot, uint32_t *gen, int *part_fd, int *hints_fd)
{
	if (!name_ok(name))
		return -EINVAL;
	/* the member file must stay as big as it says while we have it mapped */
	struct stat st;
	int seals = fcntl(member_fd, F_GET_SEALS);
	if (fstat(member_fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)MV_PART_MEMBER_SIZE || seals < 0 ||
	    !(seals & F_SEAL_SHRINK))
		return -EINVAL;
	struct mvp_part *p = s->parts;
	while (p && strcmp(p->name, name))
		p = p->next;
	if (p && p->uid != uid)
		return -EACCES; /* never across users, root included */
	bool created = false;
	if (!p && s->nparts >= MVP_MAX_PARTITIONS)
		return -ENOSPC;
	if (!p) {
		p = part_new(name, uid);
		if (!p)
			return -ENOMEM;
		p->next = s->parts;
		s->parts = p;
		s->nparts++;
		created = true;
	}
	unsigned sl = 0;
	while (sl < MV_PART_MAX_MEMBERS && p->members[sl])
		sl++;
	struct mvp_member *mb = sl < MV_PART_MAX_MEMBERS ? calloc(1, sizeof(*mb)) : NULL;
	void *map =
		mb ? mmap(NULL, MV_PART_MEMBER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, member_fd, 0)
		   : MAP_FAILED;
	if (map == MAP_FAILED) {
		free(mb);
		if (created) {
			s->parts = p->next;
			s->nparts--;
			part_free(p);
		}
		return sl < MV_PART_MAX_MEMBERS ? -ENOMEM : -EUSERS;
	}
	mb->id = ++s->next_member_id;
	mb->owner = owner;
	mb->slot = sl;
	mb->map = map;
	p->members[sl] = mb;
	p->nmembers++;
	p->head->members[sl].gen++;
	p->head->members[sl].live = 1;
	*member_id = mb->id;
	*slot = sl;
	*gen = p->head->members[sl].gen;
	*part_fd = p->ro_fd;
	*hints_fd = p->hints_fd;
	return 0;
}

static uint32_t ledger(const struct mvp_member *mb, uint32_t id)
{
	return __atomic_load_n((const uint32_t *)(mb->map + MV_PART_LEDGER_OFF) + id, __ATOMIC_RELAXED);
}

/* Counts n sites of page id in the member's ledger for it. Collections run on this thread too, so none
 * can come between the count and the answer that tells the member the page is its to map. */
static bool count_for(struct mvp_member *mb, uint32_t id, uint32_t n)
{
	uint32_t *l = (uint32_t *)(mb->map + MV_PART_LEDGER_OFF) + id;
	/* the member's own number: a count it pushed this high only keeps its pages from merging */
	if ((__atomic_load_n(l, __ATOMIC_RELAXED) & ~MV_PART_INHERITED) > (1u << 30))
		return false;
	__atomic_fetch_add(l, n, __ATOMIC_RELAXED);
	return true;
}

/* Sites of page id counted in all members' ledgers. A member's count is its own claim: one that
 * overstates it only keeps pages of its user from merging, one that understates it only lets its own
 * sites past the limit. */
static uint64_t sharers(const struct mvp_part *p, uint32_t id)
{
	uint64_t n = 0;
	/* slots are taken lowest first: stop after the last member rather than look at all of them */
	for (unsigned i = 0, seen = 0; seen < p->nmembers; i++)
		if (p->members[i]) {
			seen++;
			n += ledger(p->members[i], id) & ~MV_PART_INHERITED;
		}
	return n;
}

/* A canonical page with these bytes and room for sites more sharers, or a new one; UINT32_MAX when the
 * store is full. Only the first few copies with the same hash are looked at: a content shared far past
 * the limit would otherwise make every request for it walk all its copies. */
static uint32_t canon_for(struct mvp_part *p, const uint8_t *page, uint32_t sites, uint32_t max_sharing)
{
	uint64_t h = mvm_page_hash(page);
	uint32_t mask = MV_PART_INDEX_SLOTS - 1, same = 0;
	for (uint32_t j = (uint32_t)h & mask; p->index[j].id1 && same < 8; j = (j + 1) & mask) {
		uint32_t id = p->index[j].id1 - 1;
		if (p->hashes[id] != h)
			continue;
		same++;
		if (sharers(p, id) + sites <= max_sharing &&
		    !memcmp(p->store + (uint64_t)id * MV_PAGE_SIZE, page, MV_PAGE_SIZE))
			return id; /* someone made it canonical already */
	}
	uint32_t id;
	if (p->nfree)
		id = p->free_ids[--p->nfree];
	else if (p->used < MV_PART_CAP)
		id = p->used++;
	else
		return UINT32_MAX; /* full: this page stays unmerged */
	memcpy(p->store + (uint64_t)id * MV_PAGE_SIZE, page, MV_PAGE_SIZE);
	p->hashes[id] = h;
	p->state[id] = C_LIVE;
	p->head->live_canon++;
	index_insert(p, id);
	return id;
}

int mvp_promote(struct mvp_state *s, uint64_t member_id, const void *owner, uint32_t n, uint32_t max_sharing,
		uint32_t *done)
{
	struct mvp_part *p;
	struct mvp_member *mb = find_member(s, member_id, owner, &p);
	if (!mb)
		return -ENOENT;
	if (n > MV_PART_STAGE || max_sharing < 2)
		return -EINVAL;
	struct mvm_part_member_head *mh = (struct mvm_part_member_head *)mb->map;
	uint8_t page[MV_PAGE_SIZE];
	uint32_t staged = 0;
	*done = 0;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t out = UINT32_MAX;
		uint32_t want = __atomic_load_n(&mh->want[k], __ATOMIC_RELAXED);
		uint32_t sites = __atomic_load_n(&mh->sites[k], __ATOMIC_RELAXED);
		if (sites < 1 || sites > 2)
			goto answer;
		if (want == MV_PART_WANT_STAGED) {
			/* copy first: the member may scribble on its staging area while we look */
			memcpy(page, mb->map + MV_PART_STAGE_OFF + (uint64_t)staged++ * MV_PAGE_SIZE, MV_PAGE_SIZE);
			out = canon_for(p, page, sites, max_sharing);
		} else if (want < p->used && p->state[want] != C_FREE) {
			/* the member compares the bytes once it is counted; a page already as shared as the
			 * limit allows sends it to another copy, made if there is none */
			out = want;
			if (sharers(p, want) + sites > max_sharing) {
				memcpy(page, p->store + (uint64_t)want * MV_PAGE_SIZE, MV_PAGE_SIZE);
				out = canon_for(p, page, sites, max_sharing);
			}
		}
		/* a new copy too: a member may claim counts of a free id, which it then keeps from merging */
		if (out != UINT32_MAX && (sharers(p, out) + sites > max_sharing || !count_for(mb, out, sites)))
			out = UINT32_MAX;
		if (out != UINT32_MAX)
			(*done)++;
	answer:
		__atomic_store_n(&mh->ids[k], out, __ATOMIC_RELAXED);
	}
	return 0;
}

static void member_drop(struct mvp_part *p, unsigned sl)
{
	struct mvp_member *mb = p->members[sl];
	/* what its fork children may still map is never freed */
	for (uint32_t id = 0; id < p->used; id++)
		if ((ledger(mb, id) & MV_PART_INHERITED) && p->state[id] != C_FREE)
			p->state[id] = C_PINNED;
	munmap(mb->map, MV_PART_MEMBER_SIZE);
	free(mb);
	p->members[sl] = NULL;
	p->nmembers--;
	p->head->members[sl].live = 0;
	p->dirty = true;
}

static void part_maybe_destroy(struct mvp_state *s, struct mvp_part *p)
{
	if (p->nmembers)
		return;
	/* no member left: the canonical pages live on only in mappings, which keep the file alive */
	for (struct mvp_part **pp = &s->parts; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	s->nparts--;
	part_free(p);
}

int mvp_leave(struct mvp_state *s, uint64_t member_id, const void *owner)
{
	struct mvp_part *p;
	struct mvp_member *mb = find_member(s, member_id, owner, &p);
	if (!mb)
		return -ENOENT;
	member_drop(p, mb->slot);
	mvp_collect(s);
	part_maybe_destroy(s, p);
	return 0;
}

void mvp_owner_gone(struct mvp_state *s, const void *owner)
{
	for (struct mvp_part *p = s->parts, *next; p; p = next) {
		next = p->next;
		for (unsigned i = 0; i < MV_PART_MAX_MEMBERS; i++)
			if (p->members[i] && p->members[i]->owner == owner)
				member_drop(p, i);
		if (!p->nmembers)
			part_maybe_destroy(s, p);
	}
	mvp_collect(s);
}

/* Does anything besides the broker map this page of the store? Members populate what they map, so a
 * site whose member lost track of it (moved by a raw mremap, say) still counts in the page's mapping
 * count, which the broker's own mapping shows in /proc/self/pagemap. A page that is not present in the
 * broker's mapping was reclaimed, which unmaps it everywhere: it is kept, to be looked at again. */
static bool mapped_elsewhere(const uint8_t *page)
{
	static int fd = -1;
	uint64_t pm;
	if (fd < 0)
		fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false; /* a non-dumpable broker of an ordinary user cannot read it: the ledgers decide */
	if (pread(fd, &pm, sizeof(pm), (off_t)((uintptr_t)page / MV_PAGE_SIZE) * 8) != sizeof(pm))
		return true;
	return !(pm & (1ull << 63)) || !(pm & (1ull << 56));
}

/* Frees canonical pages no live member's ledger counts (for reuse). One pass is enough: a member never raises a
 * count from zero itself, the broker does (mvp_promote) on this same thread, so a page a member found
 * in the index or is being given is counted before this can look at it. */
static void part_collect(struct mvp_part *p)
{
	bool changed = p->dirty;
	for (unsigned i = 0; i < MV_PART_MAX_MEMBERS; i++) {
		struct mvp_member *mb = p->members[i];
		if (!mb)
			continue;
		uint64_t f = __atomic_load_n(&((struct mvm_part_member_head *)mb->map)->frees, __ATOMIC_RELAXED);
		if (f != mb->last_frees)
			changed = true;
		mb->last_frees = f;
	}
	if (!changed)
		return;
	p->dirty = false;
	for (uint32_t id = 0; id < p->used; id++) {
		if (p->state[id] != C_LIVE)
			continue;
		bool counted = false;
		for (unsigned i = 0, seen = 0; seen < p->nmembers && p->state[id] == C_LIVE; i++)
			if (p->members[i]) {
				seen++;
				uint32_t v = ledger(p->members[i], id);
				if (v & MV_PART_INHERITED)
					p->state[id] = C_PINNED;
				counted |= v != 0;
			}
		if (counted || p->state[id] != C_LIVE)
			continue;
		if (mapped_elsewhere(p->store + (size_t)id * MV_PAGE_SIZE)) {
			p->dirty = true; /* looked at again at the next collection */
			continue;
		}
		/* its bytes stay until the id is reused: the file is sealed against punching */
		index_remove(p, id);
		p->state[id] = C_FREE;
		p->free_ids[p->nfree++] = id;
		p->head->live_canon--;
	}
}

void mvp_collect(struct mvp_state *s)
{
	for (struct mvp_part *p = s->parts; p; p = p->next)
		part_collect(p);
}

unsigned mvp_count_members(const struct mvp_state *s)
{
	unsigned n = 0;
	for (const struct mvp_part *p = s->parts; p; p = p->next)
		n += p->nmembers;
	return n;
}
