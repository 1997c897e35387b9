/* SPDX-License-Identifier: MIT */
/* The xenstore's broker service (see broker/core.h): serves listen_fd, a listening SOCK_STREAM
 * socket. Needs the domains service. Internal to memvisord. */
#pragma once

#include "common/util.h"

MV_HIDDEN int mvb_xenstore_service_init(int listen_fd);
