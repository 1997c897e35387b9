/* SPDX-License-Identifier: MIT */
/* Address space of the engine's own for its short-lived mappings: pages detached during a merge, the
 * copies made while unmerging or rejoining a range. Where mmap chooses, such a mapping can land in a
 * hole an application thread has just made by unmapping its memory, and when that thread maps its
 * memory again there with MAP_FIXED, it replaces the engine's mapping: the engine would then write into,
 * move away or unmap the application's new memory (the stress test lost a page of a region this way,
 * or found another thread's bytes in it, in about 1 run of 4 under ASan). So the engine reserves room
 * once, inaccessible and unbacked, and maps over its own reservation; giving a mapping back maps the
 * reservation over it again, so no hole ever opens there. The store of canonical pages grows into it
 * too (mremap onto room taken for it). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "merge_internal.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* address space only: nothing is committed for it */
#define ROOM_BYTES (sizeof(void *) >= 8 ? (size_t)64 << 30 : (size_t)256 << 20)
#define ROOM_USES 64

static pthread_mutex_t room_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t room_base;
static bool room_unavailable;
static struct {
	uintptr_t start, end;
} room_uses[ROOM_USES]; /* by address */
static unsigned room_n;

static bool in_room(uintptr_t a)
{
	uintptr_t b = __atomic_load_n(&room_base, __ATOMIC_ACQUIRE); /* set once, under the lock */
	return b && a >= b && a < b + ROOM_BYTES;
}

/* First fit among the uses; called locked. */
static uintptr_t room_take(size_t len)
{
	if (!room_base && !room_unavailable) {
		void *p = mmap(NULL, ROOM_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED)
			room_unavailable = true; /* a small address space limit (RLIMIT_AS): mmap's choice then */
		else
			__atomic_store_n(&room_base, (uintptr_t)p, __ATOMIC_RELEASE);
	}
	if (!room_base || room_n == ROOM_USES || len > ROOM_BYTES)
		return 0;
	uintptr_t at = room_base;
	unsigned i = 0;
	for (; i < room_n; i++) {
		if (room_uses[i].start - at >= len)
			break;
		at = room_uses[i].end;
	}
	if (i == room_n && room_base + ROOM_BYTES - at < len)
		return 0;
	memmove(&room_uses[i + 1], &room_uses[i], (room_n - i) * sizeof(room_uses[0]));
	room_uses[i].start = at;
	room_uses[i].end = at + len;
	room_n++;
	return at;
}

static void room_drop(uintptr_t a)
{
	for (unsigned i = 0; i < room_n; i++)
		if (room_uses[i].start == a) {
			memmove(&room_uses[i], &room_uses[i + 1], (room_n - i - 1) * sizeof(room_uses[0]));
			room_n--;
			return;
		}
}

void *mvm_room_map(size_t len, int prot, int flags)
{
	pthread_mutex_lock(&room_lock);
	uintptr_t a = room_take(len);
	pthread_mutex_unlock(&room_lock);
	if (!a)
		return mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
	/* libc's mmap, so that a sanitizer sees fresh memory */
	void *p = mmap((void *)a, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | flags, -1, 0);
	if (p == MAP_FAILED) {
		/* a kernel may have unmapped the reservation before failing: fill the hole, if still ours */
		int err = errno;
		mvm_room_moved((void *)a, len);
		errno = err;
	}
	return p;
}

void *mvm_room_take(size_t len)
{
	pthread_mutex_lock(&room_lock);
	uintptr_t a = room_take(len);
	pthread_mutex_unlock(&room_lock);
	return (void *)a;
}

void mvm_room_unmap(void *p, size_t len)
{
	uintptr_t a = (uintptr_t)p;
	if (!in_room(a)) {
		(void)munmap(p, len);
		return;
	}
	/* the reservation goes back over it: the room never has a hole */
	if (mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
		return; /* out of mappings: the room stays taken */
	pthread_mutex_lock(&room_lock);
	room_drop(a);
	pthread_mutex_unlock(&room_lock);
}

void mvm_room_moved(void *p, size_t len)
{
	uintptr_t a = (uintptr_t)p;
	if (!in_room(a))
		return;
	/* Moving the mapping away left a hole after all. If another thread's mmap took it meanwhile, that
	 * mapping is not ours to replace, and the room stays taken. */
	void *r = mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED)
		return;
	if (r != p) { /* a kernel before 4.17 takes the flag for a hint */
		(void)munmap(r, len);
		return;
	}
	pthread_mutex_lock(&room_lock);
	room_drop(a);
	pthread_mutex_unlock(&room_lock);
}

static void room_fork_prepare(void)
{
	pthread_mutex_lock(&room_lock);
}

static void room_fork_release(void)
{
	pthread_mutex_unlock(&room_lock);
}

__attribute__((constructor)) static void room_init(void)
{
	pthread_atfork(room_fork_prepare, room_fork_release, room_fork_release);
}
