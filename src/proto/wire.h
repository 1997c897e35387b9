/* SPDX-License-Identifier: MIT */
/* memvisor's broker protocol: the one definition shared by memvisord, libmemvisor and the tools.
 *
 * Transport: AF_UNIX SOCK_SEQPACKET at $RUNTIME_DIR/broker.sock. Every message is one packet:
 * a fixed header, a fixed-size payload per type, and a fixed number of SCM_RIGHTS descriptors per type.
 * Requests carry seq; the reply (type | MV_MSG_REPLY) echoes it with status 0 or -errno. Anything
 * else is a protocol error. Both peers run on the same host, so integers are host-endian.
 */
#pragma once

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

#define MV_WIRE_MAGIC 0x564du /* "MV" */
#define MV_WIRE_VERSION 1u
#define MV_WIRE_MAX_PACKET 512u

enum mvw_msg_type {
	MV_MSG_HELLO = 1,  /* -> reply + fd: the bulletin page */
	MV_MSG_ATTACH = 2, /* 2 fds: region data, control. "I hold this region; watch it and purge it." */
	MV_MSG_DETACH = 3, /* this client no longer holds the region */
	MV_MSG_KICK = 4,   /* one-way: the unpinned budget looks exceeded */
	MV_MSG_PURGE = 5,
	MV_MSG_STATUS = 6,
	MV_MSG_REGIONS = 7, /* -> reply + fd: sealed memfd with region records */
	MV_MSG_CONFIG = 8,
	MV_MSG_RESTORE = 9,        /* fd: region. Put compressed pages [pg0, pg1] back into the region. */
	MV_MSG_MERGE_JOIN = 10,    /* fd: member file -> reply + 2 fds: partition file (read-only), hints */
	MV_MSG_MERGE_PROMOTE = 11, /* make the member's staged pages canonical */
	MV_MSG_MERGE_LEAVE = 12,
	MV_MSG_DOMAIN = 13,                  /* -> this process's domid, the domain created on first use */
	MV_MSG_DOMAINS = 14,                 /* -> reply + fd: sealed memfd with domain records */
	MV_MSG_EVTCHN_BIND_UNBOUND = 15,     /* -> port + 2 fds: the end's receive eventfd, the peer's */
	MV_MSG_EVTCHN_BIND_INTERDOMAIN = 16, /* -> port + 2 fds, as above */
	MV_MSG_EVTCHN_UNBIND = 17,
	MV_MSG_GNT_SHARE = 18,      /* -> first ref, share id, the pages' place in the pool named */
	MV_MSG_GNT_UNSHARE = 19,    /* end the grants of some pages of a share */
	MV_MSG_GNT_MAP = 20,        /* -> map id, run + fd: the granted pages' memfd (read-only if so granted) */
	MV_MSG_GNT_UNMAP = 21,      /* the broker fires the mapping's unmap notification */
	MV_MSG_STATS = 22,          /* -> reply + fd: sealed memfd of named counters (see mvw_stats_head) */
	MV_MSG_EVTCHN_RESTORE = 23, /* 2 fds: a port's receive eventfd and its peer's, for a new broker */
	MV_MSG_GNT_POOL = 24,       /* -> pool id + fd: a new pool for grants to one domain, read-write */
	MV_MSG_REGION_CTL = 25,     /* fd: a region's data file -> reply + fd: its control file */
	MV_MSG_DOMAIN_CLAIM = 26,   /* -> domid: become (or reserve for an exec) a chosen domain */
	MV_MSG_AREA_BIND = 27,      /* one-way, 3 fds: an ashmem area's file, its new region's data, control */
	MV_MSG_AREA_GET = 28,       /* fd: an ashmem area's file -> reply + 2 fds: its region's data, control */
	MV_MSG_GNT_TABLE_POOL = 29, /* -> pool id, ref window + 2 fds: a pool and its grant table, for the granter */
	MV_MSG_GNT_TABLE_OPEN = 30, /* -> the same for a mapper of one of its refs: pool (read-only if so), table */
	MV_MSG_TYPE_MAX = 31,
};
#define MV_MSG_REPLY 0x80u

