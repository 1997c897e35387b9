/* SPDX-License-Identifier: MIT */
/* The xenstore in the broker: its own stream socket (xenstored.sock, Xen's wire format), one store
 * (store.c) fed with the bytes of every connection, and the domains' entries made and removed as
 * domains begin and end. */
#define _GNU_SOURCE
#include "xenstore_service.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xen/io/xs_wire.h>

#include "broker/core.h"
#include "xen/xen_record.h"
#include "xen/xen_services.h"
#include "xenstore.h"

#define MAX_XS_CLIENTS 1024
#define DEFAULT_CONNS_PER_PID 64
/* Refused connections waiting for their first request, to be told why (see on_refused). */
#define MAX_REFUSED 16

struct xs_client {
	int fd;
	pid_t pid;
	bool want_out;
	struct mvx_conn *conn; /* NULL: refused, answered ENOSPC at its first request */
	uint8_t hdr[sizeof(struct xsd_sockmsg)];
	size_t hdrlen;
	uint32_t body_left; /* refused: payload bytes still to read before the answer */
	struct xs_client *prev, *next;
};

static struct {
	struct mvx_store *xs;
	int listen_fd[2]; /* xenstored.sock, toolstack.sock */
	bool toolstack_socket_only;
	uint64_t nconns, nrefused, refused_total;
	uint32_t per_pid;
	struct xs_client *clients;
	uint64_t base_nodes; /* the tree every broker starts with */
	bool accept_paused;  /* out of descriptors: see on_xs_accept */
} X = { .listen_fd = { -1, -1 } };

static void resume_accept(void)
{
	if (!X.accept_paused)
		return;
	X.accept_paused = false;
	for (int i = 0; i < 2; i++)
		if (X.listen_fd[i] >= 0 && mvb_io_modify(X.listen_fd[i], EPOLLIN) < 0)
			X.accept_paused = true;
}

/* Who a new connection acts as (see "Who a connection is" in docs/DESIGN.md): a domain's process as
 * that domain; a process that descends from a domain, or (with the toolstack socket required) one that
 * came in on the common socket, as a new domain of its own; one whose chosen domain was refused, as
 * nobody (refused); anyone else as the toolstack, domain 0. */
static int role_of(pid_t pid, bool toolstack_socket)
{
	int d = mvb_domain_of_pid(pid);
	if (d)
		return d;
	if (mvb_domain_refused(pid))
		return -EACCES;
	if ((X.toolstack_socket_only && !toolstack_socket) || mvb_domain_descendant(pid))
		return mvb_domain_for_pid(pid);
	return 0;
}

static void xs_drop(struct xs_client *x)
{
	mvb_io_remove(x->fd);
	close(x->fd);
	if (x->conn)
		X.nconns--;
	else
		X.nrefused--;
	mvx_conn_free(x->conn);
	if (x->prev)
		x->prev->next = x->next;
	else
		X.clients = x->next;
	if (x->next)
		x->next->prev = x->prev;
	free(x);
	resume_accept();
}

/* A connection past its process's limit is told so at its first request: XS_ERROR "ENOSPC", which
 * Debian's libxenstore hands its caller as errno ENOSPC, as for Xen's quotas. Then it is closed. */
static void on_refused(void *ud, uint32_t events)
{
	struct xs_client *x = ud;
	uint8_t sink[512];

	for (;;) {
		bool in_hdr = x->hdrlen < sizeof(x->hdr);
		size_t want = in_hdr ? sizeof(x->hdr) - x->hdrlen
				     : (x->body_left < sizeof(sink) ? x->body_left : sizeof(sink));
		if (!in_hdr && !want)
			break;
		ssize_t n = recv(x->fd, in_hdr ? x->hdr + x->hdrlen : sink, want, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN && !(events & (EPOLLHUP | EPOLLERR)))
			return;
		if (n <= 0) {
			xs_drop(x);
			return;
		}
		if (in_hdr) {
			x->hdrlen += (size_t)n;
			if (x->hdrlen == sizeof(x->hdr)) {
				struct xsd_sockmsg h;
				memcpy(&h, x->hdr, sizeof(h));
				x->body_left = h.len <= XENSTORE_PAYLOAD_MAX ? h.len : 0;
			}
		} else {
			x->body_left -= (uint32_t)n;
		}
	}
	/* The whole request is read, so closing sends the answer and then an orderly end: closing with
	 * its payload unread would reset the connection, and the client would see EPIPE, not why. */
	struct xsd_sockmsg h;
	memcpy(&h, x->hdr, sizeof(h));
	struct {
		struct xsd_sockmsg h;
		char e[7];
	} __attribute__((packed)) m = { { XS_ERROR, h.req_id, h.tx_id, 7 }, "ENOSPC" };
	(void)!send(x->fd, &m, sizeof(m), MSG_DONTWAIT | MSG_NOSIGNAL);
	xs_drop(x);
}

