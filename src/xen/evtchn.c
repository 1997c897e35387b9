/* SPDX-License-Identifier: MIT */
/* libxenevtchn.so.1 on memvisor: Xen's event channel API (Debian libxen-dev's xenevtchn.h is the
 * contract) between ordinary processes. Binding goes through the broker; notifying is a write to the
 * peer's eventfd and never does.
 *
 * A handle is an epoll fd (what xenevtchn_fd returns: pollable) holding the receive eventfd of every
 * bound port, one-shot. pending() takes a ready port and consumes its count; the spent one-shot
 * registration is the mask. unmask() arms it again, and events that arrived meanwhile fire again,
 * coalesced, as with Xen's mask bit. Calls return -1 with errno set, as libxenevtchn does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <xenevtchn.h>

#include "lib/client.h"
#include "proto/wire.h"

struct port {
	uint32_t port;
	int rx, tx;
	bool masked;
	uint32_t remote; /* the domain it is bound to or waits for */
	pid_t pid;       /* the process that bound it: a forked child's ports are not its own */
};

struct xenevtchn_handle {
	int epfd;
	pthread_mutex_t lock;
	struct port *ports;
	size_t nports, cap;
	int32_t restrict_domid; /* -1: any */
	int refs;               /* xenevtchn_fdopen hands out the same handle again */
	struct xenevtchn_handle *next;
};

/* Handles of this process by fd, for xenevtchn_fdopen. */
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static struct xenevtchn_handle *all;

/* A program that loads Xen's guest libraries is a domain from the start, as a guest is: it can then
 * read its own domid from the xenstore ("domid", relative) before it binds or shares anything. If the
 * broker does not answer at once, the domain is made on first use instead. Its fork children are new
 * domains from the fork on; MEMVISOR_XEN_DOMID chooses its id (mvc_domain_init). */
static void restore_ports(void);

__attribute__((constructor)) static void become_domain(void)
{
	mvc_on_connect(restore_ports);
	mvc_domain_init();
}

/* On every new connection: if the broker restarted, it kept this process's domain from its record, and
 * takes its ports back with their eventfds, so the channels are its again (unbind, a peer's death, the
 * unmap notifications it sends). A broker that did not restart refuses (ESRCH): the ports keep working
 * between the two processes, as before. Runs with the connection held. */
static void restore_ports(void)
{
	pid_t self = getpid();
	pthread_mutex_lock(&all_lock);
	for (struct xenevtchn_handle *h = all; h; h = h->next) {
		pthread_mutex_lock(&h->lock);
		for (size_t i = 0; i < h->nports; i++) {
			struct port *p = &h->ports[i];
			if (p->pid != self)
				continue;
			struct mvw_req_evtchn_restore req = { .port = p->port, .remote_domid = p->remote };
			int fds[2] = { p->rx, p->tx };
			if (mvc_exchange_fds_locked(MV_MSG_EVTCHN_RESTORE, &req, sizeof(req), fds, 2) == -ESRCH)
				break;
		}
		pthread_mutex_unlock(&h->lock);
	}
	pthread_mutex_unlock(&all_lock);
}

static int fail(int e)
{
	errno = e;
	return -1;
}

static struct port *find(struct xenevtchn_handle *h, uint32_t port)
{
	for (size_t i = 0; i < h->nports; i++)
		if (h->ports[i].port == port)
			return &h->ports[i];
	return NULL;
}

static struct xenevtchn_handle *handle_new(int epfd)
{
	struct xenevtchn_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->epfd = epfd;
	h->restrict_domid = -1;
	h->refs = 1;
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_lock(&all_lock);
	h->next = all;
	all = h;
	pthread_mutex_unlock(&all_lock);
	return h;
}

