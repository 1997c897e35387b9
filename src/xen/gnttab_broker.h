/* SPDX-License-Identifier: MIT */
/* memvisord: grant tables. Internal to the broker. */
#ifndef MV_XEN_GNTTAB_BROKER_H
#define MV_XEN_GNTTAB_BROKER_H

#include <stdint.h>

#include "proto/wire.h"

struct mvg_pool;
struct mvg_share;
struct mvg_map;

/* Sends an event from (dom, port) to the other end of its channel; nothing if it is not bound. */
typedef void (*mvg_notify_fn)(uint16_t dom, uint32_t port);

struct mvg_state {
	struct mvg_pool *pools;
	struct mvg_share *shares;
	struct mvg_map *maps;
	uint64_t next_id;
	uint32_t next_ref[MV_DOMID_LAST + 1]; /* where each domain's next refs are looked for */
	uint32_t live[MV_DOMID_LAST + 1];     /* live grants per granting domain */
	uint32_t kept[MV_DOMID_LAST + 1];     /* ended pages each granting domain still maps */
	mvg_notify_fn notify;
	uint64_t npools, nshares, nmaps;
};

/* Pages each domain has mapped of others' grants, into maps[MV_DOMID_LAST + 1] (zeroed by the caller). */
void mvg_mapped_pages(const struct mvg_state *s, uint32_t *maps);

/* owner is the connection the records die with. A new pool for the granter's grants to req->domid;
 * *fd is borrowed from the pool: the caller sends it and must not close it. */
int mvg_pool(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_pool *req,
	     struct mvw_rep_gnt_pool *rep, int *fd);
int mvg_share(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_share *req,
	      struct mvw_rep_gnt_share *rep);
int mvg_unshare(struct mvg_state *s, void *owner, const struct mvw_req_gnt_unshare *req);
/* *fd is borrowed from the share: the caller sends it and must not close it. */
int mvg_map(struct mvg_state *s, void *owner, uint16_t mapper, const struct mvw_req_gnt_map *req,
	    struct mvw_rep_gnt_map *rep, int *fd);
int mvg_unmap(struct mvg_state *s, void *owner, uint64_t map_id);
/* Table pools (gnttab_table.h): a new one for the granter, fds[0] its pool, fds[1] its table; and the
 * same for a mapper of a ref granted to it in one (-ENOENT: the ref is not a table pool's). The fds are
 * borrowed from the pool. */
int mvg_table_pool(struct mvg_state *s, void *owner, uint16_t granter, const struct mvw_req_gnt_table_pool *req,
		   struct mvw_rep_gnt_table *rep, int *fds);
int mvg_table_open(struct mvg_state *s, uint16_t mapper, const struct mvw_req_gnt_table_open *req,
		   struct mvw_rep_gnt_table *rep, int *fds);
/* Table pools that neither take grants (retired, or their granter gone) nor hold any go. */
void mvg_sweep(struct mvg_state *s);
/* What the tables hold: shares alive, mapping requests, live grants per granting domain (or NULL). */
void mvg_table_counts(const struct mvg_state *s, uint64_t *shares, uint64_t *maps, uint32_t *live);
/* The domain is gone: the mappings it counted in tables are let go. */
void mvg_grantee_gone(struct mvg_state *s, uint16_t grantee);
/* The connection is gone: its mappings' and shares' notifications fire, and their records go. */
void mvg_owner_gone(struct mvg_state *s, void *owner);

#endif