struct mvw_hdr {
	uint16_t magic;
	uint8_t version;
	uint8_t type;
	uint32_t seq;
	int32_t status;
	uint32_t len; /* payload bytes that follow */
};

struct mvw_req_hello {
	uint32_t version;
	uint32_t flags;
};
struct mvw_rep_hello {
	uint32_t version;
	int32_t broker_pid;
	uint32_t page_size;
	uint32_t reserved;
};

#define MV_ATTACH_REQ_ONEWAY 0x1u /* request flag: sent from the unpin path, no reply wanted */
struct mvw_req_attach {
	uint32_t flags;
	int32_t ctl_fdnum; /* where the sender keeps the control file: the broker finds it there for others */
};
#define MV_ATTACH_NEW 0x1u  /* reply flag: the broker did not know this region */
#define MV_ATTACH_HELD 0x2u /* reply flag: the broker keeps an fd to purge it */
struct mvw_rep_attach {
	uint64_t region_id;
	uint32_t flags;
	uint32_t reserved;
};

struct mvw_req_detach {
	uint64_t region_id;
};

enum mvw_purge_mode {
	MV_PURGE_BYTES = 1,
	MV_PURGE_EVERYTHING = 2,
	MV_PURGE_BUDGET = 3, /* enforce the configured budget now (used as a barrier by tests) */
};
struct mvw_req_purge {
	uint32_t mode;
	uint32_t reserved;
	uint64_t bytes;
};
struct mvw_rep_purge {
	uint64_t pages;
	uint64_t runs;
	uint64_t ns;
	uint64_t unpinned_left;
};

struct mvw_rep_status {
	int32_t broker_pid;
	uint32_t uid;
	uint64_t uptime_ns;
	uint64_t clients;
	uint64_t regions;
	uint64_t regions_held;
	uint64_t pages_total;
	uint64_t pages_pinned;
	uint64_t pages_unpinned;
	uint64_t pages_purged;
	uint64_t purged_pages_total;
	uint64_t purge_runs;
	uint64_t purges_pressure;
	uint64_t purges_budget;
	uint64_t purges_explicit;
	uint64_t unpinned_budget;
	uint64_t min_available;
	uint64_t psi_events;
	uint64_t broker_heap_bytes; /* bytes the broker holds for region bookkeeping */
	uint32_t psi_enabled;
	uint32_t inotify_overflows;
	/* The compressed tier. */
	uint32_t compress_enabled;
	uint32_t reserved;
	uint64_t pages_compressed;    /* held compressed right now */
	uint64_t compressed_bytes;    /* their compressed size */
	uint64_t compressed_mem_used; /* what the store holds, metadata included */
	uint64_t compressed_budget;
	uint64_t compressions_total;
	uint64_t restores_total;
	uint64_t evictions_total;
	uint64_t incompressible_total;
	/* Xen's model: what the domains hold right now. */
	uint64_t domains;
	uint64_t evtchn_channels;
	uint64_t gnt_shares;
	uint64_t gnt_maps;
	uint64_t xs_connections;
	uint64_t xs_watches;
	uint64_t xs_transactions;
	uint64_t xs_nodes;
};

/* Sent by a pinner for the compressed pages of the range it is pinning. */
struct mvw_req_restore {
	uint64_t pg0, pg1;
};
struct mvw_rep_restore {
	uint64_t restored; /* back in the region, intact, and pinned for the pinner */
	uint64_t lost;     /* their data was evicted or never known: now purged */
};

struct mvw_req_merge_join {
	char name[64]; /* NUL-terminated partition name */
};
struct mvw_rep_merge_join {
	uint64_t member_id;
	uint32_t slot;
	uint32_t gen;
};
struct mvw_req_merge_promote {
	uint64_t member_id;
	uint32_t n;
	uint32_t max_sharing; /* the member's max_page_sharing: sites per canonical page in all members, >= 2 */
};
struct mvw_rep_merge_promote {
	uint32_t done;
	uint32_t reserved;
};
struct mvw_req_merge_leave {
	uint64_t member_id;
};

/* Domains: every client process is one, with a 16-bit domid. 0 is the broker itself; as in Xen, ids
 * from 0x7ff0 up are reserved. A domain ends with its process's connection. */