MV_EXPORT xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
	(void)logger;
	if (flags & ~XENEVTCHN_NO_CLOEXEC) {
		errno = EINVAL;
		return NULL;
	}
	int e = mvc_domain_check();
	if (e < 0 && e != -ETIMEDOUT && e != -EAGAIN && e != -ENOTCONN) {
		errno = -e; /* the domain MEMVISOR_XEN_DOMID chose is not to be had */
		return NULL;
	}
	int epfd = epoll_create1((flags & XENEVTCHN_NO_CLOEXEC) ? 0 : EPOLL_CLOEXEC);
	if (epfd < 0)
		return NULL;
	struct xenevtchn_handle *h = handle_new(epfd);
	if (!h) {
		close(epfd);
		errno = ENOMEM;
	}
	return h;
}

/* The fd must be one of this process's handles (or a dup of one): the ports are the handle's. */
MV_EXPORT xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
	(void)logger;
	if (open_flags) {
		errno = EINVAL;
		return NULL;
	}
	pthread_mutex_lock(&all_lock);
	struct xenevtchn_handle *h = all;
	while (h && h->epfd != fd)
		h = h->next;
	if (h)
		h->refs++; /* the same ports, as a second handle on one open file would see */
	pthread_mutex_unlock(&all_lock);
	if (!h)
		errno = EBADF;
	return h;
}

MV_EXPORT int xenevtchn_close(xenevtchn_handle *h)
{
	if (!h)
		return 0;
	pthread_mutex_lock(&all_lock);
	if (--h->refs > 0) {
		pthread_mutex_unlock(&all_lock);
		return 0;
	}
	for (struct xenevtchn_handle **pp = &all; *pp; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	pthread_mutex_unlock(&all_lock);
	for (size_t i = 0; i < h->nports; i++) {
		struct mvw_req_evtchn_unbind req = { .port = h->ports[i].port };
		(void)mvc_request(MV_MSG_EVTCHN_UNBIND, &req, sizeof(req), -1, NULL, NULL);
		close(h->ports[i].rx);
		close(h->ports[i].tx);
	}
	close(h->epfd);
	free(h->ports);
	pthread_mutex_destroy(&h->lock);
	free(h);
	return 0;
}

MV_EXPORT int xenevtchn_fd(xenevtchn_handle *h)
{
	return h->epfd;
}

MV_EXPORT int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
	pthread_mutex_lock(&h->lock);
	struct port *p = find(h, port);
	int tx = p ? p->tx : -1;
	pthread_mutex_unlock(&h->lock);
	if (tx < 0)
		return fail(EINVAL);
	uint64_t one = 1;
	/* a full counter (2^64 - 2 events unread) already says "pending": nothing is lost */
	if (write(tx, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -1;
	return 0;
}

static xenevtchn_port_or_error_t bind(xenevtchn_handle *h, uint8_t type, uint32_t domid, uint32_t remote_port)
{
	if (h->restrict_domid >= 0 && (uint32_t)h->restrict_domid != domid)
		return fail(EACCES);
	struct mvw_req_evtchn_bind req = { .remote_domid = domid, .remote_port = remote_port };
	struct mvw_msg rep;
	int fds[2] = { -1, -1 };
	int r = mvc_request(type, &req, sizeof(req), -1, &rep, fds);
	if (r < 0)
		return fail(-r);
	uint32_t port = rep.u.evtchn_bind_rep.port;
	if (fds[0] < 0 || fds[1] < 0 || port == 0 || port > MV_EVTCHN_MAX_PORT) {
		if (fds[0] >= 0)
			close(fds[0]);
		if (fds[1] >= 0)
			close(fds[1]);
		return fail(EPROTO);
	}
	pthread_mutex_lock(&h->lock);
	if (h->nports == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 8;
		struct port *n = realloc(h->ports, cap * sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&h->lock);
			r = -ENOMEM;
			goto undo;
		}
		h->ports = n;
		h->cap = cap;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u32 = port };
	if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fds[0], &ev) < 0) {
		r = -errno;
		pthread_mutex_unlock(&h->lock);
		goto undo;
	}
	h->ports[h->nports++] = (struct port){ port, fds[0], fds[1], false, domid, getpid() };
	pthread_mutex_unlock(&h->lock);
	return (xenevtchn_port_or_error_t)port;