static uint32_t conns_of(pid_t pid)
{
	uint32_t n = 0;
	for (struct xs_client *x = X.clients; x; x = x->next)
		n += x->conn && x->pid == pid;
	return n;
}

/* Sends what the store has for a client; what the socket does not take waits for EPOLLOUT. */
static void xs_flush(struct xs_client *x)
{
	const void *buf;
	size_t n = mvx_conn_pending(x->conn, &buf);
	while (n) {
		ssize_t w = send(x->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		mvx_conn_consume(x->conn, (size_t)w);
		n = mvx_conn_pending(x->conn, &buf);
	}
	bool want = n > 0;
	if (want != x->want_out) {
		mvb_io_modify(x->fd, EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0));
		x->want_out = want;
	}
}

/* After anything that may have produced output (watch events reach other clients). */
static void xs_flush_all(void)
{
	struct mvx_conn *c;
	while ((c = mvx_store_next_overflowed(X.xs))) {
		mvb_log("xenstore: dropping a client (domain %u) that does not read its events", mvx_conn_domid(c));
		xs_drop(mvx_conn_user(c));
	}
	while ((c = mvx_store_next_dirty(X.xs)))
		xs_flush(mvx_conn_user(c));
}

static void on_xs_client(void *ud, uint32_t events)
{
	struct xs_client *x = ud;
	char buf[16384];

	if (events & EPOLLOUT)
		xs_flush(x);
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
		for (int budget = 0; budget < 16; budget++) {
			ssize_t n = recv(x->fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (n < 0 && errno == EAGAIN)
				break;
			if (n <= 0) {
				xs_drop(x);
				xs_flush_all();
				return;
			}
			int r = mvx_conn_input(x->conn, buf, (size_t)n);
			if (r == -EPROTO) {
				mvb_log("xenstore: dropping a client (domain %u): message too long",
					mvx_conn_domid(x->conn));
				xs_drop(x);
				xs_flush_all();
				return;
			}
			if (r < 0)
				break; /* overflowed: dropped below */
		}
	}
	xs_flush_all();
}

static void on_xs_accept(void *ud, uint32_t events)
{
	int which = (int)(intptr_t)ud;
	for (;;) {
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		int fd = accept4(X.listen_fd[which], NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
			/* as the broker's own listener does: wait for a free descriptor instead of spinning */
			mvb_log("xenstore: out of file descriptors: not accepting until some are free");
			for (int i = 0; i < 2; i++)
				if (X.listen_fd[i] >= 0)
					mvb_io_modify(X.listen_fd[i], 0);
			X.accept_paused = true;
			return;
		}
		if (fd < 0)
			return;
		struct xs_client *x = NULL;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
		    (cred.uid != mvb_owner_uid() && cred.uid != 0) || !(x = calloc(1, sizeof(*x)))) {
			close(fd);
			continue;
		}
		x->fd = fd;
		x->pid = cred.pid;
		if (X.nconns >= MAX_XS_CLIENTS || conns_of(cred.pid) >= X.per_pid) {
			if (!(X.refused_total++ % 1024))
				mvb_log("xenstore: refusing pid %d: %s (%llu refused so far)", (int)cred.pid,
					X.nconns >= MAX_XS_CLIENTS ? "no connection left" : "too many connections",
					(unsigned long long)X.refused_total);
			if (X.nrefused >= MAX_REFUSED || mvb_io_add(fd, EPOLLIN | EPOLLRDHUP, on_refused, x) < 0) {
				close(fd);
				free(x);
				continue;
			}
			X.nrefused++;
		} else {
			int role = role_of(cred.pid, which == 1);
			x->conn = role < 0 ? NULL : mvx_conn_new(X.xs, (uint16_t)role, x);
			if (x->conn)
				mvx_conn_set_pid(x->conn, cred.pid);
			if (!x->conn || mvb_io_add(fd, EPOLLIN | EPOLLRDHUP, on_xs_client, x) < 0) {
				mvx_conn_free(x->conn);
				close(fd);
				free(x);
				continue;
			}
			X.nconns++;
		}
		x->next = X.clients;
		if (X.clients)
			X.clients->prev = x;
		X.clients = x;
	}
}

