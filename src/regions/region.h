/* SPDX-License-Identifier: MIT */
/* The library's region object. Internal. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ctl.h"

struct mv_region {
	atomic_int refs;
	int fd;            /* the data file: exactly the region's size */
	int ctl_fd;        /* the control file, for the broker; -1 with a private control block */
	uint64_t dev, ino; /* the data file's identity */
	void *ctl_map;
	size_t ctl_len;
	bool ctl_private; /* no broker knew the region when we adopted it: pin state is kept per process */
	struct mvr_ctl_view view;
	uint64_t size;
	char name[MV_NAME_LEN];

	/* Guarded by the client lock. */
	uint64_t broker_id;
	atomic_bool handover_wanted; /* an unpin found the connection busy: hand it over on release */
	uint64_t attached_gen;       /* connection generation it was attached under; 0: not attached */
	pid_t attached_pid;
	struct mv_region *reg_prev, *reg_next;
};

/* The one pin/unpin/status of page ranges, for the public API and the ashmem ioctls alike (each checks
 * the range by its own rules first). Inclusive page bounds, already validated against the region. */
enum mvr_pin_op { MVR_PIN, MVR_UNPIN, MVR_PIN_STATUS };
MV_HIDDEN int mvr_pin_pages(struct mv_region *r, uint64_t pg0, uint64_t pg1, enum mvr_pin_op op);

/* mv_region_new with a prefix for the memfd's name (what /proc/PID/maps shows), e.g. "dev/ashmem/". */
MV_HIDDEN int mvr_region_create(const char *name, const char *memfd_name_prefix, size_t size, struct mv_region **ret);
/* mv_region_from_fd with the control file given (ctl_fd >= 0, checked, and owned from here on), or found
 * as mv_region_from_fd does (-1). */
MV_HIDDEN int mvr_region_from_files(int fd, int ctl_fd, struct mv_region **ret);