#define MV_DOMID_SELF 0
#define MV_DOMID_FIRST 1
#define MV_DOMID_LAST 0x7fef
struct mvw_rep_domain {
	uint32_t domid;
	uint32_t reserved;
};
/* A chosen domid (0: any free one) and name ("" for the default, else 1..63 of [A-Za-z0-9_.-]).
 * EEXIST if the id is taken, EINVAL if it is reserved or the name is bad, EBUSY if the process is
 * another domain already. With MV_DOMAIN_FOR_EXEC the domain is not the connection's but waits for the
 * process (the same pid and start time, as after an exec) to come, and ends with it. */
#define MV_DOMAIN_FOR_EXEC 1u
#define MV_DOMAIN_NAME_MAX 64
struct mvw_req_domain_claim {
	uint32_t domid;
	uint32_t flags;
	char name[MV_DOMAIN_NAME_MAX];
};
/* Event channels: ports are per domain, 1..MV_EVTCHN_MAX_PORT (0 is never a port). */
#define MV_EVTCHN_MAX_PORT 4095
#define MV_DOMID_SELF_XEN 0x7ff0 /* Xen's DOMID_SELF */
struct mvw_req_evtchn_bind {
	uint32_t remote_domid;
	uint32_t remote_port; /* interdomain only */
};
struct mvw_rep_evtchn_bind {
	uint32_t port;
	uint32_t reserved;
};
struct mvw_req_evtchn_unbind {
	uint32_t port;
	uint32_t reserved;
};
/* A port the process held before the broker restarted: bound to, or waiting for, remote_domid. */
struct mvw_req_evtchn_restore {
	uint32_t port;
	uint32_t remote_domid;
};

/* Grant tables. A share is pages granted by one domain to another with consecutive refs. Its pages lie
 * in a pool: a memfd the broker holds for one granter, one grantee and one permission, so a pool only
 * ever holds pages granted to that grantee that way. A grant is mapped only by the domain it names; a
 * read-only pool is sealed against writable mappings before a mapper gets it, so the mapper's kernel
 * enforces it. The granter maps a pool whole when it gets it, before any grant in it exists. */
#define MV_GNT_FIRST_REF 8 /* Xen reserves 0-7 */
#define MV_GNT_MAX_REF 0x7ffffffu
#define MV_GNT_SHARE_LIMIT 1024u /* live grants per granting domain (Linux gntalloc's default) */
#define MV_GNT_MAP_MAX_REFS 96u  /* refs one MAP request names */
#define MV_GNT_WRITABLE 0x1u
#define MV_GNT_MAP_TRANSIENT 0x2u /* grant copy: no mapping is recorded */
#define MV_GNT_NOTIFY_CLEAR_BYTE 0x1u
#define MV_GNT_NOTIFY_SEND_EVENT 0x2u
struct mvw_req_gnt_share {
	uint32_t domid; /* the grantee */
	uint32_t count;
	uint32_t flags; /* MV_GNT_WRITABLE */
	uint32_t notify_flags;
	uint32_t notify_offset; /* bytes from the start of the share */
	uint32_t notify_port;
	uint64_t pool_id; /* the granter's pool for domid and flags; ESTALE if it is not, EXFULL if full */
};
struct mvw_rep_gnt_share {
	uint64_t share_id;
	uint32_t first_ref;
	uint32_t page; /* where the share's pages begin in the pool */
};
#define MV_GNT_UNSHARE_KEEP 0x1u /* the granter still maps the pages: do not reuse them while it lives */
struct mvw_req_gnt_unshare {
	uint64_t share_id;
	uint32_t page; /* first page of the share to end */
	uint32_t count;
	uint32_t flags; /* MV_GNT_UNSHARE_KEEP */
	uint32_t reserved;
};
struct mvw_req_gnt_pool {
	uint32_t domid; /* the grantee */
	uint32_t flags; /* MV_GNT_WRITABLE */
};
struct mvw_rep_gnt_pool {
	uint64_t pool_id;
	uint32_t pages;
	uint32_t reserved;
};
struct mvw_req_gnt_map {
	uint32_t domid; /* the granter */
	uint32_t flags; /* MV_GNT_WRITABLE, MV_GNT_MAP_TRANSIENT */
	uint32_t count; /* refs named below, 1..MV_GNT_MAP_MAX_REFS */
	uint32_t notify_flags;
	uint32_t notify_offset; /* bytes from the start of refs[0]'s page */
	uint32_t notify_port;
	uint32_t refs[MV_GNT_MAP_MAX_REFS];
};
struct mvw_rep_gnt_map {
	uint64_t map_id; /* 0 for a transient map */
	uint32_t run;    /* refs[0..run) are pages page..page+run of the fd */
	uint32_t page;
};
struct mvw_req_gnt_unmap {
	uint64_t map_id;
};
/* A table pool is a pool whose grants live in a grant table (src/xen/gnttab_table.h), a memfd the
 * granter and the pool's one grantee both map: the granter shares and ends grants in it, the grantee
 * maps them and counts its mappings there, neither asking the broker. The pool owns a window of refs,
 * base .. base + window: a ref names slot (ref - base) % pages. */