static void domain_introduced(uint16_t domid, const char *name)
{
	mvx_domain_introduce(X.xs, domid, name);
	xs_flush_all();
}

static void domain_gone(uint16_t domid)
{
	mvx_domain_release(X.xs, domid);
	xs_flush_all();
}

static void domain_restored(uint16_t domid)
{
	mvx_domain_restored(X.xs, domid);
}

static void tick(void)
{
	resume_accept();
}

/* ---- the record: the tree survives the broker ---- */

static void journal(void *ud, uint8_t kind, const void *p, size_t len)
{
	(void)ud;
	mvb_record_append(kind, p, len);
}

static void read_node(const uint8_t *p, size_t len)
{
	(void)mvx_store_replay(X.xs, MVB_REC_NODE, p, len);
}

static void read_node_rm(const uint8_t *p, size_t len)
{
	(void)mvx_store_replay(X.xs, MVB_REC_NODE_RM, p, len);
}

static void dump(void)
{
	mvx_store_dump(X.xs);
}

static void stats(struct mvb_stats *st)
{
	uint64_t conns, watches, transactions;

	mvx_store_counts(X.xs, &conns, &watches, &transactions);
	mvb_stats_add(st, "xenstore.connections", conns);
	mvb_stats_add(st, "xenstore.watches", watches);
	mvb_stats_add(st, "xenstore.transactions", transactions);
	mvb_stats_add(st, "xenstore.nodes", mvx_store_nodes(X.xs));
	mvb_stats_add(st, "xenstore.refused_connections", X.refused_total);
}

static bool busy(void)
{
	return X.nconns > 0 || mvx_store_nodes(X.xs) > X.base_nodes;
}

static const struct mvb_service service = {
	.name = "xenstore",
	.tick = tick,
	.stats = stats,
	.busy = busy,
};

static const struct mvb_domain_listener listener = { .introduced = domain_introduced,
						     .gone = domain_gone,
						     .restored = domain_restored };

void mvb_xenstore_config_defaults(struct mvb_xenstore_config *cfg)
{
	struct mvx_quota q;
	mvx_default_quota(&q);
	memset(cfg, 0, sizeof(*cfg));
	cfg->dom0 = q.dom0;
	cfg->max_conns_per_pid = DEFAULT_CONNS_PER_PID;
}

int mvb_xenstore_service_init(int listen_fd, int toolstack_fd, const struct mvb_xenstore_config *cfg)
{
	X.xs = mvx_store_new();
	if (!X.xs)
		return -ENOMEM;
	X.per_pid = DEFAULT_CONNS_PER_PID;
	if (cfg) {
		mvx_store_quota(X.xs)->dom0 = cfg->dom0;
		if (cfg->max_conns_per_pid)
			X.per_pid = cfg->max_conns_per_pid;
		X.toolstack_socket_only = cfg->toolstack_socket_only;
	}
	mvx_store_set_domain_check(X.xs, mvb_domain_alive);
	X.base_nodes = mvx_store_nodes(X.xs);
	X.listen_fd[0] = listen_fd;
	X.listen_fd[1] = toolstack_fd;
	int r = mvb_io_add(listen_fd, EPOLLIN, on_xs_accept, (void *)(intptr_t)0);
	if (r == 0 && toolstack_fd >= 0)
		r = mvb_io_add(toolstack_fd, EPOLLIN, on_xs_accept, (void *)(intptr_t)1);
	if (r < 0)
		return r;
	mvb_service_register(&service);
	mvb_domains_listen(&listener);
	mvx_store_set_journal(X.xs, journal, NULL);
	mvb_record_on(MVB_REC_NODE, read_node);
	mvb_record_on(MVB_REC_NODE_RM, read_node_rm);
	mvb_record_dumper(dump);
	return 0;
}
