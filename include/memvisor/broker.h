/* SPDX-License-Identifier: MIT */
/* memvisor's admin API: what the broker knows and what it may be told, for tools and monitors
 * (memvisor(1) is built on it). The broker is the one this process's environment names
 * (MEMVISOR_RUNTIME_DIR, else $XDG_RUNTIME_DIR/memvisor, else /tmp/memvisor-UID), reached over the
 * process's one connection and started if allowed (MEMVISOR_AUTOSTART). Every function returns 0 (or
 * a count) or a negative errno: -ENOTCONN without a broker, -ETIMEDOUT when it does not answer. */
#ifndef MEMVISOR_BROKER_H
#define MEMVISOR_BROKER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "memvisor/merge.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The runtime directory this process's broker serves (whether or not one runs there now). */
int mv_broker_runtime_dir(char *buf, size_t len);

/* ---- Status: a snapshot of named counters ----
 * Names are "facility.counter" ("broker.pid", "regions.pages_pinned", "tier.restores",
 * "xen.domains", "xenstore.nodes", ...). A newer broker may report more of them; an older one fewer:
 * look counters up by name and treat -ENOENT as "not reported". */
typedef struct mv_broker_status mv_broker_status;

int mv_broker_status_new(mv_broker_status **ret);
mv_broker_status *mv_broker_status_free(mv_broker_status *s);
/* The value of one counter; -ENOENT if this broker does not report it. */
int mv_broker_status_get(const mv_broker_status *s, const char *name, uint64_t *value);
/* The same, or def when not reported. */
uint64_t mv_broker_status_value(const mv_broker_status *s, const char *name, uint64_t def);
/* Every counter in order: the name of the i-th (NULL past the end) and its value. */
size_t mv_broker_status_count(const mv_broker_status *s);
const char *mv_broker_status_entry(const mv_broker_status *s, size_t i, uint64_t *value);

/* ---- Regions the broker knows ---- */
#define MV_BROKER_MAX_HOLDERS 8
#define MV_BROKER_REGION_HELD 0x1u        /* the broker holds it and may purge it */
#define MV_BROKER_REGION_UNPURGEABLE 0x2u /* write-sealed: its pages cannot be punched */
#define MV_BROKER_REGION_NO_COMPRESS 0x4u /* opted out of the compressed tier */
struct mv_broker_region {
	uint64_t id;
	uint64_t size; /* bytes asked for */
	uint64_t pages;
	uint64_t pinned;   /* pages */
	uint64_t unpinned; /* pages, resident, compressed or being purged */
	uint64_t purged;   /* pages purged and not pinned since */
	uint64_t purged_total;
	uint64_t compressed; /* pages held in the compressed tier */
	uint64_t restores;   /* pages given back from it */
	uint32_t flags;      /* MV_BROKER_REGION_* */
	uint32_t nholders;   /* processes known to hold it (at most MV_BROKER_MAX_HOLDERS listed) */
	pid_t holders[MV_BROKER_MAX_HOLDERS];
	char name[256];
};
/* *list gets an array of *n regions (free it with free()). */
int mv_broker_regions(struct mv_broker_region **list, size_t *n);

/* ---- Domains (Xen's model: each process that asks is a domain; the broker is domain 0) ---- */
struct mv_broker_domain {
	uint32_t domid;
	pid_t pid;
	uid_t uid;
	uint64_t created_realtime_ns;
};
int mv_broker_domains(struct mv_broker_domain **list, size_t *n);
/* The calling process's domid, the domain made now if it is none yet. */
int mv_broker_domain_self(void);
/* Makes domain domid (0: any free one), named name (NULL or "": "<comm>-<pid>"; else 1..63 of
 * [A-Za-z0-9_.-]), wait for the calling process to come back after an exec (the same pid): the program
 * it becomes is that domain from its first xenstore connection or Xen call, and the domain ends with it.
 * Its fork children are new domains. Returns domid; -EEXIST if the id is taken, -EINVAL if it is
 * reserved (0 is the toolstack, 0x7ff0 up are Xen's) or the name is bad, -EBUSY if the process is
 * another domain already. */
int mv_broker_domain_reserve(uint32_t domid, const char *name);

/* ---- Merging processes ----
 * Each merge context publishes its statistics in the runtime directory as it scans; this reads them
 * (the broker is not asked, so processes that merge without it are listed too). Boards of processes
 * that died are removed. */
struct mv_broker_merger {
	pid_t pid;
	char partition[64]; /* "" for a context of its own */
	struct mv_merge_knobs knobs;
	int scanner_running;
	uint64_t updated_realtime_ns; /* as of its last scan or statistics call */
	struct mv_merge_stats stats;
};
int mv_broker_mergers(struct mv_broker_merger **list, size_t *n);

/* ---- Purging and settings ---- */
struct mv_broker_purge_result {
	uint64_t bytes;          /* purged (or compressed away) by this request */
	uint64_t runs;           /* unpinned ranges it took */
	uint64_t ns;             /* time the broker spent */
	uint64_t unpinned_bytes; /* resident unpinned memory left */
};
/* bytes: at least that much, least recently unpinned first, or MV_PURGE_ALL (memvisor.h).
 * res may be NULL; res_size is sizeof(*res) as the caller knows it. */
int mv_broker_purge(uint64_t bytes, struct mv_broker_purge_result *res, size_t res_size);

enum mv_broker_setting {
	MV_BROKER_UNPINNED_BUDGET = 1,   /* bytes of resident unpinned memory; MV_BROKER_NO_LIMIT: none */
	MV_BROKER_MIN_AVAILABLE = 2,     /* purge when MemAvailable drops below these bytes; 0: off */
	MV_BROKER_COMPRESS = 3,          /* 1: keep reclaimed pages compressed first; 0: drop at once */
	MV_BROKER_COMPRESSED_BUDGET = 4, /* bytes the compressed tier may hold */
};
#define MV_BROKER_NO_LIMIT UINT64_MAX
int mv_broker_set(enum mv_broker_setting setting, uint64_t value);
/* A size as the broker and the tools take it: "4096", "64K", "64MiB", "1G", "2GB" (powers of 1024). */
int mv_broker_parse_size(const char *text, uint64_t *bytes);

#ifdef __cplusplus
}
#endif

#endif
