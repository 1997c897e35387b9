/* SPDX-License-Identifier: MIT */
/* The gate between the application's mapping changes and the one step of a merge that maps a page over
 * registered memory. Internal; the pass side is exported to the preload library (MEMVISOR_PRIVATE). */
#pragma once

#include <stdbool.h>

#include "common/util.h"

/* Around an application's munmap, mmap over existing memory or mremap: waits while a merge is mapping
 * pages, and keeps new merges from mapping until mvm_gate_pass_end. Nests; async-signal-safe. */
MV_PRIVATE void mvm_gate_pass_begin(void);
MV_PRIVATE void mvm_gate_pass_end(void);

/* Around a merge's last check that its pages are still the registered memory and the mmap that replaces
 * them: waits for the mapping changes in progress and holds new ones back. Returns whether this call
 * closed the gate (false when the thread is inside a pass of its own, which it cannot wait for); give
 * that to mvm_gate_open. */
MV_HIDDEN bool mvm_gate_close(void);
MV_HIDDEN void mvm_gate_open(bool closed);