undo:;
	struct mvw_req_evtchn_unbind un = { .port = port };
	(void)mvc_request(MV_MSG_EVTCHN_UNBIND, &un, sizeof(un), -1, NULL, NULL);
	close(fds[0]);
	close(fds[1]);
	return fail(-r);
}

MV_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *h, uint32_t domid)
{
	return bind(h, MV_MSG_EVTCHN_BIND_UNBOUND, domid, 0);
}

MV_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
							       evtchn_port_t remote_port)
{
	if (remote_port == 0 || remote_port > MV_EVTCHN_MAX_PORT)
		return fail(EINVAL);
	return bind(h, MV_MSG_EVTCHN_BIND_INTERDOMAIN, domid, remote_port);
}

/* There are no virtual IRQs without a hypervisor. */
MV_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
	(void)h;
	(void)virq;
	return fail(EOPNOTSUPP);
}

MV_EXPORT int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
	pthread_mutex_lock(&h->lock);
	struct port *p = find(h, port);
	if (!p) {
		pthread_mutex_unlock(&h->lock);
		return fail(EINVAL);
	}
	struct port gone = *p;
	*p = h->ports[--h->nports];
	pthread_mutex_unlock(&h->lock);
	epoll_ctl(h->epfd, EPOLL_CTL_DEL, gone.rx, NULL);
	close(gone.rx);
	close(gone.tx);
	struct mvw_req_evtchn_unbind req = { .port = port };
	int r = mvc_request(MV_MSG_EVTCHN_UNBIND, &req, sizeof(req), -1, NULL, NULL);
	return r < 0 ? fail(-r) : 0;
}

/* Blocks until a port fires, like a read of Xen's evtchn device; poll the fd first not to block. */
MV_EXPORT xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
	for (;;) {
		struct epoll_event ev;
		int n = epoll_wait(h->epfd, &ev, 1, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			continue;
		uint32_t port = ev.data.u32;
		pthread_mutex_lock(&h->lock);
		struct port *p = find(h, port);
		if (!p || p->masked) {
			pthread_mutex_unlock(&h->lock); /* unbound or masked meanwhile */
			continue;
		}
		uint64_t count;
		if (read(p->rx, &count, sizeof(count)) < 0 && errno == EAGAIN) {
			/* another thread took it; the one-shot registration fired, so arm it again */
			struct epoll_event on = { .events = EPOLLIN | EPOLLONESHOT, .data.u32 = port };
			epoll_ctl(h->epfd, EPOLL_CTL_MOD, p->rx, &on);
			pthread_mutex_unlock(&h->lock);
			continue;
		}
		/* masked: the one-shot registration is spent until unmask arms it again */
		p->masked = true;
		pthread_mutex_unlock(&h->lock);
		return (xenevtchn_port_or_error_t)port;
	}
}

MV_EXPORT int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
	pthread_mutex_lock(&h->lock);
	struct port *p = find(h, port);
	if (!p) {
		pthread_mutex_unlock(&h->lock);
		return fail(EINVAL);
	}
	if (p->masked) {
		struct epoll_event on = { .events = EPOLLIN | EPOLLONESHOT, .data.u32 = port };
		epoll_ctl(h->epfd, EPOLL_CTL_MOD, p->rx, &on);
		p->masked = false;
	}
	pthread_mutex_unlock(&h->lock);
	return 0;
}

/* From now on this handle binds only to domid (Linux: IOCTL_EVTCHN_RESTRICT_DOMID; once). */
MV_EXPORT int xenevtchn_restrict(xenevtchn_handle *h, domid_t domid)
{
	if (domid > MV_DOMID_LAST && domid != MV_DOMID_SELF_XEN)
		return fail(EINVAL);
	if (h->restrict_domid >= 0)
		return fail(EPERM);
	h->restrict_domid = domid;
	return 0;
}
