/* SPDX-License-Identifier: MIT */
/* The broker's durable record of Xen state ($runtime/xen.state): the domain table, the xenstore tree
 * and where each domain's grant refs stand, so a new broker after a crash or a restart keeps what live
 * processes hold. An append-only journal of whole records, rewritten from the live state (temporary file
 * and rename) once it has grown past twice what a rewrite would write. Internal to memvisord; the
 * parser and the record codecs do no I/O, so fuzz_xenrecord drives exactly the code a new broker does. */
#ifndef MV_XEN_RECORD_H
#define MV_XEN_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util.h"

enum {
	MVB_REC_DOMAIN = 'D',      /* struct mvb_rec_domain */
	MVB_REC_DOMAIN_GONE = 'G', /* u16 domid */
	MVB_REC_GRANTS = 'F',      /* u16 domid, u16 0, u32 ref floor: refs below it may have been issued */
	MVB_REC_NODE = 'N',        /* the xenstore's (xenstore.h) */
	MVB_REC_NODE_RM = 'R',
};

#define MVB_REC_MAX (1u << 20) /* bytes of one record's payload */

struct mvb_rec_domain {
	uint16_t domid;
	uint16_t reserved;
	uint32_t pid;
	uint64_t start_ticks; /* the process's start time (/proc/PID/stat), against pid reuse */
	uint64_t created_realtime_ns;
};

struct mvb_rec_grants {
	uint16_t domid;
	uint16_t reserved;
	uint32_t floor;
};

typedef void (*mvb_rec_fn)(void *ud, uint8_t kind, const uint8_t *p, size_t len);
/* Calls fn for every whole record of a journal image; stops at the first malformed or torn one (a
 * broker killed mid-append). Returns how many records were whole. */
MV_HIDDEN size_t mvb_rec_parse(const uint8_t *buf, size_t len, mvb_rec_fn fn, void *ud);
/* A record's payload as a domain (or grant floor); -EINVAL if it is not one. */
MV_HIDDEN int mvb_rec_domain_decode(const uint8_t *p, size_t len, struct mvb_rec_domain *out);
MV_HIDDEN int mvb_rec_grants_decode(const uint8_t *p, size_t len, struct mvb_rec_grants *out);

/* ---- the file (the broker's) ---- */
/* Who reads records of a kind when the broker starts. */
MV_HIDDEN void mvb_record_on(uint8_t kind, void (*fn)(const uint8_t *p, size_t len));
/* Reads dir's record and hands each record to its kind's reader; nothing is written until
 * mvb_record_begin. Returns how many records were read, or a negative errno. */
MV_HIDDEN int mvb_record_load(const char *dir);
/* Facilities that keep state in the record re-emit all of it when it is rewritten. */
MV_HIDDEN void mvb_record_dumper(void (*dump)(void));
/* Writes the live state afresh and appends every change from now on. */
MV_HIDDEN int mvb_record_begin(const char *dir);
/* One change; dropped before mvb_record_begin. */
MV_HIDDEN void mvb_record_append(uint8_t kind, const void *p, size_t len);
/* The start time of a live process, 0 if there is none with that pid. */
MV_HIDDEN uint64_t mvb_process_start(pid_t pid);

#endif
