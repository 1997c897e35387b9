/* SPDX-License-Identifier: MIT */
/* The xenstore in the broker: its own stream socket (xenstored.sock, Xen's wire format), one store
 * (store.c) fed with the bytes of every connection, and the domains' entries made and removed as
 * domains begin and end. */
#define _GNU_SOURCE
#include "xenstore_service.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/core.h"
#include "xen/xen_services.h"
#include "xenstore.h"

#define MAX_XS_CLIENTS 1024

struct xs_client {
	int fd;
	bool want_out;
	struct mvx_conn *conn;
};

static struct {
	struct mvx_store *xs;
	int listen_fd;
	uint64_t nconns;
	uint64_t base_nodes; /* the tree every broker starts with */
	bool accept_paused;  /* out of descriptors: see on_xs_accept */
} X = { .listen_fd = -1 };

static void resume_accept(void)
{
	if (X.accept_paused && mvb_io_modify(X.listen_fd, EPOLLIN) == 0)
		X.accept_paused = false;
}

static void xs_drop(struct xs_client *x)
{
	mvb_io_remove(x->fd);
	close(x->fd);
	mvx_conn_free(x->conn);
	free(x);
	X.nconns--;
	resume_accept();
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
	for (;;) {
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		int fd = accept4(X.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
			/* as the broker's own listener does: wait for a free descriptor instead of spinning */
			mvb_log("xenstore: out of file descriptors: not accepting until some are free");
			mvb_io_modify(X.listen_fd, 0);
			X.accept_paused = true;
			return;
		}
		if (fd < 0)
			return;
		struct xs_client *x = NULL;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
		    (cred.uid != mvb_owner_uid() && cred.uid != 0) || X.nconns >= MAX_XS_CLIENTS ||
		    !(x = calloc(1, sizeof(*x)))) {
			close(fd);
			continue;
		}
		x->fd = fd;
		/* a process that is a domain acts as it; anyone else is the toolstack, domain 0 */
		x->conn = mvx_conn_new(X.xs, mvb_domain_of_pid(cred.pid), x);
		if (!x->conn || mvb_io_add(fd, EPOLLIN | EPOLLRDHUP, on_xs_client, x) < 0) {
			mvx_conn_free(x->conn);
			close(fd);
			free(x);
			continue;
		}
		X.nconns++;
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

static void tick(void)
{
	resume_accept();
}

static void stats(struct mvb_stats *st)
{
	uint64_t conns, watches, transactions;

	mvx_store_counts(X.xs, &conns, &watches, &transactions);
	mvb_stats_add(st, "xenstore.connections", conns);
	mvb_stats_add(st, "xenstore.watches", watches);
	mvb_stats_add(st, "xenstore.transactions", transactions);
	mvb_stats_add(st, "xenstore.nodes", mvx_store_nodes(X.xs));
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

static const struct mvb_domain_listener listener = { .introduced = domain_introduced, .gone = domain_gone };

int mvb_xenstore_service_init(int listen_fd)
{
	X.xs = mvx_store_new();
	if (!X.xs)
		return -ENOMEM;
	mvx_store_set_domain_check(X.xs, mvb_domain_alive);
	X.base_nodes = mvx_store_nodes(X.xs);
	X.listen_fd = listen_fd;
	int r = mvb_io_add(listen_fd, EPOLLIN, on_xs_accept, NULL);
	if (r < 0)
		return r;
	mvb_service_register(&service);
	mvb_domains_listen(&listener);
	return 0;
}