struct mvw_req_gnt_table_pool {
	uint32_t domid; /* the grantee */
	uint32_t flags; /* MV_GNT_WRITABLE */
};
struct mvw_req_gnt_table_open {
	uint32_t domid; /* the granter */
	uint32_t ref;   /* a ref it granted us, live now */
	uint32_t flags; /* MV_GNT_WRITABLE: we mean to write (EINVAL for a read-only pool) */
	uint32_t reserved;
};
struct mvw_rep_gnt_table {
	uint64_t pool_id;
	uint32_t base_ref, window;
	uint32_t pages; /* slots in the table, pages in the pool */
	uint32_t flags; /* MV_GNT_WRITABLE: the pool's permission */
};

#define MV_DOMAINS_MAGIC 0x534e4d44564dull /* "MVDMNS" */
struct mvw_domains_head {
	uint64_t magic;
	uint32_t count;
	uint32_t rec_size;
};
struct mvw_domain_rec {
	uint32_t domid;
	int32_t pid;
	uint32_t uid;
	uint32_t reserved;
	uint64_t created_realtime_ns;
};

enum mvw_config_key {
	MV_CONFIG_UNPINNED_BUDGET = 1,   /* bytes; UINT64_MAX: no budget */
	MV_CONFIG_MIN_AVAILABLE = 2,     /* bytes of MemAvailable below which to purge; 0: off */
	MV_CONFIG_COMPRESS = 3,          /* 0/1: keep unpinned pages compressed before dropping them */
	MV_CONFIG_COMPRESSED_BUDGET = 4, /* bytes the compressed store may hold */
};
struct mvw_req_config {
	uint32_t key;
	uint32_t reserved;
	uint64_t value;
};

/* The STATS memfd: a mvw_stats_head, then count records of rec_size bytes, each a NUL-terminated name
 * and a value. Names are stable ("regions.pages_pinned"); a facility adds one without a protocol change
 * and readers skip the names they do not know. STATUS is the same counters as a fixed struct, for
 * clients of its time. */
#define MV_STATS_MAGIC 0x5354415453564du /* "MVSTATS" */
#define MV_STATS_NAME_LEN 48
struct mvw_stats_head {
	uint64_t magic;
	uint32_t count;
	uint32_t rec_size;
};
struct mvw_stats_rec {
	char name[MV_STATS_NAME_LEN];
	uint64_t value;
};
/* Checks a STATS image: its record count, or -EPROTO. Names need not be terminated: take sizeof(name) - 1. */
MV_HIDDEN int mvw_stats_check(const void *buf, size_t len, struct mvw_stats_head *head);
/* Sets the field of a STATUS reply that a named counter stands for; 0 if it is one, -ENOENT if not. */
MV_HIDDEN int mvw_status_set(struct mvw_rep_status *s, const char *name, uint64_t value);

