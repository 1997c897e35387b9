/* SPDX-License-Identifier: MIT */
/* The xenstore the broker serves: Xen's tree, permissions, watches, transactions and quotas, speaking the
 * wire protocol of xen/io/xs_wire.h. No I/O here: the broker feeds each connection's bytes in and sends
 * what comes out, so the fuzzer drives exactly the code clients do. Internal. */
#ifndef MV_XENSTORE_STORE_H
#define MV_XENSTORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mvx_store;
struct mvx_conn;

/* What one domain may hold. Guests get Xen's defaults (xenstored's quota-* options); domain 0, which Xen
 * does not limit, gets generous but finite ones (the broker's --xs-dom0-* options). */
struct mvx_limits {
	uint32_t nodes;        /* nodes a domain may own */
	uint32_t value_size;   /* bytes of one value */
	uint32_t watches;      /* per domain; domain 0's per process */
	uint32_t transactions; /* open at once, per domain; domain 0's per process */
	uint32_t perms;        /* entries in a permission list */
	uint32_t tx_entries;   /* nodes one transaction may look at, and changes it may make */
};

struct mvx_quota {
	struct mvx_limits guest, dom0;
	size_t out_max; /* bytes of replies and events a connection may leave unread */
};

/* Xen's defaults for guests, and domain 0's. */
void mvx_default_quota(struct mvx_quota *q);
struct mvx_store *mvx_store_new(void);
void mvx_store_free(struct mvx_store *s);
struct mvx_quota *mvx_store_quota(struct mvx_store *s);
/* Whether a domain exists (XS_IS_DOMAIN_INTRODUCED); NULL: only the ones introduced here. */
void mvx_store_set_domain_check(struct mvx_store *s, bool (*alive)(uint32_t domid));

/* A domain came or went: /local/domain/<id> with domid and name, and the special watches. */
int mvx_domain_introduce(struct mvx_store *s, uint32_t domid, const char *name);
void mvx_domain_release(struct mvx_store *s, uint32_t domid);

/* A connection acting for domid (0: privileged). */
struct mvx_conn *mvx_conn_new(struct mvx_store *s, uint32_t domid, void *user);
void mvx_conn_free(struct mvx_conn *c);
/* The process behind a connection: domain 0's watch and transaction quotas are counted per process,
 * since every toolstack process is domain 0; a guest's are counted over all of its connections. */
void mvx_conn_set_pid(struct mvx_conn *c, int32_t pid);
void *mvx_conn_user(struct mvx_conn *c);
uint32_t mvx_conn_domid(struct mvx_conn *c);

/* Bytes from the client. Complete requests are answered at once; a partial one waits for more.
 * -EPROTO: the client broke the protocol (a message longer than XENSTORE_PAYLOAD_MAX) and must be
 * disconnected; -ENOBUFS: it left too much output unread. */
int mvx_conn_input(struct mvx_conn *c, const void *buf, size_t len);

/* Output waiting for the client (replies and watch events), and consuming what was sent. */
size_t mvx_conn_pending(struct mvx_conn *c, const void **buf);
void mvx_conn_consume(struct mvx_conn *c, size_t n);
/* Connections that got output since the last call (watch events land on others), one at a time. */
struct mvx_conn *mvx_store_next_dirty(struct mvx_store *s);
/* Connections whose unread output passed the limit: the caller drops them. */
struct mvx_conn *mvx_store_next_overflowed(struct mvx_store *s);

/* ---- durability (the broker's record, xen/xen_record.h) ----
 * Every change to the live tree is told to fn as a record: kind 'N' (a node as it now is: path, value
 * and permissions) or 'R' (a node and its subtree removed). Transactions are told at commit. */
void mvx_store_set_journal(struct mvx_store *s, void (*fn)(void *ud, uint8_t kind, const void *p, size_t len),
			   void *ud);
/* Every node, as 'N' records, parents first. */
void mvx_store_dump(struct mvx_store *s);
/* One record (untrusted: from a file a dead broker wrote) applied to the tree; -EINVAL if it is not a
 * valid one, and then nothing changed. */
int mvx_store_replay(struct mvx_store *s, uint8_t kind, const void *p, size_t len);
/* A domain restored with its nodes: introduced, without laying its directory out again. */
void mvx_domain_restored(struct mvx_store *s, uint32_t domid);

/* For tools and tests: nodes in the tree; connections, watches and open transactions. */
uint64_t mvx_store_nodes(struct mvx_store *s);
void mvx_store_counts(struct mvx_store *s, uint64_t *conns, uint64_t *watches, uint64_t *transactions);

#endif
