/* SPDX-License-Identifier: MIT */
/* The library's side of the broker connection. Internal. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "../proto/wire.h"

struct mv_region;

/* Round trip with the broker, connecting (and starting it, if allowed) first. rep_fd[] gets the reply's
 * descriptors when the type carries any (caller closes; room for as many as the type carries). -ENOTCONN without a broker; -ETIMEDOUT if
 * it does not answer in time (the connection is then dropped, never left out of step). */
MV_PRIVATE int mvc_request(uint8_t type, const void *payload, size_t len, int fd, struct mv_wire_msg *rep,
			  int *rep_fd);

/* The same for a message without payload or descriptors, from a library constructor: gives up on a
 * broker that does not answer within a few tens of milliseconds. */
MV_PRIVATE int mvc_request_early(uint8_t type);

/* Region registry: attached regions are re-attached after a reconnect or in a forked child. */
MV_HIDDEN void mvc_region_add(struct mv_region *r);
MV_HIDDEN void mvc_region_remove(struct mv_region *r);

/* Called after an unpin/pin changed the number of resident unpinned pages. Never blocks: anything
 * it has to tell the broker is sent without waiting, and dropped if the broker is not keeping up. */
MV_HIDDEN void mvc_unpinned_changed(struct mv_region *r, int64_t delta);

/* Low-level pieces shared with the CLI. */
MV_HIDDEN int mvc_connect_socket(const char *path);
MV_HIDDEN int mvc_exchange(int sock, uint32_t *seq, uint8_t type, const void *payload, size_t len, int fd,
			   struct mv_wire_msg *rep, int *rep_fd, int timeout_ms);
MV_HIDDEN int mvc_spawn_broker(void);

/* Asks the broker to put compressed pages [pg0, pg1] of region r back (a round trip; pin's slow path). */
MV_HIDDEN int mvc_restore(void *region, uint64_t pg0, uint64_t pg1);