/* Records in the REGIONS memfd, after a mvw_regions_head. */
#define MV_REGIONS_MAGIC 0x53474552564du /* "MVREGS" */
#define MV_REC_MAX_HOLDERS 8
struct mvw_regions_head {
	uint64_t magic;
	uint32_t count;
	uint32_t rec_size;
};
struct mvw_region_rec {
	uint64_t id;
	uint64_t size;
	uint64_t npages;
	uint64_t pinned;
	uint64_t unpinned;
	uint64_t purged;
	uint64_t purged_total;
	uint64_t compressed;
	uint64_t restores;
	uint32_t flags; /* MV_ATTACH_HELD, MV_CTL_F_* << 8 */
	uint32_t nholders;
	int32_t holders[MV_REC_MAX_HOLDERS];
	char name[256];
};

/* The bulletin: one page the broker shares with every client, read-write. Only hints live here: the
 * broker recomputes the truth and never trusts these values for anything but waking up. */
#define MV_BULLETIN_MAGIC 0x4e4954454c4c5542ull /* "BULLETIN" */
struct mvw_bulletin {
	uint64_t magic;
	_Atomic int64_t unpinned_hint; /* resident unpinned pages, all regions */
	_Atomic uint64_t budget_pages; /* 0: no budget */
	_Atomic uint32_t kick_pending;
	int32_t broker_pid;
};

/* A decoded packet. The payload is copied out so callers see aligned structs. */
struct mvw_msg {
	struct mvw_hdr hdr;
	union {
		struct mvw_req_hello hello;
		struct mvw_rep_hello hello_rep;
		struct mvw_req_attach attach;
		struct mvw_rep_attach attach_rep;
		struct mvw_req_detach detach;
		struct mvw_req_purge purge;
		struct mvw_rep_purge purge_rep;
		struct mvw_rep_status status_rep;
		struct mvw_req_config config;
		struct mvw_req_restore restore;
		struct mvw_rep_restore restore_rep;
		struct mvw_req_merge_join merge_join;
		struct mvw_rep_merge_join merge_join_rep;
		struct mvw_req_merge_promote merge_promote;
		struct mvw_rep_merge_promote merge_promote_rep;
		struct mvw_req_merge_leave merge_leave;
		struct mvw_rep_domain domain_rep;
		struct mvw_req_domain_claim domain_claim;
		struct mvw_req_evtchn_bind evtchn_bind;
		struct mvw_rep_evtchn_bind evtchn_bind_rep;
		struct mvw_req_evtchn_unbind evtchn_unbind;
		struct mvw_req_evtchn_restore evtchn_restore;
		struct mvw_req_gnt_share gnt_share;
		struct mvw_rep_gnt_share gnt_share_rep;
		struct mvw_req_gnt_unshare gnt_unshare;
		struct mvw_req_gnt_map gnt_map;
		struct mvw_rep_gnt_map gnt_map_rep;
		struct mvw_req_gnt_unmap gnt_unmap;
		struct mvw_req_gnt_pool gnt_pool;
		struct mvw_rep_gnt_pool gnt_pool_rep;
		struct mvw_req_gnt_table_pool gnt_table_pool;
		struct mvw_req_gnt_table_open gnt_table_open;
		struct mvw_rep_gnt_table gnt_table_rep;
		unsigned char raw[MV_WIRE_MAX_PACKET];
	} u;
	unsigned nfds;
};

/* Checks a packet against the protocol table: magic, version, known type, direction, exact payload
 * size and descriptor count. -EPROTO for a malformed packet, -EPROTONOSUPPORT for another version. */
MV_HIDDEN int mvw_decode(const void *buf, size_t len, unsigned nfds, int want_reply, struct mvw_msg *out);

/* Builds a packet into buf (at least MV_WIRE_MAX_PACKET); returns its length. */
MV_HIDDEN size_t mvw_encode(void *buf, uint8_t type, uint32_t seq, int32_t status, const void *payload, size_t len);

/* Expected payload size and descriptor count; -1 for an unknown type. reply_fds is the count on success. */
MV_HIDDEN int mvw_expect(uint8_t type, int reply, size_t *len, unsigned *nfds);

MV_HIDDEN const char *mvw_type_name(uint8_t type);

/* Validates a DOMAINS memfd image; returns the record count or -EPROTO. */
MV_HIDDEN int mvw_domains_check(const void *buf, size_t len);

/* Validates a REGIONS memfd image; returns the record count or -EPROTO. */
MV_HIDDEN int mvw_regions_check(const void *buf, size_t len);
