/* SPDX-License-Identifier: MIT */
/* A merge replaces pages by mapping the store over them (mmap with MAP_FIXED), which replaces whatever
 * is mapped there by then. It asks just before whether the address still holds the memory it compared,
 * and the kernel offers no way to make that question and the mmap one step: an application thread that
 * unmaps the memory and maps new memory in between would lose the new memory. The gate makes them
 * exclude each other in the process: a pass (the application's mapping change) and a closing (the
 * merge's question and mmap) never overlap. Closings are a few system calls and a pass is one, so both
 * sides wait on a futex only in the rare case that they meet.
 *
 * One 32-bit word, so that the futex sees all of it: passes in progress, closings in progress, and
 * whether anybody sleeps on it. */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "common/sys.h"
#include "merge/merge_gate.h"

#define PASS 1u
#define PASSES 0x7fffu
#define CLOSING (1u << 15)
#define CLOSINGS (0x7fffu << 15)
#define SLEEPERS (1u << 31)

static _Atomic uint32_t gate;
/* The thread's own passes and closings: a signal handler's munmap inside either must not wait for the
 * thread it interrupted, and the engine's own mapping calls inside a closing go straight through. */
static __thread unsigned gate_depth;

static void gate_sleep(uint32_t seen)
{
	uint32_t w = seen;
	if (!(w & SLEEPERS) && !atomic_compare_exchange_strong(&gate, &w, w | SLEEPERS))
		return; /* it changed: look again */
	(void)mvu_sys_futex(&gate, FUTEX_WAIT_PRIVATE, seen | SLEEPERS, NULL);
}

static void gate_wake(uint32_t now)
{
	if (now & SLEEPERS) {
		atomic_fetch_and(&gate, ~SLEEPERS);
		(void)mvu_sys_futex(&gate, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
	}
}

void mvm_gate_pass_begin(void)
{
	if (gate_depth) {
		gate_depth++;
		return;
	}
	/* The thread counts as inside only once it holds its pass: a signal handler's munmap while it
	 * waits here must wait too. */
	uint32_t w = atomic_load(&gate);
	for (;;) {
		if (w & CLOSINGS) {
			gate_sleep(w);
			w = atomic_load(&gate);
		} else if ((w & PASSES) == PASSES) { /* 32767 threads in a pass: the count is full */
			sched_yield();
			w = atomic_load(&gate);
		} else if (atomic_compare_exchange_weak(&gate, &w, w + PASS)) {
			gate_depth = 1;
			return;
		}
	}
}

void mvm_gate_pass_end(void)
{
	if (!gate_depth || --gate_depth)
		return;
	uint32_t w = atomic_fetch_sub(&gate, PASS) - PASS;
	if (!(w & PASSES))
		gate_wake(w);
}

bool mvm_gate_close(void)
{
	/* Counted as inside from the start: a signal handler's munmap on this thread while it waits for
	 * the passes would otherwise wait for this closing, that is for itself. */
	if (gate_depth++)
		return false;
	uint32_t w = atomic_fetch_add(&gate, CLOSING) + CLOSING;
	while (w & PASSES) {
		gate_sleep(w);
		w = atomic_load(&gate);
	}
	return true;
}

void mvm_gate_open(bool closed)
{
	if (gate_depth)
		gate_depth--;
	if (!closed)
		return;
	uint32_t w = atomic_fetch_sub(&gate, CLOSING) - CLOSING;
	if (!(w & CLOSINGS))
		gate_wake(w);
}

/* A forked child has one thread: the others' passes ended with them. Closings happen under a context's
 * lock, which fork takes (merge.c), so none is left. Registered at load, before any pass can be. */
static void gate_reset_in_child(void)
{
	atomic_store(&gate, 0);
	gate_depth = 0;
}

__attribute__((constructor)) static void gate_init(void)
{
	pthread_atfork(NULL, NULL, gate_reset_in_child);
}
