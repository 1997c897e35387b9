/* SPDX-License-Identifier: MIT */
/* The xenstore's broker service (see broker/core.h): serves listen_fd, a listening SOCK_STREAM
 * socket. Needs the domains service. Internal to memvisord. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/util.h"
#include "xenstore.h"

struct mvb_xenstore_config {
	struct mvx_limits dom0;     /* domain 0's limits (guests keep Xen's defaults) */
	uint32_t max_conns_per_pid; /* 0: the default (64) */
	bool toolstack_socket_only; /* domain 0 only through the toolstack socket */
};

/* listen_fd: the common socket; toolstack_fd (or -1): the toolstack's, where a process that is not a
 * domain and descends from none is domain 0. cfg may be NULL: the defaults. */
MV_HIDDEN int mvb_xenstore_service_init(int listen_fd, int toolstack_fd, const struct mvb_xenstore_config *cfg);
/* The defaults, to be changed by options before init. */
MV_HIDDEN void mvb_xenstore_config_defaults(struct mvb_xenstore_config *cfg);
